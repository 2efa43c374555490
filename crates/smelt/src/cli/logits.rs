//! `smelt logits MODEL (--ids 1,2,3 | --text STR) --out FILE.safetensors`: the raw logits
//! of every position of one token sequence (no cache, no sampling), for checking smelt
//! against another framework (`scripts/fixtures/check_export_hf.py` does so with transformers).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;

use super::args::{load_model, ModelArgs};
use crate::model::{Logits, SeqInput};

#[derive(Args, Debug)]
pub struct LogitsArgs {
    /// The model: path, alias or hub repo.
    pub model: String,
    /// Token ids, comma-separated.
    #[arg(long, alias = "tokens", value_delimiter = ',', conflicts_with = "text", required_unless_present = "text")]
    pub ids: Vec<u32>,
    /// Text to tokenize (no special tokens added).
    #[arg(long)]
    pub text: Option<String>,
    /// safetensors file to write: `ids` (n) int64 and `logits` (n, vocab) f32.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Context and `--lora` adapters, as for `smelt run`.
    #[command(flatten)]
    pub model_args: ModelArgs,
}

pub fn logits(a: LogitsArgs) -> Result<()> {
    let model = load_model(Some(&a.model), &a.model_args)?;
    let ids = match &a.text {
        Some(t) => model.tokenizer.encode(t, false, false)?,
        None => a.ids.clone(),
    };
    if ids.is_empty() {
        bail!("no tokens to score");
    }
    let vocab = model.config().vocab_size;
    if let Some(&t) = ids.iter().find(|&&t| t as usize >= vocab) {
        bail!("token id {t} is outside the vocabulary of {vocab}");
    }
    if ids.len() > model.decoder.n_ctx {
        bail!("{} tokens do not fit the context of {}", ids.len(), model.decoder.n_ctx);
    }
    let logits = model.decoder.forward(&mut [SeqInput { tokens: &ids, cache: None }], Logits::All)?;
    let ids_t = Tensor::from_vec(ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), ids.len(), logits.device())?;
    let bytes = crate::export::safetensors::to_bytes(&[("ids".into(), ids_t), ("logits".into(), logits.to_dtype(candle_core::DType::F32)?)], &[])
        .context("logits")?;
    crate::util::write_atomic(&a.out, &bytes)?;
    println!("{} positions × {vocab} logits -> {}", ids.len(), a.out.display());
    Ok(())
}
