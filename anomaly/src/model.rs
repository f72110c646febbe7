//! The LSTM forecaster: a small univariate LSTM, shared by every series, that predicts the next
//! normalised value of a series from its (stateful) history.
//!
//! Why univariate and shared: series names are only known at runtime (listeners and upstreams come
//! and go with config reloads), so one set of weights applied per series with per-series online
//! normalisation handles any name. Series are batched together so one tick costs one LSTM step for
//! all series. Inference is *stateful* (each series keeps its `h`/`c`), and training uses truncated
//! back-propagation through time with carried state, so both see the same kind of sequence.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{AnomalyError, Result};

/// Sidecar `format` value; loaders refuse anything else.
pub const MODEL_FORMAT: &str = "portico-lstm";
/// Sidecar schema version understood by this build.
pub const MODEL_VERSION: u32 = 1;
/// Features the network consumes per step (only the normalised value in version 1).
pub const FEATURES: &[&str] = &["z"];

static BUNDLED_WEIGHTS: &[u8] = include_bytes!("../../models/portico-lstm.safetensors");
static BUNDLED_SIDECAR: &str = include_str!("../../models/portico-lstm.json");

/// Signed `log1p`: compresses heavy-tailed latencies and large request rates into a range where one
/// set of weights works for every series, while staying defined for negative values.
pub fn transform(x: f64) -> f64 {
    x.signum() * x.abs().ln_1p()
}

/// Inverse of [`transform`].
pub fn inverse_transform(y: f64) -> f64 {
    y.signum() * y.abs().exp_m1()
}

/// Parameters of the per-series online normaliser (stored in the sidecar so training and
/// inference normalise identically).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormParams {
    /// Effective EWMA window (ticks) of the running mean/variance after the first `window` samples,
    /// which use the exact cumulative mean.
    pub window: u32,
    /// Absolute lower bound on the std (in transformed units) so near-constant series do not explode.
    pub std_floor: f64,
    /// Lower bound on the std relative to |mean|, for the same reason on large-valued series.
    pub rel_floor: f64,
    /// Deviations are winsorised to ±`winsor_k` std before updating, so a fault does not
    /// immediately become the new normal.
    pub winsor_k: f64,
    /// Normalised values are clipped to ±`clip` before entering the network.
    pub clip: f64,
}

impl Default for NormParams {
    fn default() -> Self {
        NormParams { window: 600, std_floor: 0.01, rel_floor: 0.005, winsor_k: 4.0, clip: 10.0 }
    }
}

/// Running mean/std of one series in transformed space. Updated only *after* a value was used,
/// so nothing downstream can see the future.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineNorm {
    params: NormParams,
    n: u64,
    mean: f64,
    var: f64,
}

impl OnlineNorm {
    /// A normaliser that has seen nothing.
    pub fn new(params: NormParams) -> Self {
        OnlineNorm { params, n: 0, mean: 0.0, var: 0.0 }
    }

    /// Samples seen.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Current mean (transformed units).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Current std with floors applied (transformed units).
    pub fn std(&self) -> f64 {
        self.var.sqrt().max(self.params.std_floor).max(self.params.rel_floor * self.mean.abs())
    }

    /// Normalise a transformed value with the current statistics, clipped to ±clip.
    pub fn normalize(&self, y: f64) -> f64 {
        ((y - self.mean) / self.std()).clamp(-self.params.clip, self.params.clip)
    }

    /// Map a normalised value back to transformed units.
    pub fn denormalize(&self, z: f64) -> f64 {
        self.mean + z * self.std()
    }

    /// Moves the mean to `y` and keeps the spread: after a regime change the new level is normal at once,
    /// instead of after a whole normaliser window.
    pub fn rebase(&mut self, y: f64) {
        if self.n > 0 {
            self.mean = y;
        }
    }

    /// Fold one transformed value into the statistics.
    pub fn update(&mut self, y: f64) {
        if self.n == 0 {
            self.mean = y;
            self.var = 0.0;
            self.n = 1;
            return;
        }
        self.n += 1;
        let mut alpha = 1.0 / (self.n.min(u64::from(self.params.window.max(1)))) as f64;
        let mut dev = y - self.mean;
        if self.n > 30 {
            let lim = self.params.winsor_k * self.std();
            if dev.abs() > lim {
                // An outlier is learned ten times more slowly: winsorising alone still lets a sustained fault
                // inflate the variance by ~(1 + 15·alpha) per tick, which hid a 10x p99 jump within 3 ticks
                // on a young series. A real level shift still becomes the new normal, just later.
                alpha *= 0.1;
                dev = dev.clamp(-lim, lim);
            }
        }
        self.mean += alpha * dev;
        self.var = (1.0 - alpha) * (self.var + alpha * dev * dev);
    }
}

