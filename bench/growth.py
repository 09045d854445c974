#!/usr/bin/env python3
"""Growth curves (performance issue): for each key count N, a fresh one-member etcd and a fresh
one-member oxcd (the order swaps from one N to the next), both on etcd's defaults (only
--enable-v2=true and the URLs are given; the default --snapshot-count of 100000 applies to both),
are loaded with N distinct keys by oxcd-bench, then SIGKILLed and restarted. Per run:

  load rate          keys/s of `oxcd-bench put --sequential-keys` (--total N --key-space N)
  RSS loaded         VmRSS right after the load, VmHWM (peak during the load), and VmRSS once
                     the server is idle (its CPU time stops moving and no snapshot is in flight)
  data dir           apparent size (as du -sb) after the load, split into member/snap (the
                     .snap files; etcd's v3 backend member/snap/db apart), member/wal and the rest
  snapshot           the last snapshot written during the load: time to take and write it (from
                     the server's log) and its file size
  restart            SIGKILL, restart with the same flags, time until GET of the last loaded key
                     answers 200 (polled every 10 ms); VmRSS then, once idle, and VmHWM

A memory guard polls the server's VmRSS every 0.5 s and kills it (the run is recorded as "over
limit") above --rss-limit-mb. A run refuses ports already in use, and is marked void when the
store index (X-Etcd-Index) shows writes beyond its own N puts (another client on the port).
Each (server, N) run appends one JSON line to --out; at the end a markdown table (etcd | oxcd |
oxcd/etcd, per figure and N) of the latest run of each (server, N) in --out is printed, and for
every oxcd figure a check that it grows no faster than linearly: figure(N2)/figure(N1) <=
1.1 * N2/N1 for consecutive sizes (load rate is checked as load time; the snapshot figures
against the ratio of the snapshots' raft indexes, as the last snapshot holds up to a
--snapshot-count fewer keys than N). Both servers preallocate 64 MB WAL segments (etcd with
real blocks and one spare segment, oxcd sparse), so the allocated size (as du -s) is recorded
too. bench/plot_growth.py draws the results.

usage: bench/growth.py [--sizes 100000,1000000,5000000] [--etcd /usr/bin/etcd]
                       [--oxcd target/release/oxcd] [--bench target/release/oxcd-bench]
                       [--data-root DIR] [--port P] [--val-size 64] [--conns 128]
                       [--rss-limit-mb 18000] [--out results.jsonl] [--only etcd|oxcd]
                       [--random-values]
                       [--snapshot-count K] [--report]
  The client URL is on P (default 26379), the peer URL on P+1; keep P below 32768 (outside
  Linux's ephemeral range). Data dirs and logs go to DIR/growth-<server>-<N>[.log,
  .restart.log, .bench.log] (DIR defaults to $TMPDIR or /tmp); a run's data dir is deleted
  when the next run of the same (server, N) starts. --snapshot-count overrides the default for
  quick tests of the snapshot figures only; the published figures use the defaults. --report
  prints the table of --out without running anything.
  Build first: cargo build --release -p oxcd -p oxcd-bench.
"""
import argparse, http.client, json, os, re, shutil, signal, socket, subprocess, sys, threading
import time
from datetime import datetime

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_status(pid):
    """VmRSS and VmHWM of pid in KiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None, None
    vals = {}
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":", 1)
            vals[k] = int(v.split()[0])
    return vals.get("VmRSS"), vals.get("VmHWM")


def cpu_seconds(pid):
    """User + system CPU time of pid (all its threads), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is the state (field 3 of stat); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_size(path):
    """Apparent bytes (as du -sb: files, links and directories) and allocated bytes."""
    apparent = allocated = 0
    for root, dirs, files in os.walk(path):
        for name in [root] + [os.path.join(root, x) for x in files]:
            try:
                st = os.lstat(name)
            except OSError:
                continue
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def data_dir_split(d):
    """Sizes of a data dir: total, member/snap (its .snap files and the rest of it, which is
    etcd's bbolt backend 'db'), member/wal and everything else."""
    total, allocated = tree_size(d)
    snap_dir = os.path.join(d, "member", "snap")
    wal_dir = os.path.join(d, "member", "wal")
    snap_total = tree_size(snap_dir)[0] if os.path.isdir(snap_dir) else 0
    wal_total = tree_size(wal_dir)[0] if os.path.isdir(wal_dir) else 0
    snap_files = []
    if os.path.isdir(snap_dir):
        for name in sorted(os.listdir(snap_dir)):
            if name.endswith(".snap"):
                snap_files.append((name, os.lstat(os.path.join(snap_dir, name)).st_size))
    snap_bytes = sum(s for _, s in snap_files)
    return {
        "bytes": total,
        "allocated_bytes": allocated,
        "snap_dir_bytes": snap_total,
        "snap_files_bytes": snap_bytes,
        "snap_files": len(snap_files),
        "snap_other_bytes": snap_total - snap_bytes,
        "wal_dir_bytes": wal_total,
        "rest_bytes": total - snap_total - wal_total,
    }, snap_files


