//! The snapshot encoding of the store: flat, so that neither its size nor the work to read
//! it depends on how deep the tree is.
//!
//! Format 1 is text (UTF-8), one line per item:
//!
//! ```text
//! oxcd-v2store snapshot 1          magic and format version
//! {"index":42}                     the store index
//! ["",0,0,null,2]                  the root, then every node in pre-order …
//! ["0",0,0,null,0]
//! ["1",0,40,null,1]
//! ["foo",40,42,[1700000000,5],"bar"]
//! crc32c 1a2b3c4d                  CRC-32C of every byte before this line
//! ```
//!
//! A node is `[name, createdIndex, modifiedIndex, expire, payload]`: `name` is the node's
//! segment (empty for the root), `expire` is `null` or `[seconds, nanoseconds]` since the
//! Unix epoch (seconds negative before it, nanoseconds always forward), and `payload` is a
//! key's value (a string) or a directory's number of children (a number), whose records
//! follow it, each with its own subtree, before the directory's next sibling. Each record
//! is a small JSON array, so any JSON reader reads it, and a line holds one node: a reader
//! can stream `(path, node)` pairs by keeping the path of the open directories.
//!
//! The old format — `{"index":…,"root":{…}}`, the whole tree as one nested JSON value — is
//! still read, within serde_json's nesting limit (what it could always read).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::node::Node;

/// The first line's text, before the version number.
const MAGIC: &str = "oxcd-v2store snapshot ";
/// The format [`encode`] writes.
const VERSION: u32 = 1;
/// The last line's text, before the checksum.
const TRAILER: &str = "crc32c ";

/// Encodes the store's index and tree.
pub fn encode(index: u64, root: &Node) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(MAGIC.as_bytes());
    write_u64(&mut out, u64::from(VERSION));
    out.extend_from_slice(b"\n{\"index\":");
    write_u64(&mut out, index);
    out.extend_from_slice(b"}\n");
    write_record(&mut out, "", root);
    if let Some(children) = root.children.as_ref().filter(|c| !c.is_empty()) {
        // Pre-order with an explicit stack of the open directories' remaining children.
        let mut stack = vec![children.iter()];
        while let Some(rest) = stack.last_mut() {
            let Some((name, child)) = rest.next() else {
                stack.pop();
                continue;
            };
            write_record(&mut out, name, child);
            if let Some(grandchildren) = child.children.as_ref().filter(|c| !c.is_empty()) {
                stack.push(grandchildren.iter());
            }
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(TRAILER.as_bytes());
    out.extend_from_slice(format!("{crc:08x}\n").as_bytes());
    out
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    oxcd_api::json::write_u64(out, n);
}

fn write_record(out: &mut Vec<u8>, name: &str, node: &Node) {
    out.push(b'[');
    write_json_str(out, name);
    out.push(b',');
    write_u64(out, node.created_index);
    out.push(b',');
    write_u64(out, node.modified_index);
    out.push(b',');
    match node.expire {
        None => out.extend_from_slice(b"null"),
        Some(t) => {
            let (secs, nanos) = split_time(t);
            out.push(b'[');
            if secs < 0 {
                out.push(b'-');
            }
            write_u64(out, secs.unsigned_abs());
            out.push(b',');
            write_u64(out, u64::from(nanos));
            out.push(b']');
        }
    }
    out.push(b',');
    match &node.children {
        Some(children) => write_u64(out, children.len() as u64),
        None => write_json_str(out, &node.value),
    }
    out.extend_from_slice(b"]\n");
}

/// A JSON string: `"`, `\` and control characters escaped (so a record is one line).
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xF)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Seconds (floored) and nanoseconds since the epoch.
fn split_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs().min(i64::MAX as u64) as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let secs = d.as_secs().min(i64::MAX as u64 - 1) as i64;
            match d.subsec_nanos() {
                0 => (-secs, 0),
                n => (-secs - 1, 1_000_000_000 - n),
            }
        }
    }
}

fn join_time(secs: i64, nanos: u32) -> Option<SystemTime> {
    if nanos >= 1_000_000_000 {
        return None;
    }
    let base = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))?
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?
    };
    base.checked_add(Duration::from_nanos(u64::from(nanos)))
}

/// Decodes a snapshot, in either format: the store index and the tree.
pub fn decode(data: &[u8]) -> Result<(u64, Node), String> {
    if data.starts_with(MAGIC.as_bytes()) {
        return decode_v1(data);
    }
    if data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return decode_old(data);
    }
    Err("not a v2 store snapshot (unknown format)".into())
}

/// The old format: the tree as one nested JSON value.
fn decode_old(data: &[u8]) -> Result<(u64, Node), String> {
    #[derive(Deserialize)]
    struct Saved {
        index: u64,
        root: Node,
    }
    let saved: Saved = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    Ok((saved.index, saved.root))
}

