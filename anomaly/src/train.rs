//! Training the forecaster with candle autograd + AdamW, deterministically for a seed.
//!
//! Data: any number of univariate series (Arrow IPC files as written by the store, or CSV with a
//! `timestamp` column first). Each series is passed through the same online normaliser the
//! detector uses, so the network learns on exactly the inputs it will see in production. Training
//! is truncated BPTT: fixed-length segments, state carried across `window`-step chunks and
//! detached between them, matching the stateful inference.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use crate::error::{AnomalyError, Result};
use crate::model::{transform, Forecaster, LstmWeights, ModelMeta, NormParams, OnlineNorm, SplitMix64, FEATURES};
use crate::store::{batches_to_table, read_ipc_file, read_ipc_stream};

/// Columns never treated as series when loading CSV training data (labels and scores).
pub const NON_SERIES_COLUMNS: &[&str] = &["timestamp", "label", "is_anomaly", "anomaly_score", "fault"];

/// Knobs for [`train`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Passes over the training segments.
    pub epochs: usize,
    /// Seed for initialisation and shuffling; same seed + data = same model.
    pub seed: u64,
    /// Truncated-BPTT chunk length (gradient horizon).
    pub window: usize,
    /// LSTM hidden size.
    pub hidden: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Segments per optimiser batch.
    pub batch: usize,
    /// Steps per training segment (state starts at zero at each segment start).
    pub segment: usize,
    /// First steps of each segment excluded from the loss while the state warms up.
    pub burn_in: usize,
    /// Tail fraction of every series held out for validation.
    pub val_fraction: f64,
    /// Online normalisation used for inputs and targets (stored in the sidecar).
    pub norm: NormParams,
    /// Free-text description of the data, stored in the sidecar.
    pub description: String,
    /// Where to write `*.safetensors` (+ `.json` sidecar); `None` = don't write.
    pub out: Option<PathBuf>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 20,
            seed: 42,
            window: 32,
            hidden: 16,
            lr: 0.005,
            weight_decay: 1e-4,
            batch: 32,
            segment: 256,
            burn_in: 16,
            val_fraction: 0.2,
            norm: NormParams::default(),
            description: String::new(),
            out: None,
        }
    }
}

/// Progress after each epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainProgress {
    /// 1-based epoch just finished.
    pub epoch: usize,
    /// Total epochs.
    pub epochs: usize,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Validation loss after the epoch.
    pub val_loss: f64,
}

/// Outcome of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Mean training MSE of the last epoch (normalised units).
    pub train_loss: f64,
    /// Validation MSE of the trained model.
    pub val_loss: f64,
    /// Validation MSE of the same network before training.
    pub initial_val_loss: f64,
    /// Validation MSE of the naive "next = last" forecast.
    pub persistence_val_loss: f64,
    /// Epochs run.
    pub epochs: usize,
    /// Series used.
    pub series: usize,
    /// Training segments per epoch.
    pub train_segments: usize,
    /// Validation segments.
    pub val_segments: usize,
    /// Wall time.
    pub duration_ms: u64,
    /// Seed used.
    pub seed: u64,
    /// Where the model was written, if anywhere.
    pub output: Option<PathBuf>,
}

/// Load univariate series from Arrow IPC (file or stream) or CSV files.
///
/// Every non-timestamp numeric column becomes one series named `<file stem>.<column>`; missing
/// values are dropped (the series is treated as contiguous).
pub fn load_series(paths: &[PathBuf]) -> Result<Vec<(String, Vec<f64>)>> {
    let mut out = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| AnomalyError::io(path, e))?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("series").to_string();
        let cols: Vec<(String, Vec<Option<f64>>)> = if bytes.starts_with(b"ARROW1") {
            batches_to_table(&read_ipc_file(path)?)?.columns.into_iter().collect()
        } else if bytes.starts_with(&[0xff, 0xff, 0xff, 0xff]) {
            batches_to_table(&read_ipc_stream(&bytes)?)?.columns.into_iter().collect()
        } else {
            parse_csv_columns(path, &String::from_utf8_lossy(&bytes))?
        };
        for (name, vals) in cols {
            let v: Vec<f64> = vals.into_iter().flatten().filter(|x| x.is_finite()).collect();
            if !v.is_empty() {
                out.push((format!("{stem}.{name}"), v));
            }
        }
    }
    Ok(out)
}

