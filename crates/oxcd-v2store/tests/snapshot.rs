//! The snapshot encoding: the binary format, the text format before it, the old nested
//! JSON, and damaged data.

use std::time::{Duration, SystemTime};

use oxcd_api::v2::ErrorCode;
use oxcd_v2store::{compress_snapshot, RunCache, Saved, Store, TtlOptions};

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

const P: TtlOptions = TtlOptions {
    expire_time: None,
    refresh: false,
};

/// A small store with a bit of everything: keys, directories, hidden names, TTLs,
/// strings that need escaping.
fn sample() -> Store {
    let mut s = Store::new(&["/0", "/1"]);
    let ttl = TtlOptions {
        expire_time: Some(now() + Duration::new(5, 250)),
        refresh: false,
    };
    s.set("/1/a", false, "1", P, now()).unwrap();
    s.set(
        "/1/d/e/f",
        false,
        "line\nquote\"back\\slash\u{1}é😀",
        ttl,
        now(),
    )
    .unwrap();
    s.set("/1/empty", true, "", P, now()).unwrap();
    s.set("/1/_hidden", false, "h", P, now()).unwrap();
    s.set("/1/sp ace/[x]", false, "", P, now()).unwrap();
    s
}

/// What a store holds, in a form that does not depend on hash-map order.
fn dump(s: &Store) -> (u64, String, bool) {
    let listing = s.get("/", true, true, now()).unwrap();
    let hidden = s.get("/1/_hidden", false, false, now()).unwrap();
    (
        s.index(),
        format!(
            "{}{}",
            serde_json::to_string(&listing).unwrap(),
            serde_json::to_string(&hidden).unwrap()
        ),
        s.has_ttl_keys(),
    )
}

/// Format 2 records, written field by field as the format describes (not by the code under
/// test), for well-formed and inconsistent trees.
struct V2 {
    out: Vec<u8>,
}