/// A record's last field.
enum Payload {
    Value(String),
    Children(u64),
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        struct PayloadVisitor;
        impl Visitor<'_> for PayloadVisitor {
            type Value = Payload;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value (string) or a number of children")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Payload, E> {
                Ok(Payload::Children(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Payload, E> {
                Ok(Payload::Value(s.to_string()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Payload, E> {
                Ok(Payload::Value(s))
            }
        }
        d.deserialize_any(PayloadVisitor)
    }
}

#[derive(Deserialize)]
struct Record<'a>(
    #[serde(borrow)] Cow<'a, str>,
    u64,
    u64,
    Option<(i64, u32)>,
    Payload,
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    index: u64,
}

/// A directory being read: its name, the node, and how many children are still to come.
struct Open {
    name: String,
    node: Node,
    remaining: u64,
}

fn decode_v1(data: &[u8]) -> Result<(u64, Node), String> {
    // The version first: another format's checksum may be elsewhere.
    let version = data[MAGIC.len()..]
        .split(|&b| b == b'\n')
        .next()
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or("bad snapshot version line")?;
    if version != VERSION {
        return Err(format!(
            "snapshot format {version} is not supported (this build reads {VERSION})"
        ));
    }
    // The trailer: the checksum of everything before it.
    let body_end = data
        .strip_suffix(b"\n")
        .and_then(|d| d.iter().rposition(|&b| b == b'\n'))
        .map(|i| i + 1)
        .ok_or("truncated snapshot (no trailer)")?;
    let (body, trailer) = data.split_at(body_end);
    let want = trailer
        .strip_prefix(TRAILER.as_bytes())
        .and_then(|t| t.strip_suffix(b"\n"))
        .and_then(|t| std::str::from_utf8(t).ok())
        // Exactly as written: 8 lowercase hex digits.
        .filter(|t| t.len() == 8 && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .ok_or("truncated snapshot (bad trailer)")?;
    let got = crc32c::crc32c(body);
    if got != want {
        return Err(format!(
            "corrupted snapshot (checksum {got:08x}, expected {want:08x})"
        ));
    }
    // `body` ends with a newline: every line is complete.
    let mut lines = body[..body.len() - 1].split(|&b| b == b'\n');
    lines.next(); // The version line, read above.
    let header: Header = serde_json::from_slice(lines.next().unwrap_or_default())
        .map_err(|e| format!("bad snapshot header: {e}"))?;
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Node> = None;
    for (n, line) in lines.enumerate() {
        let bad = |what: &str| format!("bad snapshot record {n}: {what}");
        let Record(name, created_index, modified_index, expire, payload) =
            serde_json::from_slice(line).map_err(|e| bad(&e.to_string()))?;
        let expire = match expire {
            None => None,
            Some((secs, nanos)) => Some(join_time(secs, nanos).ok_or_else(|| bad("expiry"))?),
        };
        let (value, children) = match payload {
            Payload::Value(v) => (Arc::from(v), None),
            Payload::Children(count) => (Arc::from(""), Some(count)),
        };
        let node = Node {
            created_index,
            modified_index,
            value,
            expire,
            // Sized as the record says, within what the rest of the data could hold.
            children: children.map(|c| HashMap::with_capacity(c.min(1024) as usize)),
        };
        if root.is_some() {
            return Err(bad("after the end of the tree"));
        }
        if stack.is_empty() {
            // The root.
            if !name.is_empty() {
                return Err(bad("the root has a name"));
            }
        } else if name.is_empty() || name.contains('/') {
            return Err(bad("invalid name"));
        }
        let mut open = Open {
            name: name.into_owned(),
            node,
            remaining: children.unwrap_or(0),
        };
        if let Some(parent) = stack.last_mut() {
            // Checked before: a parent with nothing remaining is closed.
            parent.remaining -= 1;
        }
        // Close every directory that is complete, this node first.
        loop {
            if open.remaining > 0 {
                stack.push(open);
                break;
            }
            let Some(parent) = stack.last_mut() else {
                root = Some(open.node);
                break;
            };
            let Some(siblings) = parent.node.children.as_mut() else {
                return Err(bad("a key with children"));
            };
            if siblings.insert(open.name, open.node).is_some() {
                return Err(bad("duplicate name"));
            }
            if parent.remaining > 0 {
                break;
            }
            let Some(done) = stack.pop() else {
                break;
            };
            open = done;
        }
    }
    match root {
        Some(root) => Ok((header.index, root)),
        None => Err("truncated snapshot (the tree is incomplete)".into()),
    }
}
