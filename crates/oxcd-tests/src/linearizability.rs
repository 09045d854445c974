//! A linearizability checker for histories of a key-value store whose keys are registers
//! with read, write and compare-and-swap.
//!
//! The search is Wing & Gong's, with Lowe's memoization (as in Knossos and porcupine): the
//! history becomes a list of call and return events in time order; the checker walks it,
//! tries to linearize each operation whose call it meets (apply it to the model, drop its
//! call and return from the list), and backtracks when it meets the return of an operation
//! it has not linearized yet. A (linearized set, model state) pair it has already explored
//! is not explored again (the set is kept as a 128-bit hash). Keys are independent registers, so each key's history is checked
//! on its own (linearizability is compositional).
//!
//! An operation whose outcome is unknown (the client timed out or lost the connection after
//! sending it) may have taken effect at any moment after its call, or never: it is given a
//! return at +infinity and any outcome is accepted. "Never" is covered too, because taking
//! effect after every other operation is indistinguishable from not taking effect.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Read the key.
    Read,
    /// Set the key to a value.
    Write(String),
    /// Set the key to `to` if it holds `from` (etcd's `prevValue`).
    Cas { from: String, to: String },
}

/// What the client was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A read's answer: the value, or `None` for "key not found".
    Read(Option<String>),
    /// A write was acknowledged.
    Written,
    /// A compare-and-swap applied (`true`) or definitely did not (`false`: compare failed,
    /// or the key did not exist).
    Cas(bool),
    /// No answer: the operation may have taken effect at any point after its call, or never.
    Unknown,
}

/// One operation of a history. Times are in any monotonic unit (the process test uses
/// nanoseconds since the start of the run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Who issued it (only for the report).
    pub client: usize,
    pub key: String,
    pub call: Call,
    pub outcome: Outcome,
    /// When the request was sent.
    pub invoked: u64,
    /// When the answer came, or when the client gave up on it. Ignored by the check when the
    /// outcome is [`Outcome::Unknown`] (such an operation returns at +infinity).
    pub returned: u64,
}

/// The checker's answer.
#[derive(Debug)]
pub enum Verdict {
    /// Every key's history is linearizable.
    Linearizable,
    /// One key's history is not (the first such key, in key order).
    Violation(Violation),
    /// The search of a key took more than the step budget (never with [`check`]'s budget
    /// on realistic histories).
    GaveUp { key: String, steps: u64 },
}

impl Verdict {
    /// Whether the history was proven linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// A key whose history has no linearization.
#[derive(Debug, Clone)]
pub struct Violation {
    pub key: String,
    /// The key's operations, ordered by call time; the report numbers them from 0.
    pub history: Vec<Operation>,
    /// The longest order found in which a prefix of the history linearizes (indexes into
    /// `history`); the next operation the history requires could not follow it.
    pub longest: Vec<usize>,
}

/// Checks every key of `history` with a budget of 50 million search steps per key.
pub fn check(history: &[Operation]) -> Verdict {
    check_with_budget(history, 50_000_000)
}

/// [`check`] with an explicit step budget per key.
pub fn check_with_budget(history: &[Operation], max_steps: u64) -> Verdict {
    let mut by_key: HashMap<&str, Vec<Operation>> = HashMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op.clone());
    }
    let mut keys: Vec<&str> = by_key.keys().copied().collect();
    keys.sort_unstable();
    for key in keys {
        let mut ops = by_key.remove(key).unwrap_or_default();
        ops.sort_by_key(|o| (o.invoked, o.returned));
        match check_register(&ops, max_steps) {
            Search::Linearizable => {}
            Search::Stuck(longest) => {
                return Verdict::Violation(Violation {
                    key: key.to_string(),
                    history: ops,
                    longest,
                })
            }
            Search::OutOfSteps(steps) => {
                return Verdict::GaveUp {
                    key: key.to_string(),
                    steps,
                }
            }
        }
    }
    Verdict::Linearizable
}

/// An operation on interned values: 0 is "no value", `n > 0` the n-th distinct string.
#[derive(Clone, Copy)]
enum Step {
    Read(u32),
    ReadAny,
    Write(u32),
    Cas {
        from: u32,
        to: u32,
        ok: Option<bool>,
    },
}

