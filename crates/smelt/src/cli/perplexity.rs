//! `smelt perplexity MODEL --file F [--ctx 512] [--chunks N] [--json]`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::args::{load_model, ModelArgs};
use crate::eval::perplexity::perplexity as compute;

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    /// The model: path, alias or hub repo (default: smollm2-135m).
    pub model: Option<String>,
    /// UTF-8 text to score.
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Tokens per chunk (llama-perplexity's -c).
    #[arg(long, short = 'c', default_value_t = 512)]
    pub ctx: usize,
    /// Score only the first N chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    #[arg(long)]
    pub json: bool,
    /// Apply a LoRA adapter (DIR[:SCALE], repeatable).
    #[arg(long = "lora", value_name = "DIR[:SCALE]")]
    pub lora: Vec<crate::lora::AdapterSpec>,
}

pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    let bytes = std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!("{} is not valid UTF-8 (byte {})", a.file.display(), e.utf8_error().valid_up_to())
    })?;
    let model = load_model(a.model.as_deref(), &ModelArgs { ctx: Some(a.ctx), kv_type: Default::default(), lora: a.lora.clone() })?;
    let tok = &model.tokenizer;
    let tokens = tok.encode(&text, true, false)?;
    let bos = if tok.add_bos() { tok.bos_id() } else { None };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} chunk {pos}/{len} [{bar:30}] ppl {msg} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    let report = compute(&model.decoder, &tokens, a.ctx, a.chunks, bos, |i, n, est| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
        bar.set_message(format!("{est:.4}"));
    })?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let chunks: Vec<String> = report.per_chunk.iter().enumerate().map(|(i, p)| format!("[{}]{p:.4}", i + 1)).collect();
        println!("{}", chunks.join(","));
        println!(
            "Final estimate: PPL = {:.4} +/- {:.5}   ({} chunks of {} tokens, {} scored, {:.1}s)",
            report.ppl, report.ppl_stderr, report.chunks, report.ctx, report.scored_tokens, report.seconds
        );
    }
    Ok(())
}
