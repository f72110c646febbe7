//! The bundled LSTM as a forecaster member: the candle network's weights copied once into plain arrays, so
//! one step for one series is ~1,200 multiply-adds in a tight loop instead of a dozen tensor allocations.
//!
//! candle stays the model's home (training, the safetensors format, batched steps); this is only its
//! single-series inference, checked against candle's own step in the tests below.

use crate::error::Result;
use crate::model::{inverse_transform, transform, Forecaster, LstmState, OnlineNorm};

/// The network's parameters, row-major as candle holds them.
#[derive(Debug, Clone)]
pub struct LstmCell {
    hidden: usize,
    /// `[1 + hidden, 4 * hidden]`, gate order i, f, g, o.
    w: Vec<f32>,
    b: Vec<f32>,
    w_out: Vec<f32>,
    b_out: f32,
}

impl LstmCell {
    /// Copies `model`'s weights out of candle.
    pub fn new(model: &Forecaster) -> Result<Self> {
        let weights = model.weights();
        Ok(LstmCell {
            hidden: model.meta().hidden,
            w: weights.w.flatten_all()?.to_vec1::<f32>()?,
            b: weights.b.to_vec1::<f32>()?,
            w_out: weights.w_out.flatten_all()?.to_vec1::<f32>()?,
            b_out: weights.b_out.to_vec1::<f32>()?.first().copied().unwrap_or(0.0),
        })
    }

    /// Hidden width.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// One step: feeds normalised input `x`, updates `state`, returns the forecast of the next normalised value.
    pub fn step(&self, x: f32, state: &mut LstmState) -> f32 {
        let hd = self.hidden;
        let g4 = 4 * hd;
        let mut gates = [0f32; 256];
        let gates = if g4 <= gates.len() { &mut gates[..g4] } else { return self.step_wide(x, state) };
        gates.copy_from_slice(&self.b);
        for (gate, w) in gates.iter_mut().zip(&self.w[..g4]) {
            *gate += x * w;
        }
        for (k, h) in state.h.iter().enumerate() {
            let row = &self.w[(1 + k) * g4..(2 + k) * g4];
            for (gate, w) in gates.iter_mut().zip(row) {
                *gate += h * w;
            }
        }
        let mut y = self.b_out;
        for j in 0..hd {
            let i = sigmoid(gates[j]);
            let f = sigmoid(gates[hd + j]);
            let g = gates[2 * hd + j].tanh();
            let o = sigmoid(gates[3 * hd + j]);
            let c = f * state.c[j] + i * g;
            state.c[j] = c;
            let h = o * c.tanh();
            state.h[j] = h;
            y += h * self.w_out[j];
        }
        y
    }

    /// The same step for networks wider than 64 (not the bundled one), with a heap buffer.
    fn step_wide(&self, x: f32, state: &mut LstmState) -> f32 {
        let hd = self.hidden;
        let g4 = 4 * hd;
        let mut gates = self.b.clone();
        for (j, gate) in gates.iter_mut().enumerate() {
            *gate += x * self.w[j] + state.h.iter().enumerate().map(|(k, h)| h * self.w[(1 + k) * g4 + j]).sum::<f32>();
        }
        let mut y = self.b_out;
        for j in 0..hd {
            let c = sigmoid(gates[hd + j]) * state.c[j] + sigmoid(gates[j]) * gates[2 * hd + j].tanh();
            state.c[j] = c;
            state.h[j] = sigmoid(gates[3 * hd + j]) * c.tanh();
            y += state.h[j] * self.w_out[j];
        }
        y
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// One series' LSTM member: the online normaliser and the recurrent state, in the raw units of the series.
#[derive(Debug, Clone)]
pub struct LstmMember {
    norm: OnlineNorm,
    state: LstmState,
    /// Forecast of the next normalised value, once a value has been fed.
    next: Option<f32>,
}

impl LstmMember {
    /// A fresh member for `model`'s normalisation.
    pub fn new(model: &Forecaster) -> Self {
        LstmMember { norm: OnlineNorm::new(model.meta().normalisation), state: model.zero_state(), next: None }
    }

    /// Forecast of the next value, raw units.
    pub fn forecast(&self) -> Option<f64> {
        self.next.map(|z| inverse_transform(self.norm.denormalize(f64::from(z))))
    }

    /// Folds `x` (raw units) in and steps the network.
    pub fn observe(&mut self, cell: &LstmCell, x: f64) {
        let y = transform(x);
        self.norm.update(y);
        let z = self.norm.normalize(y) as f32;
        self.next = Some(cell.step(z, &mut self.state));
    }

    /// After a regime change: the normaliser forgets the old level so the network sees the new one as normal.
    pub fn rebase(&mut self, x: f64) {
        self.norm.rebase(transform(x));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_plain_step_matches_candle() {
        let model = Forecaster::bundled().unwrap();
        let cell = LstmCell::new(&model).unwrap();
        let mut ours = model.zero_state();
        let mut theirs = model.zero_state();
        for t in 0..200 {
            let x = ((t as f32) * 0.37).sin() * 2.0;
            let a = cell.step(x, &mut ours);
            let b = model.step(&mut [(x, &mut theirs)]).unwrap()[0];
            assert!((a - b).abs() < 1e-4, "step {t}: {a} vs {b}");
            for (p, q) in ours.h.iter().zip(&theirs.h) {
                assert!((p - q).abs() < 1e-4);
            }
        }
    }
}
