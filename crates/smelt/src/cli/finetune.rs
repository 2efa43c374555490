//! `smelt finetune BASE --data train.jsonl [--eval eval.jsonl] --out ADAPTER_DIR`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;

use super::args::RunControl;
use crate::finetune::{finetune as run_finetune, FinetuneConfig, FinetuneOptions};
use crate::hub::Hub;
use crate::lora::config::parse_targets;
use crate::lora::LoraConfig;
use crate::train::config::OptimConfig;

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// The base model: a GGUF file (quantized weights stay quantized and frozen), a Hugging
    /// Face folder, or an alias / hub repo.
    pub base: String,
    /// Training records, JSONL: {"messages": [{"role", "content"}, ...]} or {"prompt", "completion"}.
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out records (same format) for the evaluation loss.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Run folder: checkpoints, metrics.jsonl, loss.svg, and the finished adapter
    /// (adapter_config.json + adapter_model.safetensors, PEFT's format).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// LoRA rank.
    #[arg(long, short = 'r', default_value_t = 8)]
    pub rank: usize,
    /// LoRA alpha (the update is scaled by alpha/rank, or alpha/√rank with --rslora).
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    pub dropout: f32,
    /// Modules to adapt: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj, or all-linear, attention, mlp.
    #[arg(long, default_value = "all-linear")]
    pub targets: String,
    /// Rank-stabilised LoRA: scale by alpha/√rank.
    #[arg(long)]
    pub rslora: bool,
    /// Passes over the data (ignored when --steps is given).
    #[arg(long, default_value_t = 1.0)]
    pub epochs: f64,
    /// Optimizer steps (default: from --epochs).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Input tokens per packed micro-batch.
    #[arg(long, default_value_t = 2048)]
    pub batch_tokens: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Longest example in tokens (longer ones are cut, with a note) [default: 1024, or the
    /// model's context or --batch-tokens if smaller].
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Floor of the cosine schedule.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f64,
    #[arg(long, default_value_t = 10)]
    pub warmup_steps: u64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Plain prompt + completion text (model BOS, completion, EOS), no chat template.
    #[arg(long)]
    pub raw: bool,
    /// Skip malformed records (each is reported) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Held-out loss every N steps (0: only at the start and the end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Checkpoint every N steps (0: only at the end and on Ctrl-C).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    #[arg(long, default_value_t = 1)]
    pub log_every: u64,
    /// All products in f32 (default: the frozen base weights' backward products in int8 on
    /// AVX-512 VNNI CPUs, else in bf16 with f32 accumulation where bf16 measures faster than
    /// f32, such as AMD Zen 4).
    #[arg(long)]
    pub f32: bool,
    #[command(flatten)]
    pub control: RunControl,
}

pub fn finetune(a: FinetuneArgs) -> Result<()> {
    crate::train::kernels::frozen::set_low_precision_backward(!a.f32);
    let base = Hub::from_env()?.resolve(&a.base)?.path().to_path_buf();
    let cfg = FinetuneConfig {
        base,
        data: a.data,
        eval: a.eval,
        out: a.out,
        lora: LoraConfig { rank: a.rank, alpha: a.alpha, dropout: a.dropout, targets: parse_targets(&a.targets)?, rslora: a.rslora },
        optim: OptimConfig {
            steps: a.steps.unwrap_or(0),
            batch_size: 0,
            grad_accum: a.grad_accum,
            lr: a.lr,
            min_lr: a.min_lr,
            warmup_steps: a.warmup_steps,
            weight_decay: a.weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            grad_clip: a.grad_clip,
            seed: a.seed,
            // The fine-tuning loss runs the output projection in f32.
            bf16: false,
        },
        epochs: a.epochs,
        batch_tokens: a.batch_tokens,
        max_len: a.max_len.unwrap_or(0),
        raw: a.raw,
        skip_bad: a.skip_bad,
        eval_every: a.eval_every,
        checkpoint_every: a.checkpoint_every,
        keep_checkpoints: a.keep_checkpoints,
        log_every: a.log_every,
    };
    if !(cfg.epochs.is_finite() && cfg.epochs > 0.0) {
        anyhow::bail!("--epochs must be positive");
    }
    crate::train::tune_allocator();
    let stop = Arc::new(AtomicBool::new(false));
    super::train::install_ctrl_c(stop.clone());
    let progress = !a.control.quiet && std::io::stderr().is_terminal();
    let o = run_finetune(cfg, &FinetuneOptions { resume: a.control.resume, progress, stop, stop_after: a.control.stop_after })?;
    let ev = match (o.first_eval_loss, o.eval_loss) {
        (Some(a), Some(b)) => format!(", held-out loss {a:.4} -> {b:.4}"),
        (None, Some(b)) => format!(", held-out loss {b:.4}"),
        _ => String::new(),
    };
    if o.paused {
        println!("paused at step {} (training loss {:.4}{ev}); continue with --resume", o.steps, o.last_loss);
    } else {
        println!(
            "fine-tuned {} steps, training loss {:.4}{ev}, {:.0} tok/s; adapter in {}",
            o.steps,
            o.last_loss,
            o.train_tokens_per_s,
            o.adapter_dir.display()
        );
    }
    Ok(())
}
