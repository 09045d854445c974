//! Property tests of the parsers every request and every peer message goes through: the v2
//! form/query parser, Go's path cleaning (checked against Go's documented rewrite rules, not
//! against our own code), percent-unescaping, and the peer frame codec. None may panic on
//! any input. `PROPTEST_CASES=100000 cargo test --release -p oxcd --test parser_props` runs
//! a long pass.

// raft-rs's protobuf messages are built field by field after `default()`.
#![allow(clippy::field_reassign_with_default)]

use oxcd::http::form::{clean_path, parse_query, path_clean, path_unescape, query_unescape};
use oxcd::transport::codec;
use oxcd_v2store::is_clean_path;
use proptest::prelude::*;
use raft::prelude::{Entry, Message, MessageType};

/// Percent-encodes every byte outside the unreserved set, as a careful client does.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Go's `path.Clean` as its documentation states it, applied as rewrite rules until none
/// applies: 1. replace multiple slashes by one; 2. eliminate each `.` element; 3. eliminate
/// each inner `..` element and the non-`..` element before it; 4. eliminate `..` elements
/// that begin a rooted path. (Only rooted paths are generated.)
fn clean_by_rules(p: &str) -> String {
    let mut s = p.to_string();
    loop {
        let before = s.clone();
        while s.contains("//") {
            s = s.replace("//", "/");
        }
        if s.ends_with("/.") {
            s.truncate(s.len() - 1);
        }
        s = s.replace("/./", "/");
        // Rule 3: the first "/name/.." where name is not "..".
        let segs: Vec<&str> = s.split('/').collect();
        for i in 1..segs.len().saturating_sub(1) {
            if !segs[i].is_empty() && segs[i] != ".." && segs[i] != "." && segs[i + 1] == ".." {
                let mut v: Vec<&str> = segs[..i].to_vec();
                let rest = &segs[i + 2..];
                if rest.is_empty() {
                    v.push("");
                } else {
                    v.extend_from_slice(rest);
                }
                s = v.join("/");
                break;
            }
        }
        // Rule 4.
        if s == "/.." {
            s = "/".to_string();
        } else if let Some(rest) = s.strip_prefix("/../") {
            s = format!("/{rest}");
        }
        if s == before {
            break;
        }
    }
    // The returned path ends in a slash only if it is the root.
    if s.len() > 1 && s.ends_with('/') {
        s.pop();
    }
    if s.is_empty() {
        s = "/".to_string();
    }
    s
}

fn rooted_path() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("a"),
            Just("b"),
            Just("."),
            Just(".."),
            Just(""),
            Just("_h"),
            Just("c.d"),
        ],
        0..12,
    )
    .prop_map(|segs| format!("/{}", segs.join("/")))
}

fn message() -> impl Strategy<Value = Message> {
    (
        0i32..19,
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        proptest::collection::vec((any::<u64>(), any::<u64>(), any::<Vec<u8>>()), 0..4),
    )
        .prop_map(|(t, to, from, term, index, commit, reject, entries)| {
            let mut m = Message::default();
            m.set_msg_type(
                <MessageType as protobuf::ProtobufEnum>::from_i32(t).unwrap_or_default(),
            );
            m.to = to | 1;
            m.from = from;
            m.term = term;
            m.index = index;
            m.commit = commit;
            m.reject = reject;
            m.entries = entries
                .into_iter()
                .map(|(i, t, d)| {
                    let mut e = Entry::default();
                    e.index = i;
                    e.term = t;
                    e.data = d.into();
                    e
                })
                .collect::<Vec<_>>()
                .into();
            m
        })
}

proptest! {
    #[test]
    fn query_parsing_never_panics(bytes in any::<Vec<u8>>()) {
        let _ = parse_query(&bytes);
        let _ = query_unescape(&bytes);
        let _ = path_unescape(&bytes);
    }

    #[test]
    fn encoded_pairs_parse_back_in_order(
        pairs in proptest::collection::vec(("[a-z]{1,6}", "\\PC{0,12}"), 0..8)
    ) {
        let q = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
            .collect::<Vec<_>>()
            .join("&");
        let (form, err) = parse_query(q.as_bytes());
        prop_assert_eq!(err, None);
        for (k, _) in &pairs {
            let first = pairs.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v.as_str());
            prop_assert_eq!(form.first(k), first);
        }
    }

    #[test]
    fn escaped_paths_unescape_to_themselves(s in "\\PC{0,40}") {
        prop_assert_eq!(path_unescape(escape(&s).as_bytes()), Ok(s));
    }

    #[test]
    fn path_clean_follows_gos_rules(p in rooted_path()) {
        let cleaned = path_clean(&p);
        prop_assert_eq!(&cleaned, &clean_by_rules(&p), "path {:?}", p);
        prop_assert_eq!(path_clean(&cleaned), cleaned.clone(), "not idempotent");
        prop_assert!(is_clean_path(&cleaned), "{:?} is not clean", cleaned);
        prop_assert_eq!(is_clean_path(&p), cleaned == p, "is_clean_path({:?})", p);
    }

    #[test]
    fn mux_cleaning_keeps_a_trailing_slash(p in rooted_path()) {
        let c = clean_path(&p);
        prop_assert!(c.starts_with('/'));
        prop_assert_eq!(clean_path(&c), c.clone(), "not idempotent for {:?}", p);
        let base = path_clean(&p);
        if p.ends_with('/') && base != "/" {
            prop_assert_eq!(c, format!("{base}/"));
        } else {
            prop_assert_eq!(c, base);
        }
    }

    #[test]
    fn frames_of_random_bytes_never_panic(bytes in any::<Vec<u8>>()) {
        let _ = codec::decode(&bytes);
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = codec::take_frame(&mut buf, codec::MAX_FRAME) {}
    }

    #[test]
    fn messages_round_trip_through_frames(msgs in proptest::collection::vec(message(), 1..5)) {
        let body = codec::encode(&msgs);
        prop_assert_eq!(codec::decode(&body), Ok(msgs.clone()));
        // Cut inside its last frame, the batch is refused, never half-decoded.
        prop_assert!(codec::decode(&body[..body.len() - 1]).is_err());
    }
}
