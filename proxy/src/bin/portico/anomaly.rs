//! `portico anomaly …`: the detector's offline tools — train a forecaster, record Portico under faults, build a
//! labelled corpus, rate the detector, score a file.

use crate::{parse_duration, runtime};
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum AnomalyCommand {
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

/// Runs one `portico anomaly` subcommand.
pub fn run(command: AnomalyCommand) -> Result<()> {
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
