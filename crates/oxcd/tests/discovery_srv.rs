//! `--discovery-srv`: three members bootstrap from DNS SRV records served by a real DNS
//! server (Debian's dnsmasq) in a network and mount namespace of their own, whose
//! `/etc/resolv.conf` names it — the lookup itself is not mocked. Expected behaviour is
//! etcd's (`embed.Config.PeerURLsMapAndToken`, `srv.GetCluster`): the records of
//! `_etcd-server._tcp.<domain>` (and `-ssl`, `-<srv-name>`) are the initial cluster, a
//! member finds itself by resolved address and port, a member not in the records exits with
//! `cannot find local etcd member "<name>" in SRV records`, and clients find the members
//! with etcdctl's own `--discovery-srv` (`_etcd-client._tcp`); a proxy with `--discovery-srv`
//! takes its peers from the same records.

use std::path::Path;
use std::process::Command;

const SCRIPT: &str = r#"
set -u
T="$1"; OXCD="$2"
ip link set lo up
mount --bind "$T/resolv.conf" /etc/resolv.conf
# The members' names and the records that point at them; infra3 has an address but no SRV.
REC=""
for i in 0 1 2; do
  REC="$REC --host-record=infra$i.example.com,127.0.0.1$i"
  REC="$REC --srv-host=_etcd-server._tcp.example.com,infra$i.example.com,2380,0,0"
  REC="$REC --srv-host=_etcd-client._tcp.example.com,infra$i.example.com,2379,0,0"
done
REC="$REC --host-record=infra3.example.com,127.0.0.13"
REC="$REC --host-record=solo.other.test,127.0.0.20"
REC="$REC --srv-host=_etcd-server-custom._tcp.other.test,solo.other.test,2380,0,0"
dnsmasq --keep-in-foreground --no-resolv --no-hosts --user=root --listen-address=127.0.0.1 \
  --bind-interfaces --port=53 $REC >"$T/dnsmasq.log" 2>&1 &
for _ in $(seq 1 100); do
  getent hosts infra0.example.com >/dev/null 2>&1 && break; sleep 0.05
done
start() { # name ip [extra...]
  n="$1"; ip="$2"; shift 2
  "$OXCD" --name "$n" --data-dir "$T/$n" --discovery-srv example.com \
    --initial-advertise-peer-urls "http://$n.example.com:2380" --listen-peer-urls "http://$ip:2380" \
    --listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$n.example.com:2379" \
    --heartbeat-interval 50 --election-timeout 500 "$@" >"$T/$n.log" 2>&1 &
}
for i in 0 1 2; do start infra$i 127.0.0.1$i; done
ok=""
for _ in $(seq 1 200); do
  out=$(ETCDCTL_API=2 etcdctl --discovery-srv example.com --insecure-discovery member list 2>/dev/null)
  if [ "$(echo "$out" | grep -c 'name=infra')" = 3 ]; then ok=1; break; fi
  sleep 0.1
done
echo "MEMBERS_BEGIN"; echo "$out"; echo "MEMBERS_END"
ETCDCTL_API=2 etcdctl --discovery-srv example.com --insecure-discovery set /srv/k v >/dev/null 2>&1
echo "GET $(curl -s http://127.0.0.12:2379/v2/keys/srv/k?quorum=true)"
# A proxy bootstrapped by the same records forwards to the members.
"$OXCD" --proxy on --discovery-srv example.com --data-dir "$T/proxy" \
  --listen-client-urls http://127.0.0.30:2379 >"$T/proxy.log" 2>&1 &
p=""
for _ in $(seq 1 100); do
  p=$(curl -s http://127.0.0.30:2379/v2/keys/srv/k 2>/dev/null) && echo "$p" | grep -q '"value"' && break; sleep 0.1
done
echo "PROXY $p"
# Not in the records: refused.
"$OXCD" --name infra3 --data-dir "$T/infra3" --discovery-srv example.com \
  --initial-advertise-peer-urls http://infra3.example.com:2380 --listen-peer-urls http://127.0.0.13:2380 \
  --listen-client-urls http://127.0.0.13:2379 --advertise-client-urls http://127.0.0.13:2379 >"$T/infra3.log" 2>&1
echo "INFRA3_EXIT $?"
echo "INFRA3_LOG $(tail -1 "$T/infra3.log")"
# --discovery-srv-name: the records of _etcd-server-custom._tcp.
"$OXCD" --name solo --data-dir "$T/solo" --discovery-srv other.test --discovery-srv-name custom \
  --initial-advertise-peer-urls http://solo.other.test:2380 --listen-peer-urls http://127.0.0.20:2380 \
  --listen-client-urls http://127.0.0.20:2379 --advertise-client-urls http://127.0.0.20:2379 >"$T/solo.log" 2>&1 &
solo=""
for _ in $(seq 1 100); do
  solo=$(curl -s http://127.0.0.20:2379/v2/members 2>/dev/null) && [ -n "$solo" ] && break; sleep 0.1
done
echo "SOLO $solo"
kill $(jobs -p) 2>/dev/null
wait 2>/dev/null
echo "DONE"
"#;

#[test]
fn three_members_bootstrap_from_dns_srv_records() {
    let oxcd = Path::new(env!("CARGO_BIN_EXE_oxcd"));
    let dir = oxcd_tests::TempDir::new("srv");
    std::fs::write(dir.0.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    let script = dir.0.join("srv.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--fork", "bash"])
        .arg(&script)
        .arg(&dir.0)
        .arg(oxcd)
        .output()
        .expect("unshare runs (util-linux; the tests run as root, as CI does)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let logs = |name: &str| std::fs::read_to_string(dir.0.join(name)).unwrap_or_default();
    let context = format!(
        "stdout:\n{stdout}\nstderr:\n{}\ndnsmasq:\n{}\ninfra0:\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs("dnsmasq.log"),
        logs("infra0.log")
    );
    assert!(stdout.contains("DONE"), "{context}");
    // etcdctl found the members through _etcd-client._tcp, and they are the three of the
    // server records, under their names and the records' URLs.
    let members: Vec<&str> = stdout
        .split("MEMBERS_BEGIN\n")
        .nth(1)
        .and_then(|s| s.split("MEMBERS_END").next())
        .unwrap_or("")
        .lines()
        .collect();
    assert_eq!(members.len(), 3, "{context}");
    for i in 0..3 {
        let want = format!(
            "name=infra{i} peerURLs=http://infra{i}.example.com:2380 clientURLs=http://infra{i}.example.com:2379"
        );
        assert!(
            members.iter().any(|l| l.contains(&want)),
            "no `{want}`: {context}"
        );
    }
    assert!(
        stdout.contains(r#""key":"/srv/k","value":"v""#),
        "a write through one member is read on another: {context}"
    );
    for i in 0..3 {
        let log = logs(&format!("infra{i}.log"));
        assert!(
            log.contains(&format!(
                "got bootstrap from DNS for etcd-server at infra{i}=http://infra{i}.example.com:2380"
            )),
            "infra{i}:\n{log}"
        );
    }
    assert!(
        stdout.contains(r#"PROXY {"action":"get","node":{"key":"/srv/k","value":"v""#),
        "a --discovery-srv proxy: {context}\nproxy:\n{}",
        logs("proxy.log")
    );
    assert!(stdout.contains("INFRA3_EXIT 1"), "{context}");
    assert!(
        stdout.contains(r#"cannot find local etcd member "infra3" in SRV records"#),
        "{context}"
    );
    assert!(
        stdout.contains(r#""name":"solo","peerURLs":["http://solo.other.test:2380"]"#),
        "--discovery-srv-name: {context}"
    );
}
