//! Store semantics, named after the etcd v2 API sections they check.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use oxcd_api::v2::{Action, ErrorCode, Event};
use oxcd_v2store::{Store, TtlOptions, WatchOutcome, WatchSink};

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn store() -> Store {
    Store::new(&["/0", "/1"])
}

const P: TtlOptions = TtlOptions {
    expire_time: None,
    refresh: false,
};

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Arc<Event>>>>);
impl WatchSink for Sink {
    fn try_send(&self, e: Arc<Event>) -> bool {
        self.0.lock().unwrap().push(e);
        true
    }
}

#[test]
fn set_get_and_prev_node() {
    let mut s = store();
    let e = s.set("/1/foo", false, "bar", P, now()).unwrap();
    assert_eq!(e.action, Action::Set);
    assert_eq!(e.etcd_index, 1);
    assert!(e.prev_node.is_none());
    let e = s.set("/1/foo", false, "baz", P, now()).unwrap();
    assert_eq!(e.prev_node.unwrap().value.as_deref(), Some("bar"));
    let g = s.get("/1/foo", false, false, now()).unwrap();
    assert_eq!(g.node.unwrap().value.as_deref(), Some("baz"));
    assert_eq!(s.index(), 2);
    let err = s.get("/1/a/b", false, false, now()).unwrap_err();
    assert_eq!(
        (err.code, err.cause.as_str()),
        (ErrorCode::KeyNotFound, "/1/a")
    );
}

#[test]
fn create_update_and_compare() {
    let mut s = store();
    s.create("/1/k", false, "v", false, P, now()).unwrap();
    assert_eq!(
        s.create("/1/k", false, "v", false, P, now())
            .unwrap_err()
            .code,
        ErrorCode::NodeExist
    );
    assert_eq!(
        s.update("/1/x", "v", P, now()).unwrap_err().code,
        ErrorCode::KeyNotFound
    );
    let err = s
        .compare_and_swap("/1/k", "nope", 7, "w", P, now())
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::TestFailed);
    assert_eq!(err.cause, "[nope != v] [7 != 1]");
    let e = s.compare_and_swap("/1/k", "v", 1, "w", P, now()).unwrap();
    assert_eq!(e.node.unwrap().value.as_deref(), Some("w"));
    let err = s.compare_and_delete("/1/k", "v", 0, now()).unwrap_err();
    assert_eq!(err.cause, "[v != w]");
    s.compare_and_delete("/1/k", "w", 0, now()).unwrap();
    assert_eq!(s.index(), 3);
}

#[test]
fn directories_and_in_order_keys() {
    let mut s = store();
    let a = s.create("/1/q", false, "j1", true, P, now()).unwrap();
    assert_eq!(a.node.unwrap().key, "/1/q/00000000000000000001");
    assert_eq!(
        s.delete("/1/q", false, false, now()).unwrap_err().code,
        ErrorCode::NotFile
    );
    assert_eq!(
        s.delete("/1/q", true, false, now()).unwrap_err().code,
        ErrorCode::DirNotEmpty
    );
    s.delete("/1/q", true, true, now()).unwrap();
    assert_eq!(
        s.set("/1", false, "x", P, now()).unwrap_err().code,
        ErrorCode::RootROnly
    );
    s.set("/1/_hidden", false, "x", P, now()).unwrap();
    let list = s.get("/1", false, false, now()).unwrap();
    assert!(
        list.node.unwrap().nodes.is_none(),
        "hidden keys are not listed"
    );
}

#[test]
fn ttl_expiry_only_through_delete_expired_keys() {
    let mut s = store();
    let ttl = TtlOptions {
        expire_time: Some(now() + Duration::from_millis(1500)),
        refresh: false,
    };
    let e = s.set("/1/t", false, "v", ttl, now()).unwrap();
    assert_eq!(e.node.unwrap().ttl, 2, "ttl rounds up");
    assert!(s.has_ttl_keys());
    let sink = Sink::default();
    s.watch("/1/t", false, false, 0, Box::new(sink.clone()))
        .unwrap();
    s.delete_expired_keys(now() + Duration::from_secs(1));
    assert!(s.get("/1/t", false, false, now()).is_ok());
    s.delete_expired_keys(now() + Duration::from_secs(2));
    assert_eq!(
        s.get("/1/t", false, false, now()).unwrap_err().code,
        ErrorCode::KeyNotFound
    );
    let got = sink.0.lock().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].action, Action::Expire);
    assert!(!s.has_ttl_keys());
}

