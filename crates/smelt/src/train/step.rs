//! One optimizer step's arithmetic, shared by `smelt train` and `smelt bench-train`:
//! forward + fused cross-entropy + backward per micro-batch, gradient accumulation, the
//! global-norm clip, and the AdamW update; plus held-out scoring.

use anyhow::Result;
use candle_core::Tensor;

use super::kd_loss::KdParts;
use super::loss::{cross_entropy, frozen_head_cross_entropy, lm_head_cross_entropy_with};
use super::optim::{sum_squares, AdamW, StepParams};
use super::params::Params;
use crate::model::{Decoder, SeqInput};

/// Loss and gradients (in `Params` order) of one micro-batch of `seq + 1`-token windows.
pub fn loss_and_grads(decoder: &Decoder, params: &Params, windows: &[Vec<u32>]) -> Result<(f64, Vec<Tensor>)> {
    loss_and_grads_with(decoder, params, windows, false)
}

/// [`loss_and_grads`] with the output projection in bf16 when `bf16` (`train.bf16`) and
/// the CPU has AVX-512 BF16.
pub fn loss_and_grads_with(decoder: &Decoder, params: &Params, windows: &[Vec<u32>], bf16: bool) -> Result<(f64, Vec<Tensor>)> {
    grads_of(&batch_loss_with(decoder, windows, bf16)?, params)
}

/// Mean next-token loss of `windows` (each `inputs + 1` tokens) as a scalar tensor.
pub fn batch_loss(decoder: &Decoder, windows: &[Vec<u32>]) -> Result<Tensor> {
    batch_loss_with(decoder, windows, false)
}

/// [`batch_loss`], the output projection in bf16 when `bf16` (and the CPU has it).
pub fn batch_loss_with(decoder: &Decoder, windows: &[Vec<u32>], bf16: bool) -> Result<Tensor> {
    let inputs: Vec<&[u32]> = windows.iter().map(|w| &w[..w.len() - 1]).collect();
    let targets: Vec<u32> = windows.iter().flat_map(|w| w[1..].iter().copied()).collect();
    sequences_loss_with(decoder, &inputs, &targets, bf16)
}

/// Mean loss of independent sequences run in one forward pass (each attends only to
/// itself: packing without cross-contamination), against `targets` (one per input token,
/// concatenated; [`IGNORE`](super::loss::IGNORE) entries are not counted).
pub fn sequences_loss(decoder: &Decoder, inputs: &[&[u32]], targets: &[u32]) -> Result<Tensor> {
    sequences_loss_with(decoder, inputs, targets, false)
}

/// [`sequences_loss`], the output projection in bf16 when `bf16` (and the CPU has it).
pub fn sequences_loss_with(decoder: &Decoder, inputs: &[&[u32]], targets: &[u32], bf16: bool) -> Result<Tensor> {
    let mut seqs: Vec<SeqInput<'_>> = inputs.iter().map(|t| SeqInput { tokens: t, cache: None }).collect();
    let h = decoder.hidden_states(&mut seqs)?; // (Σ seq, hidden)
    // Only rows with a target reach the output projection: fine-tuning trains on the
    // completions alone, and the head is the largest product of a small model.
    let (h, targets) = counted_rows(&h, targets)?;
    let head = &decoder.lm_head;
    if head.adapters.is_empty() && decoder.cfg.final_softcap.is_none() {
        if let Some(w) = head.dense_weight() {
            return lm_head_cross_entropy_with(&h, w, &targets, bf16);
        }
        if let Some(q) = head.quant_weight() {
            return frozen_head_cross_entropy(&h, q, &targets);
        }
    }
    let logits = decoder.logits_from_hidden(&h)?; // (rows, vocab)
    cross_entropy(&logits, &targets)
}

/// The rows of `h` whose target is not [`IGNORE`](super::loss::IGNORE), and those targets
/// (`h` itself when every row or no row counts).
fn counted_rows(h: &Tensor, targets: &[u32]) -> Result<(Tensor, Vec<u32>)> {
    anyhow::ensure!(h.dims()[0] == targets.len(), "{} targets for {} positions", targets.len(), h.dims()[0]);
    let keep: Vec<u32> = (0..targets.len() as u32).filter(|&i| targets[i as usize] != super::loss::IGNORE).collect();
    if keep.is_empty() || keep.len() == targets.len() {
        return Ok((h.clone(), targets.to_vec()));
    }
    let kept_targets = keep.iter().map(|&i| targets[i as usize]).collect();
    let n = keep.len();
    let idx = Tensor::from_vec(keep, n, h.device())?;
    Ok((h.index_select(&idx, 0)?, kept_targets))
}

