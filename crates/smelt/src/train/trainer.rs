//! `smelt train`: the loop around [`step::optimizer_step`] — data, schedule, evaluation,
//! samples, metrics, checkpoints, resume, Ctrl-C and the progress bar.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::batches::{eval_windows, Batcher};
use super::checkpoint::{self, CheckpointState, DataFingerprint, SaveInputs};
use super::config::TrainConfig;
use super::metrics::MetricsLog;
use super::optim::AdamW;
use super::params::Params;
use super::schedule::lr_at;
use super::step::{evaluate, optimizer_step, optimizer_step_with};
use crate::data::{DataMeta, TokenSplit};
use crate::generate::{generate, Flow, GenerateParams, Session};
use crate::sample::SamplingParams;
use crate::tokenize::Tokenizer;
use crate::util::write_atomic;

pub struct TrainOptions {
    /// Continue from the run's latest checkpoint.
    pub resume: bool,
    /// Draw the progress bar (when stderr is a terminal).
    pub progress: bool,
    /// Set (by Ctrl-C) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Train at most this many steps in this session, then checkpoint and stop (the run
    /// continues with `resume`).
    pub stop_after: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub step: u64,
    pub checkpoint: PathBuf,
    pub val_loss: Option<f64>,
    pub tokens_per_s: f64,
    /// Why the run stopped before `train.steps`, if it did: "time limit" or "stop-after".
    pub paused: Option<&'static str>,
}

/// The run was stopped by Ctrl-C; a checkpoint was written.
#[derive(Debug)]
pub struct Interrupted {
    pub step: u64,
    pub checkpoint: PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted at step {}: checkpoint saved to {} (continue with --resume)", self.step, self.checkpoint.display())
    }
}

impl std::error::Error for Interrupted {}

struct Run {
    cfg: TrainConfig,
    meta: DataMeta,
    params: Params,
    opt: AdamW,
    step: u64,
    tokens_seen: u64,
    elapsed_before: f64,
    last_val: Option<f64>,
}

/// Start a new run or load the latest checkpoint of `cfg.run.out`. `teacher_vocab`: the
/// logit width a distillation student needs.
fn open_run(mut cfg: TrainConfig, resume: bool, teacher_vocab: Option<usize>) -> Result<Run> {
    let meta = DataMeta::read(&cfg.data.dir)?;
    let student_from = cfg.distill.as_ref().and_then(|d| d.student.clone());
    if cfg.model.vocab == 0 {
        cfg.model.vocab = teacher_vocab.unwrap_or(meta.vocab_size);
    } else if cfg.model.vocab < meta.vocab_size {
        bail!("model.vocab {} is smaller than the tokenizer's {} tokens", cfg.model.vocab, meta.vocab_size);
    }
    let out = &cfg.run.out;
    let existing = checkpoint::latest(out)?;
    let device = Device::Cpu;
    if resume {
        let dir = existing.with_context(|| format!("--resume: {} has no checkpoint to continue from", out.display()))?;
        let state = checkpoint::read_state(&dir)?;
        if student_from.is_some() {
            cfg.model = state.config.model.clone(); // the shape came from the student
        }
        let conflicts = cfg.resume_conflicts(&state.config);
        if !conflicts.is_empty() {
            bail!(
                "the config does not match checkpoint {} (now vs then): {}; restore those settings or start a new run with another run.out",
                dir.display(),
                conflicts.join(", ")
            );
        }
        if state.data.tokenizer_sha256 != meta.tokenizer_sha256 {
            bail!("checkpoint {} was trained with a different tokenizer than {} holds", dir.display(), cfg.data.dir.display());
        }
        let params = checkpoint::load_params(&dir, &state, &device)?;
        let opt = checkpoint::load_optimizer(&dir, &state, &params)?;
        Ok(Run { cfg, meta, params, opt, step: state.step, tokens_seen: state.tokens_seen, elapsed_before: state.elapsed_s, last_val: state.last_val_loss })
    } else {
        if let Some(d) = existing {
            bail!(
                "{} already holds a run (latest checkpoint {}): add --resume to continue it, or choose another run.out",
                out.display(),
                d.file_name().unwrap_or_default().to_string_lossy()
            );
        }
        let params = match &student_from {
            Some(path) => {
                let s = crate::distill::student::load_student(path, cfg.model.ctx)?;
                let data_tok = crate::data::prepare::load_data_tokenizer(&cfg.data.dir)?;
                crate::distill::vocab::check_same_vocab(&s.tokenizer, "student", &data_tok, "training data")?;
                cfg.model = s.shape;
                s.params
            }
            None => Params::init(&cfg.model.llama_config()?, cfg.train.seed, &device)?,
        };
        let opt = AdamW::new(&params, &cfg.train);
        Ok(Run { cfg, meta, params, opt, step: 0, tokens_seen: 0, elapsed_before: 0.0, last_val: None })
    }
}

/// The step progress bar every trainer draws (pre-training, distillation, fine-tuning).
pub(crate) fn progress_bar(total: u64, start: u64, show: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), if show { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30.cyan/blue}] step {pos}/{len} {msg} ETA {eta_precise}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_position(start);
    pb.reset_eta();
    pb
}

