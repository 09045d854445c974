//! Data-driven tests of the store: every file in `tests/scripts/` is a sequence of blocks
//!
//! ```text
//! # comment lines are kept
//! set /1/a one ttl=5
//! ----
//! {"action":"set","node":{...}}
//! ```
//!
//! Each command runs against one store per file, on a clock that only `advance` moves, and
//! its output — one line: the event's JSON, or `error` and the error's JSON — must equal the
//! line after `----`. `UPDATE_GOLDEN=1 cargo test -p oxcd-v2store --test scripts` rewrites the expected
//! outputs; review the diff before committing it.
//!
//! Commands (options are `key=value` or bare flags):
//! `set PATH [VALUE] [dir] [ttl=N] [refresh]`, `create PATH [VALUE] [dir] [unique] [ttl=N]`,
//! `update PATH VALUE [ttl=N]`, `cas PATH VALUE [prevValue=V] [prevIndex=N] [ttl=N]`,
//! `delete PATH [dir] [recursive]`, `cad PATH [prevValue=V] [prevIndex=N]`,
//! `get PATH [recursive] [sorted]`, `advance SECONDS` (moves the clock and expires keys).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use oxcd_v2store::{Store, TtlOptions};

struct Script {
    store: Store,
    now: SystemTime,
}

impl Script {
    fn new() -> Script {
        Script {
            store: Store::new(&["/0", "/1"]),
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }

    fn run(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (cmd, path) = (words[0], words.get(1).copied().unwrap_or(""));
        let mut positional = Vec::new();
        let mut opts: HashMap<&str, &str> = HashMap::new();
        for w in words.iter().skip(2) {
            match w.split_once('=') {
                Some((k, v)) => {
                    opts.insert(k, v);
                }
                None if ["dir", "unique", "recursive", "sorted", "refresh"].contains(w) => {
                    opts.insert(w, "true");
                }
                None => positional.push(*w),
            }
        }
        let value = positional.first().copied().unwrap_or("");
        let flag = |k: &str| opts.contains_key(k);
        let num = |k: &str| opts.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let ttl = TtlOptions {
            expire_time: opts
                .get("ttl")
                .and_then(|v| v.parse::<u64>().ok())
                .map(|s| self.now + Duration::from_secs(s)),
            refresh: flag("refresh"),
        };
        let now = self.now;
        let s = &mut self.store;
        let res = match cmd {
            "set" => s.set(path, flag("dir"), value, ttl, now),
            "create" => s.create(path, flag("dir"), value, flag("unique"), ttl, now),
            "update" => s.update(path, value, ttl, now),
            "cas" => {
                let prev = opts.get("prevValue").copied().unwrap_or("");
                s.compare_and_swap(path, prev, num("prevIndex"), value, ttl, now)
            }
            "delete" => s.delete(path, flag("dir"), flag("recursive"), now),
            "cad" => {
                let prev = opts.get("prevValue").copied().unwrap_or("");
                s.compare_and_delete(path, prev, num("prevIndex"), now)
            }
            "get" => s.get(path, flag("recursive"), flag("sorted"), now),
            "advance" => {
                let secs: u64 = path.parse().expect("advance SECONDS");
                self.now += Duration::from_secs(secs);
                self.store.delete_expired_keys(self.now);
                return format!("index {}", self.store.index());
            }
            other => panic!("unknown command {other:?}"),
        };
        match res {
            Ok(ev) => serde_json::to_string(&ev).expect("events encode"),
            Err(e) => format!("error {}", e.to_json()),
        }
    }
}

/// Runs one script file; returns the file's text with the actual outputs.
fn regenerate(text: &str) -> String {
    let mut script = Script::new();
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        out.push_str(line);
        out.push_str("\n----\n");
        out.push_str(&script.run(line));
        out.push('\n');
        // Skip the expected block: the separator and the one output line.
        if lines.peek() == Some(&"----") {
            lines.next();
            lines.next();
        }
    }
    out
}

#[test]
fn store_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts");
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/scripts")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scripts in {}", dir.display());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let actual = regenerate(&text);
        if update {
            std::fs::write(&file, &actual).unwrap();
            continue;
        }
        for (n, (want, got)) in text.lines().zip(actual.lines()).enumerate() {
            assert_eq!(
                want,
                got,
                "{}:{}: output differs (UPDATE_GOLDEN=1 rewrites, then review the diff)",
                file.display(),
                n + 1
            );
        }
        assert_eq!(
            text.lines().count(),
            actual.lines().count(),
            "{}: a command has no expected output (UPDATE_GOLDEN=1 writes it)",
            file.display()
        );
    }
}
