#!/usr/bin/env python3
"""Do large recursive reads stall the raft thread? A 3-member cluster on etcd's default
timing is loaded with N keys; then R clients run recursive GETs of the whole key space
against the leader for S seconds. Reports the time per recursive GET and the leader changes
seen during the reads (a leader whose raft thread waits behind readers misses heartbeats and
is voted out). Binaries alternate so both see the same machine.

With --ttl, one key with a TTL is set before the reads: the leader then proposes its clock
(SYNC) every 500 ms, so there are entries to apply while the readers hold the store.

usage: bench/readstall.py [--ttl] N R S BINARY [BINARY...]
"""
import http.client, json, os, shutil, statistics, subprocess, sys, tempfile, threading, time, urllib.parse

TTL = "--ttl" in sys.argv
ARGS = [a for a in sys.argv[1:] if a != "--ttl"]
N, R, S = int(ARGS[0]), int(ARGS[1]), float(ARGS[2])
BINARIES = ARGS[3:]


def req(port, method, path, body=None, timeout=30.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path, body, {"Content-Type": "application/x-www-form-urlencoded"} if body else {})
    r = c.getresponse()
    return r.status, r.read()


def run(binary, base):
    d = tempfile.mkdtemp(prefix="readstall-")
    client = [base + 10 * i for i in range(3)]
    peer = [base + 10 * i + 1 for i in range(3)]
    initial = ",".join(f"m{j}=http://127.0.0.1:{peer[j]}" for j in range(3))
    procs = []
    for i in range(3):
        log = open(f"{d}/{i}.log", "ab")
        procs.append(subprocess.Popen([binary, "--name", f"m{i}", "--data-dir", f"{d}/{i}", "--enable-v2=true",
            "--listen-client-urls", f"http://127.0.0.1:{client[i]}", "--advertise-client-urls", f"http://127.0.0.1:{client[i]}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer[i]}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer[i]}",
            "--initial-cluster", initial, "--initial-cluster-token", "readstall"], stdout=log, stderr=log))
    try:
        leader = None
        deadline = time.time() + 60
        while leader is None and time.time() < deadline:
            for i in range(3):
                try:
                    s, b = req(client[i], "GET", "/v2/stats/self", timeout=0.5)
                    if s == 200 and json.loads(b).get("state") == "StateLeader":
                        leader = i
                except Exception:
                    pass
            time.sleep(0.1)
        body = urllib.parse.urlencode({"value": "v" * 64})
        def load(i0):
            c = http.client.HTTPConnection("127.0.0.1", client[leader], timeout=30)
            for k in range(i0, N, 32):
                c.request("PUT", f"/v2/keys/d{k % 100}/k{k}", body, {"Content-Type": "application/x-www-form-urlencoded"})
                c.getresponse().read()
        ts = [threading.Thread(target=load, args=(i,)) for i in range(32)]
        [t.start() for t in ts]; [t.join() for t in ts]
        def changes_seen():
            total = 0
            for i in range(3):
                _, b = req(client[i], "GET", "/metrics")
                for line in b.decode().splitlines():
                    if line.startswith("etcd_server_leader_changes_seen_total"):
                        total += int(float(line.split()[1]))
            return total
        if TTL:
            req(client[leader], "PUT", "/v2/keys/lease", urllib.parse.urlencode({"value": "held", "ttl": "3600"}))
        before = changes_seen()
        stop = time.time() + S
        took = []
        def reader():
            while time.time() < stop:
                t0 = time.time()
                try:
                    req(client[leader], "GET", "/v2/keys/?recursive=true", timeout=60)
                    took.append(time.time() - t0)
                except Exception:
                    pass
        rs = [threading.Thread(target=reader) for _ in range(R)]
        [t.start() for t in rs]; [t.join() for t in rs]
        changes = changes_seen() - before
        return statistics.median(took) if took else float("nan"), len(took), changes
    finally:
        for p in procs:
            p.kill(); p.wait()
        shutil.rmtree(d, ignore_errors=True)


for k, b in enumerate(BINARIES):
    # Below Linux's ephemeral port range, which the load's client sockets draw from.
    med, n, changes = run(b, 22000 + 100 * k)
    print(f"{os.path.basename(b)}: {N} keys{' + a TTL key' if TTL else ''}, {R} readers for {S:.0f}s: {n} recursive GETs, median {med:.2f}s; "
          f"leader changes seen by the members during the reads: {changes}", flush=True)