#[test]
fn watches_history_recursive_and_cleared() {
    let mut s = store();
    s.set("/1/d/a", false, "1", P, now()).unwrap();
    match s
        .watch("/1/d", true, false, 1, Box::new(Sink::default()))
        .unwrap()
    {
        WatchOutcome::Ready(e) => assert_eq!(e.node.as_ref().unwrap().key, "/1/d/a"),
        _ => panic!("event 1 is in the history"),
    }
    let sink = Sink::default();
    s.watch("/1/d", true, true, 0, Box::new(sink.clone()))
        .unwrap();
    s.set("/1/d/b", false, "2", P, now()).unwrap();
    s.set("/1/d/_h", false, "h", P, now()).unwrap();
    s.set("/1/d/c", false, "3", P, now()).unwrap();
    assert_eq!(
        sink.0.lock().unwrap().len(),
        2,
        "stream watcher saw b and c, not the hidden key"
    );
    for i in 0..1000 {
        s.set("/1/many", false, &i.to_string(), P, now()).unwrap();
    }
    let err = match s.watch("/1/d", true, false, 1, Box::new(Sink::default())) {
        Err(e) => e,
        Ok(_) => panic!("index 1 was pushed out of the history"),
    };
    assert_eq!(err.code, ErrorCode::EventIndexCleared);
}

/// A watch of `key` from `index` is answered at once, from the history.
fn answered_from_history(s: &mut Store, key: &str, index: u64) {
    match s
        .watch(key, false, false, index, Box::new(Sink::default()))
        .unwrap()
    {
        WatchOutcome::Ready(e) => assert_eq!(e.index(), index),
        _ => panic!("the change at {index} is in the history"),
    }
}

#[test]
fn deferred_notifications_arrive_at_the_flush_as_they_would_without_deferral() {
    let mut s = store();
    s.defer_notifications();
    let (before, stream, late_new) = (Sink::default(), Sink::default(), Sink::default());
    s.watch("/1/k", false, false, 0, Box::new(before.clone()))
        .unwrap();
    s.watch("/1/d", true, true, 0, Box::new(stream.clone()))
        .unwrap();
    let set = s.set("/1/k", false, "v", P, now()).unwrap();
    s.set("/1/d/x", false, "1", P, now()).unwrap();
    s.delete("/1/d", true, true, now()).unwrap();
    assert!(
        before.0.lock().unwrap().is_empty(),
        "held back until the flush"
    );
    assert!(stream.0.lock().unwrap().is_empty());
    // Registering in between: an index already changed is answered from the history...
    answered_from_history(&mut s, "/1/k", set.etcd_index);
    // ...and a watcher of what comes next does not get the held-back changes.
    s.watch("/1/k", false, false, 0, Box::new(late_new.clone()))
        .unwrap();
    s.flush_notifications();
    s.flush_notifications();
    let got = before.0.lock().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].index(), set.etcd_index);
    // The stream watcher saw what it sees without deferral, in the same order.
    let mut immediate = store();
    let same = Sink::default();
    immediate
        .watch("/1/d", true, true, 0, Box::new(same.clone()))
        .unwrap();
    immediate.set("/1/k", false, "v", P, now()).unwrap();
    immediate.set("/1/d/x", false, "1", P, now()).unwrap();
    immediate.delete("/1/d", true, true, now()).unwrap();
    let seen = |sink: &Sink| -> Vec<(Action, u64)> {
        sink.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.action, e.index()))
            .collect()
    };
    assert_eq!(seen(&stream), seen(&same));
    assert_eq!(seen(&stream)[0], (Action::Set, 2));
    assert!(late_new.0.lock().unwrap().is_empty());
    s.set("/1/k", false, "w", P, now()).unwrap();
    s.flush_notifications();
    assert_eq!(late_new.0.lock().unwrap().len(), 1);
}

#[test]
fn with_nobody_watching_nothing_is_held_back_and_nothing_is_owed() {
    let mut s = store();
    s.defer_notifications();
    let set = s.set("/1/k", false, "v", P, now()).unwrap();
    assert!(!s.has_held_notifications(), "no watcher, nothing to hold");
    // A watcher registering before the flush: of the next change only, or of this one
    // from the history.
    let next = Sink::default();
    s.watch("/1/k", false, false, 0, Box::new(next.clone()))
        .unwrap();
    answered_from_history(&mut s, "/1/k", set.etcd_index);
    s.flush_notifications();
    assert!(
        next.0.lock().unwrap().is_empty(),
        "not owed the earlier change"
    );
    // Now someone watches: the next change is held until the flush.
    s.set("/1/k", false, "w", P, now()).unwrap();
    assert!(s.has_held_notifications());
    assert!(next.0.lock().unwrap().is_empty());
    s.flush_notifications();
    assert!(!s.has_held_notifications());
    assert_eq!(next.0.lock().unwrap().len(), 1);
}

#[test]
fn snapshot_round_trip() {
    let mut s = store();
    s.set("/1/a", false, "1", P, now()).unwrap();
    let ttl = TtlOptions {
        expire_time: Some(now() + Duration::from_secs(5)),
        refresh: false,
    };
    s.set("/1/b", false, "2", ttl, now()).unwrap();
    let data = s.save();
    let mut r = store();
    r.recovery(&data).unwrap();
    assert_eq!(r.index(), 2);
    assert!(r.has_ttl_keys());
    assert_eq!(
        r.get("/1/a", false, false, now())
            .unwrap()
            .node
            .unwrap()
            .value
            .as_deref(),
        Some("1")
    );
    assert!(r.recovery(b"garbage").is_err());
}
