//! Keys of any depth: every operation on a 100,000-segment key, on the default test thread
//! (2 MiB of stack). Any recursion over the depth of the tree overflows that stack, and the
//! old nested-JSON snapshot could not even be read back past serde_json's nesting limit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use oxcd_api::v2::{Action, ErrorCode, Event};
use oxcd_v2store::{Store, TtlOptions, WatchOutcome, WatchSink};

const DEPTH: usize = 100_000;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

const P: TtlOptions = TtlOptions {
    expire_time: None,
    refresh: false,
};

fn ttl(secs: u64) -> TtlOptions {
    TtlOptions {
        expire_time: Some(now() + Duration::from_secs(secs)),
        refresh: false,
    }
}

/// `/d/d/…/d` with `depth` segments.
fn deep(depth: usize) -> String {
    "/d".repeat(depth)
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Arc<Event>>>>);
impl WatchSink for Sink {
    fn try_send(&self, e: Arc<Event>) -> bool {
        self.0.lock().unwrap().push(e);
        true
    }
}

impl Sink {
    fn actions(&self) -> Vec<(Action, String)> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .map(|e| (e.action, e.node.as_ref().unwrap().key.clone()))
            .collect()
    }
}

fn value(s: &Store, key: &str) -> Option<String> {
    s.get(key, false, false, now())
        .ok()
        .and_then(|e| e.node.unwrap().value.as_deref().map(str::to_string))
}

#[test]
fn a_deep_key_is_set_read_saved_recovered_deleted_and_dropped() {
    // No namespaces: every directory has one child, so the encoding's order is fixed and
    // two encodings of equal trees are equal bytes.
    let mut s = Store::new(&[]);
    let key = deep(DEPTH);
    s.set(&key, false, "bottom", P, now()).unwrap();
    let mid = deep(DEPTH / 2);
    s.update(&mid, "", ttl(100), now()).unwrap();
    assert_eq!(value(&s, &key).as_deref(), Some("bottom"));
    s.compare_and_swap(&key, "bottom", 0, "swapped", P, now())
        .unwrap();
    assert_eq!(
        s.create(&key, false, "x", false, P, now())
            .unwrap_err()
            .code,
        ErrorCode::NodeExist
    );
    let below = format!("{key}/more");
    assert_eq!(
        s.set(&below, false, "x", P, now()).unwrap_err().code,
        ErrorCode::NotDir
    );
    // A listing near the bottom, recursive and sorted.
    let near = deep(DEPTH - 3);
    let listing = s.get(&near, true, true, now()).unwrap().node.unwrap();
    let mut depth = 0;
    let mut at = &listing;
    while let Some(n) = at.nodes.as_ref().and_then(|n| n.first()) {
        depth += 1;
        at = n;
    }
    assert_eq!((depth, at.value.as_deref()), (3, Some("swapped")));
    assert!(!s.json_stats().is_empty());

    // Snapshot: save and recovery into a fresh store.
    let data = s.save();
    let mut r = Store::new(&[]);
    r.recovery(&data).unwrap();
    assert_eq!(r.index(), s.index());
    assert_eq!(r.save(), data);
    assert_eq!(value(&r, &key).as_deref(), Some("swapped"));
    assert!(r.has_ttl_keys());
    // The TTL came back with the tree: the middle of the chain expires, and the bottom
    // half goes with it.
    r.delete_expired_keys(now() + Duration::from_secs(100));
    assert_eq!(
        r.get(&key, false, false, now()).unwrap_err().code,
        ErrorCode::KeyNotFound
    );
    assert!(!r.has_ttl_keys());
    assert!(value(&r, &deep(DEPTH / 2 - 1)).is_none()); // a directory, still there
    r.get(&deep(DEPTH / 2 - 1), false, false, now()).unwrap();

    // Delete: a key, then everything recursively.
    s.delete(&key, false, false, now()).unwrap();
    assert_eq!(
        s.delete("/d", false, false, now()).unwrap_err().code,
        ErrorCode::NotFile
    );
    assert_eq!(
        s.delete("/d", true, false, now()).unwrap_err().code,
        ErrorCode::DirNotEmpty
    );
    s.delete("/d", false, true, now()).unwrap();
    assert!(!s.has_ttl_keys());
    assert_eq!(
        s.get("/d", false, false, now()).unwrap_err().code,
        ErrorCode::KeyNotFound
    );
    // The recovered store (still holding the top half) drops on this thread.
    drop(r);
}

