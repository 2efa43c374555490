//! `smelt finetune`: LoRA on a frozen base (quantized GGUF or Hugging Face folder).
//!
//! The loop: packed micro-batches → [`accumulate_and_step`] (the step code every trainer
//! shares) → schedule, held-out loss, metrics, checkpoints (`OUT/checkpoints/step-N/`: the
//! adapter in PEFT's format, AdamW's moments, `state.json`), Ctrl-C and resume. The
//! finished adapter is written to `OUT/` itself, so `OUT` is the adapter folder.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::data::{Dataset, Encoder};
use super::pack::epoch_batches;
use crate::load::{LoadOptions, Model};
use crate::lora::adapter::{Adapter, CONFIG_FILE, WEIGHTS_FILE};
use crate::lora::trainable::{attach_params, from_adapter, init_params, to_adapter};
use crate::lora::LoraConfig;
use crate::model::Decoder;
use crate::template::ChatTemplate;
use crate::train::checkpoint;
use crate::train::config::OptimConfig;
use crate::train::metrics::MetricsLog;
use crate::train::optim::AdamW;
use crate::train::trainer::progress_bar;
use crate::train::params::Params;
use crate::train::schedule::lr_at;
use crate::train::step::{accumulate_and_step, grads_of, sequences_loss};
use crate::train::Interrupted;

/// Everything that defines a fine-tuning run (saved in each checkpoint's `state.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FinetuneConfig {
    pub base: PathBuf,
    pub data: PathBuf,
    pub eval: Option<PathBuf>,
    pub out: PathBuf,
    pub lora: LoraConfig,
    /// `steps` 0 = derived from `epochs`; `batch_size` unused (micro-batches are packed by tokens).
    pub optim: OptimConfig,
    pub epochs: f64,
    /// Input tokens per packed micro-batch.
    pub batch_tokens: usize,
    /// Longest example (tokens); longer ones are cut. 0 = 1024 or the model's context if smaller.
    pub max_len: usize,
    /// Plain prompt + completion, no chat template.
    pub raw: bool,
    pub skip_bad: bool,
    /// Held-out loss every N steps (0 = at the start and the end only).
    pub eval_every: u64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    pub log_every: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    format: String,
    step: u64,
    adam_t: u64,
    elapsed_s: f64,
    trained_tokens: u64,
    last_eval_loss: Option<f64>,
    config: FinetuneConfig,
    data_sha256: String,
}

const FORMAT: &str = "smelt-lora-checkpoint-1";

/// The same start/stop controls as pre-training.
pub type FinetuneOptions = crate::train::TrainOptions;

#[derive(Debug, Clone)]
pub struct FinetuneOutcome {
    pub steps: u64,
    pub first_eval_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    pub last_loss: f64,
    pub train_tokens_per_s: f64,
    pub adapter_dir: PathBuf,
    pub paused: bool,
}

fn sha256_file(p: &Path) -> Result<String> {
    let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// The base model with its template (unless `raw`), loaded for fine-tuning.
pub fn load_base(cfg: &FinetuneConfig) -> Result<(Model, Option<ChatTemplate>)> {
    let ctx = (cfg.max_len > 0).then_some(cfg.max_len);
    let model = crate::load::load(&cfg.base, &LoadOptions { ctx, ..Default::default() }).with_context(|| format!("base model {}", cfg.base.display()))?;
    let template = match (&model.chat_template, cfg.raw) {
        (Some(src), false) => Some(ChatTemplate::new(src, model.special_tokens()).context("the model's chat template")?),
        _ => None,
    };
    Ok((model, template))
}

/// Mean loss over every trained token of `data`, packed `budget` tokens per pass.
pub fn eval_loss(dec: &Decoder, data: &Dataset, budget: usize) -> Result<f64> {
    let lens: Vec<usize> = data.examples.iter().map(|e| e.tokens.len() - 1).collect();
    let order: Vec<usize> = (0..lens.len()).collect();
    let (mut sum, mut n) = (0.0, 0usize);
    for bin in super::pack::pack(&lens, &order, budget) {
        let (inputs, targets) = micro_batch(data, &bin);
        let count = targets.iter().filter(|&&t| t != crate::train::loss::IGNORE).count();
        if count == 0 {
            continue;
        }
        sum += sequences_loss(dec, &inputs, &targets)?.to_scalar::<f32>()? as f64 * count as f64;
        n += count;
    }
    Ok(if n > 0 { sum / n as f64 } else { f64::NAN })
}

fn micro_batch<'a>(data: &'a Dataset, bin: &[usize]) -> (Vec<&'a [u32]>, Vec<u32>) {
    let inputs = bin.iter().map(|&i| data.examples[i].inputs()).collect();
    let targets = bin.iter().flat_map(|&i| data.examples[i].targets()).collect();
    (inputs, targets)
}

