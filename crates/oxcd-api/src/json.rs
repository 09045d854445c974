//! JSON as etcd writes it: Go's `encoding/json`, byte for byte.
//!
//! Go escapes more than serde_json does: `<`, `>` and `&` become `\u003c`, `\u003e` and
//! `\u0026` (its HTML-safe default), U+2028 and U+2029 become `\u2028` and `\u2029`, and
//! backspace and form feed are `\u0008` and `\u000c` (the Go etcd 3.4 is built with has no
//! `\b` or `\f`). Both forms decode to the same strings, but scripts that read the raw
//! bytes see the difference, so every JSON body a client receives goes through here:
//! [`to_vec`] / [`to_string`] for any `Serialize` value (serde_json with [`GoFormatter`]),
//! and [`Event::write_json`], the hot path of every key request and watch event, written by
//! hand so that strings with nothing to escape — nearly all keys and values — are copied in
//! one piece instead of being scanned byte by byte.

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};

use crate::v2::{Event, NodeExtern};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether `b` (an ASCII byte) must be escaped in a Go JSON string.
#[inline]
fn ascii_needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\' || b == b'<' || b == b'>' || b == b'&'
}

/// Whether any character of `s` needs an escape; 0xE2 is the first byte of U+2028/U+2029
/// (and of other characters, which the slow path writes as they are).
#[inline]
fn needs_escape(s: &str) -> bool {
    // No early exit inside a 16-byte chunk, so each byte's test is branch-free: about 30M
    // fewer instructions per 20k gets than `bytes().any(..)` (callgrind), still a few
    // instructions per byte.
    let flag = |b: u8| {
        (b < 0x20)
            | (b == b'"')
            | (b == b'\\')
            | (b == b'<')
            | (b == b'>')
            | (b == b'&')
            | (b == 0xE2)
    };
    let mut chunks = s.as_bytes().chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |m, &b| m | flag(b)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| flag(b))
}

fn push_u4(out: &mut Vec<u8>, c: u32) {
    out.extend_from_slice(b"\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((c >> shift) & 0xF) as usize]);
    }
}

/// Writes the contents of a JSON string (no quotes) with Go's escapes.
fn write_str_contents(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape: Option<&[u8]> = match c {
            '"' => Some(b"\\\""),
            '\\' => Some(b"\\\\"),
            '\n' => Some(b"\\n"),
            '\r' => Some(b"\\r"),
            '\t' => Some(b"\\t"),
            _ => None,
        };
        let special = escape.is_some()
            || (c.is_ascii() && ascii_needs_escape(c as u8))
            || c == '\u{2028}'
            || c == '\u{2029}';
        if !special {
            continue;
        }
        out.extend_from_slice(&s.as_bytes()[start..i]);
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => push_u4(out, c as u32),
        }
        start = i + c.len_utf8();
    }
    out.extend_from_slice(&s.as_bytes()[start..]);
}

/// Writes `s` as a quoted JSON string with Go's escapes.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_str_contents(out, s);
    out.push(b'"');
}

/// serde_json's compact output with Go's string escapes (see the module doc).
pub struct GoFormatter;

impl Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // serde_json has already taken out what it escapes itself; what is left to escape
        // here is Go's extra set, which `write_str_contents` handles as well.
        if !needs_escape(fragment) {
            return writer.write_all(fragment.as_bytes());
        }
        let mut buf = Vec::with_capacity(fragment.len() + 16);
        write_str_contents(&mut buf, fragment);
        writer.write_all(&buf)
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        char_escape: CharEscape,
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(6);
        match char_escape {
            CharEscape::Quote => buf.extend_from_slice(b"\\\""),
            CharEscape::ReverseSolidus => buf.extend_from_slice(b"\\\\"),
            CharEscape::LineFeed => buf.extend_from_slice(b"\\n"),
            CharEscape::CarriageReturn => buf.extend_from_slice(b"\\r"),
            CharEscape::Tab => buf.extend_from_slice(b"\\t"),
            CharEscape::Solidus => buf.push(b'/'),
            CharEscape::Backspace => push_u4(&mut buf, 0x08),
            CharEscape::FormFeed => push_u4(&mut buf, 0x0c),
            CharEscape::AsciiControl(b) => push_u4(&mut buf, b as u32),
        }
        writer.write_all(&buf)
    }
}

