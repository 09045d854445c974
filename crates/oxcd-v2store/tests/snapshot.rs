//! The snapshot encoding: the flat format, the old nested JSON, and damaged data.

use std::time::{Duration, SystemTime};

use oxcd_api::v2::ErrorCode;
use oxcd_v2store::{Store, TtlOptions};

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

#[test]
fn the_flat_format_is_versioned_text_and_round_trips() {
    let s = sample();
    let data = s.save();
    let text = String::from_utf8(data.clone()).expect("UTF-8 text");
    assert!(text.starts_with("oxcd-v2store snapshot 1\n{\"index\":5}\n[\"\",0,0,null,2]\n"));
    // One line per node (root, /0, /1 and 8 below /1), header, magic and trailer.
    assert_eq!(text.lines().count(), 11 + 3);
    assert!(text.lines().last().unwrap().starts_with("crc32c "));
    let mut r = Store::new(&["/0", "/1"]);
    r.recovery(&data).unwrap();
    assert_eq!(dump(&r), dump(&s));
    // The TTL (with its nanoseconds) came back.
    r.delete_expired_keys(now() + Duration::new(5, 249));
    assert!(r.get("/1/d/e/f", false, false, now()).is_ok());
    r.delete_expired_keys(now() + Duration::new(5, 250));
    assert_eq!(
        r.get("/1/d/e/f", false, false, now()).unwrap_err().code,
        ErrorCode::KeyNotFound
    );
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
    // Saved again, it is in the new format.
    assert!(r.save().starts_with(b"oxcd-v2store snapshot 1\n"));
}

#[test]
fn unknown_or_damaged_snapshots_are_errors() {
    let data = sample().save();
    let mut r = sample();
    let before = dump(&r);
    let text = String::from_utf8(data.clone()).unwrap();
    let bad: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"garbage".to_vec(),
        b"oxcd-v2store snapshot 1\n".to_vec(),
        text.replacen("snapshot 1", "snapshot 2", 1).into_bytes(),
        text.replacen("\"1\"", "\"2\"", 1).into_bytes(),
        data[..data.len() - 1].to_vec(),
        [data.as_slice(), b"x"].concat(),
        b"{\"index\":1,\"root\":{".to_vec(),
    ];
    for b in &bad {
        assert!(r.recovery(b).is_err(), "{:?}", String::from_utf8_lossy(b));
    }
    let e = r
        .recovery(text.replacen("snapshot 1", "snapshot 2", 1).as_bytes())
        .unwrap_err();
    assert!(e.to_string().contains("format 2"), "{e}");
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
fn well_formed_but_inconsistent_trees_are_errors() {
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
