//! Training windows: `seq + 1` consecutive tokens (inputs and next-token targets) at
//! random offsets of the training split. The offsets of step `s`, micro-batch `k` come from
//! a generator seeded by `(seed, s, k)` alone, so a resumed run sees exactly the windows an
//! uninterrupted one would, with no sampler state to save.

use anyhow::{bail, Result};

use crate::data::TokenSplit;
use crate::sample::Rng;

pub struct Batcher<'a> {
    pub split: &'a TokenSplit,
    pub seq: usize,
    pub batch: usize,
    pub seed: u64,
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D049BB133111EB);
    x ^ (x >> 31)
}

impl<'a> Batcher<'a> {
    pub fn new(split: &'a TokenSplit, seq: usize, batch: usize, seed: u64) -> Result<Self> {
        if split.len() < seq as u64 + 1 {
            bail!(
                "the training split has {} tokens, fewer than one window of ctx + 1 = {} (prepare more text or lower model.ctx)",
                split.len(),
                seq + 1
            );
        }
        Ok(Batcher { split, seq, batch, seed })
    }

    /// `batch` windows of `seq + 1` tokens for micro-batch `micro` of step `step`.
    pub fn windows(&self, step: u64, micro: u64) -> Vec<Vec<u32>> {
        let mut rng = Rng::new(mix(self.seed ^ mix(step.wrapping_mul(0x9E3779B97F4A7C15) ^ mix(micro + 1))));
        let starts = self.split.len() - self.seq as u64; // valid starts: 0..starts
        (0..self.batch)
            .map(|_| {
                let s = rng.next_u64() % starts;
                self.split.window(s, self.seq + 1)
            })
            .collect()
    }
}

/// Consecutive non-overlapping windows of `seq + 1` tokens (stride `seq`) from the start
/// of the held-out split, covering at most `max_tokens` predicted tokens (0 = all); one
/// shorter window when the split is shorter than a window.
pub fn eval_windows(split: &TokenSplit, seq: usize, max_tokens: usize) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    let mut start = 0u64;
    while start + seq as u64 + 1 <= split.len() {
        if max_tokens > 0 && (out.len() + 1) * seq > max_tokens.max(seq) {
            break;
        }
        out.push(split.window(start, seq + 1));
        start += seq as u64;
    }
    if out.is_empty() && split.len() >= 2 {
        // A held-out split shorter than one window: score it whole.
        out.push(split.window(0, split.len() as usize));
    }
    out
}
