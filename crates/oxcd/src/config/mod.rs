//! Configuration: etcd's flags and `ETCD_*` environment variables, parsed and validated.
//!
//! Flags use Go's `flag` syntax, as etcd's do: `-name x`, `--name x`, `-name=x` and
//! `--name=x` are one flag; booleans are `--flag` or `--flag=true|false` and never take the
//! next argument. A flag wins over its environment variable (`--initial-cluster-token` ↔
//! `ETCD_INITIAL_CLUSTER_TOKEN`). The environment is injected so tests need not mutate the
//! process's.
//!
//! `--config-file` (or `ETCD_CONFIG_FILE`) reads etcd 3.4's YAML file instead (`file.rs`);
//! as in etcd, every other flag and `ETCD_*` variable is then ignored. Each key becomes the
//! value of its flag and goes through the same validation.

mod file;
mod url;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
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
    /// `--discovery-srv`: the initial cluster comes from this domain's SRV records.
    pub discovery_srv: String,
    /// `--discovery-srv-name`: suffix of the SRV service names (`_etcd-server-<name>`).
    pub discovery_srv_name: String,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    pub snapshot_count: u64,
    pub max_snapshots: u32,
    pub max_wals: u32,
    pub max_request_bytes: usize,
    pub force_new_cluster: bool,
    pub log_level: String,
    /// `--logger`: etcd's `capnslog` (one human-readable line per event) or `zap` (JSON lines).
    pub logger: Logger,
    /// `--log-outputs`: where log lines go.
    pub log_outputs: Vec<LogOutput>,
    /// `--pre-vote` (default on).
    pub pre_vote: bool,
    /// `--strict-reconfig-check`.
    pub strict_reconfig_check: bool,
    /// `--enable-v2`: false answers 404 on `/v2/...` as etcd 3.4 without v2 does.
    pub enable_v2: bool,
    /// `--cors`: origins allowed; empty or containing `*` allows all.
    pub cors: Vec<String>,
    /// `--listen-metrics-urls`: extra listeners serving `/metrics` and `/health`.
    pub listen_metrics_urls: Vec<Url>,
    /// Client TLS: `--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`,
    /// `--client-crl-file`, `--client-cert-allowed-hostname`, `--auto-tls`.
    pub client_tls: TlsInfo,
    /// Peer TLS: the `--peer-*` counterparts.
    pub peer_tls: TlsInfo,
    /// `--cipher-suites`: Go names, validated (see `crate::tls::cipher_suites`).
    pub cipher_suites: Vec<String>,
    /// `--experimental-peer-skip-client-san-verification`: peer listeners do not check a
    /// member's certificate against the address it connects from.
    pub peer_skip_client_san: bool,
    /// `--config-file`: the file the configuration was read from (flags and `ETCD_*`
    /// variables were ignored).
    pub config_file: Option<String>,
    /// `--proxy` and the `--proxy-*` timings (etcd 3.4's v2 proxy).
    pub proxy: ProxyConfig,
    /// Settings accepted with a caveat the operator should see: logged at start.
    pub warnings: Vec<String>,
    /// `--discovery` (with `--discovery-proxy`, `--discovery-fallback`): bootstrap through
    /// a discovery service. `initial_cluster` is then this member alone and
    /// `initial_cluster_token` the discovery URL, as etcd sets them.
    pub discovery: Option<crate::discovery::Settings>,
}

/// `--proxy`: whether this process is a v2 proxy instead of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// A member (the default).
    Off,
    /// A proxy answering every method but GET with 501.
    Readonly,
    /// A proxy forwarding every request.
    On,
}

/// The proxy's settings: `--proxy` and the `--proxy-*` durations (flags in milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub mode: ProxyMode,
    /// `--proxy-failure-wait`: how long an endpoint that failed is skipped.
    pub failure_wait: Duration,
    /// `--proxy-refresh-interval`: how often the members are asked for the endpoints.
    pub refresh_interval: Duration,
    /// `--proxy-dial-timeout`: connecting to an endpoint (0: no limit).
    pub dial_timeout: Duration,
    /// `--proxy-write-timeout`: each write to an endpoint (0: no limit).
    pub write_timeout: Duration,
    /// `--proxy-read-timeout`: each read from an endpoint (0: no limit, the default: watches
    /// wait for events as long as they need).
    pub read_timeout: Duration,
}

/// One side's TLS settings, as etcd's `transport.TLSInfo` and its auto-TLS flag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The certificate (PEM, may hold the chain); empty when not given.
    pub cert_file: String,
    /// Its private key (PEM).
    pub key_file: String,
    /// CA certificates (PEM) that the other side's certificate must chain to.
    pub trusted_ca_file: String,
    /// Require and verify the other side's certificate.
    pub client_cert_auth: bool,
    /// A certificate revocation list (PEM or DER) checked against the other side's
    /// certificate.
    pub crl_file: String,
    /// The other side's certificate must have this Common Name.
    pub allowed_cn: String,
    /// The other side's certificate must be valid for this host name or IP.
    pub allowed_hostname: String,
    /// `--auto-tls` / `--peer-auto-tls`: a self-signed certificate is generated under the
    /// data dir when no certificate is given; the other side's chain is then not verified.
    pub auto_tls: bool,
}

impl TlsInfo {
    /// No certificate given (etcd's `TLSInfo.Empty`).
    pub fn is_empty(&self) -> bool {
        self.cert_file.is_empty() && self.key_file.is_empty()
    }

    /// Whether TLS can be served: a certificate, or one to generate.
    pub fn can_serve(&self) -> bool {
        !self.is_empty() || self.auto_tls
    }
}

/// The log format (`--logger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logger {
    /// One human-readable line per event (etcd 3.4's default).
    Capnslog,
    /// One JSON object per line.
    Zap,
}

/// A log destination (`--log-outputs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    /// Standard error (also what `default` means: oxcd does not write to journald).
    Stderr,
    /// Standard output.
    Stdout,
    /// A file, appended to (zap only, as in etcd).
    File(PathBuf),
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
    /// An error in the configuration read from `--config-file`.
    #[error("{error}")]
    File {
        path: String,
        error: Box<ConfigError>,
    },
}