fn save_adapter_files(dec: &Decoder, params: &Params, cfg: &FinetuneConfig) -> Result<Vec<(String, Vec<u8>)>> {
    let adapter = to_adapter(dec, params, &cfg.lora, Some(cfg.base.to_string_lossy().into_owned()))?;
    // Through a scratch folder: Adapter::save writes exactly what PEFT reads.
    let tmp = std::env::temp_dir().join(format!("smelt-adapter-{}-{}", std::process::id(), rand_suffix()));
    adapter.save(&tmp)?;
    let files = [CONFIG_FILE, WEIGHTS_FILE]
        .iter()
        .map(|f| Ok((f.to_string(), std::fs::read(tmp.join(f))?)))
        .collect::<Result<Vec<_>>>();
    let _ = std::fs::remove_dir_all(&tmp);
    files
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

pub fn finetune(mut cfg: FinetuneConfig, opts: &FinetuneOptions) -> Result<FinetuneOutcome> {
    cfg.lora.validate()?;
    if cfg.max_len == 1 {
        bail!("--max-len must be at least 2");
    }
    if cfg.optim.grad_accum == 0 {
        bail!("--grad-accum must be at least 1");
    }
    let out = cfg.out.clone();
    let existing = checkpoint::latest(&out)?;
    let data_sha = sha256_file(&cfg.data)?;
    let resumed: Option<(PathBuf, State)> = if opts.resume {
        let dir = existing.with_context(|| format!("--resume: {} has no checkpoint to continue from", out.display()))?;
        let p = dir.join("state.json");
        let st: State = serde_json::from_str(&std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?)
            .with_context(|| format!("{} is not a fine-tuning checkpoint state", p.display()))?;
        if st.format != FORMAT {
            bail!("{}: format {:?}, expected {FORMAT:?}", p.display(), st.format);
        }
        if st.data_sha256 != data_sha {
            bail!("{} changed since checkpoint {} was written; resume with the same data or start a new run", cfg.data.display(), dir.display());
        }
        let mut want = cfg.clone();
        if want.optim.steps == 0 {
            want.optim.steps = st.config.optim.steps;
        }
        if want.max_len == 0 {
            want.max_len = st.config.max_len;
        }
        let mut cmp = want.clone();
        cmp.optim.steps = st.config.optim.steps;
        cmp.epochs = st.config.epochs;
        if cmp != st.config {
            bail!("the settings differ from checkpoint {} (only the step count may change on resume); use the same flags or another --out", dir.display());
        }
        cfg = want;
        Some((dir, st))
    } else {
        if let Some(d) = existing {
            bail!("{} already holds a fine-tuning run (checkpoint {}): add --resume to continue it, or choose another --out", out.display(), d.display());
        }
        None
    };

    let (model, template) = load_base(&cfg)?;
    if cfg.max_len == 0 {
        cfg.max_len = model.decoder.n_ctx.min(1024).min(cfg.batch_tokens);
    }
    if cfg.batch_tokens < cfg.max_len {
        bail!("--batch-tokens ({}) must be at least --max-len ({}) so every example fits a micro-batch", cfg.batch_tokens, cfg.max_len);
    }
    let enc = Encoder { tokenizer: &model.tokenizer, template: template.as_ref(), max_len: cfg.max_len };
    let train = Dataset::load(&cfg.data, &enc, cfg.skip_bad)?;
    let eval = cfg.eval.as_ref().map(|p| Dataset::load(p, &enc, cfg.skip_bad)).transpose()?;
    for s in train.skipped.iter().chain(eval.iter().flat_map(|e| &e.skipped)) {
        eprintln!("skipped: {s}");
    }
    if train.truncated > 0 {
        eprintln!("note: {} training records were cut to --max-len {} tokens", train.truncated, cfg.max_len);
    }
    let lens: Vec<usize> = train.examples.iter().map(|e| e.tokens.len() - 1).collect();
    let bins_per_epoch = epoch_batches(&lens, cfg.batch_tokens, cfg.optim.seed, 0).len() as u64;
    if cfg.optim.steps == 0 {
        cfg.optim.steps = ((bins_per_epoch as f64 * cfg.epochs) / cfg.optim.grad_accum as f64).ceil().max(1.0) as u64;
    }
    let total = cfg.optim.steps;

    let mut base = model.decoder.clone();
    let (params, mut opt, mut step, elapsed_before, mut trained_tokens, mut last_eval) = match &resumed {
        Some((dir, st)) => {
            let adapter = Adapter::load(dir)?;
            let params = from_adapter(&mut base, &adapter)?;
            let mut opt = AdamW::new(&params, &cfg.optim);
            checkpoint::read_moments(&dir.join("optimizer.safetensors"), &params, &mut opt)?;
            opt.t = st.adam_t;
            (params, opt, st.step, st.elapsed_s, st.trained_tokens, st.last_eval_loss)
        }
        None => {
            let params = init_params(&mut base, &cfg.lora, cfg.optim.seed)?;
            let opt = AdamW::new(&params, &cfg.optim);
            (params, opt, 0, 0.0, 0, None)
        }
    };
    let mut dec = base.clone();
    attach_params(&mut dec, &params, &cfg.lora, false)?;
    let mut eval_dec = base.clone();
    attach_params(&mut eval_dec, &params, &cfg.lora, true)?;
    drop(base);

    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut metrics = MetricsLog::open(&out, resumed.as_ref().map(|_| step))?;
    let n_params: usize = params.n_params();
    eprintln!(
        "LoRA r={} alpha={} on {} layers ({}) · {} trainable parameters · {} examples ({} trained tokens), {} micro-batches per epoch · {total} steps",
        cfg.lora.rank,
        cfg.lora.alpha,
        params.list.len() / 2,
        cfg.lora.targets.join(","),
        n_params,
        train.examples.len(),
        train.trained_tokens(),
        bins_per_epoch
    );
    let title = format!("LoRA r={} · {}", cfg.lora.rank, out.file_name().unwrap_or_default().to_string_lossy());

    let save = |step: u64, opt: &AdamW, elapsed: f64, trained: u64, last_eval: Option<f64>| -> Result<PathBuf> {
        let mut files = save_adapter_files(&eval_dec, &params, &cfg)?;
        files.push(("optimizer.safetensors".into(), checkpoint::optimizer_bytes(&params, opt)?));
        let st = State {
            format: FORMAT.into(),
            step,
            adam_t: opt.t,
            elapsed_s: elapsed,
            trained_tokens: trained,
            last_eval_loss: last_eval,
            config: cfg.clone(),
            data_sha256: data_sha.clone(),
        };
        files.push(("state.json".into(), serde_json::to_string_pretty(&st)?.into_bytes()));
        checkpoint::save_files(&out, step, &files, cfg.keep_checkpoints.max(1))
    };

    let mut first_eval = None;
    if let (Some(ev), None) = (&eval, resumed.as_ref()) {
        let l = eval_loss(&eval_dec, ev, cfg.batch_tokens)?;
        first_eval = Some(l);
        metrics.append(serde_json::json!({"step": 0, "val_loss": l}))?;
        eprintln!("step 0: held-out loss {l:.4}");
    }

    let pb = progress_bar(total, step, opts.progress);
    let start = Instant::now();
    let start_step = step;
    let mut session_tokens = 0u64;
    let mut last_loss = f64::NAN;
    let mut paused = false;
    let mut epoch_cache: Option<(u64, Vec<Vec<usize>>)> = None;
    while step < total {
        let lr = lr_at(&cfg.optim, step);
        let accum = cfg.optim.grad_accum;
        let mut tokens = 0u64;
        let stats = accumulate_and_step(
            &params,
            &mut opt,
            accum,
            |k| {
                let global = step * accum as u64 + k as u64;
                let (epoch, idx) = (global / bins_per_epoch, (global % bins_per_epoch) as usize);
                if epoch_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    epoch_cache = Some((epoch, epoch_batches(&lens, cfg.batch_tokens, cfg.optim.seed, epoch)));
                }
                let bins = &epoch_cache.as_ref().unwrap().1;
                let bin = &bins[idx.min(bins.len() - 1)];
                let (inputs, targets) = micro_batch(&train, bin);
                tokens += inputs.iter().map(|s| s.len() as u64).sum::<u64>();
                grads_of(&sequences_loss(&dec, &inputs, &targets)?, &params)
            },
            lr,
            cfg.optim.weight_decay,
            cfg.optim.grad_clip,
        )?;
        if !stats.loss.is_finite() {
            bail!("the training loss became {} at step {} (lower --lr)", stats.loss, step + 1);
        }
        step += 1;
        last_loss = stats.loss;
        trained_tokens += tokens;
        session_tokens += tokens;
        let elapsed = start.elapsed().as_secs_f64();
        let tok_s = session_tokens as f64 / elapsed.max(1e-9);
        pb.set_position(step);
        pb.set_message(format!("loss {:.3} | {:.0} tok/s | lr {:.1e}", stats.loss, tok_s, lr));
        let last = step == total;
        if step % cfg.log_every.max(1) == 0 || last {
            metrics.append(serde_json::json!({
                "step": step, "loss": stats.loss, "lr": lr, "grad_norm": stats.grad_norm,
                "tokens": trained_tokens, "tok_per_s": tok_s.round(), "elapsed_s": elapsed_before + elapsed,
            }))?;
        }
        paused = !last && opts.stop_after.is_some_and(|n| step - start_step >= n);
        let stop = opts.stop.load(Ordering::SeqCst);
        if let Some(ev) = &eval {
            if (cfg.eval_every > 0 && step % cfg.eval_every == 0) || last || paused {
                let l = eval_loss(&eval_dec, ev, cfg.batch_tokens)?;
                last_eval = Some(l);
                metrics.append(serde_json::json!({"step": step, "val_loss": l}))?;
                pb.suspend(|| eprintln!("step {step}: held-out loss {l:.4}, training loss {:.4}", stats.loss));
            }
        }
        if (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0) || last || stop || paused {
            let dir = pb.suspend(|| save(step, &opt, elapsed_before + elapsed, trained_tokens, last_eval))?;
            if stop {
                pb.abandon();
                metrics.write_svg(&title)?;
                return Err(Interrupted { step, checkpoint: dir }.into());
            }
        }
        if paused {
            break;
        }
    }
    pb.finish_and_clear();
    metrics.write_svg(&title)?;
    if !paused {
        // The finished adapter at the top of OUT.
        let adapter = to_adapter(&eval_dec, &params, &cfg.lora, Some(cfg.base.to_string_lossy().into_owned()))?;
        adapter.save(&out)?;
    }
    Ok(FinetuneOutcome {
        steps: step,
        first_eval_loss: first_eval,
        eval_loss: last_eval,
        last_loss,
        train_tokens_per_s: session_tokens as f64 / start.elapsed().as_secs_f64().max(1e-9),
        adapter_dir: out,
        paused,
    })
}
