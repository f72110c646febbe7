//! The `portico` command: parse the command line, then hand off to the library.

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

#[derive(Subcommand)]
enum AnomalyCommand {
    /// Train an LSTM forecaster on recorded series (Arrow IPC files from the store, or CSV with a timestamp
    /// column and one column per series) and write it as safetensors with a JSON sidecar.
    Train {
        /// Input files (.arrow/.ipc or .csv).
        #[arg(long, num_args = 1.., required = true)]
        data: Vec<PathBuf>,
        /// Output model, e.g. models/site.safetensors (the sidecar goes beside it as .json).
        #[arg(long)]
        out: PathBuf,
        /// Passes over the data.
        #[arg(long, default_value_t = 20)]
        epochs: usize,
        /// Seed: the same seed and data give the same model.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Description of the data for the sidecar (default: the command line).
        #[arg(long)]
        description: Option<String>,
        /// Steps per training segment; the last fifth of every series must hold at least one for validation.
        #[arg(long, default_value_t = 256)]
        segment: usize,
    },
    /// Record Portico's own series under scripted load with injected faults: Arrow IPC files per scenario plus
    /// labels.csv and summary.json, for training (`train-*`) and evaluation (`eval-*`).
    Record {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// calm, mixed, latency_spike, error_burst, cpu_saturation, traffic_drop, traffic_surge, slow_drift, or
        /// all (train-calm, train-mixed, eval-mixed-1, eval-mixed-2).
        #[arg(long, default_value = "all")]
        scenario: String,
        /// Length of each scenario.
        #[arg(long, default_value = "6m", value_parser = parse_duration)]
        duration: Duration,
        /// Sampling interval of the detector while recording.
        #[arg(long, default_value = "250ms", value_parser = parse_duration)]
        interval: Duration,
        /// Seed of fault schedules and load shape (scenario i of `all` uses seed + i).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Mean request rate.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Client connections.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Write a labelled corpus of generated series (many shapes, noises, intervals and anomaly kinds), and
    /// optionally Portico's own recorded series, for `evaluate --corpus`.
    Corpus {
        /// Output directory (CSV files plus corpus.json).
        #[arg(long)]
        out: PathBuf,
        /// Seed: the same seed and count give the same corpus.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Generated series.
        #[arg(long, default_value_t = 150)]
        count: usize,
        /// Also add every series of these recorded scenarios (a directory written by `record`).
        #[arg(long)]
        recording: Option<PathBuf>,
        /// Only recorded scenarios whose name starts with this.
        #[arg(long, default_value = "eval-")]
        prefix: String,
    },
    /// Rate the detector. With `--corpus`: score every series as `anomaly score` does and print the three
    /// window-based scores (standard, reward low FP, reward low FN). With `--recording`: replay recorded
    /// scenarios through the live scorer and alert rules and print precision, recall and detection delay.
    Evaluate {
        /// A corpus directory written by `anomaly corpus`.
        #[arg(long, conflicts_with = "recording", required_unless_present = "recording")]
        corpus: Option<PathBuf>,
        /// Which detector to rate on the corpus: portico, no_lstm, no_seasonal, lstm_only or zscore.
        #[arg(long, default_value = "portico")]
        detector: String,
        /// A directory written by `portico anomaly record`.
        #[arg(long)]
        recording: Option<PathBuf>,
        /// Only scenarios whose name starts with this (the held-back ones by default).
        #[arg(long, default_value = "eval-")]
        prefix: String,
        /// Model (default: the bundled one).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Store the metrics in the model's JSON sidecar (needs --model).
        #[arg(long, requires = "model")]
        write_metrics: bool,
    },
    /// Score one series (CSV with header `timestamp,value`) row by row with no look-ahead; the output repeats
    /// every row with an `anomaly_score` column in [0, 1].
    Score {
        /// Input CSV (`-`: standard input).
        #[arg(long)]
        input: PathBuf,
        /// Output CSV (`-`: standard output; the summary then goes to standard error).
        #[arg(long)]
        output: PathBuf,
        /// Model (default: the bundled one).
        #[arg(long)]
        model: Option<PathBuf>,
    },
}

fn anomaly_command(command: AnomalyCommand) -> Result<()> {
    use std::io::Write;
    match command {
        AnomalyCommand::Train { data, out, epochs, seed, description, segment } => {
            let options = portico_anomaly::TrainOptions {
                epochs,
                seed,
                segment,
                out: Some(out.clone()),
                description: description.unwrap_or_else(|| {
                    format!("portico anomaly train --data {data:?} --epochs {epochs} --seed {seed}")
                }),
                ..portico_anomaly::TrainOptions::default()
            };
            let mut progress = |p: &portico_anomaly::TrainProgress| {
                let filled = p.epoch * 30 / p.epochs.max(1);
                print!(
                    "\r[{}{}] epoch {}/{}  train loss {:.4}  validation loss {:.4}",
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    p.epoch,
                    p.epochs,
                    p.train_loss,
                    p.val_loss
                );
                let _ = std::io::stdout().flush();
            };
            let (_, report) = portico_anomaly::train(&data, &options, &mut progress).context("training failed")?;
            println!();
            println!(
                "validation loss {:.4} (untrained {:.4}, last-value baseline {:.4}); wrote {}",
                report.val_loss,
                report.initial_val_loss,
                report.persistence_val_loss,
                out.display()
            );
            Ok(())
        }
        AnomalyCommand::Record { out, scenario, duration, interval, seed, rate, concurrency } => {
            let options =
                portico::demo::record::RecordOptions { out, scenario, duration, interval, seed, rate, concurrency };
            let done = runtime()?.block_on(portico::demo::record::record(&options))?;
            println!("recorded {} scenarios into {}", done.len(), options.out.display());
            Ok(())
        }
        AnomalyCommand::Corpus { out, seed, count, recording, prefix } => {
            let mut series = portico_anomaly::corpus::generate(seed, count);
            if let Some(dir) = &recording {
                series.extend(portico_anomaly::corpus::from_recording(dir, &prefix)?);
            }
            let description = format!(
                "portico anomaly corpus --seed {seed} --count {count}{}",
                recording.as_ref().map_or(String::new(), |d| format!(" --recording {} --prefix {prefix}", d.display()))
            );
            portico_anomaly::corpus::write(&out, &description, &series)?;
            let labels: usize = series.iter().map(|s| s.labels.len()).sum();
            println!("wrote {} series with {labels} labelled anomalies to {}", series.len(), out.display());
            Ok(())
        }
        AnomalyCommand::Evaluate { corpus: Some(dir), detector, model, json, .. } => {
            use portico_anomaly::corpus::evaluate::{evaluate, render, Candidate};
            let forecaster = match &model {
                Some(path) => portico_anomaly::Forecaster::load(path)
                    .with_context(|| format!("loading model {}", path.display()))?,
                None => portico_anomaly::Forecaster::bundled().context("loading the bundled model")?,
            };
            let series = portico_anomaly::corpus::read(&dir)?;
            let candidate = Candidate::parse(&detector)?;
            let params = portico_anomaly::DetectorParams {
                warmup: portico_anomaly::score::CSV_WARMUP,
                ..portico_anomaly::DetectorParams::default()
            };
            let report = evaluate(&series, &std::sync::Arc::new(forecaster), candidate, params)?;
            print!("{}", render(&report));
            if let Some(path) = json {
                std::fs::write(&path, format!("{:#}\n", serde_json::to_value(&report)?))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        AnomalyCommand::Evaluate { recording, prefix, model, json, write_metrics, .. } => {
            let recording = recording.context("--corpus or --recording is required")?;
            let forecaster = match &model {
                Some(path) => portico_anomaly::Forecaster::load(path)
                    .with_context(|| format!("loading model {}", path.display()))?,
                None => portico_anomaly::Forecaster::bundled().context("loading the bundled model")?,
            };
            let scenarios = portico_anomaly::eval::load_recording(&recording, &prefix)?;
            let options = portico_anomaly::EvalOptions::default();
            let report = portico_anomaly::evaluate(&std::sync::Arc::new(forecaster.clone()), &scenarios, &options)?;
            for (kind, k) in &report.per_kind {
                println!("  {kind:<15} {}/{}", k.detected, k.total);
            }
            println!(
                "{} scenarios, {} ticks: precision {:.2} ({} alerts, {} false), recall {:.2} ({}/{}), median delay {} ticks, \
                 {:.1} false alerts per hour of normal data",
                report.scenarios,
                report.ticks,
                report.precision,
                report.alerts,
                report.false_alerts,
                report.recall,
                report.detected,
                report.faults,
                report.median_delay_ticks.map_or("-".to_string(), |d| d.to_string()),
                report.false_alerts_per_hour
            );
            let value = serde_json::json!({
                "eval_data": format!("{} ({prefix}*)", recording.display()),
                "thresholds": options.thresholds,
                "warmup": options.warmup,
                "grace_ticks": options.grace,
                "report": report,
            });
            if let Some(path) = json {
                std::fs::write(&path, format!("{value:#}\n")).with_context(|| format!("writing {}", path.display()))?;
            }
            if let (true, Some(path)) = (write_metrics, model) {
                let mut forecaster = forecaster;
                forecaster.meta_mut().metrics = value;
                forecaster.save(&path).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        AnomalyCommand::Score { input, output, model } => {
            let model = match model {
                Some(path) => portico_anomaly::Forecaster::load(&path)
                    .with_context(|| format!("loading model {}", path.display()))?,
                None => portico_anomaly::Forecaster::bundled().context("loading the bundled model")?,
            };
            let summary = portico_anomaly::score_csv(&input, &output, &std::sync::Arc::new(model))
                .with_context(|| format!("scoring {}", input.display()))?;
            let said = format!(
                "{} rows scored ({} unreadable), highest score {:.3} at row {}; wrote {}",
                summary.rows,
                summary.skipped,
                summary.max_score,
                summary.max_row,
                output.display()
            );
            if output == std::path::Path::new("-") {
                eprintln!("{said}");
            } else {
                println!("{said}");
            }
            Ok(())
        }
    }
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

/// Prints a failure as one line per problem: each cause once (the error types keep a cause either in their
/// message or as their source, never both), and never a backtrace, whatever `RUST_BACKTRACE` says.
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
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
        Command::Anomaly { command } => anomaly_command(command),
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
