//! Configuration: etcd's flags and `ETCD_*` environment variables, parsed and validated.
//!
//! Flags use Go's `flag` syntax, as etcd's do: `-name x`, `--name x`, `-name=x` and
//! `--name=x` are one flag; booleans are `--flag` or `--flag=true|false` and never take the
//! next argument. A flag wins over its environment variable (`--initial-cluster-token` ↔
//! `ETCD_INITIAL_CLUSTER_TOKEN`). The environment is injected so tests need not mutate the
//! process's.

mod url;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

pub use url::Url;

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Run a member.
    Run(Box<ServerConfig>),
    /// Print the version and exit.
    PrintVersion(String),
    /// Print the help and exit.
    PrintHelp(String),
}

/// A validated member configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub wal_dir: Option<PathBuf>,
    pub listen_client_urls: Vec<Url>,
    pub advertise_client_urls: Vec<Url>,
    pub listen_peer_urls: Vec<Url>,
    pub initial_advertise_peer_urls: Vec<Url>,
    pub initial_cluster: Vec<(String, Url)>,
    pub initial_cluster_state: String,
    pub initial_cluster_token: String,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    pub snapshot_count: u64,
    pub max_snapshots: u32,
    pub max_wals: u32,
    pub max_request_bytes: usize,
    pub force_new_cluster: bool,
    pub log_level: String,
}

/// A configuration error, worded as etcd words it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("flag provided but not defined: -{0}")]
    UnknownFlag(String),
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    #[error("invalid value {value:?} for flag -{flag}: {reason}")]
    InvalidValue {
        flag: String,
        value: String,
        reason: String,
    },
    #[error("'{0}' is not a valid flag")]
    Positional(String),
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// Exit code: 2 for flag syntax errors (Go's flag package), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Invalid(_) => 1,
            _ => 2,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Str,
    Bool,
}

