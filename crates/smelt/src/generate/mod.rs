//! The decode loop: prefill the prompt (reusing whatever prefix is already cached), then
//! sample one token at a time, streaming text until an end-of-generation token, a stop
//! string, the token limit or the end of the context.

mod stop;

pub use stop::StopMatcher;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::model::{Decoder, KvCache};
use crate::sample::{Sampler, SamplingParams};
use crate::tokenize::{StreamDecoder, Tokenizer};

#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub sampling: SamplingParams,
    /// None = until end of generation or the context is full.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams { sampling: SamplingParams::default(), max_tokens: None, stop: Vec::new(), ignore_eos: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
    /// The caller asked to stop (client went away, Ctrl-C).
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens that were already in the cache and not recomputed.
    pub cached_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl Generation {
    pub fn prefill_tps(&self) -> f64 {
        (self.prompt_tokens - self.cached_tokens) as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }
    pub fn decode_tps(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// A KV cache plus the tokens it holds, so a follow-up prompt that extends the same
/// conversation only computes its new suffix.
pub struct Session {
    pub cache: KvCache,
    pub tokens: Vec<u32>,
}

impl Session {
    pub fn new(model: &Decoder) -> Session {
        Session { cache: model.new_cache(), tokens: Vec::new() }
    }

    /// Keep the longest cached prefix of `prompt` (at least one token is always left to
    /// compute, since its logits are needed); returns how many prompt tokens were reused.
    pub fn reuse_prefix(&mut self, prompt: &[u32]) -> usize {
        let common = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let keep = common.min(prompt.len().saturating_sub(1));
        self.cache.truncate(keep);
        self.tokens.truncate(keep);
        keep
    }

    pub fn clear(&mut self) {
        self.cache.clear();
        self.tokens.clear();
    }
}

/// What the streaming callback wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Generate from `prompt`, calling `on_text` with each newly decoded piece of text.
pub fn generate(
    model: &Decoder,
    tok: &Tokenizer,
    session: &mut Session,
    prompt: &[u32],
    params: &GenerateParams,
    mut on_text: impl FnMut(&str) -> Flow,
) -> Result<Generation> {
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    if prompt.len() >= model.n_ctx {
        bail!(
            "the prompt is {} tokens but the context is {} (nothing is truncated: shorten the prompt or raise --ctx, up to the model's {})",
            prompt.len(),
            model.n_ctx,
            model.cfg.max_position
        );
    }
    let mut sampler = Sampler::new(params.sampling.clone())?;
    let cached = session.reuse_prefix(prompt);
    let t0 = Instant::now();
    let mut logits = model.step(&prompt[cached..], &mut session.cache)?;
    session.tokens.extend_from_slice(&prompt[cached..]);
    let prefill_time = t0.elapsed();

    let mut history: Vec<u32> = prompt.to_vec();
    let mut out_tokens = Vec::new();
    let mut text = String::new();
    let mut stream = StreamDecoder::new(tok, true);
    let mut stops = StopMatcher::new(&params.stop);
    let mut stop_hit = false;
    let t1 = Instant::now();
    let finish = loop {
        if params.max_tokens.is_some_and(|m| out_tokens.len() >= m) {
            break FinishReason::Length;
        }
        let next = sampler.sample(&mut logits, &history);
        if !params.ignore_eos && tok.eog_ids().contains(&next) {
            break FinishReason::Stop;
        }
        out_tokens.push(next);
        history.push(next);
        let piece = stream.push(next);
        let (emit, hit) = stops.push(&piece);
        if !emit.is_empty() {
            text.push_str(&emit);
            if on_text(&emit) == Flow::Stop {
                break FinishReason::Cancelled;
            }
        }
        if hit {
            stop_hit = true;
            break FinishReason::Stop;
        }
        if session.cache.len() + 1 > model.n_ctx {
            break FinishReason::Length;
        }
        logits = model.step(&[next], &mut session.cache)?;
        session.tokens.push(next);
    };
    // Release what was held back (an incomplete UTF-8 tail, a partial stop-string match)
    // unless a stop string ended generation or the caller went away.
    if finish != FinishReason::Cancelled && !stop_hit {
        let (mut tail, hit) = stops.push(&stream.finish());
        if !hit {
            tail.push_str(&stops.flush());
        }
        if !tail.is_empty() {
            text.push_str(&tail);
            on_text(&tail);
        }
    }
    Ok(Generation {
        text,
        tokens: out_tokens,
        finish,
        prompt_tokens: prompt.len(),
        cached_tokens: cached,
        prefill_time,
        decode_time: t1.elapsed(),
    })
}