impl V2 {
    fn new(index: u64) -> V2 {
        let mut v = V2 {
            out: b"oxcd-v2store snapshot 2\n".to_vec(),
        };
        v.varint(index);
        v
    }
    fn varint(&mut self, mut n: u64) -> &mut V2 {
        while n >= 0x80 {
            self.out.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.out.push(n as u8);
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut V2 {
        self.varint(b.len() as u64);
        self.out.extend_from_slice(b);
        self
    }
    fn dir(&mut self, name: &str, created: u64, children: u64) -> &mut V2 {
        self.bytes(name.as_bytes()).varint(created).varint(0);
        self.out.push(1);
        self.varint(children)
    }
    fn key(&mut self, name: &str, created: u64, modified: u64, value: &str) -> &mut V2 {
        self.bytes(name.as_bytes())
            .varint(created)
            .varint(modified - created);
        self.out.push(0);
        self.bytes(value.as_bytes())
    }
    fn key_with_expiry(&mut self, name: &str, secs: i64, nanos: u64) -> &mut V2 {
        self.bytes(name.as_bytes()).varint(1).varint(0);
        self.out.push(2);
        self.varint(((secs << 1) ^ (secs >> 63)) as u64)
            .varint(nanos);
        self.bytes(b"v")
    }
    fn raw(&mut self, b: &[u8]) -> &mut V2 {
        self.out.extend_from_slice(b);
        self
    }
    fn done(&self) -> Vec<u8> {
        let crc = crc32c::crc32c(&self.out);
        [self.out.as_slice(), &crc.to_le_bytes()].concat()
    }
}

#[test]
fn the_binary_format_round_trips_and_is_compact() {
    let s = sample();
    let data = s.save();
    assert!(data.starts_with(b"oxcd-v2store snapshot 2\n"));
    let mut r = Store::new(&["/0", "/1"]);
    r.recovery(&data).unwrap();
    assert_eq!(dump(&r), dump(&s));
    // Saved again: the same bytes, less any difference of hash order (same length).
    assert_eq!(r.save().len(), data.len());
    // The TTL (with its nanoseconds) came back.
    r.delete_expired_keys(now() + Duration::new(5, 249));
    assert!(r.get("/1/d/e/f", false, false, now()).is_ok());
    r.delete_expired_keys(now() + Duration::new(5, 250));
    assert_eq!(
        r.get("/1/d/e/f", false, false, now()).unwrap_err().code,
        ErrorCode::KeyNotFound
    );

    // A key `/1/k00001`..: its 6-byte name, its 64-byte value and 5 bytes (name and value
    // lengths, created index and modified delta — one byte each below 128 — and flags).
    let mut big = Store::new(&["/0", "/1"]);
    let value = "v".repeat(64);
    let empty = big.save().len();
    for i in 0..100 {
        big.set(&format!("/1/k{i:05}"), false, &value, P, now())
            .unwrap();
    }
    let per_key = (big.save().len() - empty) as f64 / 100.0;
    assert_eq!(per_key, 6.0 + 64.0 + 5.0, "bytes per key");
}

/// A store of `n` keys like a service registry's: JSON values sharing most of their text.
fn registry(n: usize) -> Store {
    let mut s = Store::new(&["/0", "/1"]);
    for i in 0..n {
        let value = format!(
            "{{\"host\":\"10.0.{}.{}\",\"port\":{},\"weight\":10,\"zone\":\"eu-west-1\"}}",
            i / 250,
            i % 250,
            8000 + i % 100
        );
        s.set(&format!("/1/services/api/{i:06}"), false, &value, P, now())
            .unwrap();
    }
    s
}

#[test]
fn a_store_rewritten_in_place_round_trips() {
    // Siblings are written in memory order, not table order: keys whose values were
    // replaced (new allocations), deleted and re-created, at several depths, all come back.
    let mut s = Store::new(&["/0", "/1"]);
    s.set("/1/_hidden", false, "h", P, now()).unwrap();
    for d in 0..3 {
        for i in 0..500 {
            s.set(&format!("/1/d{d}/k{i:04}"), false, "first", P, now())
                .unwrap();
            if i % 50 == 0 {
                s.set(&format!("/1/d{d}/sub{i}/deep/k"), false, "x", P, now())
                    .unwrap();
            }
        }
    }
    for d in 0..3 {
        for i in (0..500).step_by(3) {
            let value = format!("second value of {d}/{i}, longer than the first");
            s.set(&format!("/1/d{d}/k{i:04}"), false, &value, P, now())
                .unwrap();
        }
        for i in (0..500).step_by(7) {
            s.delete(&format!("/1/d{d}/k{i:04}"), false, false, now())
                .unwrap();
        }
        for i in (0..500).step_by(14) {
            s.set(&format!("/1/d{d}/k{i:04}"), false, "again", P, now())
                .unwrap();
        }
    }
    let data = s.save();
    // Nothing changed in between: the same bytes.
    assert_eq!(s.save(), data);
    let mut r = Store::new(&["/0", "/1"]);
    r.recovery(&data).unwrap();
    assert_eq!(dump(&r), dump(&s));
    assert_eq!(r.save().len(), data.len());
    let deleted = r.get("/1/d1/k0007", false, false, now()).unwrap_err();
    assert_eq!(deleted.code, ErrorCode::KeyNotFound);
    let again = r.get("/1/d2/k0014", false, false, now()).unwrap();
    assert_eq!(again.node.unwrap().value.as_deref(), Some("again"));
}

/// Checks that `packed` is a compressed format (`version`) at least 3 times smaller than
/// `plain`, and restores a store from it.
fn restore_compressed(packed: &[u8], plain: &[u8], version: u8) -> Store {
    let mut header = b"oxcd-v2store snapshot ".to_vec();
    header.extend_from_slice(&[version, b'\n']);
    assert!(packed.starts_with(&header));
    assert!(
        packed.len() * 3 < plain.len(),
        "{} of {}",
        packed.len(),
        plain.len()
    );
    let mut r = Store::new(&["/0", "/1"]);
    r.recovery(packed).unwrap();
    r
}

#[test]
fn format_3_is_format_2_compressed_and_round_trips() {
    let s = registry(2000);
    let plain = s.save();
    let packed = compress_snapshot(plain.clone());
    let r = restore_compressed(&packed, &plain, b'3');
    assert_eq!(r.index(), s.index());
    assert_eq!(r.save().len(), plain.len());
    let a = r
        .get("/1/services/api/001999", false, false, now())
        .unwrap();
    assert_eq!(
        a.node.unwrap().value.as_deref(),
        Some("{\"host\":\"10.0.7.249\",\"port\":8099,\"weight\":10,\"zone\":\"eu-west-1\"}")
    );
    // What compression would not shrink, or what is not format 2, stays as it is.
    let tiny = Store::new(&[]).save();
    assert_eq!(compress_snapshot(tiny.clone()), tiny);
    assert_eq!(compress_snapshot(b"other".to_vec()), b"other".to_vec());
}

/// Every truncation of a compressed snapshot is an error, and so is every single-bit flip
/// but those that decode to the same tree (a flipped bit in an LZ4 block may point a match at
/// other bytes equal to the right ones, which the checksums, of the decompressed bytes,
/// accept). `r` is left as it was.
fn refuses_damage(packed: &[u8], r: &mut Store) {
    for len in 0..packed.len() {
        assert!(r.recovery(&packed[..len]).is_err(), "truncated to {len}");
    }
    let listing = |s: &Store| {
        let all = s.get("/", true, true, now()).unwrap();
        (s.index(), serde_json::to_string(&all).unwrap())
    };
    let mut original = Store::new(&[]);
    original.recovery(packed).unwrap();
    let original = listing(&original);
    let before = dump(r);
    for bit in 0..packed.len() * 8 {
        let mut flipped = packed.to_vec();
        flipped[bit / 8] ^= 1 << (bit % 8);
        if r.recovery(&flipped).is_ok() {
            assert_eq!(listing(r), original, "bit {bit} flipped");
            *r = sample();
        }
    }
    assert_eq!(dump(r), before);
}

#[test]
fn damaged_format_3_snapshots_are_errors_not_panics() {
    let packed = compress_snapshot(registry(50).save());
    assert!(packed.starts_with(b"oxcd-v2store snapshot 3\n"));
    let mut r = sample();
    let before = dump(&r);
    refuses_damage(&packed, &mut r);
    // A length no LZ4 block of this size could hold is refused before allocating it.
    let mut huge = b"oxcd-v2store snapshot 3\n".to_vec();
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    huge.extend_from_slice(&[0x10, b'x']);
    let e = r.recovery(&huge).unwrap_err();
    assert!(e.to_string().contains("impossible"), "{e}");
    assert_eq!(dump(&r), before);
}

#[test]
fn format_4_is_format_2_compressed_in_blocks_and_round_trips() {
    // 20,000 keys: several blocks, and a directory big enough for the bucketed walk.
    let s = registry(20_000);
    let plain = s.save();
    let packed = s.save_compressed();
    let r = restore_compressed(&packed, &plain, b'4');
    let listing = |s: &Store| serde_json::to_string(&s.get("/", true, true, now()).unwrap());
    assert_eq!(listing(&r).unwrap(), listing(&s).unwrap());
    assert_eq!(r.save().len(), plain.len());
    // The sample's TTL, escapes, hidden and empty names survive too.
    let mut r = Store::new(&[]);
    r.recovery(&sample().save_compressed()).unwrap();
    assert_eq!(dump(&r), dump(&sample()));
    Store::check_snapshot(&packed).unwrap();
}

#[test]
fn damaged_format_4_snapshots_are_errors_not_panics() {
    let packed = registry(50).save_compressed();
    let mut r = sample();
    let before = dump(&r);
    refuses_damage(&packed, &mut r);
    assert_eq!(dump(&r), before);
    // Bytes after the last block, and a block longer than LZ4 could expand to.
    let mut trailing = packed.clone();
    trailing.push(0);
    assert!(r.recovery(&trailing).is_err());
    let mut huge = b"oxcd-v2store snapshot 4\n".to_vec();
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    huge.extend_from_slice(&[0, 0, 0, 0, 0x01, b'x', 0x00]);
    let e = r.recovery(&huge).unwrap_err();
    assert!(e.to_string().contains("impossible"), "{e}");
    assert_eq!(dump(&r), before);
}

/// xorshift64: a fixed sequence, no dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Random writes of every kind to two big directories (runs) and a small one.
fn churn(s: &mut Store, rng: &mut u64, n: usize) {
    let ttl = TtlOptions {
        expire_time: Some(now() + Duration::from_secs(60)),
        refresh: false,
    };
    for _ in 0..n {
        let r = next(rng);
        let dir = ["a", "b", "small"][(r % 3) as usize];
        let key = format!("/1/{dir}/{:06}", (r >> 8) % 24_000);
        let _ = match (r >> 40) % 10 {
            0 => s.set(&key, false, "replaced", P, now()),
            1 => s.update(&key, "updated", P, now()),
            2 => s.delete(&key, false, false, now()),
            3 => s.compare_and_swap(&key, "", 0, "swapped", P, now()),
            4 => s.update(&key, "", ttl, now()),
            5 => s.create(&format!("/1/{dir}"), false, "in order", true, P, now()),
            6 => s.set(&format!("/1/{dir}/sub{}", r % 5), true, "", P, now()),
            7 => s.compare_and_delete(&key, "", 0, now()),
            8 => {
                // Keys given a TTL above expire.
                s.delete_expired_keys(now() + Duration::from_secs(61));
                continue;
            }
            _ => s.set(
                &format!("{key}x"),
                false,
                &"z".repeat((r % 300) as usize),
                P,
                now(),
            ),
        };
    }
}

#[test]
fn snapshots_that_reuse_unchanged_runs_are_the_snapshots_encoded_afresh() {
    let mut s = Store::new(&["/0", "/1"]);
    for i in 0..20_000 {
        s.set(&format!("/1/a/{i:06}"), false, "v", P, now())
            .unwrap();
    }
    for i in 0..6_000 {
        s.set(&format!("/1/b/{i:06}"), false, "w", P, now())
            .unwrap();
    }
    let mut cache = RunCache::default();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let (mut reused, mut read) = (0, 0);
    for round in 0..10 {
        let saved = s.save_reusing(&cache, oxcd_v2store::begin_snapshot());
        reused += saved.reused_keys;
        read += saved.keys_read;
        // Through the bytes that cross the snapshot child's pipe.
        let saved = Saved::from_bytes(saved.into_bytes()).unwrap();
        assert_eq!(saved.index(), s.index());
        let data = cache.remember(saved).unwrap();
        // Byte for byte what encoding every key gives.
        assert!(data == s.save_compressed(), "round {round}");
        let mut r = Store::new(&[]);
        r.recovery(&data).unwrap();
        let listing = |s: &Store| serde_json::to_string(&s.get("/", true, true, now()).unwrap());
        assert_eq!(listing(&r).unwrap(), listing(&s).unwrap(), "round {round}");
        churn(&mut s, &mut rng, 40);
    }
    // Most keys did not change between snapshots: their blocks were copied, and after the
    // first snapshot most were not even read (the store tracks which spans changed).
    assert!(reused > 100_000, "{reused} keys reused");
    assert!(read < 26_000 + 100_000, "{read} keys read");
}

#[test]
fn a_restored_store_reuses_nothing_of_the_snapshots_before() {
    let mut s = registry(10_000);
    let mut cache = RunCache::default();
    cache
        .remember(s.save_reusing(&cache, oxcd_v2store::begin_snapshot()))
        .unwrap();
    assert!(
        s.save_reusing(&cache, oxcd_v2store::begin_snapshot())
            .reused_keys
            >= 9_000
    );
    // The same keys at other indexes, restored into the same store: a cache that trusted
    // addresses and indexes alone could splice the old blocks in.
    let mut other = Store::new(&["/0", "/1"]);
    other.set("/1/first", false, "x", P, now()).unwrap();
    for i in 0..10_000 {
        other
            .set(&format!("/1/services/api/{i:06}"), false, "other", P, now())
            .unwrap();
    }
    s.recovery(&other.save()).unwrap();
    let saved = s.save_reusing(&cache, oxcd_v2store::begin_snapshot());
    assert_eq!(saved.reused_keys, 0);
    assert!(cache.remember(saved).unwrap() == s.save_compressed());
    // A snapshot names the blocks it reuses: only the cache it was encoded against has them.
    let s2 = registry(10_000);
    let mut c2 = RunCache::default();
    c2.remember(s2.save_reusing(&c2, oxcd_v2store::begin_snapshot()))
        .unwrap();
    let saved = s2.save_reusing(&c2, oxcd_v2store::begin_snapshot());
    assert!(saved.reused_keys >= 9_000);
    assert!(RunCache::default().remember(saved).is_err());
    // Malformed pipe bytes are an error.
    assert!(Saved::from_bytes(vec![1, 2, 3]).is_err());
    let mut bytes = s.save_reusing(&RunCache::default(), 0).into_bytes();
    let at = bytes.len() - 8;
    bytes[at] ^= 1;
    assert!(Saved::from_bytes(bytes).is_err());
}

#[test]
fn a_handwritten_format_2_snapshot_is_read() {
    let data = V2::new(7)
        .dir("", 0, 2)
        .dir("1", 0, 2)
        .key("a", 3, 7, "x\ny")
        .key_with_expiry("t", 1_800_000_005, 5)
        .dir("0", 0, 0)
        .done();
    let mut r = Store::new(&["/0", "/1"]);
    r.recovery(&data).unwrap();
    assert_eq!(r.index(), 7);
    let a = r.get("/1/a", false, false, now()).unwrap().node.unwrap();
    assert_eq!(
        (a.value.as_deref(), a.created_index, a.modified_index),
        (Some("x\ny"), 3, 7)
    );
    assert!(r.has_ttl_keys());
    r.delete_expired_keys(now() + Duration::new(5, 4));
    assert!(r.get("/1/t", false, false, now()).is_ok());
    r.delete_expired_keys(now() + Duration::new(5, 5));
    assert!(r.get("/1/t", false, false, now()).is_err());
}

#[test]
fn format_1_text_snapshots_are_still_read() {
    // What builds before the binary format wrote: one JSON array a node.
    let body = "oxcd-v2store snapshot 1\n{\"index\":5}\n[\"\",0,0,null,2]\n[\"0\",0,0,null,0]\n\
                [\"1\",0,0,null,2]\n[\"a\",2,4,null,\"line\\nquote\\\"é\"]\n\
                [\"d\",3,3,null,1]\n[\"t\",5,5,[1800000005,250],\"\"]\n";
    let crc = crc32c::crc32c(body.as_bytes());
    let data = format!("{body}crc32c {crc:08x}\n");
    let mut r = Store::new(&["/0", "/1"]);
    r.recovery(data.as_bytes()).unwrap();
    assert_eq!(r.index(), 5);
    let a = r.get("/1/a", false, false, now()).unwrap().node.unwrap();
    assert_eq!(
        (a.value.as_deref(), a.created_index, a.modified_index),
        (Some("line\nquote\"é"), 2, 4)
    );
    r.delete_expired_keys(now() + Duration::new(5, 249));
    assert!(r.get("/1/d/t", false, false, now()).is_ok());
    r.delete_expired_keys(now() + Duration::new(5, 250));
    assert!(r.get("/1/d/t", false, false, now()).is_err());
    // Saved again, it is in the current format.
    assert!(r.save().starts_with(b"oxcd-v2store snapshot 2\n"));
}
#[test]
fn the_old_nested_json_format_is_still_read() {
    // What `save` wrote before the flat format (serde_json of the node tree).
    let old = r#"{"index":3,"root":{"created_index":0,"modified_index":0,"value":"","expire":null,"children":{"0":{"created_index":0,"modified_index":0,"value":"","expire":null,"children":{}},"1":{"created_index":0,"modified_index":0,"value":"","expire":null,"children":{"foo":{"created_index":2,"modified_index":3,"value":"bar","expire":{"secs_since_epoch":1800000005,"nanos_since_epoch":0},"children":null},"dir":{"created_index":1,"modified_index":1,"value":"","expire":null,"children":{}}}}}}}"#;
    let mut r = Store::new(&["/0", "/1"]);
    r.recovery(old.as_bytes()).unwrap();
    assert_eq!(r.index(), 3);
    let foo = r.get("/1/foo", false, false, now()).unwrap().node.unwrap();
    assert_eq!(
        (foo.value.as_deref(), foo.ttl, foo.created_index),
        (Some("bar"), 5, 2)
    );
    assert!(
        r.get("/1/dir", false, false, now())
            .unwrap()
            .node
            .unwrap()
            .dir
    );
    r.delete_expired_keys(now() + Duration::from_secs(5));
    assert!(r.get("/1/foo", false, false, now()).is_err());
    // Saved again, it is in the current format.
    assert!(r.save().starts_with(b"oxcd-v2store snapshot 2\n"));
}

#[test]
fn unknown_or_damaged_snapshots_are_errors() {
    let data = sample().save();
    let mut r = sample();
    let before = dump(&r);
    let mut other_version = data.clone();
    other_version[b"oxcd-v2store snapshot ".len()] = b'5';
    let bad: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"garbage".to_vec(),
        b"oxcd-v2store snapshot 1\n".to_vec(),
        b"oxcd-v2store snapshot 2\n".to_vec(),
        other_version.clone(),
        data[..data.len() - 1].to_vec(),
        [data.as_slice(), b"x"].concat(),
        b"{\"index\":1,\"root\":{".to_vec(),
    ];
    for b in &bad {
        assert!(r.recovery(b).is_err(), "{:?}", String::from_utf8_lossy(b));
    }
    let e = r.recovery(&other_version).unwrap_err();
    assert!(e.to_string().contains("format 5"), "{e}");
    // Every truncation and every single-bit flip: an error (or, by chance, a valid
    // snapshot), never a panic. A failed recovery leaves the store as it was.
    for len in 0..data.len() {
        assert!(r.recovery(&data[..len]).is_err(), "truncated to {len}");
    }
    for bit in 0..data.len() * 8 {
        let mut flipped = data.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(r.recovery(&flipped).is_err(), "bit {bit} flipped");
    }
    assert_eq!(dump(&r), before);
}

#[test]
fn well_formed_but_inconsistent_binary_trees_are_errors() {
    // Records that parse but do not make a tree, each with a valid checksum.
    let cases: Vec<Vec<u8>> = vec![
        // Fewer children than announced, more, a duplicate, a nameless or slashed child,
        // a named root, a key as root, nanoseconds out of range, unknown flags, a value
        // that is not UTF-8, a length past the end, no tree at all.
        V2::new(1).dir("", 0, 2).key("a", 1, 1, "v").done(),
        V2::new(1)
            .dir("", 0, 1)
            .key("a", 1, 1, "v")
            .key("b", 1, 1, "v")
            .done(),
        V2::new(1)
            .dir("", 0, 2)
            .key("a", 1, 1, "v")
            .key("a", 1, 1, "v")
            .done(),
        V2::new(1).dir("", 0, 1).key("", 1, 1, "v").done(),
        V2::new(1).dir("", 0, 1).key("a/b", 1, 1, "v").done(),
        V2::new(1).dir("r", 0, 0).done(),
        V2::new(1).key("", 0, 0, "v").done(),
        V2::new(1)
            .dir("", 0, 1)
            .key_with_expiry("a", 5, 1_000_000_000)
            .done(),
        V2::new(1)
            .dir("", 0, 1)
            .bytes(b"a")
            .raw(&[1, 0, 4, 1, b'v'])
            .done(),
        V2::new(1)
            .dir("", 0, 1)
            .bytes(b"a")
            .raw(&[1, 0, 0, 1, 0xff])
            .done(),
        V2::new(1)
            .dir("", 0, 1)
            .bytes(b"a")
            .raw(&[1, 0, 0, 9, b'v'])
            .done(),
        V2::new(1).done(),
    ];
    let mut r = Store::new(&[]);
    for case in &cases {
        assert!(r.recovery(case).is_err(), "{case:?}");
    }
    // And the smallest valid one, with an expiry before the epoch.
    let data = V2::new(1).dir("", 0, 1).key_with_expiry("a", -1, 5).done();
    r.recovery(&data).unwrap();
    assert_eq!(r.index(), 1);
    assert!(r.has_ttl_keys());
}

#[test]
fn well_formed_but_inconsistent_format_1_trees_are_errors() {
    // Records that parse but do not make a tree, each with a valid checksum.
    let with_crc = |body: &str| {
        let crc = crc32c::crc32c(body.as_bytes());
        format!("{body}crc32c {crc:08x}\n").into_bytes()
    };
    let head = "oxcd-v2store snapshot 1\n{\"index\":1}\n";
    let cases = [
        // Fewer children than announced, more, a duplicate, a nameless or slashed child,
        // a named root, a key as root, nanoseconds out of range.
        "[\"\",0,0,null,2]\n[\"a\",1,1,null,\"v\"]\n",
        "[\"\",0,0,null,1]\n[\"a\",1,1,null,\"v\"]\n[\"b\",1,1,null,\"v\"]\n",
        "[\"\",0,0,null,2]\n[\"a\",1,1,null,\"v\"]\n[\"a\",1,1,null,\"v\"]\n",
        "[\"\",0,0,null,1]\n[\"\",1,1,null,\"v\"]\n",
        "[\"\",0,0,null,1]\n[\"a/b\",1,1,null,\"v\"]\n",
        "[\"r\",0,0,null,0]\n",
        "[\"\",0,0,null,\"v\"]\n",
        "[\"\",0,0,null,1]\n[\"a\",1,1,[5,1000000000],\"v\"]\n",
        "[\"\",0,0,null,1]\n[\"a\",1,1,null,-1]\n",
        "[\"\",0,0,null,1]\n[\"a\",1,1,null,\"v\",7]\n",
        "",
    ];
    let mut r = Store::new(&[]);
    for case in cases {
        let data = with_crc(&format!("{head}{case}"));
        assert!(r.recovery(&data).is_err(), "{case:?}");
    }
    // And the smallest valid one.
    let data = with_crc(&format!(
        "{head}[\"\",0,0,null,1]\n[\"a\",1,1,[-1,5],\"v\"]\n"
    ));
    r.recovery(&data).unwrap();
    assert_eq!(r.index(), 1);
    assert!(r.has_ttl_keys());
}
