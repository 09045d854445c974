#!/usr/bin/env python3
"""Leader failover time: a 3-member cluster on etcd's default timing (100 ms heartbeats,
1 s election timeout), the leader SIGKILLed, and the time until a write through a surviving
member is acknowledged again. Each round restarts the killed member and waits for a stable
leader before the next kill. Binaries alternate round by round so both see the same machine.

usage: bench/failover.py ROUNDS BINARY [BINARY...]   (e.g. /usr/bin/etcd target/release/oxcd)
Ports 41000-41999 are used; data dirs go under a temporary directory.
"""
import http.client, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

ROUNDS = int(sys.argv[1])
BINARIES = sys.argv[2:]


def req(port, method, path, body=None, timeout=2.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
    c.request(method, path, body, headers)
    r = c.getresponse()
    data = r.read()
    return r.status, data


class Cluster:
    def __init__(self, binary, base):
        self.binary, self.base = binary, base
        self.dir = tempfile.mkdtemp(prefix="failover-")
        self.names = [f"m{i}" for i in range(3)]
        self.client = [base + 10 * i for i in range(3)]
        self.peer = [base + 10 * i + 1 for i in range(3)]
        self.procs = [None] * 3
        for i in range(3):
            self.start(i)

    def start(self, i):
        initial = ",".join(f"m{j}=http://127.0.0.1:{self.peer[j]}" for j in range(3))
        args = [self.binary, "--name", self.names[i], "--data-dir", f"{self.dir}/{i}",
                "--enable-v2=true",
                "--listen-client-urls", f"http://127.0.0.1:{self.client[i]}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.client[i]}",
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
                "--initial-cluster", initial, "--initial-cluster-token", "failover"]
        log = open(f"{self.dir}/{i}.log", "ab")
        self.procs[i] = subprocess.Popen(args, stdout=log, stderr=log)

    def leader(self):
        for i in range(3):
            try:
                s, d = req(self.client[i], "GET", "/v2/stats/self", timeout=0.5)
                if s == 200 and json.loads(d).get("state") == "StateLeader":
                    return i
            except Exception:
                pass
        return None

    def write_ok(self, i, key):
        try:
            s, _ = req(self.client[i], "PUT", f"/v2/keys/{key}", "value=x", timeout=0.1)
            return s in (200, 201)
        except Exception:
            return False

    def wait_stable(self):
        deadline = time.time() + 60
        while time.time() < deadline:
            l = self.leader()
            if l is not None and all(self.write_ok(i, "stable") for i in range(3)):
                return l
            time.sleep(0.05)
        raise SystemExit(f"{self.binary}: no stable cluster; logs in {self.dir}")

    def close(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def one_round(c):
    leader = c.wait_stable()
    time.sleep(1.5)  # settle: heartbeats flowing, no election in progress
    others = [i for i in range(3) if i != leader]
    t0 = time.time()
    c.procs[leader].send_signal(signal.SIGKILL)
    c.procs[leader].wait()
    n = 0
    while True:
        n += 1
        if c.write_ok(others[n % 2], f"after{n}"):
            took = time.time() - t0
            break
        if time.time() - t0 > 30:
            took = float("inf")
            break
    c.start(leader)
    return took


results = {b: [] for b in BINARIES}
clusters = {b: Cluster(b, 41000 + 100 * k) for k, b in enumerate(BINARIES)}
try:
    for r in range(ROUNDS):
        for b in BINARIES:
            t = one_round(clusters[b])
            results[b].append(t)
            print(f"round {r + 1}: {os.path.basename(b)} {t:.2f}s", flush=True)
finally:
    for c in clusters.values():
        c.close()
for b, ts in results.items():
    print(f"{os.path.basename(b)}: failover {', '.join(f'{t:.2f}' for t in ts)} s; "
          f"median {statistics.median(ts):.2f} s")