fn write_sample(out: &Path, step: u64, text: &str) -> Result<()> {
    use std::io::Write;
    let p = out.join("samples.txt");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&p).with_context(|| format!("cannot open {}", p.display()))?;
    writeln!(f, "=== step {step} ===\n{text}\n").with_context(|| format!("cannot write {}", p.display()))?;
    Ok(())
}

pub fn train(cfg: TrainConfig, opts: &TrainOptions) -> Result<TrainOutcome> {
    let teacher = match &cfg.distill {
        Some(d) => Some(crate::distill::load_teacher(&d.teacher, cfg.model.ctx)?),
        None => None,
    };
    let mut run = open_run(cfg, opts.resume, teacher.as_ref().map(|t| t.decoder.cfg.vocab_size))?;
    let cfg = run.cfg.clone();
    let out = cfg.run.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    write_atomic(&out.join("config.toml"), toml::to_string(&cfg)?.as_bytes())?;
    let data_dir = cfg.data.dir.clone();
    let train_split = TokenSplit::open(&data_dir, &run.meta, &run.meta.train)?;
    let val_split = TokenSplit::open(&data_dir, &run.meta, &run.meta.val)?;
    let seq = cfg.model.ctx;
    let batcher = match &cfg.distill {
        Some(d) => Batcher::aligned(&train_split, seq, cfg.train.batch_size, cfg.train.seed, d.windows)?,
        None => Batcher::new(&train_split, seq, cfg.train.batch_size, cfg.train.seed)?,
    };
    let val_windows = eval_windows(&val_split, seq, cfg.run.eval_tokens);
    let tokenizer = crate::data::prepare::load_data_tokenizer(&data_dir)?;
    let distiller = match (&cfg.distill, teacher) {
        (Some(d), Some(t)) => {
            let rd = crate::distill::RunData {
                meta: &run.meta,
                data_tokenizer: &tokenizer,
                train: &train_split,
                seq,
                windows: batcher.aligned.unwrap_or(0),
                batch: cfg.train.batch_size,
                student_vocab: run.params.cfg.vocab_size,
                out: &out,
                progress: opts.progress,
            };
            Some(crate::distill::Distiller::new(d, t, &rd)?)
        }
        _ => None,
    };
    let decoder = run.params.decoder(seq)?;
    let eval_decoder = run.params.eval_decoder(seq)?;
    let mut metrics = MetricsLog::open(&out, opts.resume.then_some(run.step))?;
    let fingerprint = DataFingerprint {
        tokenizer_sha256: run.meta.tokenizer_sha256.clone(),
        vocab_size: run.meta.vocab_size,
        train_tokens: run.meta.train.tokens,
    };
    let title = format!(
        "{} · {:.1}M params · {} tokens/step",
        out.file_name().unwrap_or_default().to_string_lossy(),
        run.params.n_params() as f64 / 1e6,
        cfg.tokens_per_step()
    );

    let total = cfg.train.steps;
    let pb = progress_bar(total, run.step, opts.progress);
    let session_start = Instant::now();
    let start_step = run.step;
    let (mut window_start, mut window_tokens) = (Instant::now(), 0u64);
    let mut tok_s = 0.0;
    let mut last_ckpt: Option<PathBuf> = None;
    let mut last_ckpt_step = None;
    let time_limit = (cfg.run.time_limit_minutes > 0.0).then(|| cfg.run.time_limit_minutes * 60.0);

    let save = |run: &Run, elapsed: f64| -> Result<PathBuf> {
        let state = CheckpointState {
            format: checkpoint::FORMAT.to_string(),
            step: run.step,
            adam_t: run.opt.t,
            tokens_seen: run.tokens_seen,
            elapsed_s: run.elapsed_before + elapsed,
            last_val_loss: run.last_val,
            config: run.cfg.clone(),
            data: fingerprint.clone(),
        };
        checkpoint::save(&out, &SaveInputs { params: &run.params, opt: &run.opt, state: &state, tokenizer_dir: &data_dir }, cfg.run.keep_checkpoints)
    };

    let mut paused = None;
    while run.step < total {
        let step = run.step;
        let lr = lr_at(&cfg.train, step);
        let starts: Vec<Vec<u64>> = (0..cfg.train.grad_accum as u64).map(|k| batcher.starts(step, k)).collect();
        let micro: Vec<Vec<Vec<u32>>> = starts.iter().map(|s| s.iter().map(|&x| train_split.window(x, seq + 1)).collect()).collect();
        let stats = match &distiller {
            None => optimizer_step(&decoder, &run.params, &mut run.opt, &micro, lr, cfg.train.weight_decay, cfg.train.grad_clip, cfg.train.bf16)?,
            Some(ds) => {
                let loss_fn = |d: &crate::model::Decoder, k: usize, w: &[Vec<u32>]| ds.loss(d, w, &starts[k]);
                optimizer_step_with(&decoder, &run.params, &mut run.opt, &micro, &loss_fn, lr, cfg.train.weight_decay, cfg.train.grad_clip)?
            }
        };
        if !stats.loss.is_finite() {
            bail!("the training loss became {} at step {} (lower train.lr or raise warmup_steps)", stats.loss, step + 1);
        }
        run.step += 1;
        let tokens = cfg.tokens_per_step() as u64;
        run.tokens_seen += tokens;
        window_tokens += tokens;
        let dt = window_start.elapsed().as_secs_f64();
        if dt > 0.0 {
            tok_s = window_tokens as f64 / dt;
        }
        if dt > 10.0 {
            (window_start, window_tokens) = (Instant::now(), 0);
        }
        pb.set_position(run.step);
        let kd_msg = stats.kd.map(|p| format!(" (ce {:.3}, kl {:.3})", p.ce, p.kl)).unwrap_or_default();
        pb.set_message(format!("loss {:.3}{kd_msg} | {:.0} tok/s | lr {:.1e}", stats.loss, tok_s, lr));

        let last = run.step == total;
        if run.step % cfg.run.log_every.max(1) == 0 || last {
            let mut rec = serde_json::json!({
                "step": run.step, "loss": stats.loss, "lr": lr, "grad_norm": stats.grad_norm,
                "tokens": run.tokens_seen, "tok_per_s": tok_s.round(),
                "elapsed_s": run.elapsed_before + session_start.elapsed().as_secs_f64(),
            });
            if let Some(p) = stats.kd {
                rec["ce"] = p.ce.into();
                rec["kl"] = p.kl.into();
            }
            metrics.append(rec)?;
        }
        let elapsed = session_start.elapsed().as_secs_f64();
        paused = if last {
            None
        } else if time_limit.is_some_and(|t| elapsed >= t) {
            Some("time limit")
        } else if opts.stop_after.is_some_and(|n| run.step - start_step >= n) {
            Some("stop-after")
        } else {
            None
        };
        let stop = opts.stop.load(Ordering::SeqCst);
        let eval_now = (cfg.run.eval_every > 0 && run.step % cfg.run.eval_every == 0) || last || paused.is_some();
        if eval_now && !val_windows.is_empty() {
            let vl = evaluate(&eval_decoder, &val_windows, cfg.train.batch_size)?;
            run.last_val = Some(vl);
            metrics.append(serde_json::json!({"step": run.step, "val_loss": vl, "val_ppl": vl.exp()}))?;
            metrics.write_svg(&title)?;
            pb.suspend(|| eprintln!("step {}: held-out loss {vl:.4} (perplexity {:.2}), training loss {:.4}", run.step, vl.exp(), stats.loss));
            if cfg.run.sample_tokens > 0 {
                let text = sample(&eval_decoder, &tokenizer, &cfg.run.sample_prompt, cfg.run.sample_tokens, run.step)?;
                write_sample(&out, run.step, &text)?;
            }
        }
        let ckpt_now = (cfg.run.checkpoint_every > 0 && run.step % cfg.run.checkpoint_every == 0) || last || stop || paused.is_some();
        if ckpt_now {
            let dir = pb.suspend(|| save(&run, elapsed))?;
            last_ckpt = Some(dir);
            last_ckpt_step = Some(run.step);
        }
        if stop {
            pb.abandon();
            metrics.write_svg(&title)?;
            return Err(Interrupted { step: run.step, checkpoint: last_ckpt.expect("just saved") }.into());
        }
        if paused.is_some() {
            break;
        }
    }
    pb.finish_and_clear();
    if last_ckpt_step != Some(run.step) {
        // Nothing left to train (resumed at the end): make sure a checkpoint names this step.
        last_ckpt = Some(match checkpoint::latest(&out)? {
            Some(d) if checkpoint::read_state(&d)?.step == run.step => d,
            _ => save(&run, session_start.elapsed().as_secs_f64())?,
        });
    }
    metrics.write_svg(&title)?;
    let trained = (run.step - start_step) * cfg.tokens_per_step() as u64;
    Ok(TrainOutcome {
        step: run.step,
        checkpoint: last_ckpt.expect("set above"),
        val_loss: run.last_val,
        tokens_per_s: trained as f64 / session_start.elapsed().as_secs_f64().max(1e-9),
        paused,
    })
}

/// A short continuation of `prompt` (or of the end-of-text token) for samples.txt.
pub fn sample(decoder: &crate::model::Decoder, tok: &Tokenizer, prompt: &str, n: usize, seed: u64) -> Result<String> {
    let mut ids = tok.encode(prompt, false, false)?;
    if ids.is_empty() {
        ids.push(tok.eos_id().unwrap_or(0));
    }
    let n = n.min(decoder.n_ctx.saturating_sub(ids.len() + 1));
    let params = GenerateParams {
        sampling: SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.0, seed: Some(seed), ..SamplingParams::default() },
        max_tokens: Some(n),
        stop: Vec::new(),
        ignore_eos: true,
    };
    let mut session = Session::new(decoder);
    let g = generate(decoder, tok, &mut session, &ids, &params, |_| Flow::Continue)?;
    Ok(format!("{prompt}{}", g.text))
}