# etcd 3.4 (capnslog on stderr):
#   2026-11-30 18:09:32.564917 I | etcdserver: start to snapshot (applied: 1001, lastsnap: 0)
#   2026-11-30 18:09:32.671478 I | etcdserver: saved snapshot at index 1001
ETCD_TS = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) "
ETCD_START = re.compile(ETCD_TS + r".*start to snapshot \(applied: (\d+)")
ETCD_SAVED = re.compile(ETCD_TS + r".*saved snapshot at index (\d+)")
# oxcd: "... snap: snapshot file written index=100001 term=2 bytes=... state_ms=.. took_ms=.."
OXCD_WRITTEN = re.compile(r"snap: snapshot file written.*?\bindex=(\d+).*?\bbytes=(\d+).*?\btook_ms=(\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def read_log(path):
    try:
        with open(path, errors="replace") as f:
            return ANSI.sub("", f.read())
    except OSError:
        return ""


def snapshots_in_log(server, text):
    """[(index, took_ms)] of the snapshots written, in log order, and how many were started
    but not yet written (etcd only; oxcd logs the file once written)."""
    done, pending = [], 0
    if server == "oxcd":
        for m in OXCD_WRITTEN.finditer(text):
            done.append((int(m.group(1)), int(m.group(3))))
        return done, 0
    started = {}
    for line in text.splitlines():
        m = ETCD_START.match(line)
        if m:
            started[int(m.group(2))] = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
            continue
        m = ETCD_SAVED.match(line)
        if m and int(m.group(2)) in started:
            t0 = started.pop(int(m.group(2)))
            t1 = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
            done.append((int(m.group(2)), (t1 - t0).total_seconds() * 1000))
    return done, len(started)


class Guard(threading.Thread):
    """Polls the server's VmRSS every 0.5 s; above the limit it kills the server's process
    group and the load generator."""

    def __init__(self, server_proc, limit_kb):
        super().__init__(daemon=True)
        self.server, self.limit_kb = server_proc, limit_kb
        self.others = []
        self.tripped_kb = None
        self.max_kb = 0
        self.stop_ev = threading.Event()

    def run(self):
        while not self.stop_ev.wait(0.5):
            rss, _ = proc_status(self.server.pid)
            if rss is None:
                return
            self.max_kb = max(self.max_kb, rss)
            if rss > self.limit_kb:
                self.tripped_kb = rss
                kill_group(self.server)
                for p in self.others:
                    kill_group(p)
                return

    def stop(self):
        self.stop_ev.set()
        self.join()


def kill_group(p):
    """SIGKILL a process started in a session of its own, and all its group."""
    if p is None or p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


class Runner:
    def __init__(self, args):
        self.a = args
        self.live = []  # server and load generator processes to kill on exit

    def server_args(self, server, d):
        a, p = self.a, self.a.port
        binary = a.etcd if server == "etcd" else a.oxcd
        cmd = [binary, "--name", "default", "--data-dir", d, "--enable-v2=true",
               "--listen-client-urls", f"http://127.0.0.1:{p}",
               "--advertise-client-urls", f"http://127.0.0.1:{p}",
               "--listen-peer-urls", f"http://127.0.0.1:{p + 1}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{p + 1}",
               "--initial-cluster", f"default=http://127.0.0.1:{p + 1}"]
        if a.snapshot_count is not None:
            cmd += ["--snapshot-count", str(a.snapshot_count)]
        return cmd

    def start(self, server, d, log_path):
        log = open(log_path, "wb")
        try:
            p = subprocess.Popen(self.server_args(server, d), stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self.live.append(p)
        return p

    def kill(self, p):
        kill_group(p)
        if p in self.live:
            self.live.remove(p)

    def kill_all(self):
        for p in list(self.live):
            self.kill(p)

    def get(self, path, timeout=1.0):
        return self.get_index(path, timeout)[0]

    def get_index(self, path, timeout=1.0):
        """Status of GET path and its X-Etcd-Index (the store's modification count)."""
        c = http.client.HTTPConnection("127.0.0.1", self.a.port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            index = r.getheader("X-Etcd-Index")
            return r.status, int(index) if index and index.isdigit() else None
        finally:
            c.close()

    def foreign_writes(self, n, rec, when):
        """The store index counts every write: beyond the N puts and the few the server makes
        itself, another client wrote to this server (the machine is shared; pick another
        --port). Records the index; returns an error text or None."""
        status, index = self.get_index("/v2/keys/", timeout=10)
        rec[f"store_index_{when}"] = index
        if index is not None and index > n + 100:
            rec["void"] = True
            return (f"store index {index} {when} for {n} puts: another client wrote to this "
                    f"server (port {self.a.port} shared?); the figures are void")
        return None

    def ports_in_use(self):
        busy = []
        for port in (self.a.port, self.a.port + 1):
            with socket.socket() as sk:
                sk.settimeout(1)
                if sk.connect_ex(("127.0.0.1", port)) == 0:
                    busy.append(port)
        return busy

    def wait_status(self, p, guard, path, deadline_s):
        """Seconds until GET path answers 200 (polled every 10 ms), None if the server died,
        was killed by the guard or the deadline passed."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline_s:
            if p.poll() is not None or guard.tripped_kb is not None:
                return None
            try:
                if self.get(path) == 200:
                    return time.monotonic() - t0
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.01)
        return None

    def settled(self, server, p, log_path, guard, n, rec, phase, prefix):
        """Waits until the server is idle and records the wait and VmRSS/VmHWM then in rec
        ({prefix}settle_s, rss_{prefix}settled_mb, hwm_{prefix}settled_mb). False when the
        memory guard tripped meanwhile (recorded in rec as over limit in this phase)."""
        settle = self.wait_idle(server, p, log_path, deadline_s=max(120, n / 2000))
        if guard.tripped_kb is not None:
            rec["over_limit"] = {"phase": phase, "rss_mb": guard.tripped_kb / 1024}
            return False
        rss, hwm = proc_status(p.pid)
        rec[f"{prefix}settle_s"] = settle
        rec[f"rss_{prefix}settled_mb"] = rss and rss / 1024
        rec[f"hwm_{prefix}settled_mb"] = hwm and hwm / 1024
        return True

    def wait_idle(self, server, p, log_path, deadline_s, window=2.0, max_cpu=0.04):
        """Seconds until the server used at most max_cpu CPU seconds over `window` seconds
        with no snapshot in flight; None on deadline or death."""
        t0 = time.monotonic()
        last = cpu_seconds(p.pid)
        while time.monotonic() - t0 < deadline_s:
            time.sleep(window)
            now = cpu_seconds(p.pid)
            if now is None or last is None:
                return None
            busy, last = now - last, now
            if busy <= max_cpu and snapshots_in_log(server, read_log(log_path))[1] == 0:
                return time.monotonic() - t0
        return None

    def version(self, binary):
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.splitlines()[0].strip() if out.strip() else None

    def run(self, server, n):
        a = self.a
        d = os.path.join(a.data_root, f"growth-{server}-{n}")
        log1, log2, blog = d + ".log", d + ".restart.log", d + ".bench.log"
        shutil.rmtree(d, ignore_errors=True)
        binary = a.etcd if server == "etcd" else a.oxcd
        rec = {"server": server, "n": n, "version": self.version(binary),
               "val_size": a.val_size, "random_values": a.random_values, "conns": a.conns,
               "snapshot_count": a.snapshot_count if a.snapshot_count is not None else "default",
               "rss_limit_mb": a.rss_limit_mb, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "over_limit": None, "error": None, "data_dir": d}
        limit_kb = a.rss_limit_mb * 1024
        # oxcd-bench names keys /v2/keys/bench/<index zero-padded to --key-size digits>.
        key_size = max(8, len(str(n - 1)))
        last_key = f"/v2/keys/bench/{n - 1:0{key_size}d}"

        busy = self.ports_in_use()
        if busy:
            rec["error"] = f"port(s) {busy} already in use by another process (pick another --port)"
            return rec
        print(f"[{server} N={n}] starting", file=sys.stderr, flush=True)
        p = self.start(server, d, log1)
        guard = Guard(p, limit_kb)
        guard.start()
        try:
            if self.wait_status(p, guard, "/v2/keys/", 60) is None:
                rec["error"] = "server did not start serving (see " + log1 + ")"
                return rec
            time.sleep(0.5)
            cmd = [a.bench, "--endpoints", f"http://127.0.0.1:{a.port}", "--clients", str(a.conns),
                   "--conns", str(a.conns), "--val-size", str(a.val_size), "--key-size",
                   str(key_size), "--key-space", str(n), "--total", str(n), "--json",
                   "put", "--sequential-keys"] + (["--random-values"] if a.random_values else [])
            print(f"[{server} N={n}] loading: {' '.join(cmd)}", file=sys.stderr, flush=True)
            with open(blog, "wb") as bl:
                t0 = time.monotonic()
                b = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=bl, start_new_session=True)
                guard.others.append(b)
                self.live.append(b)
                out, _ = b.communicate()
                self.live.remove(b)
                wall = time.monotonic() - t0
            rss, hwm = proc_status(p.pid)
            if guard.tripped_kb is not None:
                rec["over_limit"] = {"phase": "load", "rss_mb": guard.tripped_kb / 1024}
                return rec
            if p.poll() is not None or rss is None:
                rec["error"] = f"the server exited during the load (status {p.poll()}, see {log1})"
                return rec
            if b.returncode != 0:
                rec["error"] = f"oxcd-bench exited {b.returncode} (see {blog})"
                return rec
            rep = json.loads(out)
            rec.update(load_s=rep["elapsed_s"], load_wall_s=wall, load_rate=rep["throughput"],
                       load_ok=rep["ok"], load_errors=rep["errors"],
                       load_p99_ms=rep["latency_ms"].get("p99"),
                       rss_loaded_mb=rss / 1024, hwm_loaded_mb=hwm / 1024)
            if rep["ok"] != n:
                rec["error"] = f"{n - rep['ok']} puts failed: {rep['errors']}"
            print(f"[{server} N={n}] loaded at {rep['throughput']:.0f} keys/s; waiting until idle",
                  file=sys.stderr, flush=True)
            if not self.settled(server, p, log1, guard, n, rec, "settle", ""):
                return rec
            for key in ("/v2/keys/bench/" + "0" * key_size, last_key):
                if self.get(key, timeout=10) != 200:
                    rec["error"] = f"GET {key} failed after the load"
                    return rec
            rec["error"] = self.foreign_writes(n, rec, "after load") or rec["error"]

            snaps, _ = snapshots_in_log(server, read_log(log1))
            dirs, snap_files = data_dir_split(d)
            rec["disk"] = dirs
            rec["data_dir_mb"] = dirs["bytes"] / 1e6
            rec["data_dir_alloc_mb"] = dirs["allocated_bytes"] / 1e6
            rec["snapshots"] = len(snaps)
            if snaps:
                index, took = snaps[-1]
                name = [s for f, s in snap_files if f.endswith(f"-{index:016x}.snap")]
                rec.update(snapshot_index=index, snapshot_ms=took,
                           snapshot_max_ms=max(t for _, t in snaps),
                           snapshot_mb=name[0] / 1e6 if name else None)
            guard.stop()
            self.kill(p)  # SIGKILL

            print(f"[{server} N={n}] killed; restarting", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            p = self.start(server, d, log2)
            guard = Guard(p, limit_kb)
            guard.start()
            up = self.wait_status(p, guard, last_key, deadline_s=max(300, n / 1000))
            if guard.tripped_kb is not None:
                rec["over_limit"] = {"phase": "restart", "rss_mb": guard.tripped_kb / 1024}
                return rec
            if up is None:
                rec["error"] = f"restarted server did not serve {last_key} (see {log2})"
                return rec
            rec["restart_s"] = time.monotonic() - t0
            rss, hwm = proc_status(p.pid)
            if rss is None:
                rec["error"] = f"the restarted server exited (see {log2})"
                return rec
            rec.update(rss_restart_mb=rss / 1024, hwm_restart_mb=hwm / 1024)
            if not self.settled(server, p, log2, guard, n, rec, "restart-settle", "restart_"):
                return rec
            rec["error"] = self.foreign_writes(n, rec, "after restart") or rec["error"]
            return rec
        finally:
            guard.stop()
            self.kill(p)


# (key in the record, label, format, key checked for linear growth and its label). The
# snapshot figures are checked against the growth of the snapshot's raft index (the keys it
# holds, about N less up to a --snapshot-count) instead of N.
FIGURES = [
    ("load_rate", "load rate (keys/s)", "{:,.0f}", "load_s", "load time"),
    ("rss_loaded_mb", "RSS loaded (MB)", "{:,.0f}", "rss_loaded_mb", None),
    ("hwm_loaded_mb", "peak RSS during load (MB)", "{:,.0f}", "hwm_loaded_mb", None),
    ("rss_settled_mb", "RSS loaded, idle (MB)", "{:,.0f}", "rss_settled_mb", None),
    ("rss_restart_mb", "RSS after restart (MB)", "{:,.0f}", "rss_restart_mb", None),
    ("rss_restart_settled_mb", "RSS after restart, idle (MB)", "{:,.0f}",
     "rss_restart_settled_mb", None),
    ("hwm_restart_settled_mb", "peak RSS during restart (MB)", "{:,.0f}",
     "hwm_restart_settled_mb", None),
    ("data_dir_mb", "data dir (MB, as du -sb)", "{:,.1f}", "data_dir_mb", None),
    ("data_dir_alloc_mb", "data dir allocated (MB, as du -s)", "{:,.1f}", "data_dir_alloc_mb",
     None),
    ("restart_s", "restart to serving (s)", "{:,.2f}", "restart_s", None),
    ("snapshot_index", "last snapshot at raft index", "{:,}", None, None),
    ("snapshot_ms", "last snapshot (ms)", "{:,.0f}", "snapshot_ms", None),
    ("snapshot_mb", "last snapshot file (MB)", "{:,.1f}", "snapshot_mb", None),
]


def latest(path):
    """The last record of each (server, N) in the results file."""
    recs = {}
    try:
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    recs[(r["server"], r["n"])] = r
    except FileNotFoundError:
        pass
    return recs


def cell(r, key, fmt):
    if r is None:
        return "not run"
    if r.get("void"):
        return "void"
    if r.get("over_limit"):
        if r.get(key) is not None:  # measured before the guard fired
            return fmt.format(r[key])
        return f"over limit ({r['over_limit']['phase']})"
    v = r.get(key)
    if v is None:
        if key.startswith("snapshot") and r.get("snapshots") == 0:
            return "no snapshot"
        return "failed" if r.get("error") else "–"
    return fmt.format(v)


def report(path, out=sys.stdout):
    recs = latest(path)
    sizes = sorted({n for _, n in recs})
    if not sizes:
        print(f"no results in {path}", file=out)
        return
    print("| figure | N | etcd | oxcd | oxcd/etcd |", file=out)
    print("|---|--:|--:|--:|--:|", file=out)
    for key, label, fmt, ckey, _ in FIGURES:
        for n in sizes:
            e, o = recs.get(("etcd", n)), recs.get(("oxcd", n))
            ratio = ""
            if ckey and e and o and e.get(key) and o.get(key) is not None \
                    and not e.get("void") and not o.get("void"):
                ratio = f"{o[key] / e[key]:.2f}"
            print(f"| {label} | {n:,} | {cell(e, key, fmt)} | {cell(o, key, fmt)} | {ratio} |",
                  file=out)
    for (s, n), r in sorted(recs.items()):
        if r.get("error"):
            print(f"\n{s} N={n}: {r['error']}", file=out)
    print("\noxcd, grows no faster than linearly (figure(N2)/figure(N1) <= 1.1 * N2/N1; for the "
          "snapshot figures, the ratio of the snapshots' raft indexes instead of N2/N1):", file=out)
    for key, label, _, ckey, clabel in FIGURES:
        if ckey is None:
            continue
        clabel = clabel or label.split(" (")[0]
        steps, ok = [], True
        for n1, n2 in zip(sizes, sizes[1:]):
            r1, r2 = recs.get(("oxcd", n1)) or {}, recs.get(("oxcd", n2)) or {}
            r1, r2 = ({} if r1.get("void") else r1), ({} if r2.get("void") else r2)
            v1, v2 = r1.get(ckey), r2.get(ckey)
            # Snapshot figures scale with the keys in the snapshot (its raft index).
            s1, s2 = (r1.get("snapshot_index"), r2.get("snapshot_index")) \
                if key.startswith("snapshot") else (n1, n2)
            if not v1 or v2 is None or not s1 or not s2:
                steps.append(f"{n1:,}->{n2:,} n/a")
                continue
            grew, limit = v2 / v1, 1.1 * s2 / s1
            ok = ok and grew <= limit
            at = f" at index {s1:,}->{s2:,}" if (s1, s2) != (n1, n2) else ""
            steps.append(f"{n1:,}->{n2:,} x{grew:.2f} (limit x{limit:.2f}{at})")
        measured = [s for s in steps if not s.endswith("n/a")]
        verdict = "n/a" if not measured else ("pass" if ok else "FAIL")
        print(f"- {clabel}: {verdict}: " + ("; ".join(steps) or "needs two sizes"), file=out)


def main():
    ap = argparse.ArgumentParser(
        description="Growth curves of etcd and oxcd with the key count (see the module docstring).")
    ap.add_argument("--sizes", default="100000,1000000,5000000")
    ap.add_argument("--etcd", default="/usr/bin/etcd")
    ap.add_argument("--oxcd", default="target/release/oxcd")
    ap.add_argument("--bench", default="target/release/oxcd-bench")
    ap.add_argument("--data-root", default=os.environ.get("TMPDIR", "/tmp"))
    ap.add_argument("--port", type=int, default=26379)
    ap.add_argument("--val-size", type=int, default=64)
    ap.add_argument("--conns", type=int, default=128)
    ap.add_argument("--random-values", action="store_true",
                    help="a fresh random value per key (oxcd-bench --random-values): data the "
                         "servers cannot compress")
    ap.add_argument("--rss-limit-mb", type=int, default=18000)
    ap.add_argument("--out", default="results.jsonl")
    ap.add_argument("--only", choices=["etcd", "oxcd"])
    ap.add_argument("--snapshot-count", type=int, default=None,
                    help="override the default (quick tests only)")
    ap.add_argument("--report", action="store_true", help="print the table of --out and exit")
    a = ap.parse_args()
    if a.report:
        report(a.out)
        return
    if not 0 < a.port < 32767:
        ap.error("--port must be below 32767 (the peer URL uses port+1)")
    sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
    servers = [a.only] if a.only else ["etcd", "oxcd"]
    for s in servers:
        binary = a.etcd if s == "etcd" else a.oxcd
        if not os.access(binary, os.X_OK):
            sys.exit(f"growth.py: {binary} is not executable (build with cargo build --release "
                     "-p oxcd -p oxcd-bench, or pass --etcd/--oxcd)")
    if not os.access(a.bench, os.X_OK):
        sys.exit(f"growth.py: {a.bench} is not executable (cargo build --release -p oxcd-bench)")
    os.makedirs(a.data_root, exist_ok=True)
    runner = Runner(a)
    # SIGTERM/SIGHUP end the run through the finally below, killing the servers.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))
    try:
        for i, n in enumerate(sizes):
            for s in (servers if i % 2 == 0 else servers[::-1]):
                rec = runner.run(s, n)
                with open(a.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                summary = {k: rec.get(k) for k in ("load_rate", "rss_loaded_mb", "data_dir_mb",
                                                   "restart_s", "rss_restart_mb", "snapshot_ms")}
                print(f"[{s} N={n}] " + json.dumps(summary)
                      + (f" over limit: {rec['over_limit']}" if rec["over_limit"] else "")
                      + (f" error: {rec['error']}" if rec["error"] else ""),
                      file=sys.stderr, flush=True)
    finally:
        runner.kill_all()
    report(a.out)


if __name__ == "__main__":
    main()
