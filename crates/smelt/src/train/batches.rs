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
    /// Aligned mode (distillation, whose teacher cache is per window): window `i` starts at
    /// `i · seq`, and windows are drawn among the first `n`.
    pub aligned: Option<u64>,
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
        Ok(Batcher { split, seq, batch, seed, aligned: None })
    }

    /// Aligned windows: the split cut into `seq + 1`-token windows at multiples of `seq`,
    /// the first `limit` of them (0 = all).
    pub fn aligned(split: &'a TokenSplit, seq: usize, batch: usize, seed: u64, limit: usize) -> Result<Self> {
        let mut b = Self::new(split, seq, batch, seed)?;
        let n = aligned_count(split.len(), seq);
        b.aligned = Some(if limit > 0 { n.min(limit as u64) } else { n });
        Ok(b)
    }

    /// Start offsets of the windows of micro-batch `micro` of step `step`.
    pub fn starts(&self, step: u64, micro: u64) -> Vec<u64> {
        let mut rng = Rng::new(mix(self.seed ^ mix(step.wrapping_mul(0x9E3779B97F4A7C15) ^ mix(micro + 1))));
        let (n, stride) = match self.aligned {
            Some(n) => (n, self.seq as u64),
            None => (self.split.len() - self.seq as u64, 1), // valid starts: 0..n
        };
        (0..self.batch).map(|_| rng.next_u64() % n * stride).collect()
    }

    /// `batch` windows of `seq + 1` tokens for micro-batch `micro` of step `step`.
    pub fn windows(&self, step: u64, micro: u64) -> Vec<Vec<u32>> {
        self.starts(step, micro).into_iter().map(|s| self.split.window(s, self.seq + 1)).collect()
    }
}

/// How many windows of `seq + 1` tokens start at multiples of `seq` in `len` tokens.
pub fn aligned_count(len: u64, seq: usize) -> u64 {
    if len < seq as u64 + 1 {
        0
    } else {
        (len - 1) / seq as u64
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
