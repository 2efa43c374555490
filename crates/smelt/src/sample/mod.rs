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

    /// Pick the next token. `logits` is modified (penalties); `history` is every token so
    /// far (prompt included), of which the last `repeat_last_n` are penalised.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.sample_with(logits, history, &mut |_| true).unwrap_or_else(|| argmax(logits))
    }

    /// [`sample`](Self::sample) restricted to tokens `allow` accepts (e.g. a JSON
    /// constraint), asking it about as few tokens as possible: greedy takes the first allowed
    /// token in logit order; sampling truncates as usual, draws, and on a rejected token
    /// redraws among the remaining survivors (exactly the truncated distribution renormalised
    /// over the allowed ones). When no survivor is allowed, the allowed token with the best
    /// logit in the whole vocabulary. None only if `allow` refuses every finite-logit token.
    /// With an `allow` that accepts everything this is `sample`, draw for draw.
    pub fn sample_with(&mut self, logits: &mut [f32], history: &[u32], allow: &mut dyn FnMut(u32) -> bool) -> Option<u32> {
        let p = &self.params;
        let recent = &history[history.len().saturating_sub(p.repeat_last_n)..];
        apply_penalties(logits, recent, p);
        if p.temperature <= 0.0 {
            let best = argmax(logits);
            if allow(best) {
                return Some(best);
            }
            let refused = Some((best, logits[best as usize])).filter(|x| x.1.is_finite());
            return best_allowed_after(logits, allow, refused);
        }
        if !self.truncate(logits) {
            return None;
        }
        // Temperature last, then a draw from the renormalised distribution.
        let c = &self.candidates;
        let max = c[0].1;
        let t = self.params.temperature as f64;
        let mut weights: Vec<f64> = c.iter().map(|x| (((x.1 - max) as f64) / t).exp()).collect();
        let mut total: f64 = weights.iter().sum();
        for _ in 0..REDRAWS {
            let i = draw(&weights, total, self.rng.next_f64());
            if allow(c[i].0) {
                return Some(c[i].0);
            }
            total -= weights[i];
            weights[i] = 0.0;
            if weights.iter().all(|&w| w == 0.0) {
                break;
            }
        }
        // Many rejections: check every survivor once, then draw among the allowed.
        for (x, w) in c.iter().zip(weights.iter_mut()) {
            if *w > 0.0 && !allow(x.0) {
                *w = 0.0;
            }
        }
        total = weights.iter().sum();
        if total > 0.0 {
            return Some(c[draw(&weights, total, self.rng.next_f64())].0);
        }
        // The survivors are the first tokens in logit order, down to the last: all refused.
        let last = *c.last().expect("survivors");
        best_allowed_after(logits, allow, Some(last))
    }

    /// Penalised `logits` → `self.candidates`: the top-k / min-p / top-p survivors, best
    /// first. False if no logit is finite.
    fn truncate(&mut self, logits: &[f32]) -> bool {
        let p = &self.params;
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l)));
        if c.is_empty() {
            return false;
        }
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
        true
    }
}

/// Rejected draws before [`Sampler::sample_with`] checks all survivors at once.
const REDRAWS: usize = 4;

