//! `smelt train [--config train.toml] [flags]` and `smelt bench-train`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use clap::Args;

use super::args::RunControl;
use crate::train::bench::bench_train;
use crate::train::config::ModelShape;
use crate::train::{train as run_training, TrainConfig, TrainOptions};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// TOML config (sections [data], [model], [train], [run]); flags override it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Prepared data folder (data.dir).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run folder for checkpoints, metrics and the loss curve (run.out).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Optimizer steps (train.steps).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Sequences per micro-batch (train.batch_size).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (train.lr).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Any setting, e.g. --set model.dim=256 --set run.eval_every=100 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub control: RunControl,
}

/// Ctrl-C sets the flag (the loop saves a checkpoint and stops); a second Ctrl-C quits at once.
pub(super) fn install_ctrl_c(flag: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::SeqCst);
                eprintln!("\nstopping after this step (a checkpoint is written); press Ctrl-C again to quit at once");
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    });
}

pub fn train(a: TrainArgs) -> Result<()> {
    let mut sets = Vec::new();
    if let Some(d) = &a.data {
        sets.push(format!("data.dir={}", toml_str(&d.to_string_lossy())));
    }
    if let Some(o) = &a.out {
        sets.push(format!("run.out={}", toml_str(&o.to_string_lossy())));
    }
    if let Some(s) = a.steps {
        sets.push(format!("train.steps={s}"));
    }
    if let Some(b) = a.batch_size {
        sets.push(format!("train.batch_size={b}"));
    }
    if let Some(lr) = a.lr {
        sets.push(format!("train.lr={lr:e}"));
    }
    if let Some(s) = a.seed {
        sets.push(format!("train.seed={s}"));
    }
    sets.extend(a.set.iter().cloned());
    let cfg = TrainConfig::load(a.config.as_deref(), &sets)?;
    run_config(cfg, a.control.resume, a.control.stop_after, a.control.quiet)
}

/// Train (or distil) with a resolved config: Ctrl-C handling, progress, the summary line.
pub(crate) fn run_config(cfg: TrainConfig, resume: bool, stop_after: Option<u64>, quiet: bool) -> Result<()> {
    crate::train::single_candle_pool();
    crate::train::tune_allocator();
    let stop = Arc::new(AtomicBool::new(false));
    install_ctrl_c(stop.clone());
    let progress = !quiet && std::io::stderr().is_terminal();
    let out = cfg.run.out.clone();
    let o = run_training(cfg, &TrainOptions { resume, progress, stop, stop_after })?;
    let val = o.val_loss.map(|v| format!(", held-out loss {v:.4} (perplexity {:.2})", v.exp())).unwrap_or_default();
    let why = match o.paused {
        Some("time limit") => " (time limit reached; continue with --resume)",
        Some(_) => " (paused; continue with --resume)",
        None => "",
    };
    println!(
        "trained to step {}{why}{val}, {:.0} tok/s; checkpoint {}; loss curve {}",
        o.step,
        o.tokens_per_s,
        o.checkpoint.display(),
        out.join("loss.svg").display()
    );
    Ok(())
}

pub(crate) fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    #[arg(long, default_value_t = 288)]
    pub dim: usize,
    #[arg(long, default_value_t = 6)]
    pub layers: usize,
    #[arg(long, default_value_t = 6)]
    pub heads: usize,
    #[arg(long, default_value_t = 6)]
    pub kv_heads: usize,
    #[arg(long, default_value_t = 768)]
    pub ffn: usize,
    #[arg(long, default_value_t = 32000)]
    pub vocab: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 12)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// All matrix products in f32 (default: the output projection in bf16 where the CPU
    /// has AVX-512 BF16, as `smelt train` does).
    #[arg(long)]
    pub f32: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn bench(a: BenchTrainArgs) -> Result<()> {
    let shape = ModelShape { dim: a.dim, layers: a.layers, heads: a.heads, kv_heads: a.kv_heads, ffn: a.ffn, ctx: a.seq, vocab: a.vocab, ..Default::default() };
    crate::train::single_candle_pool();
    crate::train::tune_allocator();
    let r = bench_train(&shape, a.batch, a.warmup, a.steps, a.seed, !a.f32)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{:.1}M params, {} tokens/step, {}: {:.0} tok/s ({:.0} ms/step, best {:.0} ms) over {} steps; loss {:.3} -> {:.3}",
            r.params as f64 / 1e6,
            r.tokens_per_step,
            if r.bf16 { "bf16 output projection" } else { "f32" },
            r.tok_per_s,
            r.step_ms,
            r.best_step_ms,
            r.steps,
            r.first_loss,
            r.last_loss
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchDistillArgs {
    /// Teacher shape: dim, layers, heads, ffn (kv heads = heads).
    #[arg(long, num_args = 4, value_names = ["DIM", "LAYERS", "HEADS", "FFN"], default_values_t = [288, 6, 6, 768])]
    pub teacher: Vec<usize>,
    /// Student shape: dim, layers, heads, ffn.
    #[arg(long, num_args = 4, value_names = ["DIM", "LAYERS", "HEADS", "FFN"], default_values_t = [64, 4, 4, 192])]
    pub student: Vec<usize>,
    #[arg(long, default_value_t = 32000)]
    pub vocab: usize,
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 0.5)]
    pub kd_ratio: f32,
    #[arg(long, default_value_t = 2.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

pub fn bench_distill(a: BenchDistillArgs) -> Result<()> {
    let shape = |v: &[usize]| ModelShape { dim: v[0], layers: v[1], heads: v[2], kv_heads: v[2], ffn: v[3], ctx: a.seq, vocab: a.vocab, ..Default::default() };
    let mix = crate::train::kd_loss::KdMix { ratio: a.kd_ratio, temperature: a.temperature };
    mix.validate()?;
    crate::train::tune_allocator();
    let r = crate::train::bench::bench_distill(&shape(&a.teacher), &shape(&a.student), a.batch, a.warmup, a.steps, mix, a.seed)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "teacher {:.1}M -> student {:.1}M params, {} tokens/step: {:.0} tok/s ({:.0} ms/step, best {:.0} ms, teacher forward {:.0} ms) over {} steps; loss {:.3} -> {:.3}",
            r.teacher_params as f64 / 1e6,
            r.student_params as f64 / 1e6,
            r.tokens_per_step,
            r.tok_per_s,
            r.step_ms,
            r.best_step_ms,
            r.teacher_ms,
            r.steps,
            r.first_loss,
            r.last_loss
        );
    }
    Ok(())
}
