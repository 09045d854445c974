//! Property tests: the store against a simple model, and the snapshot decoder against
//! damaged bytes.
//!
//! Each case is a random sequence of set / create (also in-order) / update /
//! compare-and-swap / delete (dir, recursive) / compare-and-delete / get over a small key
//! alphabet with hidden names and 70-segment keys, TTLs expired by an explicit script clock
//! (`delete_expired_keys(cutoff)`), and save → recovery at random points. Every result
//! (success or error code, index, values listed) must match the model, and the store that
//! restarts must answer every op byte for byte like a twin that never restarted.
//!
//! The default is proptest's 256 cases (a few seconds). For a long run:
//! `PROPTEST_CASES=100000 cargo test -p oxcd-v2store --release --test model`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use oxcd_api::v2::{ErrorCode, Event, NodeExtern};
use oxcd_v2store::{Store, TtlOptions};
use proptest::prelude::*;

/// Segments of the deep keys (past serde_json's old nesting limit).
const DEEP: usize = 70;

fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

#[derive(Debug, Clone)]
enum Op {
    Set(String, bool, String, Option<u64>),
    Create(String, bool, String, Option<u64>),
    CreateInOrder(String, String),
    Update(String, String, Option<u64>),
    Cas(String, String, u64, String, Option<u64>),
    Delete(String, bool, bool),
    Cad(String, String, u64),
    Get(String, bool),
    /// Advance the clock by this many seconds and expire what is due.
    Tick(u64),
    /// Save, then recover into a fresh store that replaces the current one.
    Restart,
}

fn key() -> impl Strategy<Value = String> {
    let seg = prop_oneof![Just("a"), Just("b"), Just("_h")];
    let tail = prop::collection::vec(seg, 0..=3)
        .prop_map(|s| s.iter().map(|seg| format!("/{seg}")).collect::<String>());
    prop_oneof![
        3 => tail.clone().prop_filter("not the root", |k| !k.is_empty()),
        1 => tail.prop_map(|t| format!("{}{t}", "/z".repeat(DEEP))),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("x".to_string()),
        Just("y".to_string())
    ]
}

fn ttl() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![2 => Just(None), 1 => (1u64..5).prop_map(Some)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), any::<bool>(), value(), ttl()).prop_map(|(k, d, v, t)| Op::Set(k, d, v, t)),
        2 => (key(), any::<bool>(), value(), ttl())
            .prop_map(|(k, d, v, t)| Op::Create(k, d, v, t)),
        1 => (key(), value()).prop_map(|(k, v)| Op::CreateInOrder(k, v)),
        2 => (key(), value(), ttl()).prop_map(|(k, v, t)| Op::Update(k, v, t)),
        2 => (key(), value(), 0u64..8, value(), ttl())
            .prop_map(|(k, p, i, v, t)| Op::Cas(k, p, i, v, t)),
        2 => (key(), any::<bool>(), any::<bool>()).prop_map(|(k, d, r)| Op::Delete(k, d, r)),
        1 => (key(), value(), 0u64..8).prop_map(|(k, p, i)| Op::Cad(k, p, i)),
        3 => (key(), any::<bool>()).prop_map(|(k, r)| Op::Get(k, r)),
        1 => (0u64..4).prop_map(Op::Tick),
        1 => Just(Op::Restart),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    dir: bool,
    value: String,
    expire: Option<SystemTime>,
    created: u64,
    modified: u64,
}

/// The model: every node by path ("/" included), and the index.
struct Model {
    nodes: BTreeMap<String, Entry>,
    index: u64,
}

/// What an operation shows: the error code, or the listed nodes
/// `(key, value, dir, expiration, modified, created)` and the previous value.
type Listed = (String, Option<String>, bool, Option<SystemTime>, u64, u64);
type Outcome = Result<(Vec<Listed>, Option<Option<String>>), ErrorCode>;

/// `path`'s prefixes that end a segment, top-down, `path` included ("/" excluded).
fn prefixes(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = path
        .char_indices()
        .skip(1)
        .filter(|&(_, c)| c == '/')
        .map(|(i, _)| &path[..i])
        .collect();
    out.push(path);
    out
}

fn is_below(path: &str, dir: &str) -> bool {
    path.len() > dir.len()
        && path.starts_with(dir)
        && (dir == "/" || path.as_bytes()[dir.len()] == b'/')
}

impl Model {
    fn new() -> Model {
        let root = Entry {
            dir: true,
            value: String::new(),
            expire: None,
            created: 0,
            modified: 0,
        };
        Model {
            nodes: BTreeMap::from([("/".to_string(), root)]),
            index: 0,
        }
    }

