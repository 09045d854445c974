//! The peer port survives anything: forged raft messages that used to make raft-rs panic,
//! zero-filled and random bodies, random protobuf messages. Each is sent to every member of
//! a running 3-member cluster, as from a real member of the cluster (the cluster ID is in
//! every client response); afterwards no member has died and writes through every member
//! still work, and the members agree on every acknowledged write.

// raft-rs's protobuf messages are built field by field after `default()`.
#![allow(clippy::field_reassign_with_default)]

use std::path::Path;
use std::time::Duration;

use oxcd_tests::cluster::{check_converged, try_put, Cluster, FAST_TIMING};
use oxcd_tests::request;
use protobuf::Message as _;
use protobuf::ProtobufEnum as _;
use raft::prelude::{Entry, Message, MessageType};

const WAIT: Duration = Duration::from_secs(20);

fn frame(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        let bytes = m.write_to_bytes().expect("encodes");
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

fn message(t: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

/// xorshift64*: reproducible random inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn post(peer_url: &str, path: &str, cluster: &str, from: &str, body: &[u8]) -> u16 {
    match oxcd_tests::ureq::post(&format!("{peer_url}{path}"))
        .timeout(Duration::from_secs(30))
        .set("X-Etcd-Cluster-ID", cluster)
        .set("X-Server-From", from)
        .send_bytes(body)
    {
        Ok(r) => r.status(),
        Err(oxcd_tests::ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("POST {peer_url}{path}: {e}"),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn forged_and_garbage_peer_messages_break_nothing() {
    let mut args = FAST_TIMING.to_vec();
    args.extend_from_slice(&["--snapshot-count", "200"]);
    let mut c = Cluster::start(Path::new(env!("CARGO_BIN_EXE_oxcd")), 3, &args, false);
    let leader = c.wait_leader(&[0, 1, 2], WAIT);
    let r = request(
        &c.members[leader].client_url,
        "PUT",
        "/v2/keys/before",
        Some("value=1"),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let cluster = oxcd_tests::ureq::get(&format!("{}/v2/keys/", c.members[0].client_url))
        .call()
        .expect("GET")
        .header("X-Etcd-Cluster-Id")
        .expect("cluster ID header")
        .to_string();
    let ids: Vec<u64> = c
        .ids
        .iter()
        .map(|h| u64::from_str_radix(h, 16).expect("hex member ID"))
        .collect();
    let term = oxcd_tests::ureq::get(&format!("{}/v2/keys/before", c.members[leader].client_url))
        .call()
        .expect("GET")
        .header("X-Raft-Term")
        .and_then(|t| t.parse::<u64>().ok())
        .expect("X-Raft-Term");
    let mut acked = vec![(
        "before".to_string(),
        "1".to_string(),
        r.etcd_index.expect("index"),
    )];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64);
    println!("seed {}", rng.0);

    for target in 0..3 {
        let to = ids[target];
        let from = ids[(target + 1) % 3];
        let from_hex = c.ids[(target + 1) % 3].clone();
        let peer = c.peer_urls[target].clone();
        // The messages that made raft-rs panic, and their relatives.
        let mut forged = Vec::new();
        forged.push(message(MessageType::MsgPropose, from, to, term));
        let mut hb = message(MessageType::MsgHeartbeat, from, to, term);
        hb.commit = 1_000_000;
        forged.push(hb);
        let mut app = message(MessageType::MsgAppend, from, to, term);
        app.index = 1 << 62;
        app.log_term = 0;
        forged.push(app);
        let mut app = message(MessageType::MsgAppend, from, to, term);
        app.index = 1;
        app.log_term = 1;
        let mut e = Entry::default();
        e.index = 5;
        e.term = term + 7;
        app.entries = vec![e].into();
        forged.push(app);
        forged.push(message(MessageType::MsgReadIndex, from, to, term));
        let mut ack = message(MessageType::MsgAppendResponse, from, to, term);
        ack.index = 1 << 40;
        forged.push(ack);
        forged.push(message(MessageType::MsgHup, from, to, term));
        forged.push(message(MessageType::MsgRequestVote, from, to, u64::MAX));
        forged.push(message(MessageType::MsgHeartbeat, 0xdead, to, term));
        for m in &forged {
            let status = post(
                &peer,
                "/raft",
                &cluster,
                &from_hex,
                &frame(std::slice::from_ref(m)),
            );
            assert!(
                status == 204 || status == 400,
                "{:?}: {status}",
                m.get_msg_type()
            );
        }
        // 60 MiB of zeros: refused at the first frame, without growing the member.
        let pid = c.members[target].pid().expect("running");
        let before = rss_kib(pid);
        let status = post(&peer, "/raft", &cluster, &from_hex, &vec![0u8; 60 << 20]);
        assert!(status == 400 || status == 413, "zeros: {status}");
        let status = post(
            &peer,
            "/raft/snapshot",
            &cluster,
            &from_hex,
            &vec![0u8; 60 << 20],
        );
        assert!(
            status == 400 || status == 413,
            "zeros as a snapshot: {status}"
        );
        let after = rss_kib(pid);
        assert!(
            after < before + 512 * 1024,
            "RSS grew from {before} KiB to {after} KiB"
        );
        // Random bytes, and random messages with every field random.
        for _ in 0..50 {
            let len = rng.below(200) as usize;
            let body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let status = post(&peer, "/raft", &cluster, &from_hex, &body);
            assert!(status == 204 || status == 400, "random bytes: {status}");
        }
        for _ in 0..200 {
            let t = MessageType::from_i32(rng.below(19) as i32).unwrap_or(MessageType::MsgHup);
            let mut m = message(
                t,
                if rng.below(4) == 0 { rng.next() } else { from },
                to,
                rng.next(),
            );
            m.index = rng.next();
            m.log_term = rng.next();
            m.commit = rng.next();
            m.reject = rng.below(2) == 0;
            m.entries = (0..rng.below(3))
                .map(|_| {
                    let mut e = Entry::default();
                    e.index = rng.next();
                    e.term = rng.next();
                    e.data = (0..rng.below(16))
                        .map(|_| rng.next() as u8)
                        .collect::<Vec<_>>()
                        .into();
                    e
                })
                .collect::<Vec<_>>()
                .into();
            let status = post(&peer, "/raft", &cluster, &from_hex, &frame(&[m]));
            assert!(status == 204 || status == 400, "random message: {status}");
        }
        // Nobody died, and writes still go through every member.
        for (i, m) in c.members.iter_mut().enumerate() {
            assert!(
                m.is_alive(),
                "member {i} died after the messages to member {target}; log:\n{}",
                m.log()
            );
        }
        for (i, m) in c.members.iter().enumerate() {
            let key = format!("after{target}/via{i}");
            // Forged terms may have forced an election: writes work again once it is over.
            let deadline = std::time::Instant::now() + WAIT;
            let idx = loop {
                if let Some(idx) = try_put(&m.client_url, &key, "v", WAIT) {
                    break idx;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no write through member {i}; log:\n{}",
                    m.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            };
            acked.push((key, "v".to_string(), idx));
        }
    }
    let last = acked.iter().map(|a| a.2).max().unwrap();
    let listings = c.listings(&[0, 1, 2], last, WAIT);
    check_converged(&listings, &acked);
    assert!(
        c.members
            .iter()
            .any(|m| m.log().contains("raft: dropped a peer message")),
        "the forged messages were not reported"
    );
}