impl Step {
    /// The register's next state, or `None` if the outcome is impossible from `state`.
    fn apply(self, state: u32) -> Option<u32> {
        match self {
            Step::Read(v) => (state == v).then_some(state),
            Step::ReadAny => Some(state),
            Step::Write(v) => Some(v),
            Step::Cas {
                from,
                to,
                ok: Some(true),
            } => (state == from).then_some(to),
            Step::Cas {
                from,
                ok: Some(false),
                ..
            } => (state != from).then_some(state),
            Step::Cas { from, to, ok: None } => Some(if state == from { to } else { state }),
        }
    }
}

enum Search {
    Linearizable,
    Stuck(Vec<usize>),
    OutOfSteps(u64),
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// A cheap mixer for the memo's keys, which are already well-spread hashes.
#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = splitmix(self.0 ^ n);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The event list: node 0 is the head, then a call node and a return node per operation,
/// linked in time order (calls before returns at equal times, so touching operations count
/// as concurrent). Lifting an operation unlinks both of its nodes; unlifting relinks them.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Operation of each node (unused for the head).
    op: Vec<usize>,
    /// The return node of each call node; `NIL` for return nodes.
    ret: Vec<usize>,
}

impl Events {
    fn new(times: &[(u64, u64)]) -> Events {
        let n = times.len();
        // (time, 0 = call / 1 = return, op)
        let mut ev: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
        for (i, &(call, ret)) in times.iter().enumerate() {
            ev.push((call, 0, i));
            ev.push((ret, 1, i));
        }
        ev.sort_unstable();
        let len = 2 * n + 1;
        let mut e = Events {
            next: vec![NIL; len],
            prev: vec![NIL; len],
            op: vec![NIL; len],
            ret: vec![NIL; len],
        };
        let mut call_node = vec![NIL; n];
        for (pos, &(_, kind, op)) in ev.iter().enumerate() {
            let node = pos + 1;
            e.op[node] = op;
            e.prev[node] = pos;
            e.next[pos] = node;
            if kind == 0 {
                call_node[op] = node;
            } else {
                e.ret[call_node[op]] = node;
            }
        }
        e
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.ret[call]);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(self.ret[call]);
        self.relink(call);
    }
}

/// Checks one register's history (ordered by call time).
fn check_register<'a>(ops: &'a [Operation], max_steps: u64) -> Search {
    let mut values: HashMap<&str, u32> = HashMap::new();
    let mut intern = |s: &'a str| -> u32 {
        let next = values.len() as u32 + 1;
        *values.entry(s).or_insert(next)
    };
    let steps: Vec<Step> = ops
        .iter()
        .map(|o| match (&o.call, &o.outcome) {
            (Call::Read, Outcome::Read(Some(v))) => Step::Read(intern(v)),
            (Call::Read, Outcome::Read(None)) => Step::Read(0),
            (Call::Read, _) => Step::ReadAny,
            (Call::Write(v), _) => Step::Write(intern(v)),
            (Call::Cas { from, to }, outcome) => Step::Cas {
                from: intern(from),
                to: intern(to),
                ok: match outcome {
                    Outcome::Cas(ok) => Some(*ok),
                    _ => None,
                },
            },
        })
        .collect();
    let times: Vec<(u64, u64)> = ops
        .iter()
        .map(|o| {
            let ret = if o.outcome == Outcome::Unknown {
                u64::MAX
            } else {
                o.returned.max(o.invoked)
            };
            (o.invoked, ret)
        })
        .collect();
    let mut events = Events::new(&times);
    // The linearized set is kept as a 128-bit Zobrist hash: the XOR of two random words
    // per member. Memory per explored pair is then constant, which long histories (100,000
    // operations on a key) need. Two distinct sets collide with probability 2^-128 per
    // pair; a collision could only hide a linearization (report a false violation), never
    // accept a history that has none.
    let zobrist: Vec<(u64, u64)> = (0..ops.len() as u64)
        .map(|i| (splitmix(2 * i), splitmix(2 * i + 1)))
        .collect();
    let mut set = (0u64, 0u64);
    let mut state = 0u32;
    // Explored (linearized set, state) pairs.
    let mut seen: HashSet<(u64, u64, u32), BuildHasherDefault<MixHasher>> = HashSet::default();
    // Linearized calls, with the state before each.
    let mut stack: Vec<(usize, u32)> = Vec::new();
    // The longest linearized order so far; `best[..same]` equals the stack's.
    let mut best: Vec<usize> = Vec::new();
    let mut same = 0usize;
    let mut taken = 0u64;

    let mut node = events.next[HEAD];
    while events.next[HEAD] != NIL {
        taken += 1;
        if taken > max_steps {
            return Search::OutOfSteps(taken);
        }
        let op = events.op[node];
        if events.ret[node] != NIL {
            // A call: try to linearize the operation here.
            if let Some(next_state) = steps[op].apply(state) {
                let next_set = (set.0 ^ zobrist[op].0, set.1 ^ zobrist[op].1);
                if seen.insert((next_set.0, next_set.1, next_state)) {
                    stack.push((node, state));
                    state = next_state;
                    set = next_set;
                    events.lift(node);
                    if stack.len() > best.len() {
                        best.truncate(same);
                        best.extend(stack[same..].iter().map(|&(n, _)| events.op[n]));
                        same = stack.len();
                    }
                    node = events.next[HEAD];
                    continue;
                }
            }
            node = events.next[node];
        } else {
            // The return of an operation not linearized yet: undo the last choice.
            let Some((call, before)) = stack.pop() else {
                return Search::Stuck(best);
            };
            same = same.min(stack.len());
            let undone = events.op[call];
            set = (set.0 ^ zobrist[undone].0, set.1 ^ zobrist[undone].1);
            state = before;
            events.unlift(call);
            node = events.next[call];
        }
    }
    Search::Linearizable
}

