//! The `oxcd` binary: parse etcd's flags and `ETCD_*` variables, set up logging, run.

use std::process::ExitCode;

use oxcd::config::{self, Command};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cfg = match config::parse(args, &|k: &str| std::env::var(k).ok()) {
        Ok(Command::Run(cfg)) => *cfg,
        Ok(Command::PrintVersion(text)) | Ok(Command::PrintHelp(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("oxcd: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    init_tracing(&cfg);
    let (opts, listeners) = oxcd::startup::from_config(&cfg);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("oxcd-worker")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oxcd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(oxcd::startup::run(opts, listeners)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("oxcd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(cfg: &config::ServerConfig) {
    let default = cfg.log_level.as_str();
    let filter = tracing_subscriber::EnvFilter::try_from_env("OXCD_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default},oxcd::raft={default}"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal; log files and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true)
        .init();
}
