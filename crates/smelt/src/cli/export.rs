//! `smelt export CKPT --format hf|gguf [--quant q8_0] --out PATH`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use crate::export::gguf::{export_gguf, Quant};
use crate::export::hf::export_hf;
use crate::export::Exportable;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// A Hugging Face folder (config.json, model.safetensors, tokenizer) for transformers.
    Hf,
    /// A GGUF file for smelt and llama.cpp.
    Gguf,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A checkpoint folder, or a run folder (its latest checkpoint).
    pub checkpoint: PathBuf,
    #[arg(long, value_enum)]
    pub format: Format,
    /// GGUF matrix type: f32, f16, q8_0, q4_0, q4_k, q6_k (matrices whose rows do not fit
    /// the block size fall back to q8_0 or f16).
    #[arg(long)]
    pub quant: Option<String>,
    /// Output folder (hf) or file (gguf).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let m = Exportable::from_checkpoint(&a.checkpoint)?;
    match a.format {
        Format::Hf => {
            if a.quant.as_deref().is_some_and(|q| !q.eq_ignore_ascii_case("f32")) {
                bail!("--quant applies to GGUF; the Hugging Face export is f32");
            }
            export_hf(&m, &a.out)?;
        }
        Format::Gguf => {
            let q = Quant::parse(a.quant.as_deref().unwrap_or("f32"))?;
            if a.out.is_dir() {
                bail!("{} is a folder; give the .gguf file to write", a.out.display());
            }
            export_gguf(&m, q, &a.out)?;
        }
    }
    println!("exported {} ({:.2}M parameters) -> {}", m.name, m.cfg.n_params() as f64 / 1e6, a.out.display());
    Ok(())
}
