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
            // etcd logs that it reads the file before it reports what is wrong in it.
            if let Some(path) = e.config_file() {
                eprintln!("oxcd: {}", config::loading_line(path));
            }
            eprintln!("oxcd: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    if let Err(e) = init_tracing(&cfg) {
        eprintln!("oxcd: error verifying flags, {e}. See 'etcd --help'.");
        return ExitCode::FAILURE;
    }
    if let Some(path) = &cfg.config_file {
        match cfg.logger {
            config::Logger::Capnslog => tracing::info!("{}", config::loading_line(path)),
            config::Logger::Zap => tracing::info!(
                path = %path,
                "loaded server configuration, other configuration command line flags and environment variables will be ignored if provided"
            ),
        }
    }
    for warning in &cfg.warnings {
        tracing::warn!("{warning}");
    }
    oxcd::failstop::install_panic_hook();
    let (opts, listeners) = match oxcd::startup::from_config(&cfg) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("oxcd: {e:#}");
            return ExitCode::FAILURE;
        }
    };
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
    let proxy = match oxcd::startup::proxy_setup(&cfg, &opts) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("oxcd: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let client_listen = listeners.client.clone();
    let peer_tls = opts.peer_tls.clone();
    let run = async move {
        match proxy {
            Some(setup) => oxcd::proxy::run(setup, listeners.client).await,
            None => match oxcd::startup::run(opts, listeners).await {
                // `--discovery-fallback proxy` and a full discovery cluster: a proxy of the
                // discovered cluster instead, on the same client URLs (the member's
                // listeners are closed by now).
                Err(e) => match e.downcast::<oxcd::discovery::FallbackToProxy>() {
                    Ok(fallback) => {
                        let mut setup = oxcd::proxy::Setup::from_config(&cfg, peer_tls)?;
                        setup.bootstrap_peer_urls = fallback.peer_urls;
                        oxcd::proxy::run(setup, client_listen).await
                    }
                    Err(e) => Err(e),
                },
                ok => ok,
            },
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("oxcd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(cfg: &config::ServerConfig) -> std::io::Result<()> {
    // etcd's "panic" and "fatal" levels only log errors and worse.
    let default = match cfg.log_level.as_str() {
        "panic" | "fatal" => "error",
        level => level,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("OXCD_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default},oxcd::raft={default}"))
    });
    let outputs = LogOutputs::open(&cfg.log_outputs)?;
    // Colour codes only when the one output is a terminal; files and journald get plain text.
    let ansi = outputs.is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(outputs)
        .with_target(true);
    match cfg.logger {
        config::Logger::Capnslog => builder.with_ansi(ansi).init(),
        config::Logger::Zap => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    Ok(())
}

/// Every `--log-outputs` destination; each log line is written to each of them whole.
#[derive(Clone)]
struct LogOutputs(std::sync::Arc<Vec<Sink>>);

#[derive(Clone)]
enum Sink {
    Stderr,
    Stdout,
    File(std::sync::Arc<std::fs::File>),
}

impl LogOutputs {
    fn open(outputs: &[config::LogOutput]) -> std::io::Result<LogOutputs> {
        let mut sinks = Vec::new();
        for out in outputs {
            sinks.push(match out {
                config::LogOutput::Stderr => Sink::Stderr,
                config::LogOutput::Stdout => Sink::Stdout,
                config::LogOutput::File(path) => Sink::File(std::sync::Arc::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| {
                            std::io::Error::new(
                                e.kind(),
                                format!("open sink {:?}: {e}", path.display().to_string()),
                            )
                        })?,
                )),
            });
        }
        Ok(LogOutputs(std::sync::Arc::new(sinks)))
    }

    fn is_terminal(&self) -> bool {
        use std::io::IsTerminal as _;
        match self.0.as_slice() {
            [Sink::Stderr] => std::io::stderr().is_terminal(),
            [Sink::Stdout] => std::io::stdout().is_terminal(),
            _ => false,
        }
    }
}

impl std::io::Write for LogOutputs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        for sink in self.0.iter() {
            // A full disk or closed pipe must not stop the member: the line is lost.
            let _ = match sink {
                Sink::Stderr => std::io::stderr().write_all(buf),
                Sink::Stdout => std::io::stdout().write_all(buf),
                Sink::File(f) => (&**f).write_all(buf),
            };
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogOutputs {
    type Writer = LogOutputs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
