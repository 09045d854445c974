//! Command line: the global options, the workload subcommands, and their validation into a
//! `Config` (pure code, unit-tested).

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client::Endpoint;

/// Benchmark driver for etcd-compatible endpoints over the etcd v2 HTTP API.
///
/// Connection model: HTTP/1.1 has no multiplexing, so each of the `--conns` connections
/// carries one request at a time. Client i uses connection i % conns (connections are
/// spread round-robin over the endpoints); clients sharing a connection take turns, and
/// their latency includes the wait for it. `--conns` above `--clients` is capped.
#[derive(Parser, Debug, Clone)]
#[command(name = "oxcd-bench", version)]
#[command(
    after_help = "Global options may be given before or after the workload.\n\
Latency counts successful requests only; throughput is successful requests per second.\n\
`watch` ignores --clients/--conns/--total/--duration and opens one connection per watcher:\n\
raise the open-file limit (`ulimit -n 20000`) for thousands of watchers."
)]
pub struct Cli {
    /// Comma-separated client URLs (http://host:port).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Distinct TCP connections (default: one per client; capped at --clients).
    #[arg(long, global = true)]
    pub conns: Option<usize>,
    /// Concurrent in-flight requests.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Requests to send (default 10000 unless --duration is given).
    #[arg(long, global = true)]
    pub total: Option<u64>,
    /// Run for this many seconds instead of a fixed count.
    #[arg(long, global = true)]
    pub duration: Option<f64>,
    /// Requests per second across all clients; 0 = unlimited.
    #[arg(long, global = true, default_value_t = 0.0)]
    pub rate: f64,
    /// Key length in bytes (keys are zero-padded decimal indexes).
    #[arg(long, global = true, default_value_t = 8)]
    pub key_size: usize,
    /// Value length in bytes.
    #[arg(long, global = true, default_value_t = 8)]
    pub val_size: usize,
    /// A fresh random value (letters and digits) for every PUT, instead of one value for all:
    /// data a server cannot compress.
    #[arg(long, global = true)]
    pub random_values: bool,
    /// Number of distinct keys.
    #[arg(long, global = true, default_value_t = 1)]
    pub key_space: u64,
    /// Print the result as one JSON object.
    #[arg(long, global = true)]
    pub json: bool,
    /// Key prefix under /v2/keys.
    #[arg(long, global = true, default_value = "bench")]
    pub prefix: String,
    /// Per-request timeout (connect + response) in seconds; also the watch drain timeout.
    #[arg(long, global = true, default_value_t = 30.0)]
    pub timeout: f64,
    #[command(subcommand)]
    pub workload: Workload,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum Workload {
    /// PUT value=<val-size bytes> to keys in the key space.
    Put {
        /// Walk the key space in order instead of picking keys at random.
        #[arg(long)]
        sequential_keys: bool,
    },
    /// GET keys (the key space is populated first, untimed).
    Get {
        /// Linearizable reads (?quorum=true).
        #[arg(long)]
        quorum: bool,
    },
    /// GETs and PUTs mixed (the key space is populated first, untimed).
    Mixed {
        /// Fraction of requests that are reads.
        #[arg(long, default_value_t = 0.9)]
        read_ratio: f64,
        /// Linearizable reads (?quorum=true).
        #[arg(long)]
        quorum: bool,
    },
    /// Long-poll watchers on one key; writes on a fixed schedule; measures delivery latency.
    Watch {
        /// Number of watchers (one connection each).
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Number of writes, issued on a fixed schedule (--rate per second, else 100/s)
        /// whether or not earlier ones were acknowledged yet.
        #[arg(long, default_value_t = 100)]
        writes: u64,
        /// Watch the prefix directory recursively instead of the key.
        #[arg(long)]
        watch_prefix: bool,
    },
    /// TTL refresh heartbeats (PUT ?ttl=T&refresh=true&prevExist=true) after one create per key.
    Ttl {
        /// TTL in seconds.
        #[arg(long, default_value_t = 10)]
        ttl: u64,
    },
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Put { .. } => "put",
            Workload::Get { .. } => "get",
            Workload::Mixed { .. } => "mixed",
            Workload::Watch { .. } => "watch",
            Workload::Ttl { .. } => "ttl",
        }
    }
}

/// When a timed run stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    Total(u64),
    Duration(Duration),
}

/// A validated run configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub endpoints: Vec<Endpoint>,
    pub conns: usize,
    pub clients: usize,
    pub stop: Stop,
    /// Requests per second, if capped.
    pub rate: Option<f64>,
    pub key_size: usize,
    pub val_size: usize,
    pub random_values: bool,
    pub key_space: u64,
    pub json: bool,
    pub prefix: String,
    pub timeout: Duration,
    pub workload: Workload,
}