/// Serializes `value` as etcd would (compact, Go's escapes).
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    // Our types serialize infallibly into memory (no maps with non-string keys).
    if value.serialize(&mut ser).is_err() {
        out.clear();
    }
    out
}

/// [`to_vec`] as a `String`.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> String {
    // Only whole UTF-8 strings and ASCII are written.
    String::from_utf8(to_vec(value)).unwrap_or_default()
}

/// Writes `n` in decimal (also the value of etcd's index headers).
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    out.extend_from_slice(format_u64(&mut digits, n));
}

/// The decimal digits of `n`, written at the end of `digits` (20 is room for any `u64`).
pub fn format_u64(digits: &mut [u8; 20], n: u64) -> &[u8] {
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    &digits[at..]
}

/// Starts a field: a comma unless it is the object's first.
fn field(out: &mut Vec<u8>, first: &mut bool, name: &[u8]) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    out.extend_from_slice(name);
}

impl NodeExtern {
    /// Writes the node as etcd does (the same bytes as [`to_vec`], faster).
    ///
    /// Listings nest as deep as keys go: children are written with an explicit stack of
    /// the open nodes, never by recursion.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let first = self.write_head(out);
        let Some(nodes) = self.listed() else {
            self.write_tail(out, first);
            return;
        };
        // The open nodes: each with its children and how many are written.
        let mut stack: Vec<(&NodeExtern, &[NodeExtern], usize)> = vec![(self, nodes, 0)];
        while let Some(top) = stack.last_mut() {
            let (node, children, at) = (top.0, top.1, top.2);
            match children.get(at) {
                Some(child) => {
                    top.2 += 1;
                    if at > 0 {
                        out.push(b',');
                    }
                    let first = child.write_head(out);
                    match child.listed() {
                        Some(grandchildren) => stack.push((child, grandchildren, 0)),
                        None => child.write_tail(out, first),
                    }
                }
                None => {
                    out.push(b']');
                    // "nodes" was written: the fields after it follow a comma.
                    node.write_tail(out, false);
                    stack.pop();
                }
            }
        }
    }

    /// Writes `{` and the fields up to the children: with children, up to and including
    /// `"nodes":[`. Returns whether no field was written yet.
    fn write_head(&self, out: &mut Vec<u8>) -> bool {
        out.push(b'{');
        let mut first = true;
        if !self.key.is_empty() {
            field(out, &mut first, b"\"key\":");
            write_str(out, &self.key);
        }
        if let Some(v) = &self.value {
            field(out, &mut first, b"\"value\":");
            write_str(out, v);
        }
        if self.dir {
            field(out, &mut first, b"\"dir\":true");
        }
        if let Some(t) = self.expiration {
            field(out, &mut first, b"\"expiration\":");
            write_str(out, &crate::time::format_rfc3339_nano(t));
        }
        if self.ttl != 0 {
            field(out, &mut first, b"\"ttl\":");
            if self.ttl < 0 {
                out.push(b'-');
            }
            write_u64(out, self.ttl.unsigned_abs());
        }
        if self.listed().is_some() {
            field(out, &mut first, b"\"nodes\":[");
        }
        first
    }

    /// The children to write: none for an empty list, as Go's `omitempty` leaves it out.
    fn listed(&self) -> Option<&[NodeExtern]> {
        self.nodes.as_deref().filter(|n| !n.is_empty())
    }

    /// Writes the fields after the children and `}`.
    fn write_tail(&self, out: &mut Vec<u8>, mut first: bool) {
        if self.modified_index != 0 {
            field(out, &mut first, b"\"modifiedIndex\":");
            write_u64(out, self.modified_index);
        }
        if self.created_index != 0 {
            field(out, &mut first, b"\"createdIndex\":");
            write_u64(out, self.created_index);
        }
        out.push(b'}');
    }
}