/// Recurrent state of one series (`Default` is an empty placeholder used while swapping states).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LstmState {
    /// Hidden state.
    pub h: Vec<f32>,
    /// Cell state.
    pub c: Vec<f32>,
}

impl LstmState {
    /// Zero state for a network of width `hidden`.
    pub fn zeros(hidden: usize) -> Self {
        LstmState { h: vec![0.0; hidden], c: vec![0.0; hidden] }
    }
}

/// What the training run saw and achieved; stored in the sidecar for provenance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    /// Human description of the data (where it came from, how many series/ticks).
    pub description: String,
    /// Number of series trained on.
    pub series: usize,
    /// Number of training time steps (all series).
    pub steps: usize,
    /// Epochs run.
    pub epochs: usize,
    /// RNG seed (initialisation and shuffling).
    pub seed: u64,
    /// AdamW learning rate.
    pub lr: f64,
    /// Final training MSE (normalised units).
    pub train_loss: f64,
    /// Validation MSE after training.
    pub val_loss: f64,
    /// Validation MSE of the untrained network, to show training helped.
    pub initial_val_loss: f64,
    /// Validation MSE of the naive "next = last" forecast, as a reference point.
    pub persistence_val_loss: f64,
    /// Per-series raw mean and std of the training data (documentation only; runtime
    /// normalisation is online and per series).
    pub series_stats: HashMap<String, (f64, f64)>,
}

/// The JSON sidecar next to the safetensors weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Always [`MODEL_FORMAT`].
    pub format: String,
    /// Sidecar schema version ([`MODEL_VERSION`]).
    pub version: u32,
    /// Input features per step.
    pub features: Vec<String>,
    /// Truncated-BPTT window used in training (inference is stateful and unbounded).
    pub window: usize,
    /// LSTM hidden size.
    pub hidden: usize,
    /// Input transform applied before normalisation.
    pub transform: String,
    /// Online normalisation parameters.
    pub normalisation: NormParams,
    /// Training provenance.
    pub training: TrainingInfo,
    /// Evaluation metrics (free-form; filled by the model build tooling).
    #[serde(default)]
    pub metrics: serde_json::Value,
}

impl ModelMeta {
    /// Metadata for a fresh network.
    pub fn new(hidden: usize, window: usize, normalisation: NormParams) -> Self {
        ModelMeta {
            format: MODEL_FORMAT.into(),
            version: MODEL_VERSION,
            features: FEATURES.iter().map(|s| s.to_string()).collect(),
            window,
            hidden,
            transform: "signed_log1p".into(),
            normalisation,
            training: TrainingInfo::default(),
            metrics: serde_json::Value::Null,
        }
    }

    fn check(&self) -> Result<()> {
        if self.format != MODEL_FORMAT {
            return Err(AnomalyError::Model(format!("format is {:?}, expected {MODEL_FORMAT:?}", self.format)));
        }
        if self.version != MODEL_VERSION {
            return Err(AnomalyError::Model(format!(
                "version {} unsupported (this build reads {MODEL_VERSION})",
                self.version
            )));
        }
        if self.features != FEATURES {
            return Err(AnomalyError::Model(format!("features {:?} unsupported", self.features)));
        }
        if self.transform != "signed_log1p" {
            return Err(AnomalyError::Model(format!("transform {:?} unsupported", self.transform)));
        }
        if self.hidden == 0 {
            return Err(AnomalyError::Model("hidden must be > 0".into()));
        }
        Ok(())
    }
}

/// Network parameters as candle tensors. During training these alias `Var`s, so the same
/// forward code serves training (with autograd) and inference.
#[derive(Debug, Clone)]
pub struct LstmWeights {
    /// Gate weights for `[x, h]`, shape `[input + hidden, 4 * hidden]`, gate order i, f, g, o.
    pub w: Tensor,
    /// Gate bias, shape `[4 * hidden]`.
    pub b: Tensor,
    /// Output head, shape `[hidden, 1]`.
    pub w_out: Tensor,
    /// Output bias, shape `[1]`.
    pub b_out: Tensor,
}

/// Names of the tensors in the safetensors file.
const T_W: &str = "lstm.w";
const T_B: &str = "lstm.b";
const T_WOUT: &str = "head.w";
const T_BOUT: &str = "head.b";