fn describe(op: &Operation) -> String {
    let call = match &op.call {
        Call::Read => "read".to_string(),
        Call::Write(v) => format!("write {v:?}"),
        Call::Cas { from, to } => format!("cas {from:?} -> {to:?}"),
    };
    let outcome = match &op.outcome {
        Outcome::Read(Some(v)) => format!("{v:?}"),
        Outcome::Read(None) => "not found".to_string(),
        Outcome::Written => "ok".to_string(),
        Outcome::Cas(true) => "ok".to_string(),
        Outcome::Cas(false) => "compare failed".to_string(),
        Outcome::Unknown => "UNKNOWN (may apply later or never)".to_string(),
    };
    let ms = |t: u64| t as f64 / 1e6;
    format!(
        "client {:>2}  {:>10.3} .. {:>10.3} ms  {call} => {outcome}",
        op.client,
        ms(op.invoked),
        ms(op.returned)
    )
}

impl Violation {
    /// The whole key history, one line per operation, with each operation's place in the
    /// longest linearizable order found.
    pub fn full_report(&self) -> String {
        self.report(usize::MAX)
    }

    /// A report showing at most about `max_lines` operations: those the search could not
    /// place and the last ones of the longest order found before them.
    pub fn report(&self, max_lines: usize) -> String {
        let mut place = vec![None; self.history.len()];
        for (pos, &i) in self.longest.iter().enumerate() {
            place[i] = Some(pos);
        }
        let mut state: Option<&str> = None;
        for &i in &self.longest {
            let op = &self.history[i];
            match (&op.call, &op.outcome) {
                (Call::Write(v), _) => state = Some(v),
                (Call::Cas { from, to }, Outcome::Cas(true)) => {
                    debug_assert_eq!(state, Some(from.as_str()));
                    state = Some(to);
                }
                (Call::Cas { from, to }, Outcome::Unknown) if state == Some(from.as_str()) => {
                    state = Some(to);
                }
                _ => {}
            }
        }
        // Show everything not placed, and the tail of the placed order.
        let keep_from = self.longest.len().saturating_sub(max_lines / 2);
        let shown: Vec<usize> = (0..self.history.len())
            .filter(|&i| place[i].is_none_or(|p| p >= keep_from))
            .take(max_lines)
            .collect();
        let mut out = format!(
            "key {:?}: not linearizable. {} operations; the longest linearizable order \
             found places {} of them, leaving the value at {}; none of the rest can come next.\n\
             Operations (by call time; `[n]` = place in that order, `[ ]` = not placed):\n",
            self.key,
            self.history.len(),
            self.longest.len(),
            state.map_or("<not found>".to_string(), |v| format!("{v:?}")),
        );
        for &i in &shown {
            let tag = place[i].map_or("[    ]".to_string(), |p| format!("[{p:>4}]"));
            out.push_str(&format!("  #{i:<5} {tag} {}\n", describe(&self.history[i])));
        }
        if shown.len() < self.history.len() {
            out.push_str(&format!(
                "  ({} earlier operations, all placed, not shown)\n",
                self.history.len() - shown.len()
            ));
        }
        out
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.report(120))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn op(client: usize, invoked: u64, returned: u64, call: Call, outcome: Outcome) -> Operation {
        Operation {
            client,
            key: "k".to_string(),
            call,
            outcome,
            invoked,
            returned,
        }
    }
    fn write(c: usize, t0: u64, t1: u64, v: &str) -> Operation {
        op(c, t0, t1, Call::Write(v.into()), Outcome::Written)
    }
    fn read(c: usize, t0: u64, t1: u64, v: Option<&str>) -> Operation {
        op(c, t0, t1, Call::Read, Outcome::Read(v.map(String::from)))
    }
    fn cas(c: usize, t0: u64, t1: u64, from: &str, to: &str, ok: bool) -> Operation {
        let call = Call::Cas {
            from: from.into(),
            to: to.into(),
        };
        op(c, t0, t1, call, Outcome::Cas(ok))
    }
    fn pending(mut o: Operation) -> Operation {
        o.outcome = Outcome::Unknown;
        o
    }
    fn ok(h: &[Operation]) -> bool {
        match check(h) {
            Verdict::Linearizable => true,
            Verdict::Violation(v) => {
                eprintln!("{v}");
                false
            }
            Verdict::GaveUp { .. } => panic!("gave up"),
        }
    }

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        assert!(ok(&[]));
        assert!(ok(&[
            read(0, 0, 1, None),
            write(0, 2, 3, "a"),
            read(1, 4, 5, Some("a")),
            cas(1, 6, 7, "a", "b", true),
            cas(0, 8, 9, "a", "c", false),
            read(0, 10, 11, Some("b")),
        ]));
        // A read concurrent with a write may see either value; two of them may disagree
        // as long as the old one is not seen after the new one was.
        assert!(ok(&[
            write(0, 0, 1, "a"),
            write(1, 2, 10, "b"),
            read(2, 3, 4, Some("b")),
            read(3, 5, 11, Some("b")),
        ]));
        assert!(ok(&[
            write(0, 0, 1, "a"),
            write(1, 2, 10, "b"),
            read(2, 3, 4, Some("a")),
            read(3, 5, 6, Some("b")),
        ]));
        // A read that started before a write and ended after it may see the new value;
        // operations that only touch in time count as concurrent.
        assert!(ok(&[write(0, 5, 6, "a"), read(1, 0, 9, Some("a"))]));
        assert!(ok(&[write(0, 5, 6, "a"), read(1, 6, 7, None)]));
        // CAS on a missing key fails; a CAS racing a write may go either way.
        assert!(ok(&[
            cas(0, 0, 1, "a", "b", false),
            write(1, 2, 6, "a"),
            cas(0, 3, 8, "a", "c", true),
            read(2, 9, 10, Some("c")),
        ]));
    }

    #[test]
    fn stale_read_after_completed_write_is_caught() {
        let h = [
            write(0, 0, 1, "a"),
            write(0, 2, 3, "b"),
            read(1, 4, 5, Some("a")),
        ];
        assert!(!ok(&h));
        let Verdict::Violation(v) = check(&h) else {
            panic!()
        };
        assert_eq!(v.key, "k");
        assert_eq!(v.longest, vec![0, 1]);
        let report = v.to_string();
        assert!(report.contains("not linearizable"), "{report}");
        assert!(report.contains("read => \"a\""), "{report}");
    }

    #[test]
    fn lost_write_is_caught() {
        // Acknowledged, even read back, then gone.
        assert!(!ok(&[
            write(0, 0, 1, "a"),
            read(1, 2, 3, Some("a")),
            read(1, 4, 5, None),
        ]));
        // Acknowledged, but a later CAS finds the value from before it.
        assert!(!ok(&[
            write(0, 0, 1, "a"),
            write(0, 2, 3, "b"),
            cas(1, 4, 5, "a", "c", true),
        ]));
    }

    #[test]
    fn two_cas_from_the_same_value_cannot_both_succeed() {
        let base = [write(0, 0, 1, "a")];
        let mut h = base.to_vec();
        h.extend([cas(1, 2, 10, "a", "b", true), cas(2, 3, 9, "a", "c", true)]);
        assert!(!ok(&h));
        // One of them failing is fine, whichever it is.
        let mut h = base.to_vec();
        h.extend([cas(1, 2, 10, "a", "b", true), cas(2, 3, 9, "a", "c", false)]);
        assert!(ok(&h));
        let mut h = base.to_vec();
        h.extend([cas(1, 2, 10, "a", "b", false), cas(2, 3, 9, "a", "c", true)]);
        assert!(ok(&h));
        // A failed CAS while the value definitely matched is wrong too.
        assert!(!ok(&[write(0, 0, 1, "a"), cas(1, 2, 3, "a", "b", false)]));
    }

    #[test]
    fn read_of_a_value_never_written_is_caught() {
        assert!(!ok(&[write(0, 0, 10, "a"), read(1, 1, 9, Some("z"))]));
        // A value that only a failed CAS would have written.
        assert!(!ok(&[
            write(0, 0, 1, "a"),
            cas(0, 2, 3, "x", "y", false),
            read(1, 4, 5, Some("y")),
        ]));
    }

    #[test]
    fn unknown_outcomes_may_apply_late_or_never_but_once() {
        // A timed-out write observed long after the client gave up.
        assert!(ok(&[
            write(0, 0, 1, "a"),
            pending(write(1, 2, 3, "b")),
            read(2, 4, 5, Some("a")),
            read(2, 100, 101, Some("b")),
        ]));
        // ... or never observed.
        assert!(ok(&[
            write(0, 0, 1, "a"),
            pending(write(1, 2, 3, "b")),
            read(2, 100, 101, Some("a")),
        ]));
        // A timed-out CAS that applied, observed later; and one that did not.
        assert!(ok(&[
            write(0, 0, 1, "a"),
            pending(cas(1, 2, 3, "a", "b", false)),
            read(2, 50, 51, Some("a")),
            read(2, 60, 61, Some("b")),
        ]));
        assert!(ok(&[
            write(0, 0, 1, "a"),
            pending(cas(1, 2, 3, "a", "b", true)),
            write(2, 50, 51, "c"),
            read(2, 60, 61, Some("c")),
        ]));
        // But it cannot take effect before it was sent ...
        assert!(!ok(&[
            read(2, 0, 1, Some("b")),
            pending(write(1, 2, 3, "b")),
        ]));
        // ... nor twice: once "a" is back, "b" cannot reappear.
        assert!(!ok(&[
            write(0, 0, 1, "a"),
            pending(write(1, 2, 3, "b")),
            read(2, 4, 5, Some("b")),
            write(0, 6, 7, "a2"),
            read(2, 8, 9, Some("b")),
        ]));
        // A read with no answer says nothing.
        assert!(ok(&[
            write(0, 0, 1, "a"),
            pending(read(1, 2, 3, Some("zzz"))),
        ]));
    }

    #[test]
    fn keys_are_checked_independently_and_the_bad_one_is_named() {
        let mut h = vec![
            write(0, 0, 1, "a"),
            write(0, 2, 3, "b"),
            read(1, 4, 5, Some("a")),
        ];
        for o in &mut h {
            o.key = "bad".into();
        }
        let mut good = vec![write(0, 0, 1, "a"), read(1, 4, 5, Some("a"))];
        for o in &mut good {
            o.key = "good".into();
        }
        // Same values and times on another key do not interfere.
        good.push(Operation {
            key: "other".into(),
            ..read(2, 4, 5, None)
        });
        h.extend(good.clone());
        assert!(ok(&good));
        let Verdict::Violation(v) = check(&h) else {
            panic!("not caught")
        };
        assert_eq!(v.key, "bad");
        assert_eq!(v.history.len(), 3);
    }

    #[test]
    fn a_search_over_budget_gives_up_instead_of_answering() {
        let h = [
            write(0, 0, 10, "a"),
            write(1, 1, 9, "b"),
            read(2, 2, 8, Some("a")),
        ];
        assert!(matches!(
            check_with_budget(&h, 2),
            Verdict::GaveUp { ref key, steps: 3 } if key == "k"
        ));
        assert!(check_with_budget(&h, 1000).is_linearizable());
    }

    /// A tiny deterministic generator (xorshift*), enough for test data.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    /// Concurrent clients against a true register: each operation takes effect at a random
    /// point inside its interval, so the history is linearizable by construction; some
    /// outcomes are hidden (half of those operations never took effect).
    fn simulated_history(
        seed: u64,
        clients: usize,
        per_client: usize,
        keys: usize,
    ) -> Vec<Operation> {
        struct Planned {
            op: Operation,
            at: u64,
            applies: bool,
        }
        let mut rng = Rng(seed | 1);
        let mut planned = Vec::new();
        let mut written: Vec<Vec<String>> = vec![Vec::new(); keys];
        for c in 0..clients {
            let mut t = rng.below(100);
            for i in 0..per_client {
                let k = rng.below(keys as u64) as usize;
                let invoked = t;
                let at = invoked + 1 + rng.below(200);
                let returned = at + 1 + rng.below(200);
                t = returned + 1 + rng.below(50);
                let value = format!("c{c}-{i}");
                let call = match rng.below(10) {
                    0..=3 => Call::Read,
                    4..=6 => {
                        written[k].push(value.clone());
                        Call::Write(value)
                    }
                    _ => {
                        let from = match written[k].len() {
                            0 => "none".to_string(),
                            n => written[k][n - 1 - rng.below(n.min(3) as u64) as usize].clone(),
                        };
                        written[k].push(value.clone());
                        Call::Cas { from, to: value }
                    }
                };
                let unknown = call != Call::Read && rng.below(40) == 0;
                planned.push(Planned {
                    op: Operation {
                        client: c,
                        key: format!("key{k}"),
                        call,
                        outcome: if unknown {
                            Outcome::Unknown
                        } else {
                            Outcome::Written
                        },
                        invoked,
                        returned,
                    },
                    at,
                    applies: !unknown || rng.below(2) == 0,
                });
            }
        }
        planned.sort_by_key(|p| p.at);
        let mut state: HashMap<String, String> = HashMap::new();
        for p in &mut planned {
            if !p.applies {
                continue;
            }
            let cur = state.get(&p.op.key).cloned();
            let outcome = match &p.op.call {
                Call::Read => Outcome::Read(cur),
                Call::Write(v) => {
                    state.insert(p.op.key.clone(), v.clone());
                    Outcome::Written
                }
                Call::Cas { from, to } => {
                    let hit = cur.as_deref() == Some(from.as_str());
                    if hit {
                        state.insert(p.op.key.clone(), to.clone());
                    }
                    Outcome::Cas(hit)
                }
            };
            if p.op.outcome != Outcome::Unknown {
                p.op.outcome = outcome;
            }
        }
        planned.into_iter().map(|p| p.op).collect()
    }

    #[test]
    fn simulated_linearizable_histories_pass() {
        for seed in 1..=30 {
            let h = simulated_history(seed, 4, 40, 2);
            assert!(ok(&h), "seed {seed}");
        }
    }

    #[test]
    fn simulated_history_with_one_corrupted_read_is_caught() {
        // Turn a read that saw a value into one that sees a value written (and acknowledged)
        // before the one it saw was even sent: a stale read.
        let mut caught = 0;
        for seed in 1..=30 {
            let mut h = simulated_history(seed, 4, 40, 1);
            let Some(r) = (0..h.len())
                .find(|&i| matches!(&h[i].outcome, Outcome::Read(Some(_))) && h[i].invoked > 2000)
            else {
                continue;
            };
            let stale = h.iter().find_map(|w| match (&w.call, &w.outcome) {
                (Call::Write(v), Outcome::Written)
                    if h.iter().any(|x| {
                        matches!(x.call, Call::Write(_))
                            && x.outcome == Outcome::Written
                            && x.invoked > w.returned
                            && x.returned < h[r].invoked
                    }) =>
                {
                    Some(v.clone())
                }
                _ => None,
            });
            let Some(stale) = stale else { continue };
            h[r].outcome = Outcome::Read(Some(stale));
            assert!(!ok(&h), "seed {seed}: stale read not caught");
            caught += 1;
        }
        assert!(caught >= 10, "only {caught} corrupted histories generated");
    }

    #[test]
    fn thousands_of_operations_check_quickly() {
        let h = simulated_history(42, 8, 500, 5);
        assert_eq!(h.len(), 4000);
        assert!(h.iter().any(|o| o.outcome == Outcome::Unknown));
        let started = Instant::now();
        assert!(check(&h).is_linearizable());
        let took = started.elapsed();
        assert!(
            took.as_millis() < 1000,
            "checking 4000 operations took {took:?}"
        );
    }
}
