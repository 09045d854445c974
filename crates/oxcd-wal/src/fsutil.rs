//! Directory durability: a file's name lives in its parent directory, so creating,
//! renaming or removing a file is only durable once that directory is fsynced.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::{io_err, Result};

#[cfg(test)]
thread_local! {
    /// Every directory this thread fsynced, for the tests.
    static SYNCED: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The directories this thread fsynced since the last call (tests only).
#[cfg(test)]
pub(crate) fn take_synced() -> Vec<PathBuf> {
    SYNCED.with(|s| std::mem::take(&mut *s.borrow_mut()))
}

/// The directory a relative single-component path lives in (`"."` for `"wal"`).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Fsyncs the directory `dir`, making the creation, rename or removal of its entries
/// durable.
///
/// The server calls it for directories it changes itself, e.g. the data dir after creating
/// `member/`; this crate syncs the WAL and snapshot directories it changes.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    #[cfg(test)]
    SYNCED.with(|s| s.borrow_mut().push(dir.to_path_buf()));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("sync dir {}", dir.display())))
}

/// Fsyncs the directory that holds `path` (`.` for a bare name).
pub(crate) fn fsync_parent(path: &Path) -> Result<()> {
    fsync_dir(&parent_of(path))
}

/// [`std::fs::create_dir_all`], durably: creates each missing component of `path`,
/// outermost first, and fsyncs the parent of each one it creates, so that after it returns
/// a crash cannot lose any of them. Components that already exist are left alone (their
/// parents are not synced). Returns the directories it created, outermost first.
///
/// The server creates `member/`, `member/snap`, `member/wal` (or a separate `--wal-dir`)
/// with it.
pub fn create_dir_all_durable(path: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut at = path;
    loop {
        match fs::metadata(at) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(io_err(format!("create {}", path.display()))(
                    std::io::Error::new(
                        ErrorKind::AlreadyExists,
                        format!("{} exists and is not a directory", at.display()),
                    ),
                ))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => missing.push(at.to_path_buf()),
            Err(e) => return Err(io_err(format!("stat {}", at.display()))(e)),
        }
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    let mut created = Vec::new();
    for dir in missing.into_iter().rev() {
        match fs::create_dir(&dir) {
            Ok(()) => {
                fsync_parent(&dir)?;
                created.push(dir);
            }
            // Made by someone else meanwhile: theirs to sync.
            Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(io_err(format!("create {}", dir.display()))(e)),
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_every_missing_component_and_reports_them() {
        let base = std::env::temp_dir().join(format!("oxcd-fsutil-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let deep = base.join("a/b/c");
        take_synced();
        let made = create_dir_all_durable(&deep).unwrap();
        assert_eq!(made, vec![base.join("a"), base.join("a/b"), deep.clone()]);
        assert_eq!(
            take_synced(),
            vec![base.clone(), base.join("a"), base.join("a/b")],
            "each new directory's parent"
        );
        assert!(deep.is_dir());
        assert!(
            create_dir_all_durable(&deep).unwrap().is_empty(),
            "idempotent"
        );
        fs::write(base.join("file"), b"x").unwrap();
        assert!(create_dir_all_durable(&base.join("file/sub")).is_err());
        fsync_dir(&deep).unwrap();
        assert!(fsync_dir(&base.join("nope")).is_err());
        let _ = fs::remove_dir_all(&base);
    }
}