impl ConfigError {
    /// Exit code: 2 for flag syntax errors (Go's flag package), 1 otherwise (also for every
    /// error in a configuration file, which etcd does not read with the flag package).
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Invalid(_) | ConfigError::File { .. } => 1,
            _ => 2,
        }
    }

    /// The configuration file the error is in, if the configuration came from one.
    pub fn config_file(&self) -> Option<&str> {
        match self {
            ConfigError::File { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// etcd's error when more than one way to bootstrap is configured (`embed.ErrConflictBootstrapFlags`).
pub const CONFLICT_BOOTSTRAP: &str = "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\"";

/// etcd's `--initial-cluster` default (`default` at its default advertised peer URL). etcd
/// treats this exact value as "not given": with another `--name` it becomes
/// `<name>=<advertised peer URLs>`, and with discovery it is dropped.
const DEFAULT_INITIAL_CLUSTER: &str = "default=http://localhost:2380";

/// The line etcd logs (capnslog) when it reads a configuration file.
pub fn loading_line(path: &str) -> String {
    format!("Loading server configuration from {path:?}. Other configuration command line flags and environment variables will be ignored if provided.")
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Str,
    Bool,
}

/// Every flag: name, kind, default, help. Each flag either works as etcd's or is refused at
/// start with a clear error when given a value oxcd cannot honour (`refuse_unsupported`).
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
        "Raise alarms when backend size exceeds the given quota (v3 backend only: any value but 0 is refused, oxcd has no v3 backend yet).",
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
        "Discovery URL used to bootstrap the cluster.",
    ),
    (
        "discovery-srv",
        Kind::Str,
        "",
        "DNS srv domain used to bootstrap the cluster.",
    ),
    (
        "discovery-srv-name",
        Kind::Str,
        "",
        "Service name to query when using DNS discovery.",
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
        "HTTP proxy to use for traffic to discovery service.",
    ),
    (
        "strict-reconfig-check",
        Kind::Bool,
        "true",
        "Reject reconfiguration requests that would cause quorum loss.",
    ),
    (
        "enable-v2",
        Kind::Bool,
        "true",
        "Accept etcd V2 client requests (oxcd serves only the v2 API, so unlike etcd 3.4 it defaults to true; false answers 404 on /v2 as etcd does).",
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
        "Proxy mode setting ('off', 'readonly' or 'on').",
    ),
    (
        "proxy-failure-wait",
        Kind::Str,
        "5000",
        "Time (in milliseconds) an endpoint will be held in a failed state.",
    ),
    (
        "proxy-refresh-interval",
        Kind::Str,
        "30000",
        "Time (in milliseconds) of the endpoints refresh interval.",
    ),
    (
        "proxy-dial-timeout",
        Kind::Str,
        "1000",
        "Time (in milliseconds) for a dial to timeout.",
    ),
    (
        "proxy-write-timeout",
        Kind::Str,
        "5000",
        "Time (in milliseconds) for a write to timeout.",
    ),
    (
        "proxy-read-timeout",
        Kind::Str,
        "0",
        "Time (in milliseconds) for a read to timeout.",
    ),
    (
        "pre-vote",
        Kind::Bool,
        "true",
        "Enable to run an additional Raft election phase (on by default, as in etcd 3.5).",
    ),
    (
        "logger",
        Kind::Str,
        "capnslog",
        "Specify 'zap' for structured logging (JSON lines) or 'capnslog'.",
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
        "Specify 'stdout' or 'stderr' ('default' is stderr), or with --logger=zap also file paths (comma-separated).",
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
        "Comma-separated white list of origins for CORS, or cross-origin resource sharing, (empty or * means allow all).",
    ),
    (
        "auto-compaction-retention",
        Kind::Str,
        "0",
        "Auto compaction retention for mvcc key value store in hours, or a duration (v3 only: oxcd has no v3 store, so there is nothing to compact; validated as etcd validates it).",
    ),
    (
        "auto-compaction-mode",
        Kind::Str,
        "periodic",
        "Interpret 'auto-compaction-retention' one of: periodic|revision.",
    ),
    (
        "enable-pprof",
        Kind::Bool,
        "false",
        "Enable runtime profiling data via HTTP server (accepted with a warning: Go's /debug/pprof endpoints have no oxcd equivalent and are not served).",
    ),
    (
        "metrics",
        Kind::Str,
        "basic",
        "Set level of detail for exported metrics, specify 'extensive' to include server side grpc histogram metrics (oxcd has no gRPC: both levels export the same).",
    ),
    (
        "listen-metrics-urls",
        Kind::Str,
        "",
        "List of additional URLs to listen on that will respond to both the /metrics and /health endpoints.",
    ),
    (
        "cert-file",
        Kind::Str,
        "",
        "Path to the client server TLS cert file.",
    ),
    (
        "key-file",
        Kind::Str,
        "",
        "Path to the client server TLS key file.",
    ),
    (
        "client-cert-auth",
        Kind::Bool,
        "false",
        "Enable client cert authentication.",
    ),
    (
        "client-crl-file",
        Kind::Str,
        "",
        "Path to the client certificate revocation list file.",
    ),
    (
        "client-cert-allowed-hostname",
        Kind::Str,
        "",
        "Allowed TLS hostname for client cert authentication.",
    ),
    (
        "trusted-ca-file",
        Kind::Str,
        "",
        "Path to the client server TLS trusted CA cert file.",
    ),
    (
        "auto-tls",
        Kind::Bool,
        "false",
        "Client TLS using generated certificates",
    ),
    (
        "peer-cert-file",
        Kind::Str,
        "",
        "Path to the peer server TLS cert file.",
    ),
    (
        "peer-key-file",
        Kind::Str,
        "",
        "Path to the peer server TLS key file.",
    ),
    (
        "peer-client-cert-auth",
        Kind::Bool,
        "false",
        "Enable peer client cert authentication.",
    ),
    (
        "peer-trusted-ca-file",
        Kind::Str,
        "",
        "Path to the peer server TLS trusted CA file.",
    ),
    (
        "peer-auto-tls",
        Kind::Bool,
        "false",
        "Peer TLS using generated certificates",
    ),
    (
        "peer-crl-file",
        Kind::Str,
        "",
        "Path to the peer certificate revocation list file.",
    ),
    (
        "peer-cert-allowed-cn",
        Kind::Str,
        "",
        "Allowed CN for inter peer authentication.",
    ),
    (
        "peer-cert-allowed-hostname",
        Kind::Str,
        "",
        "Allowed TLS hostname for inter peer authentication.",
    ),
    (
        "cipher-suites",
        Kind::Str,
        "",
        "Comma-separated list of supported TLS cipher suites between client/server and peers (Go's names; empty means every suite oxcd offers; TLS 1.3 suites are always on, as in Go).",
    ),
    (
        "experimental-peer-skip-client-san-verification",
        Kind::Bool,
        "false",
        "Skip verification of SAN field in client certificate for peer connections.",
    ),
    (
        "config-file",
        Kind::Str,
        "",
        "Path to the server configuration file (etcd 3.4's YAML format). Note that if a configuration file is provided, other command line flags and environment variables will be ignored.",
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
    let get_bool = |flag: &str| flag_bool(&get, flag);
    if get_bool("help")? {
        return Ok(Command::PrintHelp(help_text()));
    }
    if get_bool("version")? {
        return Ok(Command::PrintVersion(format!(
            "oxcd Version: {}\netcd API Version: 3.4.23 (v2 API)\nRust: built with rustc\n",
            env!("CARGO_PKG_VERSION")
        )));
    }
    // As in etcd: a configuration file replaces every other flag and variable (the file
    // named by the flag, else by ETCD_CONFIG_FILE).
    let config_file = set
        .get("config-file")
        .filter(|v| !v.is_empty())
        .cloned()
        .or_else(|| env(&env_name("config-file")).filter(|v| !v.is_empty()));
    if let Some(path) = config_file {
        let result = file::load(&path)
            .and_then(|values| build(&|flag: &str| values.get(flag).cloned(), true));
        return match result {
            Ok(mut cfg) => {
                cfg.config_file = Some(path);
                Ok(Command::Run(Box::new(cfg)))
            }
            Err(error) => Err(ConfigError::File {
                path,
                error: Box::new(error),
            }),
        };
    }
    build(&get, false).map(|cfg| Command::Run(Box::new(cfg)))
}

/// A boolean flag's value (`get`: its value, if given), or its default.
fn flag_bool(get: &dyn Fn(&str) -> Option<String>, flag: &str) -> Result<bool, ConfigError> {
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
}

/// Validates the settings (`get`: a flag's value, if given) into a member configuration.
/// `from_file`: they come from a configuration file, where etcd's rules differ in two
/// places (an explicit `initial-cluster` is one that differs from the default; a
/// `listen-client-urls` without `advertise-client-urls` keeps the default advertised URL).
fn build(
    get: &dyn Fn(&str) -> Option<String>,
    from_file: bool,
) -> Result<ServerConfig, ConfigError> {
    let get_bool = |flag: &str| flag_bool(&get, flag);
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
    // etcd's conflict check (embed.Config.Validate) comes before its timing checks and
    // before discovery is attempted. A defaulted --initial-cluster is dropped when discovery
    // is asked for, so only an explicit one conflicts.
    let discovery = !defaulted("discovery").is_empty();
    let discovery_srv = !defaulted("discovery-srv").is_empty();
    let mut cluster_str =
        get("initial-cluster").unwrap_or_else(|| DEFAULT_INITIAL_CLUSTER.to_string());
    let explicit_cluster = if from_file {
        cluster_str != DEFAULT_INITIAL_CLUSTER
    } else {
        get("initial-cluster").is_some()
    };
    if (discovery || discovery_srv) && !explicit_cluster {
        cluster_str.clear();
    }
    if [discovery, !cluster_str.is_empty(), discovery_srv]
        .iter()
        .filter(|set| **set)
        .count()
        > 1
    {
        return Err(ConfigError::Invalid(format!(
            "error verifying flags, {CONFLICT_BOOTSTRAP}. See 'etcd --help'."
        )));
    }
    let heartbeat = number("heartbeat-interval")?;
    let election = number("election-timeout")?;
    if heartbeat == 0 {
        return Err(ConfigError::Invalid(
            "--heartbeat-interval must be >0 (set to 0ms)".into(),
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
    let proxy = proxy_config(&defaulted)?;
    let is_proxy = proxy.mode != ProxyMode::Off;
    let listen_client_urls = urls("listen-client-urls")?;
    let listen_peer_urls = urls("listen-peer-urls")?;
    let tls_info = |prefix: &str, crl: &str, auto: &str| -> Result<TlsInfo, ConfigError> {
        let info = TlsInfo {
            cert_file: defaulted(&format!("{prefix}cert-file")),
            key_file: defaulted(&format!("{prefix}key-file")),
            trusted_ca_file: defaulted(&format!("{prefix}trusted-ca-file")),
            client_cert_auth: get_bool(&format!("{prefix}client-cert-auth"))?,
            crl_file: defaulted(crl),
            allowed_cn: if prefix.is_empty() {
                String::new()
            } else {
                defaulted("peer-cert-allowed-cn")
            },
            allowed_hostname: defaulted(&if prefix.is_empty() {
                "client-cert-allowed-hostname".to_string()
            } else {
                "peer-cert-allowed-hostname".to_string()
            }),
            auto_tls: get_bool(auto)?,
        };
        if info.cert_file.is_empty() != info.key_file.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "KeyFile and CertFile must both be present[key: {}, cert: {}] (--{prefix}key-file, --{prefix}cert-file)",
                info.key_file, info.cert_file
            )));
        }
        if !info.allowed_cn.is_empty() && !info.allowed_hostname.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "AllowedCN and AllowedHostname are mutually exclusive (cn={:?}, hostname={:?})",
                info.allowed_cn, info.allowed_hostname
            )));
        }
        Ok(info)
    };
    let client_tls = tls_info("", "client-crl-file", "auto-tls")?;
    let peer_tls = tls_info("peer-", "peer-crl-file", "peer-auto-tls")?;
    let cipher_suites: Vec<String> = defaulted("cipher-suites")
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    crate::tls::cipher_suites(&cipher_suites).map_err(ConfigError::Invalid)?;
    // Never serve plaintext on a URL that asks for TLS, nor TCP on a unix socket.
    for u in &listen_client_urls {
        match u.scheme.as_str() {
            "https" if !client_tls.can_serve() => {
                return Err(ConfigError::Invalid(format!(
                    "TLS key/cert (--cert-file, --key-file) must be provided for client url {u} with HTTPS scheme"
                )))
            }
            "unix" | "unixs" => {
                return Err(ConfigError::Invalid(format!(
                    "client url {u}: unix socket listeners are not supported by oxcd yet"
                )))
            }
            _ => {}
        }
    }
    for u in &listen_peer_urls {
        match u.scheme.as_str() {
            "https" if !peer_tls.can_serve() => {
                return Err(ConfigError::Invalid(format!(
                    "cannot listen on TLS for {}:{}: KeyFile and CertFile are not presented (--peer-cert-file, --peer-key-file, or --peer-auto-tls, for peer url {u})",
                    u.host, u.port
                )))
            }
            "unix" | "unixs" => {
                return Err(ConfigError::Invalid(format!(
                    "peer url {u}: unix socket listeners are not supported by oxcd yet"
                )))
            }
            _ => {}
        }
    }
    let advertise_client_urls = urls("advertise-client-urls")?;
    // A proxy advertises nothing (etcd's `mayBeProxy`).
    if !from_file
        && !is_proxy
        && get("listen-client-urls").is_some()
        && get("advertise-client-urls").is_none()
    {
        return Err(ConfigError::Invalid(
            "--advertise-client-urls is required when --listen-client-urls is set explicitly"
                .into(),
        ));
    }
    let peer_urls = urls("initial-advertise-peer-urls")?;
    // etcd: `--name x` alone makes the cluster `x=<advertised peer URLs>`; the default
    // name keeps the default cluster (which then must match the advertised peer URLs).
    if cluster_str == DEFAULT_INITIAL_CLUSTER && name != "default" {
        cluster_str = peer_urls
            .iter()
            .map(|u| format!("{name}={u}"))
            .collect::<Vec<_>>()
            .join(",");
    }
    // etcd (`PeerURLsMapAndToken`): with discovery, the cluster to start from is this
    // member alone, and the discovery URL is the token its ID is derived with.
    if discovery {
        cluster_str = peer_urls
            .iter()
            .map(|u| format!("{name}={u}"))
            .collect::<Vec<_>>()
            .join(",");
    }
    let mut initial_cluster = Vec::new();
    for entry in cluster_str.split(',').filter(|e| !e.is_empty()) {
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
    let data_dir = get("data-dir")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| format!("{name}.etcd"));
    let wal_dir = get("wal-dir").filter(|s| !s.is_empty()).map(PathBuf::from);
    // As etcd (`VerifyBootstrap`, `VerifyJoinExisting`): the bootstrap flags are checked
    // against each other only when they bootstrap; a member with a WAL is who its WAL says
    // (restarted after `member update` on new peer URLs, its --initial-cluster is stale).
    let has_wal = oxcd_wal::Wal::exists(
        &wal_dir
            .clone()
            .unwrap_or_else(|| Path::new(&data_dir).join("member").join("wal")),
    );
    // A proxy is no member: --initial-cluster only names the peers it asks. With
    // --discovery-srv the initial cluster comes from DNS at start (`crate::srv`), which
    // checks this member's place in it by resolved address.
    if !has_wal && !is_proxy && !discovery_srv {
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
    }
    let log_level = if get_bool("debug")? {
        "debug".to_string()
    } else {
        defaulted("log-level")
    };
    let max_request_bytes = number("max-request-bytes")? as usize;
    refuse_unsupported(&defaulted)?;
    let mut warnings = Vec::new();
    let retention = defaulted("auto-compaction-retention");
    compaction_retention(&retention)?;
    if retention != "0" {
        warnings.push(format!(
            "--auto-compaction-retention={retention} ({}) compacts etcd's v3 key-value history; oxcd serves only the v2 store, which etcd does not compact either",
            defaulted("auto-compaction-mode")
        ));
    }
    if get_bool("enable-pprof")? {
        warnings.push(
            "--enable-pprof: Go's runtime profiling endpoints (/debug/pprof) have no oxcd equivalent and are not served"
                .to_string(),
        );
    }
    let listen_metrics_urls = match get("listen-metrics-urls").filter(|v| !v.is_empty()) {
        Some(_) => urls("listen-metrics-urls")?,
        None => Vec::new(),
    };
    for u in &listen_metrics_urls {
        match u.scheme.as_str() {
            "http" => {}
            "https" if client_tls.can_serve() => {}
            "https" => {
                return Err(ConfigError::Invalid(format!(
                    "cannot listen on TLS for {}:{}: KeyFile and CertFile are not presented (--cert-file, --key-file or --auto-tls, for metrics url {u})",
                    u.host, u.port
                )))
            }
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "metrics url {u}: only http and https listeners are supported by oxcd"
                )))
            }
        }
    }
    let cors: Vec<String> = defaulted("cors")
        .split(',')
        .map(|o| o.trim().to_string())
        .filter(|o| !o.is_empty())
        .collect();
    let (logger, log_outputs) = logging(&defaulted("logger"), &defaulted("log-outputs"))?;
    if !matches!(
        log_level.as_str(),
        "debug" | "info" | "warn" | "error" | "panic" | "fatal"
    ) {
        return Err(ConfigError::Invalid(format!(
            "error verifying flags, unknown log-level {log_level:?}. See 'etcd --help'."
        )));
    }
    Ok(ServerConfig {
        name,
        data_dir: PathBuf::from(data_dir),
        wal_dir,
        listen_client_urls,
        advertise_client_urls,
        listen_peer_urls,
        initial_advertise_peer_urls: peer_urls,
        initial_cluster,
        initial_cluster_state: state,
        initial_cluster_token: if discovery {
            defaulted("discovery")
        } else {
            defaulted("initial-cluster-token")
        },
        discovery_srv: defaulted("discovery-srv"),
        discovery_srv_name: defaulted("discovery-srv-name"),
        heartbeat_interval: Duration::from_millis(heartbeat),
        election_timeout: Duration::from_millis(election),
        snapshot_count: number("snapshot-count")?,
        max_snapshots: number("max-snapshots")? as u32,
        max_wals: number("max-wals")? as u32,
        max_request_bytes,
        force_new_cluster: get_bool("force-new-cluster")?,
        log_level,
        logger,
        log_outputs,
        pre_vote: get_bool("pre-vote")?,
        strict_reconfig_check: get_bool("strict-reconfig-check")?,
        enable_v2: get_bool("enable-v2")?,
        cors,
        listen_metrics_urls,
        client_tls,
        peer_tls,
        cipher_suites,
        peer_skip_client_san: get_bool("experimental-peer-skip-client-san-verification")?,
        config_file: None,
        proxy,
        warnings,
        discovery: discovery.then(|| crate::discovery::Settings {
            url: defaulted("discovery"),
            proxy: defaulted("discovery-proxy"),
            fallback_proxy: defaulted("discovery-fallback") == "proxy",
        }),
    })
}