    fn walk(&self, path: &str) -> Result<&Entry, ErrorCode> {
        let mut parent = "/";
        for p in prefixes(path) {
            if !self.nodes[parent].dir {
                return Err(ErrorCode::NotDir);
            }
            if !self.nodes.contains_key(p) {
                return Err(ErrorCode::KeyNotFound);
            }
            parent = p;
        }
        Ok(&self.nodes[path])
    }

    fn children(&self, dir: &str) -> Vec<&str> {
        self.nodes
            .keys()
            .filter(|k| {
                let name_at = if dir == "/" { 1 } else { dir.len() + 1 };
                is_below(k, dir) && !k[name_at..].contains('/')
            })
            .map(String::as_str)
            .collect()
    }

    fn remove(&mut self, path: &str) {
        self.nodes.retain(|k, _| k != path && !is_below(k, path));
    }

    fn entry(dir: bool, value: &str, expire: Option<SystemTime>, index: u64) -> Entry {
        Entry {
            dir,
            value: if dir {
                String::new()
            } else {
                value.to_string()
            },
            expire,
            created: index,
            modified: index,
        }
    }

    /// `internal_create`: parents made as needed, then the node (replacing a key).
    fn create(
        &mut self,
        path: &str,
        dir: bool,
        value: &str,
        expire: Option<SystemTime>,
        replace: bool,
    ) -> Result<Option<String>, ErrorCode> {
        let curr = self.index + 1;
        let all = prefixes(path);
        for p in &all[..all.len() - 1] {
            match self.nodes.get(*p) {
                None => {
                    self.nodes
                        .insert(p.to_string(), Model::entry(true, "", None, curr));
                }
                Some(e) if !e.dir => return Err(ErrorCode::NotFile),
                Some(_) => {}
            }
        }
        let prev = match self.nodes.get(path) {
            Some(_) if !replace => return Err(ErrorCode::NodeExist),
            Some(e) if e.dir => return Err(ErrorCode::NotFile),
            Some(e) => Some(e.value.clone()),
            None => None,
        };
        self.nodes
            .insert(path.to_string(), Model::entry(dir, value, expire, curr));
        self.index = curr;
        Ok(prev)
    }

    fn compare(e: &Entry, prev_value: &str, prev_index: u64) -> Result<(), ErrorCode> {
        let ok = (prev_index == 0 || e.modified == prev_index)
            && (prev_value.is_empty() || e.value == prev_value);
        if ok {
            Ok(())
        } else {
            Err(ErrorCode::TestFailed)
        }
    }

    fn rewrite(&mut self, path: &str, value: &str, expire: Option<SystemTime>) -> Option<String> {
        self.index += 1;
        let index = self.index;
        let e = self.nodes.get_mut(path).expect("walked");
        let prev = e.value.clone();
        // etcd refuses the node write for a directory (and ignores the error): a directory
        // keeps its modifiedIndex.
        if !e.dir {
            e.value = value.to_string();
            e.modified = index;
        }
        e.expire = expire;
        Some(prev)
    }

    fn listed(&self, path: &str, e: &Entry) -> Listed {
        (
            path.to_string(),
            (!e.dir).then(|| e.value.clone()),
            e.dir,
            e.expire,
            e.modified,
            e.created,
        )
    }

    fn list(&self, dir: &str, recursive: bool, out: &mut Vec<Listed>) {
        for c in self.children(dir) {
            if c.rsplit('/').next().is_some_and(|n| n.starts_with('_')) {
                continue;
            }
            let e = &self.nodes[c];
            out.push(self.listed(c, e));
            if e.dir && recursive {
                self.list(c, true, out);
            }
        }
    }

    fn expire(&mut self, cutoff: SystemTime) {
        let mut due: Vec<(SystemTime, String)> = self
            .nodes
            .iter()
            .filter_map(|(k, e)| e.expire.filter(|t| *t <= cutoff).map(|t| (t, k.clone())))
            .collect();
        due.sort();
        for (_, path) in due {
            if self.nodes.contains_key(&path) {
                self.remove(&path);
                self.index += 1;
            }
        }
    }

