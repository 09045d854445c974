//! `oxcdctl`: the command-line tool for oxcd members. Its verbs are etcdctl v2's, with the
//! same flags; the first is `backup`.
//!
//! The server parses its flags by hand (etcd's Go flag rules, `ETCD_*` variables); this tool
//! has no such compatibility to keep beyond the flag names, so it uses clap's derive
//! parser, which gives the subcommands and `--help` for free. Go's single-dash spelling of a
//! long flag (`-data-dir`), which etcdctl accepts, is accepted too.

mod backup;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "oxcdctl",
    version,
    about = "Command-line tool for oxcd members",
    long_about = "Command-line tool for oxcd members. Its commands are etcdctl v2's, with \
                  etcdctl's flag names."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Back up a member's data directory (snapshot and WAL), even while the member runs
    #[command(long_about = BACKUP_ABOUT)]
    Backup(BackupArgs),
}

const BACKUP_ABOUT: &str = "\
Back up a member's data directory: the newest snapshot that passes its CRC check and the WAL \
from that snapshot on, every record checked, up to the last complete record. The member may \
be running: its files are only read, never locked, changed or repaired.

The backup has a member's layout (member/snap, member/wal) and keeps the member and cluster \
IDs: `oxcd --data-dir <backup-dir>` starts from it with the member's own flags, and \
`oxcd --data-dir <backup-dir> --force-new-cluster` restores it as a one-member cluster.

Unlike etcdctl, which overwrites, the backup directory (and --backup-wal-dir) must not exist \
or be empty: an existing backup is never replaced.";

#[derive(Debug, Args)]
struct BackupArgs {
    /// The member's data directory
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The member's WAL directory [default: <data-dir>/member/wal]
    #[arg(long, value_name = "DIR")]
    wal_dir: Option<PathBuf>,
    /// Where to write the backup (must not exist, or be empty)
    #[arg(long, value_name = "DIR")]
    backup_dir: PathBuf,
    /// Where to write the backup's WAL [default: <backup-dir>/member/wal]
    #[arg(long, value_name = "DIR")]
    backup_wal_dir: Option<PathBuf>,
}

/// The long flags, which Go's flag package also takes with one dash.
const LONG_FLAGS: &[&str] = &["data-dir", "wal-dir", "backup-dir", "backup-wal-dir"];

/// `-data-dir` → `--data-dir` (and `-data-dir=x`), for etcdctl's spelling.
fn go_style_flags(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    args.map(|a| {
        let Some(s) = a.to_str() else { return a };
        let Some(rest) = s.strip_prefix('-').filter(|r| !r.starts_with('-')) else {
            return a;
        };
        let name = rest.split('=').next().unwrap_or(rest);
        if LONG_FLAGS.contains(&name) {
            format!("-{s}").into()
        } else {
            a
        }
    })
    .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(go_style_flags(std::env::args_os()));
    match cli.command {
        Command::Backup(a) => {
            let opts = backup::BackupOptions::new(
                &a.data_dir,
                a.wal_dir.as_deref(),
                &a.backup_dir,
                a.backup_wal_dir.as_deref(),
            );
            let mut log = |msg: &str| eprintln!("oxcdctl backup: {msg}");
            match backup::run(&opts, &mut log) {
                Ok(summary) => {
                    println!(
                        "backup of {} written to {}: {summary}",
                        a.data_dir.display(),
                        a.backup_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("oxcdctl backup: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod cli_tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(go_style_flags(args.iter().map(|s| (*s).into())))
    }

    #[test]
    fn backup_takes_etcdctls_flags_in_both_spellings() {
        let cli = parse(&[
            "oxcdctl",
            "backup",
            "-data-dir",
            "d",
            "--backup-dir=b",
            "-backup-wal-dir=w",
        ])
        .unwrap();
        let Command::Backup(a) = cli.command;
        assert_eq!(a.data_dir, PathBuf::from("d"));
        assert_eq!(a.backup_dir, PathBuf::from("b"));
        assert_eq!(a.backup_wal_dir, Some(PathBuf::from("w")));
        assert_eq!(a.wal_dir, None);
        assert!(parse(&["oxcdctl", "backup", "--data-dir", "d"]).is_err());
        assert!(parse(&["oxcdctl", "backup", "-x", "--data-dir", "d"]).is_err());
        let help = parse(&["oxcdctl", "backup", "--help"])
            .unwrap_err()
            .to_string();
        assert!(help.contains("--backup-wal-dir") && help.contains("must not exist"));
    }
}
