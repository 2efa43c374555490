//! `smelt bench`: inference speed the way llama-bench measures it.
//!
//! - prefill (`pp N`): N random tokens in one forward pass into an empty cache (after a
//!   prefilled depth `d` when asked), timed; tokens/s = N / seconds.
//! - decode (`tg N`): N single-token forward passes one after the other, each producing
//!   logits, after the depth's prefill (not timed); tokens/s = N / seconds.
//!
//! Each test runs once to warm up, then `reps` times; we report mean ± sample standard
//! deviation of tokens/s over the repetitions (as llama-bench does). Alongside: the
//! weight bytes one decoded token reads, the bandwidth that implies, and the memory read
//! bandwidth the machine reaches with the same threads ([`membw`]), so a decode number
//! can be judged against the hardware's limit. [`shapes`] builds random-weight models.

pub mod membw;
pub mod shapes;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;

use crate::load::gguf::GgufFile;
use crate::load::gguf_config::config_from_gguf;
use crate::load::tensors::GgufTensors;
use crate::model::{Decoder, Logits, SeqInput};
use crate::sample::Rng;

/// One test: prefill or decode of `n` tokens after `depth` cached ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Prefill,
    Decode,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TestResult {
    pub kind: Kind,
    pub n: usize,
    pub depth: usize,
    /// llama-bench's name: `pp512`, `tg128`, `pp512 @ d512`.
    pub name: String,
    /// Tokens/s of each repetition.
    pub samples: Vec<f64>,
    pub mean: f64,
    pub sd: f64,
}

impl TestResult {
    fn new(kind: Kind, n: usize, depth: usize, samples: Vec<f64>) -> TestResult {
        let (mean, sd) = mean_sd(&samples);
        let mut name = format!("{}{n}", if kind == Kind::Prefill { "pp" } else { "tg" });
        if depth > 0 {
            name.push_str(&format!(" @ d{depth}"));
        }
        TestResult { kind, n, depth, name, samples, mean, sd }
    }
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    (mean, sd)
}

/// A decoder straight from GGUF bytes (no tokenizer needed: the tokens are random). As
/// [`crate::load::load_gguf`] does, the freed heap goes back to the system once `file` (if
/// this held its last reference) and its parsed metadata are dropped.
pub fn decoder_from_gguf(file: Arc<GgufFile>, n_ctx: usize) -> Result<Decoder> {
    let src = GgufTensors::new(file.clone(), Device::Cpu);
    let cfg = config_from_gguf(&file, &src)?;
    if n_ctx > cfg.max_position {
        bail!("the test needs {n_ctx} tokens of context, the model has {}", cfg.max_position);
    }
    let dec = Decoder::load(&cfg, &src, n_ctx, &Device::Cpu)?;
    drop((src, file));
    crate::util::return_freed_memory();
    Ok(dec)
}

/// Bytes of weights one decoded token reads: every matrix, except that only one row of
/// the embedding table is read (unless it doubles as the output projection).
pub fn weight_bytes_per_token(file: &GgufFile) -> u64 {
    let tied = file.tensor_info("output.weight").is_none();
    file.tensors
        .iter()
        .filter(|t| t.name != "token_embd.weight" || tied)
        .map(|t| t.size as u64)
        .sum()
}