fn parse_csv_columns(path: &Path, text: &str) -> Result<Vec<(String, Vec<Option<f64>>)>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or_else(|| AnomalyError::Data(format!("{}: empty CSV", path.display())))?;
    let names: Vec<String> = header.split(',').map(|s| s.trim().to_string()).collect();
    if names.len() < 2 {
        return Err(AnomalyError::Data(format!("{}: need `timestamp,<series>...` header", path.display())));
    }
    let keep: Vec<usize> = (1..names.len()).filter(|&i| !NON_SERIES_COLUMNS.contains(&names[i].as_str())).collect();
    let mut cols: Vec<Vec<Option<f64>>> = vec![Vec::new(); keep.len()];
    for (ln, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != names.len() {
            return Err(AnomalyError::Data(format!(
                "{}:{}: {} fields, header has {}",
                path.display(),
                ln + 2,
                fields.len(),
                names.len()
            )));
        }
        for (c, &i) in keep.iter().enumerate() {
            cols[c].push(fields[i].trim().parse::<f64>().ok());
        }
    }
    Ok(keep.into_iter().map(|i| names[i].clone()).zip(cols).collect())
}

/// Normalised (input, target) sequences for one series, exactly as the detector would see them:
/// `inputs[t]` is value *t* normalised after folding it in, `targets[t]` is value *t + 1*
/// normalised with the statistics as of *t*.
pub fn prepare_sequence(values: &[f64], norm: NormParams) -> (Vec<f32>, Vec<f32>) {
    let mut n = OnlineNorm::new(norm);
    let mut inputs = Vec::with_capacity(values.len());
    let mut targets = Vec::with_capacity(values.len());
    for w in values.windows(2) {
        let y = transform(w[0]);
        n.update(y);
        inputs.push(n.normalize(y) as f32);
        targets.push(n.normalize(transform(w[1])) as f32);
    }
    (inputs, targets)
}

struct Segments {
    x: Vec<Vec<f32>>,
    y: Vec<Vec<f32>>,
}

/// Forward a batch of equal-length segments; returns per-chunk losses (MSE after burn-in) and
/// optionally trains on each chunk.
fn run_batch(
    w: &LstmWeights,
    xs: &[&Vec<f32>],
    ys: &[&Vec<f32>],
    window: usize,
    burn_in: usize,
    mut opt: Option<&mut AdamW>,
) -> Result<(f64, usize)> {
    let dev = &Device::Cpu;
    let b = xs.len();
    let len = xs[0].len();
    let flat = |v: &[&Vec<f32>]| v.iter().flat_map(|s| s.iter().copied()).collect::<Vec<f32>>();
    let x = Tensor::from_vec(flat(xs), (b, len), dev)?;
    let y = Tensor::from_vec(flat(ys), (b, len), dev)?;
    let hd = w.hidden();
    let mut h = Tensor::zeros((b, hd), candle_core::DType::F32, dev)?;
    let mut c = h.clone();
    let (mut sum, mut count) = (0.0, 0usize);
    let mut start = 0;
    while start < len {
        let n = window.min(len - start);
        let mut preds = Vec::with_capacity(n);
        for t in start..start + n {
            let (h2, c2, p) = w.step(&x.narrow(1, t, 1)?, &h, &c)?;
            h = h2;
            c = c2;
            preds.push(p);
        }
        let skip = burn_in.saturating_sub(start).min(n);
        if skip < n {
            let pred = Tensor::cat(&preds[skip..], 1)?;
            let tgt = y.narrow(1, start + skip, n - skip)?;
            let loss = (pred - tgt)?.sqr()?.mean_all()?;
            let steps = b * (n - skip);
            sum += f64::from(loss.to_scalar::<f32>()?) * steps as f64;
            count += steps;
            if let Some(o) = opt.as_deref_mut() {
                o.backward_step(&loss)?;
            }
        }
        h = h.detach();
        c = c.detach();
        start += n;
    }
    Ok((sum, count))
}

fn eval_loss(w: &LstmWeights, segs: &Segments, opts: &TrainOptions) -> Result<f64> {
    let (mut sum, mut count) = (0.0, 0);
    for (xs, ys) in segs.x.chunks(256).zip(segs.y.chunks(256)) {
        let xr: Vec<&Vec<f32>> = xs.iter().collect();
        let yr: Vec<&Vec<f32>> = ys.iter().collect();
        let (s, c) = run_batch(w, &xr, &yr, opts.window, opts.burn_in, None)?;
        sum += s;
        count += c;
    }
    Ok(if count == 0 { f64::NAN } else { sum / count as f64 })
}

fn persistence_loss(segs: &Segments, burn_in: usize) -> f64 {
    let (mut sum, mut count) = (0.0, 0usize);
    for (x, y) in segs.x.iter().zip(&segs.y) {
        for t in burn_in..x.len() {
            sum += f64::from((x[t] - y[t]).powi(2));
            count += 1;
        }
    }
    if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    }
}

/// Train on files (Arrow IPC or CSV); see [`train_series`].
pub fn train(
    data: &[PathBuf],
    opts: &TrainOptions,
    progress: &mut dyn FnMut(&TrainProgress),
) -> Result<(Forecaster, TrainReport)> {
    let series = load_series(data)?;
    train_series(&series, opts, progress)
}