/// Every flag: name, kind, default, help. Flags marked "(accepted, ignored)" exist so that
/// etcd command lines start unchanged.
const FLAGS: &[(&str, Kind, &str, &str)] = &[
    (
        "name",
        Kind::Str,
        "default",
        "Human-readable name for this member.",
    ),
    (
        "data-dir",
        Kind::Str,
        "${name}.etcd",
        "Path to the data directory.",
    ),
    (
        "wal-dir",
        Kind::Str,
        "",
        "Path to the dedicated wal directory.",
    ),
    (
        "snapshot-count",
        Kind::Str,
        "100000",
        "Number of committed transactions to trigger a snapshot to disk.",
    ),
    (
        "heartbeat-interval",
        Kind::Str,
        "100",
        "Time (in milliseconds) of a heartbeat interval.",
    ),
    (
        "election-timeout",
        Kind::Str,
        "1000",
        "Time (in milliseconds) for an election to timeout.",
    ),
    (
        "listen-peer-urls",
        Kind::Str,
        "http://localhost:2380",
        "List of URLs to listen on for peer traffic.",
    ),
    (
        "listen-client-urls",
        Kind::Str,
        "http://localhost:2379",
        "List of URLs to listen on for client traffic.",
    ),
    (
        "max-snapshots",
        Kind::Str,
        "5",
        "Maximum number of snapshot files to retain (0 is unlimited).",
    ),
    (
        "max-wals",
        Kind::Str,
        "5",
        "Maximum number of wal files to retain (0 is unlimited).",
    ),
    (
        "max-request-bytes",
        Kind::Str,
        "1572864",
        "Maximum client request size in bytes the server will accept.",
    ),
    (
        "quota-backend-bytes",
        Kind::Str,
        "0",
        "(accepted, ignored) Raise alarms when backend size exceeds the given quota.",
    ),
    (
        "initial-advertise-peer-urls",
        Kind::Str,
        "http://localhost:2380",
        "List of this member's peer URLs to advertise to the rest of the cluster.",
    ),
    (
        "initial-cluster",
        Kind::Str,
        "default=http://localhost:2380",
        "Initial cluster configuration for bootstrapping.",
    ),
    (
        "initial-cluster-state",
        Kind::Str,
        "new",
        "Initial cluster state ('new' or 'existing').",
    ),
    (
        "initial-cluster-token",
        Kind::Str,
        "etcd-cluster",
        "Initial cluster token for the etcd cluster during bootstrap.",
    ),
    (
        "advertise-client-urls",
        Kind::Str,
        "http://localhost:2379",
        "List of this member's client URLs to advertise to the public.",
    ),
    (
        "discovery",
        Kind::Str,
        "",
        "Discovery URL used to bootstrap the cluster (not yet supported).",
    ),
    (
        "discovery-srv",
        Kind::Str,
        "",
        "DNS srv domain used to bootstrap the cluster (not yet supported).",
    ),
    (
        "discovery-fallback",
        Kind::Str,
        "proxy",
        "Expected behavior ('exit' or 'proxy') when discovery services fails.",
    ),
    (
        "discovery-proxy",
        Kind::Str,
        "",
        "(accepted, ignored) HTTP proxy to use for traffic to discovery service.",
    ),
    (
        "strict-reconfig-check",
        Kind::Bool,
        "true",
        "(accepted, ignored) Reject reconfiguration requests that would cause quorum loss.",
    ),
    (
        "enable-v2",
        Kind::Bool,
        "false",
        "Accept etcd V2 client requests (always on in oxcd).",
    ),
    (
        "force-new-cluster",
        Kind::Bool,
        "false",
        "Force to create a new one member cluster.",
    ),
    (
        "proxy",
        Kind::Str,
        "off",
        "Proxy mode setting ('off', 'readonly' or 'on') (only 'off' is supported yet).",
    ),
    (
        "pre-vote",
        Kind::Bool,
        "false",
        "(accepted; oxcd always uses pre-vote) Enable to run an additional Raft election phase.",
    ),
    (
        "logger",
        Kind::Str,
        "capnslog",
        "(accepted, ignored) Specify 'zap' for structured logging or 'capnslog'.",
    ),
    (
        "log-level",
        Kind::Str,
        "info",
        "Configures log level. Only supports debug, info, warn, error, panic, or fatal.",
    ),
    (
        "log-outputs",
        Kind::Str,
        "default",
        "(accepted, ignored) Specify 'stdout' or 'stderr' to skip journald logging.",
    ),
    (
        "debug",
        Kind::Bool,
        "false",
        "Enable debug-level logging for etcd.",
    ),
    (
        "cors",
        Kind::Str,
        "",
        "(accepted, ignored) Comma-separated white list of origins for CORS.",
    ),
    (
        "auto-compaction-retention",
        Kind::Str,
        "0",
        "(accepted, ignored) Auto compaction retention for mvcc key value store.",
    ),
    (
        "auto-compaction-mode",
        Kind::Str,
        "periodic",
        "(accepted, ignored) Interpret 'auto-compaction-retention'.",
    ),
    (
        "enable-pprof",
        Kind::Bool,
        "false",
        "(accepted, ignored) Enable runtime profiling data via HTTP server.",
    ),
    (
        "metrics",
        Kind::Str,
        "basic",
        "(accepted, ignored) Set level of detail for exported metrics.",
    ),
    (
        "listen-metrics-urls",
        Kind::Str,
        "",
        "(accepted, ignored) List of URLs to listen on for the metrics and health endpoints.",
    ),
    (
        "config-file",
        Kind::Str,
        "",
        "Path to the server configuration file (not yet supported).",
    ),
    (
        "version",
        Kind::Bool,
        "false",
        "Print the version and exit.",
    ),
    ("help", Kind::Bool, "false", "Show this help and exit."),
];

fn env_name(flag: &str) -> String {
    format!("ETCD_{}", flag.replace('-', "_").to_uppercase())
}

fn help_text() -> String {
    let mut s = String::from("usage: oxcd [flags]\n       start an etcd-compatible server\n\n  flags (each also read from ETCD_<FLAG_NAME>):\n\n");
    for (name, kind, default, help) in FLAGS {
        let arg = if *kind == Kind::Bool { "" } else { " <value>" };
        s.push_str(&format!(
            "  --{name}{arg}\n      {help} (default: '{default}')\n"
        ));
    }
    s
}

