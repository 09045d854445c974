#!/usr/bin/env python3
"""Recovery measurement (durability issue): load N keys of 256 bytes through the v2 API with 32
keep-alive clients, SIGKILL the server, restart it, and report load rate, data dir size,
restart-to-serving time (until the last key reads back), RSS when loaded (and its peak during
the load) and RSS after restart. Use ports below 32768 (outside Linux's ephemeral range).

usage: bench/recovery.py N BINARY CLIENT_PORT DATA_DIR   (BINARY = /usr/bin/etcd or target/release/oxcd)
"""
import http.client, threading, sys, time, subprocess, os, shutil, urllib.parse
N=int(sys.argv[1]); binary=sys.argv[2]; port=int(sys.argv[3]); d=sys.argv[4]
def start():
    args=[binary,"--name","default","--data-dir",d,"--enable-v2=true","--snapshot-count","10000",
      "--listen-client-urls",f"http://127.0.0.1:{port}","--advertise-client-urls",f"http://127.0.0.1:{port}",
      "--listen-peer-urls",f"http://127.0.0.1:{port+1}","--initial-advertise-peer-urls",f"http://127.0.0.1:{port+1}",
      "--initial-cluster",f"default=http://127.0.0.1:{port+1}"]
    log=open(d.rstrip("/")+".log","ab")
    return subprocess.Popen(args,stdout=subprocess.DEVNULL,stderr=log)
def wait_key(key):
    t=time.time()
    while time.time()-t<120:
        try:
            c=http.client.HTTPConnection("127.0.0.1",port,timeout=2); c.request("GET","/v2/keys/"+key); r=c.getresponse(); r.read()
            if r.status==200: return time.time()-t
        except Exception: pass
        time.sleep(0.01)
    return None
shutil.rmtree(d,ignore_errors=True)
p=start(); wait_key("") ; time.sleep(0.5)
val="v"*256; body=urllib.parse.urlencode({"value":val})
def worker(i0,step):
    c=http.client.HTTPConnection("127.0.0.1",port,timeout=30)
    for i in range(i0,N,step):
        c.request("PUT",f"/v2/keys/k/{i:08d}",body,{"Content-Type":"application/x-www-form-urlencoded"}); c.getresponse().read()
t=time.time(); ts=[threading.Thread(target=worker,args=(i,32)) for i in range(32)]
[x.start() for x in ts]; [x.join() for x in ts]; load=time.time()-t
st=open(f"/proc/{p.pid}/status").read()
rss_loaded=int(st.split("VmRSS:")[1].split()[0]); hwm_loaded=int(st.split("VmHWM:")[1].split()[0])
p.kill(); p.wait()
size=int(subprocess.check_output(["du","-sb",d]).split()[0])
t0=time.time(); p=start(); rec=wait_key(f"k/{N-1:08d}"); 
rss=int(open(f"/proc/{p.pid}/status").read().split("VmRSS:")[1].split()[0])
p.kill(); p.wait()
print(f"{os.path.basename(binary)}: load {N} keys {load:.1f}s ({N/load:.0f}/s), RSS loaded {rss_loaded/1024:.0f} MB (peak {hwm_loaded/1024:.0f} MB), data dir {size/1e6:.1f} MB, restart-to-serving {rec:.2f}s, RSS after restart {rss/1024:.0f} MB")