impl LstmWeights {
    /// Deterministic PyTorch-style init (uniform ±1/sqrt(hidden), forget bias 1) from `seed`.
    /// candle's CPU RNG cannot be seeded, hence our own generator.
    pub fn init(hidden: usize, input: usize, seed: u64) -> Result<Self> {
        let mut rng = SplitMix64::new(seed);
        let k = 1.0 / (hidden as f64).sqrt();
        let mut uni = |n: usize| -> Vec<f32> { (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * k) as f32).collect() };
        let dev = &Device::Cpu;
        let w = Tensor::from_vec(uni((input + hidden) * 4 * hidden), (input + hidden, 4 * hidden), dev)?;
        let mut b = uni(4 * hidden);
        for v in &mut b[hidden..2 * hidden] {
            *v += 1.0;
        }
        let b = Tensor::from_vec(b, 4 * hidden, dev)?;
        let w_out = Tensor::from_vec(uni(hidden), (hidden, 1), dev)?;
        let b_out = Tensor::from_vec(vec![0f32], 1, dev)?;
        Ok(LstmWeights { w, b, w_out, b_out })
    }

    /// Hidden size.
    pub fn hidden(&self) -> usize {
        self.b.dims1().map(|n| n / 4).unwrap_or(0)
    }

    /// One LSTM step for a batch: `x` `[B, input]`, `h`/`c` `[B, hidden]` -> (`h'`, `c'`, `y` `[B, 1]`).
    pub fn step(&self, x: &Tensor, h: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let hd = self.hidden();
        let xh = Tensor::cat(&[x, h], 1)?;
        let gates = xh.matmul(&self.w)?.broadcast_add(&self.b)?;
        let ifo = candle_nn::ops::sigmoid(&gates.narrow(1, 0, 2 * hd)?)?;
        let o = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * hd, hd)?)?;
        let g = gates.narrow(1, 2 * hd, hd)?.tanh()?;
        let i = ifo.narrow(1, 0, hd)?;
        let f = ifo.narrow(1, hd, hd)?;
        let c2 = ((f * c)? + (i * g)?)?;
        let h2 = (o * c2.tanh()?)?;
        let y = h2.matmul(&self.w_out)?.broadcast_add(&self.b_out)?;
        Ok((h2, c2, y))
    }

    fn to_map(&self) -> HashMap<String, Tensor> {
        HashMap::from([
            (T_W.to_string(), self.w.clone()),
            (T_B.to_string(), self.b.clone()),
            (T_WOUT.to_string(), self.w_out.clone()),
            (T_BOUT.to_string(), self.b_out.clone()),
        ])
    }

    fn from_map(mut m: HashMap<String, Tensor>, hidden: usize, input: usize) -> Result<Self> {
        let mut take = |name: &str, dims: &[usize]| -> Result<Tensor> {
            let t = m.remove(name).ok_or_else(|| AnomalyError::Model(format!("tensor {name} missing")))?;
            if t.dims() != dims {
                return Err(AnomalyError::Model(format!(
                    "tensor {name} has shape {:?}, sidecar implies {dims:?}",
                    t.dims()
                )));
            }
            Ok(t.to_dtype(DType::F32)?)
        };
        Ok(LstmWeights {
            w: take(T_W, &[input + hidden, 4 * hidden])?,
            b: take(T_B, &[4 * hidden])?,
            w_out: take(T_WOUT, &[hidden, 1])?,
            b_out: take(T_BOUT, &[1])?,
        })
    }
}

/// A loaded forecaster: weights plus metadata. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Forecaster {
    meta: ModelMeta,
    weights: LstmWeights,
}

