//! The `portico` command: parse the command line, then hand off to the library.

mod anomaly;

use anomaly::AnomalyCommand;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "An edge proxy with WebAssembly plugins and self-watching anomaly detection"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a configuration file.
    Run {
        /// The TOML configuration.
        #[arg(short, long)]
        config: PathBuf,
        /// How long in-flight requests may take to finish on shutdown.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        grace: Duration,
        /// Data-path worker threads, each serving its share of client connections on its own runtime with
        /// its own upstream pools (default: one per core; 0 serves them on the control-plane runtime).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate a configuration file without serving (exit 1 with the reasons), or probe a running Portico's
    /// health URL (exit 0 when healthy), e.g. for keepalived's `vrrp_script`.
    Check {
        /// The TOML configuration to validate.
        #[arg(short, long, required_unless_present = "health")]
        config: Option<PathBuf>,
        /// A health URL to probe instead, e.g. http://127.0.0.1:9901/healthz.
        #[arg(long)]
        health: Option<String>,
    },
    /// Anomaly detection tools: train a forecaster on recorded series, score a series offline.
    Anomaly {
        #[command(subcommand)]
        command: AnomalyCommand,
    },
    /// Run a self-contained demonstration: demo upstreams, Portico in front, a load generator, live stats.
    Demo {
        /// How long the load runs.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Concurrent client connections.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// `full` (a crash, then a slow upstream) or `calm` (no fault: nothing should be reported).
        #[arg(long, default_value = "full")]
        scenario: portico::demo::Scenario,
        /// Print Portico's own log lines in the terminal instead of writing them to a file.
        #[arg(long)]
        verbose: bool,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    portico::config::duration::parse_duration(text)
}

/// Logs go to stderr, or to `file` (the demo keeps its terminal for its own table).
fn init_logging(format: LogFormat, level: &str, file: Option<std::fs::File>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let ansi = file.is_none();
    let writer = match file {
        Some(f) => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(f)),
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
        LogFormat::Text => builder.with_ansi(ansi).init(),
    }
}

/// mimalloc instead of glibc's malloc: a proxy allocates and frees small buffers for every request, and glibc's
/// allocator took about an eighth of the CPU in `perf` profiles under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Prints a failure on one line with each cause once (see [`one_line`]), and never a backtrace, whatever
/// `RUST_BACKTRACE` says.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut log_file = None;
    if let Command::Demo { verbose: false, .. } = cli.command {
        let path = std::env::temp_dir().join(format!("portico-demo-{}.log", std::process::id()));
        if let Ok(file) = std::fs::File::create(&path) {
            log_file = Some((path, file));
        }
    }
    let (log_path, file) = log_file.map_or((None, None), |(p, f)| (Some(p), Some(f)));
    init_logging(cli.log_format, &cli.log_level, file);
    match execute(cli.command, log_path) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `: `-separated, leaving out a cause whose text is already there: the
/// library errors keep their cause as `source()` and most also name it in their message (so a log line that
/// prints the error alone loses nothing), and each cause is printed once.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if cause.is_empty() || text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

fn execute(command: Command, log_file: Option<PathBuf>) -> Result<()> {
    match command {
        Command::Check { config: Some(path), health: None } => check_config(&path),
        Command::Check { health: Some(url), .. } => {
            runtime()?.block_on(portico::demo::probe_health(&url)).map_err(anyhow::Error::msg)
        }
        Command::Check { config: None, health: None } => Err(anyhow::anyhow!("give --config FILE or --health URL")),
        Command::Run { config: path, grace, workers } => {
            let config = portico::config::load(&path).map_err(|issues| {
                anyhow::anyhow!(
                    "invalid configuration:\n{}",
                    issues.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n")
                )
            })?;
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let workers = workers.unwrap_or_else(portico::listen::workers::default_count);
            runtime()?.block_on(run(config, &text, grace, workers))
        }
        Command::Anomaly { command } => anomaly::run(command),
        Command::Demo { duration, concurrency, scenario, .. } => {
            let options = portico::demo::DemoOptions { duration, concurrency, scenario, log_file };
            runtime()?.block_on(portico::demo::run(options)).map_err(anyhow::Error::msg)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn check_config(path: &std::path::Path) -> Result<()> {
    match portico::config::load(path) {
        Ok(config) => {
            for l in &config.listeners {
                if let Some(tls) = &l.tls {
                    portico::tls::acceptor(tls).with_context(|| format!("listener {}", l.name))?;
                }
                if let Some(log) = &l.access_log {
                    portico::access_log::check_file(&log.path).with_context(|| format!("listener {}", l.name))?;
                }
            }
            if let Some(anomaly) = &config.anomaly {
                portico_anomaly::load_model(anomaly).context("anomaly.model")?;
            }
            // Every plugin is compiled, instantiated and configured as `run` would, so `check` refuses what
            // `run` would refuse.
            let refused = runtime()?.block_on(portico::plugin::check_all(&config.plugins))?;
            if !refused.is_empty() {
                for refusal in &refused {
                    eprintln!("{}: {refusal}", path.display());
                }
                std::process::exit(1);
            }
            println!(
                "{}: ok ({} listeners, {} upstreams, {} plugins)",
                path.display(),
                config.listeners.len(),
                config.upstreams.len(),
                config.plugins.len()
            );
            Ok(())
        }
        Err(issues) => {
            for issue in &issues {
                eprintln!("{}: {issue}", path.display());
            }
            std::process::exit(1);
        }
    }
}

async fn run(config: portico::config::Config, text: &str, grace: Duration, workers: usize) -> Result<()> {
    let admin = config.admin.clone();
    let server = if config.cluster.is_some() {
        portico::cluster::start_member(config, text, grace, workers).await.context("joining the cluster")?
    } else {
        portico::Server::start_with_workers(config, grace, workers).await?
    };
    let admin_addr = portico::admin::serve_tcp(server.clone(), admin.listen)
        .await
        .with_context(|| format!("admin API on {}", admin.listen))?;
    tracing::info!(address = %admin_addr, "admin API listening");
    #[cfg(unix)]
    if let Some(path) = &admin.unix_socket {
        portico::admin::serve_unix(server.clone(), path)
            .await
            .with_context(|| format!("admin socket {}", path.display()))?;
    }
    wait_for_signals(&server).await?;
    tracing::info!("shutting down: draining connections");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signals(server: &portico::Server) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
                let _ = server.reload_from_file().await;
            }
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_server: &portico::Server) -> Result<()> {
    tokio::signal::ctrl_c().await?;
    Ok(())
}
