//! Turning logits into the next token: penalties, truncation (top-k, top-p, min-p),
//! temperature and a seeded draw — in llama.cpp's order, so the same settings mean the
//! same thing in both tools. Temperature 0 is greedy and fully deterministic.

mod rng;

pub use rng::Rng;

use std::collections::HashMap;

use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0.0 = off. Drop tokens whose probability is below min_p × the top probability.
    pub min_p: f32,
    /// 1.0 = off. Divides positive logits / multiplies negative ones of recent tokens.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at (0 = none).
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every recent token.
    pub presence_penalty: f32,
    /// Subtracted per occurrence.
    pub frequency_penalty: f32,
    /// None = seeded from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// llama.cpp's defaults.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }

    pub fn validate(&self) -> Result<()> {
        let finite = [self.temperature, self.top_p, self.min_p, self.repeat_penalty, self.presence_penalty, self.frequency_penalty];
        if finite.iter().any(|v| !v.is_finite()) {
            bail!("sampling parameters must be finite numbers");
        }
        if self.temperature < 0.0 {
            bail!("temperature must be >= 0, got {}", self.temperature);
        }
        if !(0.0..=1.0).contains(&self.top_p) || self.top_p == 0.0 {
            bail!("top_p must be in (0, 1], got {}", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            bail!("min_p must be in [0, 1], got {}", self.min_p);
        }
        if self.repeat_penalty <= 0.0 {
            bail!("repeat penalty must be > 0, got {}", self.repeat_penalty);
        }
        Ok(())
    }
}

/// Apply repetition / presence / frequency penalties in place (llama.cpp semantics).
pub fn apply_penalties(logits: &mut [f32], recent: &[u32], p: &SamplingParams) {
    if recent.is_empty() || (p.repeat_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0) {
        return;
    }
    let mut counts: HashMap<u32, u32> = HashMap::with_capacity(recent.len());
    for &t in recent {
        *counts.entry(t).or_default() += 1;
    }
    for (&t, &c) in &counts {
        let Some(l) = logits.get_mut(t as usize) else { continue };
        if *l > 0.0 {
            *l /= p.repeat_penalty;
        } else {
            *l *= p.repeat_penalty;
        }
        *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
    }
}

/// Index of the largest value (first on ties); NaNs never win.
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in xs.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

/// `ln Σ exp(l)`, in f64 for accuracy over large vocabularies.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    max as f64 + sum.ln()
}

/// `log_softmax` of a row.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let lse = log_sum_exp(logits);
    logits.iter().map(|&l| (l as f64 - lse) as f32).collect()
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
        });
        Ok(Sampler { params, rng: Rng::new(seed), candidates: Vec::new() })
    }

    /// TEMPORARY until the constrain branch lands.
    pub fn sample_with(&mut self, logits: &mut [f32], history: &[u32], _allow: &mut dyn FnMut(u32) -> bool) -> u32 {
        self.sample(logits, history)
    }

    /// Pick the next token. `logits` is modified (penalties); `history` is every token so
    /// far (prompt included), of which the last `repeat_last_n` are penalised.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let recent = &history[history.len().saturating_sub(p.repeat_last_n)..];
        apply_penalties(logits, recent, p);
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l)));
        if c.is_empty() {
            return argmax(logits);
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        // top-k: partial selection, then sort only the survivors.
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit);
            c.truncate(p.top_k);
        }
        let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
        // min-p before sorting: it is a threshold on the untempered probability.
        if p.min_p > 0.0 {
            let cut = max + p.min_p.ln();
            c.retain(|x| x.1 >= cut);
        }
        c.sort_unstable_by(by_logit);
        if p.top_p < 1.0 {
            let sum: f64 = c.iter().map(|x| ((x.1 - max) as f64).exp()).sum();
            let mut acc = 0.0;
            let mut keep = c.len();
            for (i, x) in c.iter().enumerate() {
                acc += ((x.1 - max) as f64).exp() / sum;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
        }
        // Temperature last, then a draw from the renormalised distribution.
        let t = p.temperature as f64;
        let weights: Vec<f64> = c.iter().map(|x| (((x.1 - max) as f64) / t).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut u = self.rng.next_f64() * total;
        for (x, w) in c.iter().zip(&weights) {
            if u < *w {
                return x.0;
            }
            u -= w;
        }
        c.last().map(|x| x.0).unwrap_or_else(|| argmax(logits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&mut logits(), &[]), 1);
    }

    #[test]
    fn seed_reproduces() {
        let p = SamplingParams { temperature: 1.5, top_k: 0, top_p: 1.0, min_p: 0.0, seed: Some(42), ..Default::default() };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone()).unwrap();
            (0..50).map(|_| s.sample(&mut logits(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(&p), draw(&p));
        let other = draw(&SamplingParams { seed: Some(43), ..p.clone() });
        assert_ne!(draw(&p), other);
        // With a flat-ish distribution several tokens must appear.
        let mut seen = draw(&p);
        seen.sort();
        seen.dedup();
        assert!(seen.len() >= 3, "{seen:?}");
    }

    #[test]
    fn top_k_one_is_greedy() {
        let p = SamplingParams { temperature: 5.0, top_k: 1, seed: Some(1), ..Default::default() };
        let mut s = Sampler::new(p).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits(), &[]), 1);
        }
    }

    #[test]
    fn min_p_and_top_p_truncate() {
        // min_p 0.5: only tokens with p >= 0.5 p_max survive: logits 3.0, 2.9, 2.5.
        let p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.5, seed: Some(7), ..Default::default() };
        let mut s = Sampler::new(p).unwrap();
        for _ in 0..200 {
            assert!([1, 2, 5].contains(&s.sample(&mut logits(), &[])));
        }
        // top_p tiny keeps only the best.
        let p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.01, min_p: 0.0, seed: Some(7), ..Default::default() };
        let mut s = Sampler::new(p).unwrap();
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits(), &[]), 1);
        }
    }

    #[test]
    fn penalties() {
        let p = SamplingParams { repeat_penalty: 2.0, presence_penalty: 0.5, frequency_penalty: 0.25, ..Default::default() };
        let mut l = logits();
        apply_penalties(&mut l, &[1, 1, 3], &p);
        assert_eq!(l[1], 3.0 / 2.0 - 0.5 - 0.5);
        assert_eq!(l[3], -2.0 - 0.5 - 0.25);
        assert_eq!(l[2], 2.5);
        // Out-of-range history ids are ignored, not a panic.
        apply_penalties(&mut l, &[999], &p);
    }

    #[test]
    fn rejects_bad_params() {
        assert!(Sampler::new(SamplingParams { temperature: -1.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplingParams { top_p: 0.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplingParams { temperature: f32::NAN, ..Default::default() }).is_err());
    }
}