/// Checks the command line and resolves defaults.
pub fn validate(cli: Cli) -> Result<Config, String> {
    if cli.endpoints.is_empty() {
        return Err("--endpoints: at least one endpoint is needed".into());
    }
    let endpoints = cli
        .endpoints
        .iter()
        .map(|e| Endpoint::parse(e))
        .collect::<Result<Vec<_>, _>>()?;
    if cli.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    let conns = cli.conns.unwrap_or(cli.clients);
    if conns == 0 {
        return Err("--conns must be at least 1".into());
    }
    let stop = match (cli.total, cli.duration) {
        (Some(_), Some(_)) => return Err("give --total or --duration, not both".into()),
        (Some(0), None) => return Err("--total must be at least 1".into()),
        (Some(n), None) => Stop::Total(n),
        (None, Some(d)) if d.is_finite() && d > 0.0 => Stop::Duration(Duration::from_secs_f64(d)),
        (None, Some(d)) => return Err(format!("--duration must be positive, got {d}")),
        (None, None) => Stop::Total(10_000),
    };
    if !cli.rate.is_finite() || cli.rate < 0.0 {
        return Err(format!("--rate must be 0 or positive, got {}", cli.rate));
    }
    if cli.key_size == 0 {
        return Err("--key-size must be at least 1".into());
    }
    if cli.key_space == 0 {
        return Err("--key-space must be at least 1".into());
    }
    if cli.key_size < 20 && cli.key_space > 10u64.pow(cli.key_size as u32) {
        return Err(format!(
            "--key-space {} does not fit in --key-size {} decimal digits",
            cli.key_space, cli.key_size
        ));
    }
    let prefix = cli.prefix.trim_matches('/').to_string();
    if prefix.is_empty()
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    {
        return Err(format!(
            "--prefix {:?}: use letters, digits and - _ . /",
            cli.prefix
        ));
    }
    if !cli.timeout.is_finite() || cli.timeout <= 0.0 {
        return Err(format!("--timeout must be positive, got {}", cli.timeout));
    }
    match &cli.workload {
        Workload::Mixed { read_ratio, .. } if !(0.0..=1.0).contains(read_ratio) => {
            return Err(format!("--read-ratio must be in [0, 1], got {read_ratio}"));
        }
        Workload::Watch { watchers: 0, .. } => return Err("--watchers must be at least 1".into()),
        Workload::Watch { writes: 0, .. } => return Err("--writes must be at least 1".into()),
        Workload::Ttl { ttl: 0 } => return Err("--ttl must be at least 1".into()),
        _ => {}
    }
    Ok(Config {
        endpoints,
        conns: conns.min(cli.clients),
        clients: cli.clients,
        stop,
        rate: (cli.rate > 0.0).then_some(cli.rate),
        key_size: cli.key_size,
        val_size: cli.val_size,
        random_values: cli.random_values,
        key_space: cli.key_space,
        json: cli.json,
        prefix,
        timeout: Duration::from_secs_f64(cli.timeout),
        workload: cli.workload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("oxcd-bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        validate(cli)
    }

    #[test]
    fn defaults() {
        let c = parse(&["put"]).unwrap();
        assert_eq!(c.stop, Stop::Total(10_000));
        assert_eq!((c.clients, c.conns, c.key_size, c.val_size), (1, 1, 8, 8));
        assert_eq!(c.key_space, 1);
        assert_eq!(c.rate, None);
        assert_eq!(c.prefix, "bench");
        assert_eq!(c.endpoints[0].authority, "127.0.0.1:2379");
        assert_eq!(
            c.workload,
            Workload::Put {
                sequential_keys: false
            }
        );
    }

    #[test]
    fn global_options_after_the_workload() {
        let c = parse(&["put", "--clients", "64", "--conns", "128", "--total", "20"]).unwrap();
        assert_eq!((c.clients, c.conns), (64, 64), "conns capped at clients");
        assert_eq!(c.stop, Stop::Total(20));
        let c = parse(&["put", "--clients", "16"]).unwrap();
        assert_eq!(c.conns, 16, "one connection per client by default");
        let c = parse(&["put", "--clients", "16", "--conns", "4"]).unwrap();
        assert_eq!(c.conns, 4);
        let c = parse(&[
            "--endpoints",
            "http://a:1,b:2",
            "mixed",
            "--read-ratio",
            "0.5",
        ])
        .unwrap();
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.endpoints[1].authority, "b:2");
    }

    #[test]
    fn rejects_bad_values() {
        for (args, needle) in [
            (&["put", "--total", "5", "--duration", "1"][..], "not both"),
            (&["put", "--total", "0"], "--total"),
            (&["put", "--duration=-1"], "--duration"),
            (&["put", "--clients", "0"], "--clients"),
            (&["put", "--rate=-3"], "--rate"),
            (
                &["put", "--key-size", "2", "--key-space", "101"],
                "does not fit",
            ),
            (&["put", "--prefix", "a b"], "--prefix"),
            (&["mixed", "--read-ratio", "1.5"], "--read-ratio"),
            (&["watch", "--watchers", "0"], "--watchers"),
            (&["ttl", "--ttl", "0"], "--ttl"),
            (&["put", "--endpoints", "https://x:1"], "https"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn key_space_that_fits_exactly() {
        assert!(parse(&["put", "--key-size", "2", "--key-space", "100"]).is_ok());
        assert!(parse(&[
            "put",
            "--key-size",
            "25",
            "--key-space",
            "18446744073709551615"
        ])
        .is_ok());
    }

    #[test]
    fn duration_and_rate() {
        let c = parse(&["get", "--duration", "2.5", "--rate", "100", "--quorum"]).unwrap();
        assert_eq!(c.stop, Stop::Duration(Duration::from_millis(2500)));
        assert_eq!(c.rate, Some(100.0));
        assert_eq!(c.workload, Workload::Get { quorum: true });
    }
}
