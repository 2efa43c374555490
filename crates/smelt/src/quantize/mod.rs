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

/// What [`quantize_gguf`] reads: GGUF metadata and a tensor directory whose data comes on
/// demand, one tensor at a time — a GGUF file, or a Hugging Face folder being converted
/// ([`crate::export::convert::Converted`]), so that a folder never sits in memory whole.
pub trait Source {
    fn metadata(&self) -> Vec<(&str, &Value)>;
    fn tensors(&self) -> &[TensorInfo];
    /// The tensor's bytes in its `dtype`.
    fn raw(&self, t: &TensorInfo) -> Result<std::borrow::Cow<'_, [u8]>>;
    /// The tensor's values.
    fn values(&self, t: &TensorInfo) -> Result<Vec<f32>>;
    /// Input size, for the report.
    fn size(&self) -> u64;
}

impl Source for GgufFile {
    fn metadata(&self) -> Vec<(&str, &Value)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }
    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    fn raw(&self, t: &TensorInfo) -> Result<std::borrow::Cow<'_, [u8]>> {
        Ok(std::borrow::Cow::Borrowed(self.tensor_data(t)))
    }
    fn values(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        tensor_f32(self, t)
    }
    fn size(&self) -> u64 {
        self.file_size() as u64
    }
}

/// Build the quantized file, tensors in llama.cpp's order. `progress(done, total)` is called after each tensor with
/// counts of input elements.
pub fn quantize_gguf(file: &dyn Source, ftype: FileType, mut progress: impl FnMut(u64, u64)) -> Result<(GgufWriter, QuantizeReport)> {
    let meta = file.metadata();
    let get = |k: &str| meta.iter().find(|(x, _)| *x == k).map(|(_, v)| *v);
    let arch = get("general.architecture").and_then(Value::as_str).context("GGUF has no general.architecture")?.to_string();
    let n_layers = get(&format!("{arch}.block_count")).and_then(Value::as_i64).context("GGUF has no block_count")? as usize;
    let mut order: Vec<&TensorInfo> = file.tensors().iter().collect();
    order.sort_by(|a, b| mix::llama_order(&a.name, &b.name));
    let mut mixer = Mixer::new(ftype, order.iter().map(|t| t.name.as_str()), n_layers);
    let mut w = GgufWriter::new();
    for (k, v) in &meta {
        if *k != "general.alignment" {
            w.kv(k, (*v).clone());
        }
    }
    w.kv("general.file_type", Value::U32(ftype.gguf_id())).kv("general.quantization_version", Value::U32(2));
    let total: u64 = file.tensors().iter().map(|t| t.n_elements() as u64).sum();
    let mut done = 0u64;
    let mut rep = QuantizeReport { tensors: file.tensors().len(), in_bytes: file.size(), ..Default::default() };
    for t in order {
        let ty = mixer.choose(&t.name, &t.dims, t.dtype);
        let data = if ty == t.dtype {
            file.raw(t).with_context(|| format!("tensor {}", t.name))?.into_owned()
        } else {
            if t.dtype.is_quantized() {
                rep.requantized += 1;
            }
            let x = file.values(t).with_context(|| format!("tensor {}", t.name))?;
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
/// model folder with its tokenizer ([`crate::export::convert`]), read a tensor at a time
/// from its memory-mapped safetensors (the peak is the output file's size, twice).
pub fn quantize_file(input: &Path, output: &Path, ftype: FileType, progress: impl FnMut(u64, u64)) -> Result<QuantizeReport> {
    let (w, mut rep) = if input.is_dir() {
        if !input.join("tokenizer.json").is_file() {
            anyhow::bail!("{}: no tokenizer.json (the GGUF carries the tokenizer)", input.display());
        }
        let c = crate::export::convert::hf_dir_to_gguf(input)?;
        let (w, mut rep) = quantize_gguf(&c, ftype, progress)?;
        rep.notes = c.notes;
        (w, rep)
    } else {
        quantize_gguf(&GgufFile::open(input)?, ftype, progress)?
    };
    let bytes = w.to_bytes();
    drop(w);
    rep.out_bytes = bytes.len() as u64;
    crate::util::write_atomic(output, &bytes)?;
    Ok(rep)
}