fn random_tokens(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

/// Run one test `reps` times (plus a warm-up) and collect tokens/s.
pub fn run_test(dec: &Decoder, kind: Kind, n: usize, depth: usize, reps: usize, seed: u64) -> Result<TestResult> {
    if n == 0 || reps == 0 {
        bail!("a test needs at least one token and one repetition");
    }
    let vocab = dec.cfg.vocab_size;
    let mut rng = Rng::new(seed);
    let mut samples = Vec::with_capacity(reps);
    for rep in 0..=reps {
        let mut cache = dec.new_cache();
        if depth > 0 {
            let t = random_tokens(&mut rng, depth, vocab);
            dec.forward(&mut [SeqInput { tokens: &t, cache: Some(&mut cache) }], Logits::Last)?;
        }
        let secs = match kind {
            Kind::Prefill => {
                let t = random_tokens(&mut rng, n, vocab);
                let t0 = Instant::now();
                let l = dec.forward(&mut [SeqInput { tokens: &t, cache: Some(&mut cache) }], Logits::Last)?;
                let _ = l.to_vec2::<f32>()?;
                t0.elapsed().as_secs_f64()
            }
            Kind::Decode => {
                let mut tok = random_tokens(&mut rng, 1, vocab)[0];
                // The warm-up decodes a few tokens only.
                let steps = if rep == 0 { n.min(4) } else { n };
                let mut logits = Vec::with_capacity(vocab);
                let t0 = Instant::now();
                for _ in 0..steps {
                    dec.step_into(&[tok], &mut cache, &mut logits)?;
                    std::hint::black_box(&logits);
                    tok = (rng.next_u64() % vocab as u64) as u32;
                }
                t0.elapsed().as_secs_f64()
            }
        };
        if rep > 0 {
            samples.push(n as f64 / secs);
        }
    }
    Ok(TestResult::new(kind, n, depth, samples))
}

/// Peak resident memory of this process so far (VmHWM), in bytes.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    l.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Start [`peak_rss`] (VmHWM, and the `ru_maxrss` a parent's `wait4` sees) again from the
/// current resident set (Linux's `clear_refs` 5); no effect elsewhere.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Everything `smelt bench` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub model: String,
    pub types: String,
    pub file_bytes: u64,
    pub params: u64,
    pub threads: usize,
    pub isa: String,
    pub kv_type: crate::model::KvType,
    pub weight_bytes_per_token: u64,
    pub tests: Vec<TestResult>,
    /// Memory read bandwidth with the same threads, GB/s.
    pub mem_read_gbs: f64,
    pub peak_rss_bytes: Option<u64>,
    /// Seconds to build the model from the mapped file (weights repacked where they are).
    pub load_s: f64,
}

impl BenchReport {
    /// Bandwidth a decode result implies: weight bytes per token × tokens/s, GB/s.
    pub fn decode_gbs(&self, t: &TestResult) -> f64 {
        self.weight_bytes_per_token as f64 * t.mean / 1e9
    }
}

/// Type counts of the matrices, e.g. "Q4_K×155 Q6_K×46".
pub fn type_summary(file: &GgufFile) -> String {
    let mut m = std::collections::BTreeMap::<&str, usize>::new();
    for t in file.tensors.iter().filter(|t| t.dims.len() >= 2) {
        *m.entry(t.dtype.name()).or_default() += 1;
    }
    m.iter().map(|(k, n)| format!("{k}×{n}")).collect::<Vec<_>>().join(" ")
}

/// Parameter count from the tensor directory.
pub fn n_params(file: &GgufFile) -> u64 {
    file.tensors.iter().map(|t| t.n_elements() as u64).sum()
}

/// Context a set of tests needs.
pub fn ctx_needed(pp: usize, tg: usize, depth: usize) -> usize {
    depth + pp.max(tg) + 1
}

/// Open a model file for benchmarking.
pub fn open(path: &std::path::Path) -> Result<Arc<GgufFile>> {
    if path.is_dir() {
        bail!("{}: smelt bench takes a GGUF file", path.display());
    }
    Ok(Arc::new(GgufFile::open(path).with_context(|| format!("cannot open {}", path.display()))?))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The reset forgets a freed buffer's pages (so `smelt bench` can probe the bandwidth
    /// with 512 MiB first and still report the model's own peak).
    #[test]
    fn peak_rss_resets() {
        let buf = vec![1u8; 256 << 20];
        std::hint::black_box(&buf);
        let with = peak_rss().unwrap();
        drop(buf);
        reset_peak_rss();
        let after = peak_rss().unwrap();
        assert!(with >= 256 << 20 && after + (128 << 20) < with, "peak {with} → {after} after the reset");
    }
}