/// `--proxy` and the `--proxy-*` durations, validated as etcd's flags: the mode is one of
/// three words, each duration a Go `uint` in milliseconds (`strconv.ParseUint(s, 0, 64)`:
/// decimal, or `0x`/`0o`/`0b`/leading-`0` prefixed).
fn proxy_config(defaulted: &dyn Fn(&str) -> String) -> Result<ProxyConfig, ConfigError> {
    let mode = match defaulted("proxy").as_str() {
        "off" => ProxyMode::Off,
        "readonly" => ProxyMode::Readonly,
        "on" => ProxyMode::On,
        other => {
            return Err(ConfigError::InvalidValue {
                flag: "proxy".into(),
                value: other.to_string(),
                reason: "invalid value".into(),
            })
        }
    };
    let ms = |flag: &str| -> Result<Duration, ConfigError> {
        let v = defaulted(flag);
        go_parse_uint(&v)
            .map(Duration::from_millis)
            .map_err(|reason| ConfigError::InvalidValue {
                flag: flag.to_string(),
                value: v,
                reason: reason.into(),
            })
    };
    Ok(ProxyConfig {
        mode,
        failure_wait: ms("proxy-failure-wait")?,
        refresh_interval: ms("proxy-refresh-interval")?,
        dial_timeout: ms("proxy-dial-timeout")?,
        write_timeout: ms("proxy-write-timeout")?,
        read_timeout: ms("proxy-read-timeout")?,
    })
}

