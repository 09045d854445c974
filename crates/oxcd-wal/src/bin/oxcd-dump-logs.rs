//! `oxcd-dump-logs <data-dir> [--wal-dir DIR]`: prints a member's snapshot files and every
//! WAL record, one line each, with CRC checks — for looking at a data dir after a crash.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut data_dir: Option<PathBuf> = None;
    let mut wal_dir: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--wal-dir" | "-wal-dir" => wal_dir = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("usage: oxcd-dump-logs <data-dir> [--wal-dir DIR]");
                return ExitCode::SUCCESS;
            }
            _ if data_dir.is_none() => data_dir = Some(PathBuf::from(a)),
            _ => {
                eprintln!("oxcd-dump-logs: unexpected argument {a:?}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(data_dir) = data_dir else {
        eprintln!("usage: oxcd-dump-logs <data-dir> [--wal-dir DIR]");
        return ExitCode::from(2);
    };
    let member = data_dir.join("member");
    let wal_dir = wal_dir.unwrap_or_else(|| member.join("wal"));
    // Write errors (a closed pipe, as with `| head`) end the dump quietly.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "snapshots in {}:", member.join("snap").display());
    for (path, snap) in oxcd_wal::Snapshotter::new(&member.join("snap")).list() {
        let line = match snap {
            Some(s) => format!(
                "  {}  index={} term={} voters={:x?} learners={:x?} data={}B",
                path.display(),
                s.index,
                s.term,
                s.voters,
                s.learners,
                s.data.len()
            ),
            None => format!(
                "  {}  DAMAGED (fails its CRC or is truncated)",
                path.display()
            ),
        };
        if writeln!(out, "{line}").is_err() {
            return ExitCode::SUCCESS;
        }
    }
    match oxcd_wal::dump(&wal_dir) {
        Ok(lines) => {
            for l in lines {
                if writeln!(out, "{l}").is_err() {
                    break;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("oxcd-dump-logs: {e}");
            ExitCode::FAILURE
        }
    }
}
