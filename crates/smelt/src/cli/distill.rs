//! `smelt distill --teacher T [--student S] --data D --out O [--kd-ratio A] [--temperature T]`
//! and `smelt synth`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::args::RunControl;
use super::train::{run_config, toml_str};
use crate::data::corpus::CorpusOptions;
use crate::data::prepare::{prepare, PrepareOptions};
use crate::train::TrainConfig;

#[derive(Args, Debug)]
pub struct DistillArgs {
    /// The teacher: any model smelt loads (GGUF, quantized ok, or a Hugging Face folder).
    #[arg(long)]
    pub teacher: PathBuf,
    /// Start from this student (a smelt checkpoint or a Llama Hugging Face folder);
    /// default: a fresh model of the [model] shape (--set model.dim=... etc.).
    #[arg(long)]
    pub student: Option<PathBuf>,
    /// A prepared data folder (smelt data prepare, with the teacher's tokenizer), or text
    /// files, tokenized with the teacher's tokenizer into OUT/data.
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Run folder (checkpoints, metrics.jsonl, loss.svg, teacher cache).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// α in (1 − α)·CE + α·T²·KL (0 = no distillation: the plain baseline).
    #[arg(long)]
    pub kd_ratio: Option<f64>,
    /// Softening temperature T.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Cache the teacher's top-k per position (one teacher pass); 0 = run the teacher every
    /// step on the full vocabulary.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Train on the first N windows of the training split (0 = all).
    #[arg(long)]
    pub windows: Option<usize>,
    /// Window length in tokens (model.ctx).
    #[arg(long)]
    pub ctx: Option<usize>,
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fraction held out when --data is text.
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// TOML config ([data], [model], [train], [run], [distill]); flags override it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Any setting, e.g. --set model.dim=64 --set run.eval_every=100 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub control: RunControl,
}

pub fn distill(a: DistillArgs) -> Result<()> {
    let mut sets = vec![format!("distill.teacher={}", toml_str(&a.teacher.to_string_lossy()))];
    if let Some(s) = &a.student {
        sets.push(format!("distill.student={}", toml_str(&s.to_string_lossy())));
    }
    let mut push = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            sets.push(format!("{k}={v}"));
        }
    };
    push("run.out", a.out.as_ref().map(|o| toml_str(&o.to_string_lossy())));
    push("distill.kd_ratio", a.kd_ratio.map(|v| format!("{v:e}")));
    push("distill.temperature", a.temperature.map(|v| format!("{v:e}")));
    push("distill.top_k", a.top_k.map(|v| v.to_string()));
    push("distill.windows", a.windows.map(|v| v.to_string()));
    push("model.ctx", a.ctx.map(|v| v.to_string()));
    push("train.steps", a.steps.map(|v| v.to_string()));
    push("train.batch_size", a.batch_size.map(|v| v.to_string()));
    push("train.lr", a.lr.map(|v| format!("{v:e}")));
    push("train.seed", a.seed.map(|v| v.to_string()));
    sets.extend(a.set.iter().cloned());
    let mut cfg = TrainConfig::load(a.config.as_deref(), &sets)?;
    if cfg.distill.is_none() {
        bail!("internal: no [distill] section");
    }
    // Data: a prepared folder as is; text files prepared into OUT/data with the teacher's tokenizer.
    match a.data.as_slice() {
        [] => {
            if a.config.is_none() {
                bail!("--data is required: a prepared data folder or text files");
            }
        }
        [d] if d.join("meta.json").is_file() => cfg.data.dir = d.clone(),
        files => {
            if !a.control.resume {
                if let Some(c) = crate::train::checkpoint::latest(&cfg.run.out)? {
                    bail!("{} already holds a run (latest checkpoint {}): add --resume to continue it, or choose another --out", cfg.run.out.display(), c.display());
                }
            }
            let dir = cfg.run.out.join("data");
            if !(a.control.resume && dir.join("meta.json").is_file()) {
                let opts = PrepareOptions { corpus: CorpusOptions { doc_separator: None, val_fraction: a.val_fraction }, ..Default::default() };
                let r = prepare(files, &a.teacher, &dir, &opts)?;
                if !a.control.quiet {
                    eprintln!("prepared {} training and {} held-out tokens with the teacher's tokenizer into {}", r.tokens_train, r.tokens_val, dir.display());
                }
            }
            cfg.data.dir = dir;
        }
    }
    run_config(cfg, a.control.resume, a.control.stop_after, a.control.quiet)
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// The teacher: any model smelt loads.
    #[arg(long)]
    pub teacher: PathBuf,
    /// JSONL, one prompt per line: {"prompt": "..."} or {"messages": [...]} ending with a user turn.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Output JSONL of {"messages": [..., {"role": "assistant", ...}]} (written atomically).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Replies sampled per prompt.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    #[arg(long = "temperature", alias = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Drop replies shorter than this many characters.
    #[arg(long, default_value_t = 1)]
    pub min_chars: usize,
    /// Drop replies longer than this many characters (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub max_chars: usize,
    /// Drop replies in which more than this fraction of word 3-grams repeat.
    #[arg(long, default_value_t = 0.5)]
    pub max_repeat: f64,
    /// Keep only replies that are valid JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep replies cut off at --max-tokens (dropped by default).
    #[arg(long)]
    pub keep_truncated: bool,
    /// Context size for the teacher (default: the model's, bounded by memory).
    #[arg(long)]
    pub ctx: Option<usize>,
    #[arg(long)]
    pub quiet: bool,
    /// Print the report as JSON.
    #[arg(long = "report-json")]
    pub report_json: bool,
}

pub fn synth(a: SynthArgs) -> Result<()> {
    use crate::distill::synth::{read_prompts, synth as run_synth, write_jsonl, SynthOptions};
    let prompts = read_prompts(&a.prompts)?;
    if !(0.0..=1.0).contains(&a.max_repeat) {
        bail!("--max-repeat must be in [0, 1], got {}", a.max_repeat);
    }
    let model = crate::load::load(&a.teacher, &crate::load::LoadOptions { ctx: a.ctx, ..Default::default() }).map_err(|e| e.context(format!("teacher {}", a.teacher.display())))?;
    let sampling = crate::sample::SamplingParams { temperature: a.temperature, top_p: a.top_p, top_k: a.top_k, min_p: 0.0, seed: Some(a.seed), ..Default::default() };
    let opts = SynthOptions {
        n: a.n,
        max_tokens: a.max_tokens,
        sampling,
        batch: a.batch,
        min_chars: a.min_chars,
        max_chars: a.max_chars,
        max_repeat: a.max_repeat,
        json: a.json,
        keep_truncated: a.keep_truncated,
        progress: !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let (records, r) = run_synth(&model, &prompts, &opts)?;
    write_jsonl(&a.out, &records)?;
    if a.report_json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} prompts, {} replies: kept {} (dropped {} duplicate, {} truncated, {} too short, {} too long, {} repetitive, {} invalid JSON, {} prompts too long); {} tokens in {:.1}s; wrote {}",
            r.prompts, r.generated, r.kept, r.duplicates, r.truncated, r.too_short, r.too_long, r.repetitive, r.invalid_json, r.prompt_too_long, r.tokens_generated, r.seconds, a.out.display()
        );
    }
    Ok(())
}
