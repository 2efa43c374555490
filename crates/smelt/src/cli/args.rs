//! Arguments shared by several verbs: which model, context, sampling.

use std::ffi::OsString;
use std::io::Read;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::generate::GenerateParams;
use crate::hub::{Hub, DEFAULT_MODEL};
use crate::load::{LoadOptions, Model};
use crate::sample::SamplingParams;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Context size in tokens (default: the model's trained context, bounded by memory).
    #[arg(long, short = 'c')]
    pub ctx: Option<usize>,
    /// How the KV cache stores keys and values: f16 (half the memory, as llama.cpp) or f32.
    #[arg(long = "kv-type", value_name = "f16|f32", default_value = "f16")]
    pub kv_type: crate::model::KvType,
    /// Apply a LoRA adapter folder (PEFT format, e.g. from `smelt finetune`), its update
    /// scaled by SCALE (default 1). Repeatable.
    #[arg(long = "lora", value_name = "DIR[:SCALE]")]
    pub lora: Vec<crate::lora::AdapterSpec>,
}

/// Resolve a model spec (path, alias, `org/name`, `org/name:file.gguf`) and load it.
pub fn load_model(spec: Option<&str>, args: &ModelArgs) -> Result<Model> {
    let spec = spec.unwrap_or(DEFAULT_MODEL);
    let hub = Hub::from_env()?;
    let src = hub.resolve(spec)?;
    let mut model = crate::load::load(src.path(), &LoadOptions { ctx: args.ctx, kv_type: args.kv_type })?;
    crate::lora::adapter::attach_all(&mut model.decoder, &args.lora)?;
    Ok(model)
}

/// Whether a lone positional argument names a model rather than being a prompt.
pub fn looks_like_model(s: &str) -> bool {
    if s.is_empty() || s.contains(char::is_whitespace) {
        return false;
    }
    if std::path::Path::new(s).exists() || crate::hub::aliases().iter().any(|a| a.name == s) {
        return true;
    }
    // org/name, org/name:file.gguf, org/name@rev
    let base = s.split(['@', ':']).next().unwrap_or(s);
    let mut parts = base.split('/');
    let ok = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none() || s.ends_with(".gguf")
}

/// A prompt from the command line (must be UTF-8), else from piped stdin.
pub fn read_prompt(arg: Option<OsString>) -> Result<String> {
    let text = match arg {
        Some(a) => a.into_string().map_err(|_| anyhow::anyhow!("the prompt is not valid UTF-8"))?,
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                bail!("no prompt: give one as an argument or pipe it on stdin");
            }
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("cannot read stdin")?;
            String::from_utf8(buf).map_err(|e| anyhow::anyhow!("the prompt on stdin is not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()))?
        }
    };
    if text.trim().is_empty() {
        bail!("the prompt is empty");
    }
    Ok(text)
}

#[derive(Args, Debug, Clone)]
pub struct GenArgs {
    /// Sampling temperature (0 = greedy, deterministic).
    #[arg(long = "temp", alias = "temperature", default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise repeating recent tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties consider.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Random seed: the same seed and settings give the same output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this text is generated (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Generate at most this many tokens (default: until the model stops or the context is full).
    #[arg(long, short = 'n')]
    pub max_tokens: Option<usize>,
}

impl GenArgs {
    pub fn params(&self) -> Result<GenerateParams> {
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
        };
        sampling.validate()?;
        Ok(GenerateParams { sampling, max_tokens: self.max_tokens, stop: self.stop.clone(), ignore_eos: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_or_prompt() {
        assert!(looks_like_model("smollm2-135m"));
        assert!(looks_like_model("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(looks_like_model("org/name:file.gguf"));
        assert!(!looks_like_model("Why is the sky blue?"));
        assert!(!looks_like_model("hello"));
    }
}

/// How a training run (train, distill, finetune) is started and stopped.
#[derive(Args, Debug, Clone)]
pub struct RunControl {
    /// Continue the run in --out from its latest checkpoint, exactly as if never stopped.
    #[arg(long)]
    pub resume: bool,
    /// Train at most N steps now, then save a checkpoint and stop (continue with --resume).
    #[arg(long, value_name = "N")]
    pub stop_after: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}