/// Sidecar path for a weights path: `x.safetensors` -> `x.json`.
pub fn sidecar_path(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

impl Forecaster {
    /// Wrap weights and metadata, checking they agree.
    pub fn new(meta: ModelMeta, weights: LstmWeights) -> Result<Self> {
        meta.check()?;
        if weights.hidden() != meta.hidden {
            return Err(AnomalyError::Model(format!(
                "weights hidden {} != sidecar hidden {}",
                weights.hidden(),
                meta.hidden
            )));
        }
        Ok(Forecaster { meta, weights })
    }

    /// A randomly initialised (deterministic for `seed`) network; the baseline training must beat.
    pub fn untrained(hidden: usize, window: usize, seed: u64) -> Result<Self> {
        let meta = ModelMeta::new(hidden, window, NormParams::default());
        Forecaster::new(meta, LstmWeights::init(hidden, FEATURES.len(), seed)?)
    }

    /// The model compiled into the binary, so Portico works with no model file on disk.
    pub fn bundled() -> Result<Self> {
        Self::from_bytes(BUNDLED_WEIGHTS, BUNDLED_SIDECAR)
    }

    /// Load from safetensors bytes and sidecar JSON text.
    pub fn from_bytes(weights: &[u8], sidecar: &str) -> Result<Self> {
        let meta: ModelMeta = serde_json::from_str(sidecar)?;
        meta.check()?;
        let map = candle_core::safetensors::load_buffer(weights, &Device::Cpu)?;
        let w = LstmWeights::from_map(map, meta.hidden, meta.features.len())?;
        Forecaster::new(meta, w)
    }

    /// Load `path` (safetensors) and its `.json` sidecar.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| AnomalyError::io(path, e))?;
        let side = sidecar_path(path);
        let text = std::fs::read_to_string(&side).map_err(|e| AnomalyError::io(&side, e))?;
        // Name the files: "key must be a string" alone does not tell an operator which model is broken.
        Self::from_bytes(&bytes, &text)
            .map_err(|e| AnomalyError::ModelFile { path: path.to_path_buf(), message: e.to_string() })
    }

    /// Write weights to `path` and the sidecar next to it.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| AnomalyError::io(dir, e))?;
        }
        // Detach so training graphs/Var identity are not serialised, only values.
        let map: HashMap<String, Tensor> = self.weights.to_map().into_iter().map(|(k, t)| (k, t.detach())).collect();
        candle_core::safetensors::save(&map, path)?;
        let side = sidecar_path(path);
        let json = serde_json::to_string_pretty(&self.meta)?;
        std::fs::write(&side, json + "\n").map_err(|e| AnomalyError::io(&side, e))?;
        Ok(())
    }

    /// Metadata (sidecar contents).
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// Mutable metadata, for tooling that records evaluation metrics before saving.
    pub fn meta_mut(&mut self) -> &mut ModelMeta {
        &mut self.meta
    }

    /// The network weights.
    pub fn weights(&self) -> &LstmWeights {
        &self.weights
    }

    /// A zero recurrent state sized for this network.
    pub fn zero_state(&self) -> LstmState {
        LstmState::zeros(self.meta.hidden)
    }

    /// Advance many series by one step in a single batched call.
    ///
    /// Each entry is (normalised input, that series' state); states are updated in place and the
    /// returned vector holds each series' forecast of its *next* normalised value.
    pub fn step(&self, batch: &mut [(f32, &mut LstmState)]) -> Result<Vec<f32>> {
        let n = batch.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let hd = self.meta.hidden;
        let mut xs = Vec::with_capacity(n);
        let mut hs = Vec::with_capacity(n * hd);
        let mut cs = Vec::with_capacity(n * hd);
        for (x, st) in batch.iter() {
            xs.push(*x);
            hs.extend_from_slice(&st.h);
            cs.extend_from_slice(&st.c);
        }
        let dev = &Device::Cpu;
        let x = Tensor::from_vec(xs, (n, 1), dev)?;
        let h = Tensor::from_vec(hs, (n, hd), dev)?;
        let c = Tensor::from_vec(cs, (n, hd), dev)?;
        let (h2, c2, y) = self.weights.step(&x, &h, &c)?;
        let h2 = h2.flatten_all()?.to_vec1::<f32>()?;
        let c2 = c2.flatten_all()?.to_vec1::<f32>()?;
        for (i, (_, st)) in batch.iter_mut().enumerate() {
            st.h.copy_from_slice(&h2[i * hd..(i + 1) * hd]);
            st.c.copy_from_slice(&c2[i * hd..(i + 1) * hd]);
        }
        Ok(y.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Forecasts for a whole normalised sequence from a zero state: `out[t]` predicts `zs[t + 1]`.
    pub fn forecast_sequence(&self, zs: &[f32]) -> Result<Vec<f32>> {
        let mut st = self.zero_state();
        let mut out = Vec::with_capacity(zs.len());
        for &z in zs {
            out.extend(self.step(&mut [(z, &mut st)])?);
        }
        Ok(out)
    }
}

/// Small deterministic RNG (SplitMix64) for weight init and shuffling; reproducible across
/// platforms and independent of `rand`'s algorithm choices.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(1e-300);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Uniform integer in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn online_norm_tracks_mean_and_std() {
        let mut n = OnlineNorm::new(NormParams::default());
        let mut rng = SplitMix64::new(1);
        for _ in 0..5000 {
            n.update(10.0 + 2.0 * rng.normal());
        }
        assert!((n.mean() - 10.0).abs() < 0.3, "{}", n.mean());
        assert!((n.std() - 2.0).abs() < 0.3, "{}", n.std());
        assert!((n.normalize(16.0) - 3.0).abs() < 0.5);
        assert_eq!(n.normalize(1e9), NormParams::default().clip);
    }

    #[test]
    fn transform_round_trips() {
        for x in [-5.0, 0.0, 0.25, 3.0, 12345.0] {
            assert!((inverse_transform(transform(x)) - x).abs() < 1e-9 * x.abs().max(1.0));
        }
    }
}