#[test]
fn a_deep_key_expires() {
    let mut s = Store::new(&["/0", "/1"]);
    let key = format!("/1{}", deep(DEPTH));
    s.set(&key, false, "v", ttl(10), now()).unwrap();
    s.delete_expired_keys(now() + Duration::from_secs(9));
    assert_eq!(value(&s, &key).as_deref(), Some("v"));
    s.delete_expired_keys(now() + Duration::from_secs(10));
    assert_eq!(
        s.get(&key, false, false, now()).unwrap_err().code,
        ErrorCode::KeyNotFound
    );
    // A TTL on the top directory takes the whole chain with it.
    s.set(&key, false, "v", P, now()).unwrap();
    s.update("/1/d", "", ttl(5), now()).unwrap();
    s.delete_expired_keys(now() + Duration::from_secs(5));
    assert_eq!(
        s.get("/1/d", false, false, now()).unwrap_err().code,
        ErrorCode::KeyNotFound
    );
    let stats = String::from_utf8(s.json_stats()).unwrap();
    assert!(stats.contains("\"expireCount\":2"), "{stats}");
}

#[test]
fn watchers_of_deep_paths_are_woken() {
    for deferred in [false, true] {
        let mut s = Store::new(&["/0", "/1"]);
        if deferred {
            s.defer_notifications();
        }
        let key = format!("/1{}", deep(DEPTH));
        let prefix = format!("/1{}", deep(DEPTH / 2));
        let parent = format!("/1{}", deep(DEPTH - 1));
        s.set(&key, false, "v", P, now()).unwrap();
        let watch = |s: &mut Store, path: &str, recursive: bool, stream: bool| {
            let sink = Sink::default();
            let out = s
                .watch(path, recursive, stream, 0, Box::new(sink.clone()))
                .unwrap();
            assert!(matches!(out, WatchOutcome::Registered { .. }));
            sink
        };
        let on_prefix = watch(&mut s, &prefix, true, true);
        let on_parent = watch(&mut s, &parent, false, true);
        let on_key = watch(&mut s, &key, false, false);
        let elsewhere = watch(&mut s, "/1/e", true, true);
        s.set(&key, false, "w", P, now()).unwrap();
        s.delete("/1/d", false, true, now()).unwrap();
        s.flush_notifications();
        let set = (Action::Set, key.clone());
        let del = (Action::Delete, "/1/d".to_string());
        assert_eq!(on_prefix.actions(), vec![set.clone(), del.clone()]);
        // Not recursive: only the deletion of its own path reaches the parent's watcher.
        assert_eq!(on_parent.actions(), vec![del.clone()]);
        assert_eq!(on_key.actions(), vec![set]);
        assert!(elsewhere.actions().is_empty());
        // History: a watcher of a path deep inside the deleted tree finds the delete.
        let late = s
            .watch(&key, false, false, 3, Box::new(Sink::default()))
            .unwrap();
        assert!(matches!(late, WatchOutcome::Ready(ev) if ev.action == Action::Delete));
    }
}

#[test]
fn a_deep_tree_is_listed_recursively_from_the_root() {
    // Every node of a listing carries its full key, so a listing of a chain costs the
    // square of its depth in keys alone (10 GB for 100,000 one-letter segments): this
    // depth keeps that to a few MB, well past where recursion overflowed the stack.
    const LISTED: usize = 4_000;
    let mut s = Store::new(&["/0", "/1"]);
    let key = format!("/1{}", deep(LISTED));
    s.set(&key, false, "v", P, now()).unwrap();
    s.set("/1/_hidden/x", false, "v", P, now()).unwrap();
    s.set("/1/a", false, "v", P, now()).unwrap();
    let ev = s.get("/", true, true, now()).unwrap();
    let mut out = Vec::new();
    ev.write_json(&mut out);
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("{\"action\":\"get\",\"node\":{\"key\":\"/\",\"dir\":true,\"nodes\":["));
    assert!(out.contains(&format!(
        "{{\"key\":\"{key}\",\"value\":\"v\",\"modifiedIndex\":1,\"createdIndex\":1}}"
    )));
    assert!(!out.contains("_hidden"));
    // Every directory with children is listed: the root, /1 and the chain above the key;
    // the empty /0 has no "nodes" at all (Go's omitempty).
    assert_eq!(out.matches("\"nodes\":[").count(), LISTED + 1);
    assert_eq!(out.matches(']').count(), LISTED + 1);
    // Sorted: "/0" before "/1", "/1/a" before "/1/d".
    let at = |k: &str| out.find(&format!("\"key\":\"{k}\"")).unwrap();
    assert!(at("/0") < at("/1") && at("/1/a") < at("/1/d"));
    let mut node = ev.node.unwrap();
    node.trim_prefix("/1");
    let copy = node.clone();
    assert_eq!(copy.nodes.as_ref().map(Vec::len), Some(2));
    drop(node);
    drop(copy);
}
