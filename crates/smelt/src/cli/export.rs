//! `smelt export CKPT --format hf|gguf [--quant q8_0] --out PATH`, and
//! `smelt export BASE --merge-lora ADAPTER[:SCALE] --out PATH` (LoRA folded into the base).

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
    /// A checkpoint folder, or a run folder (its latest checkpoint); with --merge-lora, the
    /// base model (GGUF file or Hugging Face folder).
    pub checkpoint: PathBuf,
    /// Output format (with --merge-lora: the base's own, the default).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Fold this LoRA adapter (PEFT format) into the base's weights, scaled by SCALE
    /// (repeatable). Writes the base's format: a GGUF file (merged matrices re-encoded in
    /// their type, or --quant's) or a Hugging Face folder.
    #[arg(long = "merge-lora", value_name = "DIR[:SCALE]")]
    pub merge_lora: Vec<crate::lora::AdapterSpec>,
    /// GGUF matrix type: f32, f16, q8_0, q4_0, q4_k, q6_k (matrices whose rows do not fit
    /// the block size fall back to q8_0 or f16).
    #[arg(long)]
    pub quant: Option<String>,
    /// Output folder (hf) or file (gguf).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

fn merge(a: &ExportArgs) -> Result<()> {
    use crate::export::merge::{merge_gguf, merge_hf};
    let base = &a.checkpoint;
    let n = if base.is_dir() {
        if matches!(a.format, Some(Format::Gguf)) {
            bail!("merging into a Hugging Face folder writes a folder (--format hf); convert to GGUF afterwards");
        }
        if a.quant.is_some() {
            bail!("--quant applies to a GGUF base");
        }
        merge_hf(base, &a.merge_lora, &a.out)?
    } else if base.is_file() {
        if matches!(a.format, Some(Format::Hf)) {
            bail!("merging into a GGUF base writes a GGUF file (--format gguf)");
        }
        if a.out.is_dir() {
            bail!("{} is a folder; give the .gguf file to write", a.out.display());
        }
        let q = a.quant.as_deref().map(crate::export::merge::parse_type).transpose()?;
        merge_gguf(base, &a.merge_lora, q, &a.out)?
    } else {
        bail!("{}: no such model file or folder", base.display());
    };
    println!("merged {} LoRA update(s) into {} -> {}", n, base.display(), a.out.display());
    Ok(())
}

pub fn export(a: ExportArgs) -> Result<()> {
    if !a.merge_lora.is_empty() {
        return merge(&a);
    }
    let Some(format) = a.format else { bail!("--format is required (hf or gguf)") };
    let m = Exportable::from_checkpoint(&a.checkpoint)?;
    match format {
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