    fn apply(&mut self, op: &Op, now: SystemTime) -> Outcome {
        let exp = |t: &Option<u64>| t.map(|s| now + Duration::from_secs(s));
        let changed = |r: Result<Option<String>, ErrorCode>| r.map(|p| (Vec::new(), Some(p)));
        match op {
            Op::Set(k, dir, v, t) => {
                // A key on the way is an error; a missing node is what set creates.
                if let Err(ErrorCode::NotDir) = self.walk(k) {
                    return Err(ErrorCode::NotDir);
                }
                changed(self.create(k, *dir, v, exp(t), true))
            }
            Op::Create(k, dir, v, t) => changed(self.create(k, *dir, v, exp(t), false)),
            Op::CreateInOrder(k, v) => {
                let path = format!("{k}/{:020}", self.index + 1);
                changed(self.create(&path, false, v, None, false))
            }
            Op::Update(k, v, t) => {
                let e = self.walk(k)?;
                if e.dir && !v.is_empty() {
                    return Err(ErrorCode::NotFile);
                }
                Ok((Vec::new(), Some(self.rewrite(k, v, exp(t)))))
            }
            Op::Cas(k, pv, pi, v, t) => {
                let e = self.walk(k)?;
                if e.dir {
                    return Err(ErrorCode::NotFile);
                }
                Model::compare(e, pv, *pi)?;
                Ok((Vec::new(), Some(self.rewrite(k, v, exp(t)))))
            }
            Op::Delete(k, dir, recursive) => {
                let e = self.walk(k)?;
                if e.dir {
                    if !(*dir || *recursive) {
                        return Err(ErrorCode::NotFile);
                    }
                    if !self.children(k).is_empty() && !recursive {
                        return Err(ErrorCode::DirNotEmpty);
                    }
                }
                let prev = e.value.clone();
                self.remove(k);
                self.index += 1;
                Ok((Vec::new(), Some(Some(prev))))
            }
            Op::Cad(k, pv, pi) => {
                let e = self.walk(k)?;
                if e.dir {
                    return Err(ErrorCode::NotFile);
                }
                Model::compare(e, pv, *pi)?;
                let prev = e.value.clone();
                self.remove(k);
                self.index += 1;
                Ok((Vec::new(), Some(Some(prev))))
            }
            Op::Get(k, recursive) => {
                let e = self.walk(k)?;
                let mut out = vec![self.listed(k, e)];
                if e.dir {
                    self.list(k, *recursive, &mut out);
                }
                Ok((out, None))
            }
            Op::Tick(_) | Op::Restart => Ok((Vec::new(), None)),
        }
    }
}

fn flatten(n: &NodeExtern, out: &mut Vec<Listed>) {
    let mut stack = vec![n];
    while let Some(n) = stack.pop() {
        out.push((
            n.key.clone(),
            n.value.as_deref().map(str::to_string),
            n.dir,
            n.expiration,
            n.modified_index,
            n.created_index,
        ));
        if let Some(children) = &n.nodes {
            stack.extend(children.iter().rev());
        }
    }
}

/// Runs `op` on a store: what the model compares, and the exact bytes for the twin.
fn run(s: &mut Store, op: &Op, now: SystemTime) -> (Outcome, Vec<u8>) {
    let t = |secs: &Option<u64>| TtlOptions {
        expire_time: secs.map(|s| now + Duration::from_secs(s)),
        refresh: false,
    };
    let res: oxcd_v2store::Result<Event> = match op {
        Op::Set(k, d, v, x) => s.set(k, *d, v, t(x), now),
        Op::Create(k, d, v, x) => s.create(k, *d, v, false, t(x), now),
        Op::CreateInOrder(k, v) => s.create(k, false, v, true, t(&None), now),
        Op::Update(k, v, x) => s.update(k, v, t(x), now),
        Op::Cas(k, pv, pi, v, x) => s.compare_and_swap(k, pv, *pi, v, t(x), now),
        Op::Delete(k, d, r) => s.delete(k, *d, *r, now),
        Op::Cad(k, pv, pi) => s.compare_and_delete(k, pv, *pi, now),
        Op::Get(k, r) => s.get(k, *r, true, now),
        Op::Tick(_) | Op::Restart => unreachable!("handled by the caller"),
    };
    let mut bytes = Vec::new();
    let outcome = match &res {
        Ok(ev) => {
            ev.write_json(&mut bytes);
            bytes.extend_from_slice(format!(" @{}", ev.etcd_index).as_bytes());
            let mut listed = Vec::new();
            let prev = match op {
                Op::Get(..) => {
                    flatten(ev.node.as_ref().expect("a get has a node"), &mut listed);
                    None
                }
                _ => Some(
                    ev.prev_node
                        .as_ref()
                        .map(|p| p.value.as_deref().unwrap_or("").to_string()),
                ),
            };
            Ok((listed, prev))
        }
        Err(e) => {
            bytes.extend_from_slice(e.to_json().as_bytes());
            Err(e.code)
        }
    };
    (outcome, bytes)
}

fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = Model::new();
    let mut store = Store::new(&[]);
    let mut twin = Store::new(&[]);
    let mut now = start();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Tick(secs) => {
                now += Duration::from_secs(*secs);
                store.delete_expired_keys(now);
                twin.delete_expired_keys(now);
                model.expire(now);
            }
            Op::Restart => {
                let data = store.save();
                let mut fresh = Store::new(&[]);
                fresh
                    .recovery(&data)
                    .map_err(|e| TestCaseError::fail(format!("op {i}: {e}")))?;
                store = fresh;
            }
            _ => {
                let want = model.apply(op, now);
                let (got, bytes) = run(&mut store, op, now);
                let (_, twin_bytes) = run(&mut twin, op, now);
                prop_assert_eq!(&got, &want, "op {}: {:?}", i, op);
                prop_assert_eq!(
                    String::from_utf8_lossy(&bytes),
                    String::from_utf8_lossy(&twin_bytes),
                    "op {}: the restarted store and its twin differ",
                    i
                );
            }
        }
        prop_assert_eq!(store.index(), model.index, "index after op {}: {:?}", i, op);
        prop_assert_eq!(twin.index(), model.index);
        prop_assert_eq!(store.has_ttl_keys(), twin.has_ttl_keys());
    }
    Ok(())
}

/// A snapshot with its trailer's checksum made to match `body` again, so that damage
/// reaches the record parser instead of stopping at the checksum.
fn with_fresh_crc(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(format!("crc32c {crc:08x}\n").as_bytes());
    body
}

#[derive(Debug, Clone)]
enum Damage {
    Truncate(prop::sample::Index),
    Flip(Vec<(prop::sample::Index, u8)>),
    Overwrite(prop::sample::Index, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4).prop_map(Damage::Flip),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 1..6)
        )
            .prop_map(|(i, b)| Damage::Overwrite(i, b)),
    ]
}

fn apply_damage(data: &mut Vec<u8>, d: &Damage) {
    if data.is_empty() {
        return;
    }
    match d {
        Damage::Truncate(i) => data.truncate(i.index(data.len())),
        Damage::Flip(bits) => {
            for (i, bit) in bits {
                let at = i.index(data.len());
                data[at] ^= 1 << bit;
            }
        }
        Damage::Overwrite(i, bytes) => {
            let at = i.index(data.len());
            for (j, b) in bytes.iter().enumerate() {
                if let Some(slot) = data.get_mut(at + j) {
                    *slot = *b;
                }
            }
        }
    }
}

proptest! {
    #[test]
    fn the_store_behaves_like_the_model(ops in prop::collection::vec(op(), 1..60)) {
        check(&ops)?;
    }

    #[test]
    fn damaged_snapshots_are_errors_not_panics(
        ops in prop::collection::vec(op(), 0..25),
        d in damage(),
        fix_crc in any::<bool>(),
    ) {
        let mut s = Store::new(&["/0", "/1"]);
        let now = start();
        for op in &ops {
            if !matches!(op, Op::Tick(_) | Op::Restart) {
                let _ = run(&mut s, op, now);
            }
        }
        let data = s.save();
        let mut damaged = data.clone();
        if fix_crc {
            // Damage the body only, and checksum it again.
            let body_end = data[..data.len() - 1]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let mut body = data[..body_end].to_vec();
            apply_damage(&mut body, &d);
            damaged = with_fresh_crc(body);
        } else {
            apply_damage(&mut damaged, &d);
        }
        let mut r = Store::new(&["/0", "/1"]);
        match r.recovery(&damaged) {
            // Damage that still decodes (e.g. a changed value) gives a usable store.
            Ok(()) => {
                let _ = r.get("/", true, true, now).map(|e| e.node.is_some());
                let _ = r.save();
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        if damaged == data {
            prop_assert!(r.recovery(&damaged).is_ok());
        }
    }

    #[test]
    fn damaged_old_format_snapshots_are_errors_not_panics(d in damage()) {
        let mut old = br#"{"index":3,"root":{"created_index":0,"modified_index":0,"value":"","expire":null,"children":{"1":{"created_index":0,"modified_index":0,"value":"","expire":null,"children":{"foo":{"created_index":2,"modified_index":3,"value":"bar","expire":{"secs_since_epoch":1800000005,"nanos_since_epoch":0},"children":null}}}}}}"#.to_vec();
        apply_damage(&mut old, &d);
        let _ = Store::new(&[]).recovery(&old);
    }
}
