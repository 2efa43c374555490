//! `smelt logits MODEL --tokens 1,2,3 [--lora DIR] --out F.safetensors` (hidden): the logits
//! of one forward pass over given token ids, for checks against other implementations
//! (scripts/fixtures/gen_lora.py).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::args::{load_model, ModelArgs};
use crate::model::{Logits, SeqInput};

#[derive(Args, Debug)]
pub struct LogitsArgs {
    pub model: String,
    /// Comma-separated token ids.
    #[arg(long)]
    pub tokens: String,
    /// safetensors file to write (`logits`, f32 [tokens, vocab]).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    #[command(flatten)]
    pub model_args: ModelArgs,
}

pub fn logits(a: LogitsArgs) -> Result<()> {
    let ids: Vec<u32> = a
        .tokens
        .split(',')
        .map(|t| t.trim().parse::<u32>().with_context(|| format!("--tokens: {t:?} is not a token id")))
        .collect::<Result<_>>()?;
    let model = load_model(Some(&a.model), &a.model_args)?;
    let l = model.decoder.forward(&mut [SeqInput { tokens: &ids, cache: None }], Logits::All)?;
    crate::util::write_atomic(&a.out, &crate::export::safetensors::to_bytes(&[("logits".to_string(), l)], &[])?)?;
    Ok(())
}