impl Event {
    /// Writes the event as etcd does (the same bytes as [`to_vec`], faster).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"action\":\"");
        out.extend_from_slice(self.action.as_str().as_bytes());
        out.push(b'"');
        if let Some(n) = &self.node {
            out.extend_from_slice(b",\"node\":");
            n.write_json(out);
        }
        if let Some(n) = &self.prev_node {
            out.extend_from_slice(b",\"prevNode\":");
            n.write_json(out);
        }
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v2::Action;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn numbers_are_written_as_decimal() {
        for n in [0, 7, 10, 99, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn strings_are_escaped_as_etcd_escapes_them() {
        // Bytes etcd 3.4.23 answered for this key and value.
        let ev = Event {
            action: Action::Set,
            node: Some(NodeExtern {
                key: "/x<y".into(),
                value: Some(Arc::from(
                    "a\u{8}b\u{c}c\nd\re\tf\u{7f}g\u{2028}h\u{2029}i\u{1f}j",
                )),
                dir: false,
                expiration: None,
                ttl: 0,
                nodes: None,
                modified_index: 4,
                created_index: 4,
            }),
            prev_node: None,
            etcd_index: 4,
        };
        let want = "{\"action\":\"set\",\"node\":{\"key\":\"/x\\u003cy\",\"value\":\"a\\u0008b\\u000cc\\nd\\re\\tf\u{7f}g\\u2028h\\u2029i\\u001fj\",\"modifiedIndex\":4,\"createdIndex\":4}}";
        let mut fast = Vec::new();
        ev.write_json(&mut fast);
        assert_eq!(String::from_utf8(fast).unwrap(), want);
        assert_eq!(to_string(&ev), want);
        assert_eq!(
            to_string(&serde_json::json!({"cause": "/nokey<&", "q": "\"\\/é"})),
            "{\"cause\":\"/nokey\\u003c\\u0026\",\"q\":\"\\\"\\\\/é\"}"
        );
    }

    #[test]
    fn hand_written_events_match_serde_byte_for_byte() {
        // A small deterministic generator: strings from an alphabet with every class of
        // character (plain, escaped by both, escaped by Go only, multi-byte).
        let alphabet = [
            "a", "/", "Z", "0", " ", "\"", "\\", "\n", "\r", "\t", "\u{8}", "\u{c}", "\u{1}",
            "\u{1f}", "<", ">", "&", "\u{7f}", "é", "\u{2028}", "\u{2029}", "\u{2027}", "€", "😀",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let string = |next: &mut dyn FnMut(u64) -> u64| -> String {
            (0..next(12))
                .map(|_| alphabet[next(alphabet.len() as u64) as usize])
                .collect()
        };
        // Every action, so the hand-written names are checked against serde's renames.
        const ACTIONS: [Action; 8] = [
            Action::Get,
            Action::Set,
            Action::Create,
            Action::Update,
            Action::Delete,
            Action::CompareAndSwap,
            Action::CompareAndDelete,
            Action::Expire,
        ];
        for round in 0..2000 {
            let node = |next: &mut dyn FnMut(u64) -> u64, depth: u32| -> NodeExtern {
                let mut n = NodeExtern {
                    key: string(next),
                    value: (next(3) > 0).then(|| Arc::from(string(next).as_str())),
                    dir: next(4) == 0,
                    expiration: (next(3) == 0)
                        .then(|| UNIX_EPOCH + Duration::from_nanos(next(1 << 62))),
                    ttl: next(5) as i64 - 1,
                    nodes: None,
                    modified_index: next(4) * next(1 << 40),
                    created_index: next(4) * next(1 << 40),
                };
                if depth == 0 && next(3) == 0 {
                    n.nodes = Some(Vec::new());
                }
                n
            };
            let mut parent = node(&mut next, 0);
            if let Some(children) = &mut parent.nodes {
                for _ in 0..next(4) {
                    children.push(node(&mut next, 1));
                }
            }
            let ev = Event {
                action: ACTIONS[round % ACTIONS.len()],
                node: (round % 5 != 0).then_some(parent),
                prev_node: (next(2) == 0).then(|| node(&mut next, 1)),
                etcd_index: 0,
            };
            let mut fast = Vec::new();
            ev.write_json(&mut fast);
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                to_string(&ev),
                "round {round}"
            );
        }
    }

    /// A node with only a key and a created index, and the given children.
    fn bare(key: String, nodes: Option<Vec<NodeExtern>>) -> NodeExtern {
        NodeExtern {
            key,
            value: None,
            dir: nodes.is_some(),
            expiration: None,
            ttl: 0,
            nodes,
            modified_index: 0,
            created_index: 7,
        }
    }

    #[test]
    fn nested_listings_match_serde_byte_for_byte() {
        // Trees a few levels deep with every combination of present and absent fields
        // around "nodes" (which decides where the commas go).
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        fn tree(next: &mut dyn FnMut(u64) -> u64, depth: u32) -> NodeExtern {
            let key = ["", "/a", "/a<b", "/é"][next(4) as usize].to_string();
            let nodes = (depth < 4 && next(3) > 0).then(|| {
                (0..next(4))
                    .map(|_| tree(next, depth + 1))
                    .collect::<Vec<_>>()
            });
            NodeExtern {
                key,
                value: (next(3) == 0).then(|| Arc::from("v\n")),
                dir: next(2) == 0,
                expiration: (next(4) == 0)
                    .then(|| UNIX_EPOCH + Duration::from_nanos(next(1 << 62))),
                ttl: next(3) as i64 - 1,
                nodes,
                modified_index: next(2) * next(1000),
                created_index: next(2) * next(1000),
            }
        }
        for round in 0..500 {
            let node = tree(&mut next, 0);
            let mut fast = Vec::new();
            node.write_json(&mut fast);
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                to_string(&node),
                "round {round}"
            );
            let copy = node.clone();
            assert_eq!(copy, node, "round {round}");
        }
    }

    /// A chain of `depth` nested directories, each with one child.
    fn chain(depth: usize) -> NodeExtern {
        let mut node = bare("/k".into(), None);
        for _ in 1..depth {
            node = bare("/k".into(), Some(vec![node]));
        }
        node
    }

    #[test]
    fn a_100000_deep_listing_is_written_cloned_trimmed_and_dropped_without_recursion() {
        // Runs on the default test thread stack (2 MiB): recursion would overflow it.
        const DEPTH: usize = 100_000;
        let mut node = chain(DEPTH);
        let copy = node.clone();
        node.trim_prefix("/");
        let mut out = Vec::new();
        node.write_json(&mut out);
        let open = "{\"key\":\"k\",\"dir\":true,\"nodes\":[";
        let close = "],\"createdIndex\":7}";
        let leaf = "{\"key\":\"k\",\"createdIndex\":7}";
        let want = format!(
            "{}{leaf}{}",
            open.repeat(DEPTH - 1),
            close.repeat(DEPTH - 1)
        );
        assert!(out == want.as_bytes(), "deep listing written wrong");
        // The copy is independent of the trimmed original.
        let mut depth = 0;
        let mut at = Some(&copy);
        while let Some(n) = at {
            assert_eq!(n.key, "/k");
            depth += 1;
            at = n.nodes.as_ref().and_then(|v| v.first());
        }
        assert_eq!(depth, DEPTH);
        drop(node);
        drop(copy);
        // A wide and deep mix drops as well.
        let wide = bare(
            "/w".into(),
            Some((0..3).map(|_| chain(DEPTH / 3)).collect()),
        );
        drop(wide);
    }
}
