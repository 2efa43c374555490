//! Perplexity exactly as llama.cpp's `llama-perplexity` computes it: the text is tokenized
//! once (with BOS where the model adds one), cut into non-overlapping chunks of `ctx`
//! tokens, the first token of each chunk replaced by BOS when the model adds BOS, and only
//! the second half of each chunk scored (so every scored token has at least ctx/2 tokens
//! of context).

use anyhow::{bail, Result};
use candle_core::Tensor;

use crate::model::{Decoder, SeqInput};
use crate::sample::log_sum_exp;

#[derive(Debug, Clone, serde::Serialize)]
pub struct PerplexityReport {
    pub ppl: f64,
    /// Standard error of the estimate (llama.cpp's "+/-").
    pub ppl_stderr: f64,
    pub mean_nll: f64,
    pub ctx: usize,
    pub chunks: usize,
    pub scored_tokens: usize,
    pub text_tokens: usize,
    /// Running estimate after each chunk, as llama.cpp prints it.
    pub per_chunk: Vec<f64>,
    pub seconds: f64,
}

/// First scored position in a chunk. llama.cpp uses ctx/2; for ctx = 2 that scores
/// nothing, so smelt scores position 0 there (identical for every ctx >= 3).
pub fn first_scored(ctx: usize) -> usize {
    (ctx / 2).min(ctx - 2)
}

/// Rows of logits turned into log-probabilities at a time (bounds memory for 256K vocabularies).
const LOGIT_ROWS: usize = 32;

/// `tokens` is the whole text, already tokenized with BOS if the model adds one.
pub fn perplexity(
    model: &Decoder,
    tokens: &[u32],
    ctx: usize,
    max_chunks: Option<usize>,
    bos: Option<u32>,
    mut on_chunk: impl FnMut(usize, usize, f64),
) -> Result<PerplexityReport> {
    if ctx < 2 {
        bail!("perplexity needs --ctx of at least 2, got {ctx}");
    }
    if ctx > model.n_ctx {
        bail!("--ctx {ctx} exceeds the context this model was loaded with ({})", model.n_ctx);
    }
    if tokens.len() < 2 * ctx {
        bail!(
            "the text tokenizes to {} tokens; perplexity with --ctx {ctx} needs at least {} (2 × ctx)",
            tokens.len(),
            2 * ctx
        );
    }
    let start_time = std::time::Instant::now();
    let n_chunks = (tokens.len() / ctx).min(max_chunks.unwrap_or(usize::MAX));
    let first = first_scored(ctx);
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut per_chunk = Vec::with_capacity(n_chunks);
    let mut chunk = vec![0u32; ctx];
    for i in 0..n_chunks {
        chunk.copy_from_slice(&tokens[i * ctx..(i + 1) * ctx]);
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let hidden = model.hidden_states(&mut [SeqInput { tokens: &chunk, cache: None }])?;
        // Position j predicts token j + 1, for j in first..ctx-1 (original tokens as targets).
        let mut j = first;
        while j < ctx - 1 {
            let rows = LOGIT_ROWS.min(ctx - 1 - j);
            let logits: Tensor = model.logits_from_hidden(&hidden.narrow(0, j, rows)?)?;
            let logits: Vec<Vec<f32>> = logits.to_vec2()?;
            for (r, row) in logits.iter().enumerate() {
                let target = tokens[i * ctx + j + r + 1] as usize;
                let v = log_sum_exp(row) - row[target] as f64;
                nll += v;
                nll2 += v * v;
                count += 1;
            }
            j += rows;
        }
        let est = (nll / count as f64).exp();
        per_chunk.push(est);
        on_chunk(i + 1, n_chunks, est);
    }
    let mean = nll / count as f64;
    let var = nll2 / count as f64 - mean * mean;
    let ppl = mean.exp();
    let stderr = if var > 0.0 && count > 1 { (var / (count - 1) as f64).sqrt() * ppl } else { 0.0 };
    Ok(PerplexityReport {
        ppl,
        ppl_stderr: stderr,
        mean_nll: mean,
        ctx,
        chunks: n_chunks,
        scored_tokens: count,
        text_tokens: tokens.len(),
        per_chunk,
        seconds: start_time.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scored_positions() {
        assert_eq!(first_scored(512), 256);
        assert_eq!(first_scored(3), 1);
        assert_eq!(first_scored(2), 0);
    }
}