/// The value of `loss` and the gradients of `params` (in their order; zeros for a
/// parameter the loss does not reach).
pub fn grads_of(loss: &Tensor, params: &Params) -> Result<(f64, Vec<Tensor>)> {
    let value = loss.to_scalar::<f32>()? as f64;
    let mut store = loss.backward()?;
    let grads = params
        .list
        .iter()
        .map(|p| match store.remove(p.var.as_tensor()) {
            Some(g) => Ok(g),
            None => Ok(p.var.zeros_like()?),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((value, grads))
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Mean cross-entropy and KL of a distillation step.
    pub kd: Option<KdParts>,
}

/// The loss of micro-batch `k` (its windows given) through the decoder being trained, and
/// the distillation parts when it is a distillation loss.
pub type LossFn<'a> = dyn Fn(&Decoder, usize, &[Vec<u32>]) -> Result<(Tensor, Option<KdParts>)> + Sync + 'a;

/// Accumulate gradients over `micro_batches`, clip, update. `lr`, `weight_decay`, `clip`
/// as configured (clip 0 = off); `bf16` as `train.bf16`.
#[allow(clippy::too_many_arguments)]
pub fn optimizer_step(
    decoder: &Decoder,
    params: &Params,
    opt: &mut AdamW,
    micro_batches: &[Vec<Vec<u32>>],
    lr: f64,
    weight_decay: f64,
    clip: f64,
    bf16: bool,
) -> Result<StepStats> {
    accumulate_and_step(params, opt, micro_batches.len(), |k| loss_and_grads_with(decoder, params, &micro_batches[k], bf16), lr, weight_decay, clip)
}

/// [`optimizer_step`] with any loss (e.g. distillation); the distillation parts are
/// averaged over the micro-batches into [`StepStats::kd`].
#[allow(clippy::too_many_arguments)]
pub fn optimizer_step_with(
    decoder: &Decoder,
    params: &Params,
    opt: &mut AdamW,
    micro_batches: &[Vec<Vec<u32>>],
    loss_fn: &LossFn<'_>,
    lr: f64,
    weight_decay: f64,
    clip: f64,
) -> Result<StepStats> {
    let n = micro_batches.len();
    let mut kd: Option<KdParts> = None;
    let micro = |k: usize| {
        let (t, parts) = loss_fn(decoder, k, &micro_batches[k])?;
        if let Some(p) = parts {
            let a = kd.get_or_insert_with(KdParts::default);
            a.ce += p.ce / n as f64;
            a.kl += p.kl / n as f64;
        }
        grads_of(&t, params)
    };
    let stats = accumulate_and_step(params, opt, n, micro, lr, weight_decay, clip)?;
    Ok(StepStats { kd, ..stats })
}

/// One optimizer step over `n` micro-batches whose loss and gradients `micro(k)` gives:
/// gradients averaged, clipped to `clip` (0 = off), AdamW applied. Shared by every
/// trainer (pre-training, LoRA fine-tuning, distillation).
pub fn accumulate_and_step(
    params: &Params,
    opt: &mut AdamW,
    n: usize,
    micro: impl FnMut(usize) -> Result<(f64, Vec<Tensor>)> + Send,
    lr: f64,
    weight_decay: f64,
    clip: f64,
) -> Result<StepStats> {
    // The whole step on a pool thread: hundreds of small parallel ops per step.
    crate::util::in_pool(|| step_in_pool(params, opt, n, micro, lr, weight_decay, clip))
}

fn step_in_pool(
    params: &Params,
    opt: &mut AdamW,
    n: usize,
    mut micro: impl FnMut(usize) -> Result<(f64, Vec<Tensor>)>,
    lr: f64,
    weight_decay: f64,
    clip: f64,
) -> Result<StepStats> {
    anyhow::ensure!(n > 0, "an optimizer step needs at least one micro-batch");
    let mut acc: Option<Vec<Tensor>> = None;
    let mut loss = 0.0;
    for k in 0..n {
        let (l, g) = micro(k)?;
        loss += l;
        acc = Some(match acc {
            None => g,
            Some(a) => a.iter().zip(&g).map(|(a, g)| a + g).collect::<candle_core::Result<Vec<_>>>()?,
        });
    }
    let grads = acc.expect("at least one micro-batch");
    let k = n as f64;
    let mut sq = 0.0;
    for g in &grads {
        sq += sum_squares(g)?;
    }
    let grad_norm = sq.sqrt() / k;
    let mut scale = 1.0 / k;
    if clip > 0.0 && grad_norm > clip {
        scale *= clip / (grad_norm + 1e-6);
    }
    opt.step(params, &grads, StepParams { lr: lr as f32, weight_decay: weight_decay as f32, grad_scale: scale as f32 })?;
    Ok(StepStats { loss: loss / k, grad_norm, kd: None })
}

/// Mean next-token loss over `windows`, `batch` windows per forward pass, without gradients.
pub fn evaluate(decoder: &Decoder, windows: &[Vec<u32>], batch: usize) -> Result<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for chunk in windows.chunks(batch.max(1)) {
        let count: usize = chunk.iter().map(|w| w.len() - 1).sum();
        sum += batch_loss(decoder, chunk)?.to_scalar::<f32>()? as f64 * count as f64;
        n += count;
    }
    Ok(if n > 0 { sum / n as f64 } else { f64::NAN })
}