fn by_logit(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Index drawn with probability `weights[i] / total`, `u` uniform in [0, 1).
fn draw(weights: &[f64], total: f64, u: f64) -> usize {
    let mut u = u * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    // Rounding: the last token that can be drawn at all.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(weights.len() - 1)
}

/// The token with the highest finite logit that `allow` accepts (ties: lower id), in one
/// pass over the vocabulary that asks only about tokens beating the best allowed one so far:
/// no sorting, no allocation. None if it accepts none.
pub fn best_allowed(logits: &[f32], allow: &mut dyn FnMut(u32) -> bool) -> Option<u32> {
    best_allowed_after(logits, allow, None)
}

/// `best_allowed` among the tokens that rank after `after` in logit order (those before it
/// have already been refused).
fn best_allowed_after(logits: &[f32], allow: &mut dyn FnMut(u32) -> bool, after: Option<(u32, f32)>) -> Option<u32> {
    let (after_id, after_l) = after.unwrap_or((0, f32::INFINITY));
    let mut best: Option<(u32, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        let id = i as u32;
        // Finite, ranked after `after`, better than the best so far (ids ascend: ties lose).
        if !l.is_finite() || l > after_l || (l == after_l && id <= after_id && after.is_some()) {
            continue;
        }
        if best.is_none_or(|(_, bl)| l > bl) && allow(id) {
            best = Some((id, l));
        }
    }
    best.map(|b| b.0)
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
    fn sample_with_allow_all_is_sample() {
        for (t, k, pp, mp) in [(0.0, 40, 0.95, 0.05), (0.8, 40, 0.95, 0.05), (1.5, 0, 1.0, 0.0), (1.0, 3, 0.5, 0.0)] {
            let p = SamplingParams { temperature: t, top_k: k, top_p: pp, min_p: mp, seed: Some(9), repeat_penalty: 1.3, ..Default::default() };
            let (mut a, mut b) = (Sampler::new(p.clone()).unwrap(), Sampler::new(p).unwrap());
            let mut rng = Rng::new(5);
            let mut history = vec![1, 2];
            for _ in 0..100 {
                let l: Vec<f32> = (0..50).map(|_| rng.next_f64() as f32 * 6.0).collect();
                let x = a.sample(&mut l.clone(), &history);
                let y = b.sample_with(&mut l.clone(), &history, &mut |_| true).unwrap();
                assert_eq!(x, y);
                history.push(x);
            }
        }
    }

    #[test]
    fn greedy_takes_the_best_allowed() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        let mut asked = Vec::new();
        let got = s.sample_with(&mut logits(), &[], &mut |t| {
            asked.push(t);
            t == 2 || t == 0
        });
        // The argmax (1) first; then one pass asking only about tokens that beat the best
        // allowed so far: 0 (1.0), 2 (2.5), 5 (2.9) — never 1 again, nor 3 and 4.
        assert_eq!((got, asked), (Some(2), vec![1, 0, 2, 5]));
        assert_eq!(s.sample_with(&mut logits(), &[], &mut |_| false), None);
    }

    #[test]
    fn sampling_redraws_among_allowed_survivors() {
        let p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: Some(3), ..Default::default() };
        let mut s = Sampler::new(p).unwrap();
        let mut counts = [0usize; 6];
        for _ in 0..4000 {
            let t = s.sample_with(&mut logits(), &[], &mut |t| t == 1 || t == 2 || t == 3).unwrap();
            counts[t as usize] += 1;
        }
        assert_eq!(counts[0] + counts[4] + counts[5], 0, "{counts:?}");
        // Renormalised over {1, 2, 3}: e^3 : e^2.5 : e^-1 = 0.61 : 0.37 : 0.011.
        let share = |i: usize| counts[i] as f64 / 4000.0;
        assert!((share(1) - 0.61).abs() < 0.04 && (share(2) - 0.37).abs() < 0.04 && share(3) < 0.03, "{counts:?}");
    }

    #[test]
    fn falls_back_past_the_truncation() {
        // top-k 2 keeps tokens 1 and 5; neither is allowed: the best allowed overall wins.
        let p = SamplingParams { temperature: 0.7, top_k: 2, seed: Some(1), ..Default::default() };
        let mut s = Sampler::new(p).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample_with(&mut logits(), &[], &mut |t| t == 0 || t == 3), Some(0));
        }
        assert_eq!(s.sample_with(&mut logits(), &[], &mut |_| false), None);
        assert_eq!(s.sample_with(&mut [f32::NAN, f32::NEG_INFINITY], &[], &mut |_| true), None);
    }

    #[test]
    fn best_allowed_matches_brute_force() {
        let mut rng = Rng::new(11);
        for n in [1, 10, 64, 65, 1000, 5000] {
            // Coarse logits: plenty of ties, which go to the lower id.
            let l: Vec<f32> = (0..n).map(|_| (rng.next_f64() * 20.0).floor() as f32).collect();
            let allowed: Vec<bool> = (0..n).map(|_| rng.next_f64() < 0.01).collect();
            let want = (0..n).filter(|&i| allowed[i]).min_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b))).map(|i| i as u32);
            assert_eq!(best_allowed(&l, &mut |t| allowed[t as usize]), want, "n = {n}");
        }
    }

    #[test]
    fn rejects_bad_params() {
        assert!(Sampler::new(SamplingParams { temperature: -1.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplingParams { top_p: 0.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplingParams { temperature: f32::NAN, ..Default::default() }).is_err());
    }
}