/// Parses the command line (`args[0]` is the program) and environment.
pub fn parse(
    args: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError> {
    let mut set: HashMap<&'static str, String> = HashMap::new();
    let mut it = args
        .into_iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = it.next() {
        let Some(stripped) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(ConfigError::Positional(arg));
        };
        if stripped.is_empty() || stripped.starts_with('-') || stripped.starts_with('=') {
            return Err(ConfigError::Invalid(format!("bad flag syntax: {arg}")));
        }
        let (name, inline) = match stripped.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (stripped.to_string(), None),
        };
        let name = if name == "h" {
            "help".to_string()
        } else {
            name
        };
        let Some((fname, kind, _, _)) = FLAGS.iter().find(|(n, ..)| *n == name) else {
            return Err(ConfigError::UnknownFlag(name));
        };
        let value = match (kind, inline) {
            (Kind::Bool, None) => "true".to_string(),
            (_, Some(v)) => v,
            (Kind::Str, None) => it
                .next()
                .ok_or_else(|| ConfigError::MissingValue(name.clone()))?,
        };
        set.insert(fname, value);
    }
    let get =
        |flag: &str| -> Option<String> { set.get(flag).cloned().or_else(|| env(&env_name(flag))) };
    let get_bool = |flag: &str| -> Result<bool, ConfigError> {
        match get(flag) {
            None => Ok(FLAGS
                .iter()
                .find(|f| f.0 == flag)
                .map(|f| f.2 == "true")
                .unwrap_or(false)),
            Some(v) => parse_go_bool(&v).ok_or_else(|| ConfigError::InvalidValue {
                flag: flag.to_string(),
                value: v,
                reason: "parse error".into(),
            }),
        }
    };
    if get_bool("help")? {
        return Ok(Command::PrintHelp(help_text()));
    }
    if get_bool("version")? {
        return Ok(Command::PrintVersion(format!(
            "oxcd Version: {}\netcd API Version: 3.4.23 (v2 API)\nRust: built with rustc\n",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let defaulted = |flag: &str| -> String {
        get(flag).unwrap_or_else(|| {
            FLAGS
                .iter()
                .find(|f| f.0 == flag)
                .map(|f| f.2.to_string())
                .unwrap_or_default()
        })
    };
    let number = |flag: &str| -> Result<u64, ConfigError> {
        let v = defaulted(flag);
        v.parse::<u64>().map_err(|e| ConfigError::InvalidValue {
            flag: flag.to_string(),
            value: v,
            reason: e.to_string(),
        })
    };
    let urls = |flag: &str| -> Result<Vec<Url>, ConfigError> {
        let v = defaulted(flag);
        v.split(',')
            .map(|u| Url::parse(u.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| ConfigError::InvalidValue {
                flag: flag.to_string(),
                value: v.clone(),
                reason,
            })
    };
    let name = defaulted("name");
    let heartbeat = number("heartbeat-interval")?;
    let election = number("election-timeout")?;
    if heartbeat == 0 {
        return Err(ConfigError::Invalid(
            "--heartbeat-interval must be greater than 0".into(),
        ));
    }
    if election < 5 * heartbeat {
        return Err(ConfigError::Invalid(format!(
            "--election-timeout[{election}ms] should be at least as 5 times as --heartbeat-interval[{heartbeat}ms]"
        )));
    }
    if election > 50_000 {
        return Err(ConfigError::Invalid(format!(
            "--election-timeout[{election}ms] is too long, and should be set less than 50000ms"
        )));
    }
    let state = defaulted("initial-cluster-state");
    if state != "new" && state != "existing" {
        return Err(ConfigError::InvalidValue {
            flag: "initial-cluster-state".into(),
            value: state,
            reason: "valid values include new,existing".into(),
        });
    }
    let proxy = defaulted("proxy");
    if proxy != "off" {
        return Err(ConfigError::Invalid(format!(
            "--proxy={proxy} is not supported yet"
        )));
    }
    for flag in ["discovery", "discovery-srv", "config-file"] {
        if !defaulted(flag).is_empty() {
            return Err(ConfigError::Invalid(format!(
                "--{flag} is not supported yet"
            )));
        }
    }
    let listen_client_urls = urls("listen-client-urls")?;
    let advertise_client_urls = urls("advertise-client-urls")?;
    if get("listen-client-urls").is_some() && get("advertise-client-urls").is_none() {
        return Err(ConfigError::Invalid(
            "--advertise-client-urls is required when --listen-client-urls is set explicitly"
                .into(),
        ));
    }
    let peer_urls = urls("initial-advertise-peer-urls")?;
    let cluster_str = get("initial-cluster").unwrap_or_else(|| {
        peer_urls
            .iter()
            .map(|u| format!("{name}={u}"))
            .collect::<Vec<_>>()
            .join(",")
    });
    let mut initial_cluster = Vec::new();
    for entry in cluster_str.split(',') {
        let (n, u) = entry
            .split_once('=')
            .ok_or_else(|| ConfigError::InvalidValue {
                flag: "initial-cluster".into(),
                value: cluster_str.clone(),
                reason: format!("missing '=' in {entry:?}"),
            })?;
        let url = Url::parse(u.trim()).map_err(|reason| ConfigError::InvalidValue {
            flag: "initial-cluster".into(),
            value: cluster_str.clone(),
            reason,
        })?;
        initial_cluster.push((n.trim().to_string(), url));
    }
    let mut mine: Vec<String> = initial_cluster
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, u)| u.to_string())
        .collect();
    let mut adv: Vec<String> = peer_urls.iter().map(|u| u.to_string()).collect();
    mine.sort();
    adv.sort();
    if mine.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "couldn't find local name {name:?} in the initial cluster configuration"
        )));
    }
    if mine != adv {
        return Err(ConfigError::Invalid(format!(
            "--initial-cluster has {name}={} but missing from --initial-advertise-peer-urls={} (\"{}\"(resolved from {:?}) != \"{}\"(resolved from {:?}))",
            mine.join(","), adv.join(","), adv.join(","), adv, mine.join(","), mine
        )));
    }
    let data_dir = get("data-dir").unwrap_or_else(|| format!("{name}.etcd"));
    let wal_dir = get("wal-dir").filter(|s| !s.is_empty()).map(PathBuf::from);
    let log_level = if get_bool("debug")? {
        "debug".to_string()
    } else {
        defaulted("log-level")
    };
    let max_request_bytes = number("max-request-bytes")? as usize;
    Ok(Command::Run(Box::new(ServerConfig {
        name,
        data_dir: PathBuf::from(data_dir),
        wal_dir,
        listen_client_urls,
        advertise_client_urls,
        listen_peer_urls: urls("listen-peer-urls")?,
        initial_advertise_peer_urls: peer_urls,
        initial_cluster,
        initial_cluster_state: state,
        initial_cluster_token: defaulted("initial-cluster-token"),
        heartbeat_interval: Duration::from_millis(heartbeat),
        election_timeout: Duration::from_millis(election),
        snapshot_count: number("snapshot-count")?,
        max_snapshots: number("max-snapshots")? as u32,
        max_wals: number("max-wals")? as u32,
        max_request_bytes,
        force_new_cluster: get_bool("force-new-cluster")?,
        log_level,
    })))
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
        let mut v: Vec<OsString> = vec!["oxcd".into()];
        v.extend(args.iter().map(OsString::from));
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match parse(v, &|k| env.get(k).cloned())? {
            Command::Run(c) => Ok(*c),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_match_etcd() {
        let c = run(&[], &[]).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(c.listen_client_urls[0].to_string(), "http://localhost:2379");
        assert_eq!(c.initial_cluster[0].0, "default");
        assert_eq!(c.heartbeat_interval, Duration::from_millis(100));
        assert_eq!(c.snapshot_count, 100_000);
        assert_eq!(c.max_request_bytes, 1_572_864);
    }

    #[test]
    fn all_go_flag_forms_work() {
        for args in [
            vec![
                "-name",
                "n1",
                "-initial-cluster",
                "n1=http://localhost:2380",
            ],
            vec!["--name", "n1", "--initial-cluster=n1=http://localhost:2380"],
            vec!["-name=n1", "--initial-cluster", "n1=http://localhost:2380"],
            vec!["--name=n1", "-initial-cluster=n1=http://localhost:2380"],
        ] {
            let c = run(&args, &[]).unwrap();
            assert_eq!(c.name, "n1");
            assert_eq!(c.data_dir, PathBuf::from("n1.etcd"));
        }
        assert!(
            run(&["--force-new-cluster"], &[])
                .unwrap()
                .force_new_cluster
        );
        assert!(
            !run(&["-force-new-cluster=false"], &[])
                .unwrap()
                .force_new_cluster
        );
        // A boolean never takes the next argument.
        assert!(matches!(
            run(&["--enable-v2", "true"], &[]),
            Err(ConfigError::Positional(_))
        ));
    }

    #[test]
    fn flags_win_over_env() {
        let env = [
            ("ETCD_SNAPSHOT_COUNT", "7"),
            ("ETCD_INITIAL_CLUSTER_TOKEN", "tok"),
        ];
        let c = run(&[], &env).unwrap();
        assert_eq!(c.snapshot_count, 7);
        assert_eq!(c.initial_cluster_token, "tok");
        let c = run(&["--snapshot-count", "9"], &env).unwrap();
        assert_eq!(c.snapshot_count, 9);
    }

    #[test]
    fn errors_are_clear() {
        let e = run(&["--bogus"], &[]).unwrap_err();
        assert_eq!(e.to_string(), "flag provided but not defined: -bogus");
        assert_eq!(e.exit_code(), 2);
        assert!(run(&["--listen-client-urls", "ftp://x:1"], &[]).is_err());
        assert!(run(&["--listen-client-urls", "http://127.0.0.1:1"], &[]).is_err());
        assert!(run(&["--election-timeout", "100"], &[]).is_err());
        assert!(run(&["--initial-cluster-state", "bogus"], &[]).is_err());
        // As in etcd, --initial-cluster defaults from --name and the advertised peer URLs.
        assert_eq!(
            run(&["--name", "x"], &[]).unwrap().initial_cluster[0].0,
            "x"
        );
        assert!(run(
            &[
                "--name",
                "x",
                "--initial-cluster",
                "y=http://localhost:2380"
            ],
            &[]
        )
        .is_err());
        assert!(run(&["--name"], &[]).is_err());
    }
}
