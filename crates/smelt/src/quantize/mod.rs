//! `smelt quantize`: a model (GGUF file or Hugging Face folder) into a GGUF file of another
//! type, with llama.cpp's per-tensor mixes ([`mix`]) and smelt's own quantizers
//! ([`crate::kernels::quantize`], bit-identical to ggml's reference ones).
//!
//! Every piece of metadata (tokenizer, chat template, hyper-parameters) is carried over;
//! only `general.file_type` and `general.quantization_version` change. Tensors are
//! dequantized to f32 first when they are not already, as llama-quantize does with
//! `--allow-requantize` (quality then suffers twice: start from f16/bf16/f32 weights).

pub mod mix;

use std::path::Path;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use crate::kernels::{blocks, quantize};
use crate::load::gguf::{GgmlType, GgufFile, GgufWriter, TensorInfo, Value};
pub use mix::{FileType, Mixer};

/// What happened to the tensors.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct QuantizeReport {
    pub tensors: usize,
    pub requantized: usize,
    pub in_bytes: u64,
    pub out_bytes: u64,
    /// Output type → number of tensors.
    pub types: std::collections::BTreeMap<String, usize>,
    /// What the conversion of a Hugging Face folder could not keep, one line each.
    pub notes: Vec<String>,
}

/// The values of a tensor as f32.
pub fn tensor_f32(file: &GgufFile, t: &TensorInfo) -> Result<Vec<f32>> {
    let data = file.tensor_data(t);
    let n = t.n_elements();
    Ok(match t.dtype {
        GgmlType::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        GgmlType::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        GgmlType::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        d if blocks::dequant_supported(d) => {
            let mut out = vec![0f32; n];
            let (bs, ts) = (d.block_size(), d.type_size());
            out.par_chunks_mut(bs * 256).zip(data.par_chunks(ts * 256)).for_each(|(o, b)| blocks::dequantize_row(d, b, o));
            out
        }
        d => {
            let dev = candle_core::Device::Cpu;
            let q = candle_core::quantized::ggml_file::qtensor_from_ggml(crate::load::tensors::candle_dtype(d)?, data, t.shape(), &dev)?;
            q.dequantize(&dev)?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?
        }
    })
}

/// Quantize f32 values (rows of `cols`) to `t`, rows spread over rayon's pool.
pub fn quantize_f32(t: GgmlType, x: &[f32], cols: usize) -> Result<Vec<u8>> {
    if !quantize::quantize_supported(t) {
        bail!("smelt cannot write {t} tensors");
    }
    if cols == 0 || !cols.is_multiple_of(t.block_size()) || !x.len().is_multiple_of(cols) {
        bail!("{t}: rows of {cols} values do not split into blocks of {}", t.block_size());
    }
    let rb = cols / t.block_size() * t.type_size();
    let mut out = vec![0u8; x.len() / cols * rb];
    // A few rows per task: small rows are cheap, and K-quant rows are not.
    let rows_per_task = (1 << 16) / cols + 1;
    out.par_chunks_mut(rb * rows_per_task)
        .zip(x.par_chunks(cols * rows_per_task))
        .for_each(|(o, xr)| quantize::quantize_row(t, xr, o));
    Ok(out)
}

/// Build the quantized file, tensors in llama.cpp's order. `progress(done, total)` is called after each tensor with
/// counts of input elements.
pub fn quantize_gguf(file: &GgufFile, ftype: FileType, mut progress: impl FnMut(u64, u64)) -> Result<(GgufWriter, QuantizeReport)> {
    let arch = file.architecture()?.to_string();
    let n_layers = file.get_i64(&format!("{arch}.block_count")).context("GGUF has no block_count")? as usize;
    let mut order: Vec<&TensorInfo> = file.tensors.iter().collect();
    order.sort_by(|a, b| mix::llama_order(&a.name, &b.name));
    let mut mixer = Mixer::new(ftype, order.iter().map(|t| t.name.as_str()), n_layers);
    let mut w = GgufWriter::new();
    for (k, v) in &file.metadata {
        if k != "general.alignment" {
            w.kv(k, v.clone());
        }
    }
    w.kv("general.file_type", Value::U32(ftype.gguf_id())).kv("general.quantization_version", Value::U32(2));
    let total: u64 = file.tensors.iter().map(|t| t.n_elements() as u64).sum();
    let mut done = 0u64;
    let mut rep = QuantizeReport { tensors: file.tensors.len(), in_bytes: file.file_size() as u64, ..Default::default() };
    for t in order {
        let ty = mixer.choose(&t.name, &t.dims, t.dtype);
        let data = if ty == t.dtype {
            file.tensor_data(t).to_vec()
        } else {
            if t.dtype.is_quantized() {
                rep.requantized += 1;
            }
            let x = tensor_f32(file, t).with_context(|| format!("tensor {}", t.name))?;
            quantize_f32(ty, &x, t.dims[0]).with_context(|| format!("tensor {}", t.name))?
        };
        *rep.types.entry(ty.name().to_string()).or_default() += 1;
        w.tensor(&t.name, t.dims.clone(), ty, data);
        done += t.n_elements() as u64;
        progress(done, total);
    }
    Ok((w, rep))
}

/// Quantize `input` into `output` (written atomically): a GGUF file, or a Hugging Face
/// model folder with its tokenizer ([`crate::export::convert`]), which is first converted to
/// an f32 GGUF in memory (about twice the f32 model's size at the peak).
pub fn quantize_file(input: &Path, output: &Path, ftype: FileType, progress: impl FnMut(u64, u64)) -> Result<QuantizeReport> {
    let mut notes = Vec::new();
    let file = if input.is_dir() {
        if !input.join("tokenizer.json").is_file() {
            anyhow::bail!("{}: no tokenizer.json (the GGUF carries the tokenizer)", input.display());
        }
        let c = crate::export::convert::hf_dir_to_gguf(input)?;
        notes = c.notes;
        c.file
    } else {
        std::sync::Arc::new(GgufFile::open(input)?)
    };
    let (w, mut rep) = quantize_gguf(&file, ftype, progress)?;
    rep.notes = notes;
    let bytes = w.to_bytes();
    drop(w);
    rep.out_bytes = bytes.len() as u64;
    crate::util::write_atomic(output, &bytes)?;
    Ok(rep)
}
