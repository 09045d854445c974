//! oxcd-bench: parses the command line, runs the chosen workload against the endpoints and
//! prints the result as a table (or one JSON object with --json) on stdout; progress and
//! notes go to stderr.

mod args;
mod client;
mod keys;
mod progress;
mod stats;
mod watch;
mod workload;

use std::process::ExitCode;

use clap::Parser;

use args::{Stop, Workload};

fn main() -> ExitCode {
    let cfg = match args::validate(args::Cli::parse()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("oxcd-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oxcd-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let endpoints: Vec<_> = cfg.endpoints.iter().map(|e| e.authority.as_str()).collect();
    match &cfg.workload {
        Workload::Watch {
            watchers, writes, ..
        } => eprintln!(
            "watch: {watchers} watchers, {writes} writes, endpoints {}",
            endpoints.join(",")
        ),
        w => eprintln!(
            "{}: {} clients over {} connections, {}, endpoints {}",
            w.name(),
            cfg.clients,
            cfg.conns,
            match cfg.stop {
                Stop::Total(n) => format!("{n} requests"),
                Stop::Duration(d) => format!("{:.1}s", d.as_secs_f64()),
            },
            endpoints.join(",")
        ),
    }
    if cfg.clients > cfg.conns && !matches!(cfg.workload, Workload::Watch { .. }) {
        eprintln!("note: clients share connections; each carries one request at a time (--conns)");
    }
    let result = runtime.block_on(async {
        match cfg.workload {
            Workload::Watch { .. } => watch::run(&cfg).await,
            _ => workload::run(&cfg).await,
        }
    });
    runtime.shutdown_background();
    match result {
        Ok(report) => {
            if cfg.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            if report.ok == 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("oxcd-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
