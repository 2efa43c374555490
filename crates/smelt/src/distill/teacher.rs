//! The teacher: any model smelt loads, run inference-only (its own kernels, quantized or
//! not) over the student's input windows. Its logits are produced a block of rows at a
//! time from its hidden states, so a batch never holds `(tokens, vocab)` teacher logits.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use crate::load::{LoadOptions, Model};
use crate::model::{Decoder, SeqInput};
use crate::train::kernels::gemm::{matmul_par, Mat};
use crate::train::kd_loss::{top_k_of_logits, DenseLogits, TopK};

/// Rows of teacher logits computed at a time.
const BLOCK_ROWS: usize = 128;

pub struct TeacherModel {
    pub decoder: Arc<Decoder>,
    pub model: Model,
}

/// Load the teacher for windows of `seq` input tokens.
pub fn load_teacher(path: &Path, seq: usize) -> Result<TeacherModel> {
    if !path.exists() {
        bail!("teacher {}: no such file or folder", path.display());
    }
    // Rope tables and the context check for exactly the windows distilled on.
    let model = crate::load::load(path, &LoadOptions { ctx: Some(seq.max(2)), ..Default::default() })
        .with_context(|| format!("teacher {} with {seq}-token windows (model.ctx)", path.display()))?;
    Ok(TeacherModel { decoder: Arc::new(model.decoder.clone()), model })
}

/// Final hidden states `(Σ len, hidden)` of the teacher over `inputs`.
pub fn hidden(decoder: &Decoder, inputs: &[&[u32]]) -> Result<Tensor> {
    let mut seqs: Vec<SeqInput<'_>> = inputs.iter().map(|t| SeqInput { tokens: t, cache: None }).collect();
    decoder.hidden_states(&mut seqs)
}

/// Teacher logits of rows `r0..r0 + rows` of `h`, row-major.
pub fn block_logits(decoder: &Decoder, h: &Tensor, r0: usize, rows: usize) -> Result<Vec<f32>> {
    let hb = h.narrow(0, r0, rows)?;
    if let (Some(w), None) = (decoder.lm_head.dense_weight(), decoder.cfg.final_softcap) {
        if w.dtype() == candle_core::DType::F32 {
            // Straight into one buffer with the training kernels' threaded GEMM.
            let (vocab, d) = w.dims2()?;
            let hv = hb.flatten_all()?.to_vec1::<f32>()?;
            let (storage, layout) = w.storage_and_layout();
            if let candle_core::Storage::Cpu(cs) = &*storage {
                if let Ok(wv) = crate::train::kernels::f32_data(cs, layout, "teacher head") {
                    let mut out = vec![0f32; rows * vocab];
                    matmul_par(&mut out, Mat::rows(&hv, rows, d), Mat::rows(wv, vocab, d).t(), 1.0, false);
                    return Ok(out);
                }
            }
        }
    }
    Ok(decoder.logits_from_hidden(&hb)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Full teacher distributions for `inputs`, produced block by block on demand.
pub fn dense_targets(decoder: &Arc<Decoder>, inputs: &[&[u32]]) -> Result<DenseLogits> {
    let h = hidden(decoder, inputs)?;
    let d = decoder.clone();
    Ok(Arc::new(move |r0, rows| block_logits(&d, &h, r0, rows)))
}

/// Top-k targets at `temperature` for `inputs` (rows in order).
pub fn topk_targets(decoder: &Decoder, inputs: &[&[u32]], k: usize, temperature: f32) -> Result<TopK> {
    let h = hidden(decoder, inputs)?;
    let n = h.dims()[0];
    let vocab = decoder.cfg.vocab_size;
    let mut out = TopK { k: k.min(vocab), ..Default::default() };
    for r0 in (0..n).step_by(BLOCK_ROWS) {
        let rows = BLOCK_ROWS.min(n - r0);
        let t = top_k_of_logits(&block_logits(decoder, &h, r0, rows)?, vocab, k, temperature);
        out.ids.extend(t.ids);
        out.probs.extend(t.probs);
        out.tail.extend(t.tail);
    }
    Ok(out)
}
