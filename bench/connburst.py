#!/usr/bin/env python3
"""Connection burst: open N client connections at once to a freshly started one-member
server and time until every connect completed (a listen backlog smaller than the burst makes
the overflow wait for SYN retries, a second or more each). Binaries run one after another.

usage: bench/connburst.py N BINARY [BINARY...]
"""
import os, selectors, shutil, socket, subprocess, sys, tempfile, time, http.client

N = int(sys.argv[1])
for k, binary in enumerate(sys.argv[2:]):
    port = 43000 + 10 * k
    d = tempfile.mkdtemp(prefix="connburst-")
    p = subprocess.Popen([binary, "--data-dir", f"{d}/data", "--enable-v2=true",
        "--listen-client-urls", f"http://127.0.0.1:{port}", "--advertise-client-urls", f"http://127.0.0.1:{port}",
        "--listen-peer-urls", f"http://127.0.0.1:{port+1}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{port+1}",
        "--initial-cluster", f"default=http://127.0.0.1:{port+1}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1); c.request("GET", "/version"); c.getresponse().read(); break
            except Exception:
                time.sleep(0.05)
        sel = selectors.DefaultSelector()
        socks = []
        t0 = time.time()
        for _ in range(N):
            s = socket.socket(); s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            sel.register(s, selectors.EVENT_WRITE)
            socks.append(s)
        pending, slowest = N, 0.0
        while pending and time.time() - t0 < 60:
            for key, _ in sel.select(timeout=1):
                sel.unregister(key.fileobj); pending -= 1
        took = time.time() - t0
        # A connect that completed only after a SYN retry shows up as the total time.
        print(f"{os.path.basename(binary)}: {N} connects in {took:.2f}s ({pending} unfinished)", flush=True)
        for s in socks:
            s.close()
    finally:
        p.kill(); p.wait(); shutil.rmtree(d, ignore_errors=True)