/// Go's `strconv.ParseUint(s, 0, 64)`, with the error words Go's flag package prints: an
/// underscore may stand between digits, or after a base prefix.
fn go_parse_uint(s: &str) -> Result<u64, &'static str> {
    if s.starts_with('_') || s.ends_with('_') || s.contains("__") {
        return Err("parse error");
    }
    let (digits, radix) = if let Some(r) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (r, 16)
    } else if let Some(r) = s.strip_prefix("0o").or_else(|| s.strip_prefix("0O")) {
        (r, 8)
    } else if let Some(r) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        (r, 2)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    let digits = digits.replace('_', "");
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err("parse error");
    }
    u64::from_str_radix(&digits, radix).map_err(|_| "value out of range")
}

/// etcd's parse of `--auto-compaction-retention`: a non-negative integer (hours in periodic
/// mode, revisions in revision mode) or a Go duration.
fn compaction_retention(value: &str) -> Result<(), ConfigError> {
    if value.parse::<i64>().is_ok_and(|h| h >= 0) || is_go_duration(value) {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!(
        "error parsing CompactionRetention: time: invalid duration {value:?}"
    )))
}

/// Go's `time.ParseDuration` syntax: `[-+]?` then `<decimal><unit>` one or more times
/// (units ns, us, µs, μs, ms, s, m, h), or `0`.
fn is_go_duration(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    if s == "0" {
        return true;
    }
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let mut len = int_len;
        let mut frac_len = 0;
        if rest[len..].starts_with('.') {
            len += 1;
            frac_len = rest[len..].bytes().take_while(u8::is_ascii_digit).count();
            len += frac_len;
        }
        if int_len == 0 && frac_len == 0 {
            return false;
        }
        rest = &rest[len..];
        let Some(unit) = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"]
            .iter()
            .find(|u| rest.starts_with(**u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

/// Refuses, at start, every flag value whose behaviour oxcd does not have yet, instead of
/// accepting it and behaving differently.
fn refuse_unsupported(value: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    let refuse = |what: &str| Err(ConfigError::Invalid(what.to_string()));
    if value("quota-backend-bytes") != "0" {
        return refuse("--quota-backend-bytes limits the v3 backend, which oxcd does not have yet");
    }
    match value("discovery-fallback").as_str() {
        "exit" | "proxy" => {}
        other => {
            return Err(ConfigError::InvalidValue {
                flag: "discovery-fallback".into(),
                value: other.to_string(),
                reason: "valid values include exit,proxy".into(),
            })
        }
    }
    match value("auto-compaction-mode").as_str() {
        "periodic" | "revision" => {}
        other => {
            return refuse(&format!(
                "unknown auto-compaction-mode {other:?} (only supports \"periodic\", \"revision\")"
            ))
        }
    }
    match value("metrics").as_str() {
        "basic" | "extensive" => {}
        other => {
            return Err(ConfigError::InvalidValue {
                flag: "metrics".into(),
                value: other.to_string(),
                reason: "valid values include basic,extensive".into(),
            })
        }
    }
    Ok(())
}

/// Validates `--logger` and `--log-outputs` with etcd 3.4's rules and messages.
fn logging(logger: &str, outputs: &str) -> Result<(Logger, Vec<LogOutput>), ConfigError> {
    let invalid = |what: String| {
        ConfigError::Invalid(format!("error verifying flags, {what}. See 'etcd --help'."))
    };
    let names: Vec<&str> = outputs.split(',').map(str::trim).collect();
    match logger {
        "capnslog" => {
            if names.len() != 1 {
                return Err(invalid(format!(
                    "--logger=capnslog supports only 1 value in '--log-outputs', got {names:?}"
                )));
            }
            let out = match names[0] {
                "default" | "stderr" => LogOutput::Stderr,
                "stdout" => LogOutput::Stdout,
                other => {
                    return Err(invalid(format!(
                        "unknown log-output {other:?} (only supports \"default\", \"stderr\", \"stdout\")"
                    )))
                }
            };
            Ok((Logger::Capnslog, vec![out]))
        }
        "zap" => {
            if names.len() > 1 && names.contains(&"default") {
                return Err(invalid(
                    "multi logoutput for \"default\" is not supported yet".to_string(),
                ));
            }
            let mut outs = Vec::new();
            for name in names {
                outs.push(match name {
                    "default" | "stderr" => LogOutput::Stderr,
                    "stdout" => LogOutput::Stdout,
                    "journal" => {
                        return Err(invalid(
                            "--log-outputs=journal is not supported by oxcd (use stderr and let the service manager collect it)"
                                .to_string(),
                        ))
                    }
                    "" => return Err(invalid("empty value in '--log-outputs'".to_string())),
                    path => LogOutput::File(PathBuf::from(path)),
                });
            }
            Ok((Logger::Zap, outs))
        }
        other => Err(invalid(format!("unknown logger option {other:?}"))),
    }
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
        assert!(!run(&["-enable-v2=false"], &[]).unwrap().enable_v2);
        assert!(!run(&["-pre-vote=false"], &[]).unwrap().pre_vote);
        assert!(run(&["--pre-vote"], &[]).unwrap().pre_vote);
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

    #[test]
    fn tls_and_unix_listeners_are_refused_not_downgraded() {
        let e = run(
            &[
                "--listen-client-urls",
                "https://127.0.0.1:2379",
                "--advertise-client-urls",
                "https://127.0.0.1:2379",
            ],
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with(
                "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379 with HTTPS scheme"
            ),
            "{e}"
        );
        assert_eq!(e.exit_code(), 1);
        let e = run(&["--listen-peer-urls", "https://127.0.0.1:2380"], &[]).unwrap_err();
        assert!(
            e.to_string().contains("peer url https://127.0.0.1:2380"),
            "{e}"
        );
        assert!(run(&["--listen-peer-urls", "unix://127.0.0.1:2380"], &[]).is_err());
    }

    #[test]
    fn tls_flags_and_their_env_variables() {
        let https = [
            "--listen-client-urls",
            "https://127.0.0.1:2379,http://127.0.0.1:2379",
            "--advertise-client-urls",
            "https://127.0.0.1:2379",
            "--listen-peer-urls",
            "https://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "https://127.0.0.1:2380",
            "--initial-cluster",
            "default=https://127.0.0.1:2380",
        ];
        let env = [
            ("ETCD_CERT_FILE", "c.pem"),
            ("ETCD_KEY_FILE", "k.pem"),
            ("ETCD_TRUSTED_CA_FILE", "ca.pem"),
            ("ETCD_CLIENT_CERT_AUTH", "true"),
            ("ETCD_CLIENT_CRL_FILE", "crl.pem"),
            ("ETCD_CLIENT_CERT_ALLOWED_HOSTNAME", "client.example"),
            ("ETCD_PEER_CERT_FILE", "pc.pem"),
            ("ETCD_PEER_KEY_FILE", "pk.pem"),
            ("ETCD_PEER_TRUSTED_CA_FILE", "pca.pem"),
            ("ETCD_PEER_CLIENT_CERT_AUTH", "1"),
            ("ETCD_PEER_CRL_FILE", "pcrl.pem"),
            ("ETCD_PEER_CERT_ALLOWED_CN", "example.com"),
            (
                "ETCD_CIPHER_SUITES",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
            ),
        ];
        let c = run(&https, &env).unwrap();
        assert_eq!(
            c.client_tls,
            TlsInfo {
                cert_file: "c.pem".into(),
                key_file: "k.pem".into(),
                trusted_ca_file: "ca.pem".into(),
                client_cert_auth: true,
                crl_file: "crl.pem".into(),
                allowed_cn: String::new(),
                allowed_hostname: "client.example".into(),
                auto_tls: false,
            }
        );
        assert_eq!(c.peer_tls.cert_file, "pc.pem");
        assert_eq!(c.peer_tls.trusted_ca_file, "pca.pem");
        assert!(c.peer_tls.client_cert_auth);
        assert_eq!(c.peer_tls.crl_file, "pcrl.pem");
        assert_eq!(c.peer_tls.allowed_cn, "example.com");
        assert_eq!(c.cipher_suites.len(), 2);
        // Advertised URLs are what the flag says.
        assert_eq!(
            c.advertise_client_urls[0].to_string(),
            "https://127.0.0.1:2379"
        );
        // Auto TLS serves https without certificate files, from flags or the environment.
        let c = run(
            &https,
            &[("ETCD_AUTO_TLS", "true"), ("ETCD_PEER_AUTO_TLS", "true")],
        )
        .unwrap();
        assert!(c.client_tls.auto_tls && c.peer_tls.auto_tls);
        assert!(run(
            &[&https[..], &["--auto-tls", "--peer-auto-tls"]].concat(),
            &[]
        )
        .is_ok());
        // Refusals, with etcd's words where etcd has them.
        let e = run(&https, &[("ETCD_PEER_AUTO_TLS", "true")]).unwrap_err();
        assert!(e.to_string().starts_with("TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379 with HTTPS scheme"), "{e}");
        let e = run(&https, &[("ETCD_AUTO_TLS", "true")]).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "cannot listen on TLS for 127.0.0.1:2380: KeyFile and CertFile are not presented"
            ),
            "{e}"
        );
        let e = run(&["--cert-file", "c.pem"], &[]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("KeyFile and CertFile must both be present"),
            "{e}"
        );
        let e = run(
            &[
                "--peer-cert-allowed-cn",
                "a",
                "--peer-cert-allowed-hostname",
                "b",
            ],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("mutually exclusive"), "{e}");
        let e = run(&["--cipher-suites", "TLS_NOPE"], &[]).unwrap_err();
        assert_eq!(e.to_string(), "unexpected TLS cipher suite \"TLS_NOPE\"");
        let e = run(&["--cipher-suites", "TLS_RSA_WITH_3DES_EDE_CBC_SHA"], &[]).unwrap_err();
        assert!(e.to_string().contains("not offered by oxcd"), "{e}");
    }

    #[test]
    fn flags_oxcd_cannot_honour_are_refused() {
        for args in [
            &["--quota-backend-bytes", "1000"][..],
            &["--discovery-fallback", "bogus"],
            &["--auto-compaction-retention", "1x"],
            &["--auto-compaction-retention", "-1"],
            &["--auto-compaction-mode", "bogus"],
            &["--metrics", "bogus"],
            &["--listen-metrics-urls", "https://127.0.0.1:2381"],
        ] {
            assert!(run(args, &[]).is_err(), "{args:?} was accepted");
        }
        let c = run(
            &[
                "--strict-reconfig-check=false",
                "--enable-v2=false",
                "--pre-vote=false",
                "--metrics=extensive",
                "--cors=http://a.example,http://b.example",
                "--listen-metrics-urls=http://127.0.0.1:2381",
            ],
            &[],
        )
        .unwrap();
        assert!(!c.strict_reconfig_check && !c.enable_v2 && !c.pre_vote);
        assert_eq!(c.cors, vec!["http://a.example", "http://b.example"]);
        assert_eq!(c.listen_metrics_urls[0].port, 2381);
        let d = run(&[], &[]).unwrap();
        assert!(d.strict_reconfig_check && d.enable_v2 && d.pre_vote);
        assert!(d.cors.is_empty() && d.listen_metrics_urls.is_empty());
    }

    #[test]
    fn proxy_flags_as_etcd() {
        let d = run(&[], &[]).unwrap().proxy;
        assert_eq!(
            d,
            ProxyConfig {
                mode: ProxyMode::Off,
                failure_wait: Duration::from_millis(5000),
                refresh_interval: Duration::from_millis(30000),
                dial_timeout: Duration::from_millis(1000),
                write_timeout: Duration::from_millis(5000),
                read_timeout: Duration::ZERO,
            }
        );
        // A proxy is no member: it needs no advertised client URL and need not be named in
        // --initial-cluster.
        let c = run(
            &[
                "--proxy",
                "on",
                "--listen-client-urls",
                "http://127.0.0.1:2379",
                "--initial-cluster",
                "a=http://127.0.0.1:1,b=http://127.0.0.1:2",
                "--proxy-failure-wait=0x10",
                "--proxy-refresh-interval",
                "010",
            ],
            &[
                ("ETCD_PROXY_DIAL_TIMEOUT", "7"),
                ("ETCD_PROXY_READ_TIMEOUT", "9"),
                ("ETCD_PROXY_WRITE_TIMEOUT", "0b11"),
            ],
        )
        .unwrap();
        assert_eq!(c.proxy.mode, ProxyMode::On);
        assert_eq!(c.proxy.failure_wait, Duration::from_millis(16));
        assert_eq!(c.proxy.refresh_interval, Duration::from_millis(8));
        assert_eq!(c.proxy.dial_timeout, Duration::from_millis(7));
        assert_eq!(c.proxy.read_timeout, Duration::from_millis(9));
        assert_eq!(c.proxy.write_timeout, Duration::from_millis(3));
        assert_eq!(
            run(&[], &[("ETCD_PROXY", "readonly")]).unwrap().proxy.mode,
            ProxyMode::Readonly
        );
        // A member still needs both.
        assert!(run(&["--listen-client-urls", "http://127.0.0.1:2379"], &[]).is_err());
        // etcd's words (Go's flag package).
        for (args, want) in [
            (
                &["--proxy", "bogus"][..],
                "invalid value \"bogus\" for flag -proxy: invalid value",
            ),
            (
                &["--proxy", "ON"],
                "invalid value \"ON\" for flag -proxy: invalid value",
            ),
            (
                &["--proxy-failure-wait", "x"],
                "invalid value \"x\" for flag -proxy-failure-wait: parse error",
            ),
            (
                &["--proxy-read-timeout", "-1"],
                "invalid value \"-1\" for flag -proxy-read-timeout: parse error",
            ),
            (
                &["--proxy-dial-timeout", "1.5"],
                "invalid value \"1.5\" for flag -proxy-dial-timeout: parse error",
            ),
            (
                &["--proxy-write-timeout", "99999999999999999999"],
                "invalid value \"99999999999999999999\" for flag -proxy-write-timeout: value out of range",
            ),
            (
                &["--proxy-refresh-interval", ""],
                "invalid value \"\" for flag -proxy-refresh-interval: parse error",
            ),
        ] {
            let e = run(args, &[]).unwrap_err();
            assert_eq!(e.to_string(), want, "{args:?}");
            assert_eq!(e.exit_code(), 2);
        }
        assert_eq!(go_parse_uint("0"), Ok(0));
        assert_eq!(go_parse_uint("0o17"), Ok(15));
        assert_eq!(go_parse_uint("0x1_0"), Ok(16));
        assert_eq!(go_parse_uint("1_0"), Ok(10));
        assert_eq!(go_parse_uint("0x_10"), Ok(16));
        assert_eq!(go_parse_uint("1__0"), Err("parse error"));
        assert_eq!(go_parse_uint("10_"), Err("parse error"));
        assert_eq!(go_parse_uint("0x"), Err("parse error"));
        assert_eq!(go_parse_uint("09"), Err("parse error"));
        assert_eq!(go_parse_uint("+5"), Err("parse error"));
    }

    #[test]
    fn proxy_keys_of_a_config_file_are_used() {
        let p = std::env::temp_dir().join(format!("oxcd-proxy-{}.yml", std::process::id()));
        std::fs::write(
            &p,
            "proxy: 'readonly'\nproxy-failure-wait: 100\nproxy-read-timeout: 0x10\ninitial-cluster: a=http://127.0.0.1:1\n",
        )
        .unwrap();
        let c = run(&["--config-file", p.to_str().unwrap()], &[]);
        let _ = std::fs::remove_file(&p);
        let c = c.unwrap();
        assert_eq!(c.proxy.mode, ProxyMode::Readonly);
        assert_eq!(c.proxy.failure_wait, Duration::from_millis(100));
        assert_eq!(c.proxy.read_timeout, Duration::from_millis(16));
        assert_eq!(c.proxy.dial_timeout, Duration::from_millis(1000));
    }

    #[test]
    fn conflicting_bootstrap_flags_as_etcd() {
        // etcd 3.4.23's line for each of these: "error verifying flags, multiple discovery
        // or bootstrap flags are set. Choose one of "initial-cluster", "discovery" or
        // "discovery-srv". See 'etcd --help'." (exit 1).
        let conflict = "error verifying flags, multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\". See 'etcd --help'.";
        let d = ["--discovery", "http://127.0.0.1:1/token"];
        let srv = ["--discovery-srv", "example.com"];
        let ic = ["--initial-cluster", "default=http://localhost:2380"];
        for (args, env) in [
            ([&d[..], &ic].concat(), &[][..]),
            ([&srv[..], &ic].concat(), &[]),
            ([&d[..], &srv].concat(), &[]),
            (
                srv.to_vec(),
                &[("ETCD_INITIAL_CLUSTER", "default=http://localhost:2380")][..],
            ),
            ([&d[..], &srv, &["--election-timeout", "10"]].concat(), &[]),
        ] {
            let e = run(&args, env).unwrap_err();
            assert_eq!(e.to_string(), conflict, "{args:?} {env:?}");
            assert_eq!(e.exit_code(), 1);
        }
        // A defaulted --initial-cluster does not conflict with discovery, nor an empty one.
        // Discovery then starts from this member alone, with the discovery URL as the
        // cluster token (etcd's `PeerURLsMapAndToken`); DNS discovery is refused.
        for args in [d.to_vec(), [&d[..], &["--initial-cluster="]].concat()] {
            let c = run(&args, &[]).unwrap();
            let settings = c.discovery.expect("discovery settings");
            assert_eq!(settings.url, "http://127.0.0.1:1/token");
            assert_eq!(settings.proxy, "");
            assert!(settings.fallback_proxy, "etcd's default fallback is proxy");
            assert_eq!(c.initial_cluster_token, "http://127.0.0.1:1/token");
            assert_eq!(c.initial_cluster.len(), 1);
            assert_eq!(c.initial_cluster[0].0, "default");
            assert_eq!(c.initial_cluster[0].1.to_string(), "http://localhost:2380");
        }
        assert!(run(&srv, &[]).is_ok(), "--discovery-srv alone is accepted");
        // Without --discovery there are no discovery settings, whatever the others say.
        let c = run(&["--discovery-proxy", "http://127.0.0.1:1"], &[]).unwrap();
        assert!(c.discovery.is_none());
        assert_eq!(c.initial_cluster_token, "etcd-cluster");
    }

    #[test]
    fn discovery_flags_and_variables() {
        let c = run(
            &[
                "--name",
                "infra1",
                "--initial-advertise-peer-urls",
                "http://10.0.1.11:2380",
                "--discovery-fallback",
                "exit",
                "--discovery-proxy",
                "http://127.0.0.1:3128",
            ],
            &[("ETCD_DISCOVERY", "https://disc.example/v2/keys/discovery/t")],
        )
        .unwrap();
        let settings = c.discovery.unwrap();
        assert_eq!(settings.url, "https://disc.example/v2/keys/discovery/t");
        assert_eq!(settings.proxy, "http://127.0.0.1:3128");
        assert!(!settings.fallback_proxy);
        assert_eq!(c.initial_cluster.len(), 1);
        assert_eq!(c.initial_cluster[0].0, "infra1");
        assert_eq!(c.initial_cluster[0].1.to_string(), "http://10.0.1.11:2380");
    }

    #[test]
    fn conflicting_bootstrap_keys_in_a_config_file() {
        let dir = std::env::temp_dir();
        let write = |n: &str, text: &str| {
            let p = dir.join(format!("oxcd-conflict-{}-{n}.yml", std::process::id()));
            std::fs::write(&p, text).unwrap();
            p
        };
        let conflict = "error verifying flags, multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\". See 'etcd --help'.";
        for (n, text) in [
            (
                "a",
                "discovery: http://127.0.0.1:1/x\ninitial-cluster: infra=http://localhost:2380\n",
            ),
            (
                "b",
                "discovery: http://127.0.0.1:1/x\ndiscovery-srv: example.com\n",
            ),
        ] {
            let p = write(n, text);
            let e = run(&["--config-file", p.to_str().unwrap()], &[]).unwrap_err();
            let _ = std::fs::remove_file(&p);
            assert_eq!(e.exit_code(), 1);
            assert_eq!(e.to_string(), conflict, "{text}");
        }
    }

    #[test]
    fn discovery_keys_in_a_config_file() {
        // etcd compares the file's cluster with its default: that value is "not set", so
        // it does not conflict with discovery.
        let p = std::env::temp_dir().join(format!("oxcd-disc-{}.yml", std::process::id()));
        std::fs::write(
            &p,
            "name: infra2\ninitial-cluster: default=http://localhost:2380\ndiscovery: http://127.0.0.1:1/x\ndiscovery-proxy: http://127.0.0.1:2\ndiscovery-fallback: 'exit'\n",
        )
        .unwrap();
        let c = run(&["--config-file", p.to_str().unwrap()], &[]);
        let _ = std::fs::remove_file(&p);
        let c = c.unwrap();
        let settings = c.discovery.unwrap();
        assert_eq!(
            settings,
            crate::discovery::Settings {
                url: "http://127.0.0.1:1/x".into(),
                proxy: "http://127.0.0.1:2".into(),
                fallback_proxy: false,
            }
        );
        assert_eq!(c.initial_cluster_token, "http://127.0.0.1:1/x");
        assert_eq!(c.initial_cluster[0].0, "infra2");
    }

    #[test]
    fn logger_and_outputs_as_etcd_validates_them() {
        let c = run(&[], &[]).unwrap();
        assert_eq!(c.logger, Logger::Capnslog);
        assert_eq!(c.log_outputs, vec![LogOutput::Stderr]);
        let c = run(&["--logger=zap", "--log-outputs=stdout,/tmp/x.log"], &[]).unwrap();
        assert_eq!(c.logger, Logger::Zap);
        assert_eq!(
            c.log_outputs,
            vec![
                LogOutput::Stdout,
                LogOutput::File(PathBuf::from("/tmp/x.log"))
            ]
        );
        let e = run(&["--logger=bogus"], &[]).unwrap_err();
        assert!(
            e.to_string().contains("unknown logger option \"bogus\""),
            "{e}"
        );
        assert!(run(&["--log-outputs=stdout,stderr"], &[]).is_err());
        assert!(run(&["--log-outputs=/tmp/x.log"], &[]).is_err());
        assert!(run(&["--logger=zap", "--log-outputs=default,stdout"], &[]).is_err());
        assert!(run(&["--log-level=verbose"], &[]).is_err());
    }
}