/// Train a forecaster on in-memory series, report losses, and save it if `opts.out` is set.
pub fn train_series(
    series: &[(String, Vec<f64>)],
    opts: &TrainOptions,
    progress: &mut dyn FnMut(&TrainProgress),
) -> Result<(Forecaster, TrainReport)> {
    let t0 = Instant::now();
    if opts.window == 0 || opts.hidden == 0 || opts.segment <= opts.burn_in || opts.batch == 0 {
        return Err(AnomalyError::Config("train: window, hidden, batch > 0 and segment > burn_in required".into()));
    }
    // Skip the normaliser's own warmup: those inputs are not representative.
    let skip = 30;
    let mut train = Segments { x: Vec::new(), y: Vec::new() };
    let mut val = Segments { x: Vec::new(), y: Vec::new() };
    let mut stats = HashMap::new();
    for (name, values) in series {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n.max(1.0);
        let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n.max(1.0)).sqrt();
        stats.insert(name.clone(), (mean, std));
        let (x, y) = prepare_sequence(values, opts.norm);
        if x.len() <= skip {
            continue;
        }
        let (x, y) = (&x[skip..], &y[skip..]);
        let split = ((x.len() as f64) * (1.0 - opts.val_fraction)).round() as usize;
        for (range, dst) in [(0..split, &mut train), (split..x.len(), &mut val)] {
            let mut s = range.start;
            while s + opts.segment <= range.end {
                dst.x.push(x[s..s + opts.segment].to_vec());
                dst.y.push(y[s..s + opts.segment].to_vec());
                s += opts.segment;
            }
        }
    }
    if train.x.is_empty() || val.x.is_empty() {
        return Err(AnomalyError::Data(format!(
            "not enough data: {} training and {} validation segments of {} steps",
            train.x.len(),
            val.x.len(),
            opts.segment
        )));
    }

    let init = LstmWeights::init(opts.hidden, FEATURES.len(), opts.seed)?;
    let vars = [
        Var::from_tensor(&init.w)?,
        Var::from_tensor(&init.b)?,
        Var::from_tensor(&init.w_out)?,
        Var::from_tensor(&init.b_out)?,
    ];
    let weights = LstmWeights {
        w: vars[0].as_tensor().clone(),
        b: vars[1].as_tensor().clone(),
        w_out: vars[2].as_tensor().clone(),
        b_out: vars[3].as_tensor().clone(),
    };
    let initial_val_loss = eval_loss(&weights, &val, opts)?;
    let persistence_val_loss = persistence_loss(&val, opts.burn_in);
    let params = ParamsAdamW { lr: opts.lr, weight_decay: opts.weight_decay, ..Default::default() };
    let mut opt = AdamW::new(vars.to_vec(), params)?;
    let mut rng = SplitMix64::new(opts.seed ^ 0x05ee_d0f0_da7a);
    let mut order: Vec<usize> = (0..train.x.len()).collect();
    let (mut train_loss, mut val_loss) = (f64::NAN, initial_val_loss);
    for epoch in 1..=opts.epochs {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let (mut sum, mut count) = (0.0, 0);
        for idx in order.chunks(opts.batch) {
            let xs: Vec<&Vec<f32>> = idx.iter().map(|&i| &train.x[i]).collect();
            let ys: Vec<&Vec<f32>> = idx.iter().map(|&i| &train.y[i]).collect();
            let (s, c) = run_batch(&weights, &xs, &ys, opts.window, opts.burn_in, Some(&mut opt))?;
            sum += s;
            count += c;
        }
        train_loss = sum / count.max(1) as f64;
        val_loss = eval_loss(&weights, &val, opts)?;
        progress(&TrainProgress { epoch, epochs: opts.epochs, train_loss, val_loss });
    }

    let mut meta = ModelMeta::new(opts.hidden, opts.window, opts.norm);
    meta.training = crate::model::TrainingInfo {
        description: opts.description.clone(),
        series: series.len(),
        steps: series.iter().map(|s| s.1.len()).sum(),
        epochs: opts.epochs,
        seed: opts.seed,
        lr: opts.lr,
        train_loss,
        val_loss,
        initial_val_loss,
        persistence_val_loss,
        series_stats: stats,
    };
    let detached = LstmWeights {
        w: weights.w.detach(),
        b: weights.b.detach(),
        w_out: weights.w_out.detach(),
        b_out: weights.b_out.detach(),
    };
    let model = Forecaster::new(meta, detached)?;
    if let Some(out) = &opts.out {
        model.save(out)?;
    }
    let report = TrainReport {
        train_loss,
        val_loss,
        initial_val_loss,
        persistence_val_loss,
        epochs: opts.epochs,
        series: series.len(),
        train_segments: train.x.len(),
        val_segments: val.x.len(),
        duration_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
        seed: opts.seed,
        output: opts.out.clone(),
    };
    Ok((model, report))
}
