//! A GGUF file in llama.cpp's `llama` layout: hyper-parameters under `llama.*`, the
//! tokenizer under `tokenizer.ggml.*`, tensors under their GGUF names with dims innermost
//! first. Like llama.cpp's converter, q and k projection rows are permuted from the
//! half-split rope layout (which smelt trains in) to the interleaved one llama.cpp's
//! `llama` rope uses. Matrices may be quantized; norms stay f32.

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use super::tokenizer::padded_tokenizer_metadata;
use super::Exportable;
use crate::load::gguf::{GgmlType, GgufWriter, Value};
use crate::model::rope::permute_rows_for_interleaved;

/// Storage type for the matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    F32,
    F16,
    Q8_0,
    Q4_0,
    Q4K,
    Q6K,
}

impl Quant {
    pub fn parse(s: &str) -> Result<Quant> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => Quant::F32,
            "f16" => Quant::F16,
            "q8_0" => Quant::Q8_0,
            "q4_0" => Quant::Q4_0,
            "q4_k" | "q4_k_m" => Quant::Q4K,
            "q6_k" => Quant::Q6K,
            other => bail!("unknown quantization {other:?} (choose f32, f16, q8_0, q4_0, q4_k, q6_k)"),
        })
    }

    fn ggml(self) -> GgmlType {
        match self {
            Quant::F32 => GgmlType::F32,
            Quant::F16 => GgmlType::F16,
            Quant::Q8_0 => GgmlType::Q8_0,
            Quant::Q4_0 => GgmlType::Q4_0,
            Quant::Q4K => GgmlType::Q4_K,
            Quant::Q6K => GgmlType::Q6_K,
        }
    }

    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_*).
    fn file_type(self) -> u32 {
        match self {
            Quant::F32 => 0,
            Quant::F16 => 1,
            Quant::Q4_0 => 2,
            Quant::Q8_0 => 7,
            Quant::Q4K => 15,
            Quant::Q6K => 18,
        }
    }
}

fn encode(t: &Tensor, ty: GgmlType) -> Result<Vec<u8>> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    Ok(match ty {
        GgmlType::F32 => t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        q => {
            let d = match q {
                GgmlType::Q8_0 => GgmlDType::Q8_0,
                GgmlType::Q4_0 => GgmlDType::Q4_0,
                GgmlType::Q4_K => GgmlDType::Q4K,
                GgmlType::Q6_K => GgmlDType::Q6K,
                other => bail!("cannot quantize to {other}"),
            };
            QTensor::quantize(&t, d)?.data()?.into_owned()
        }
    })
}

/// The type a matrix with rows of `cols` values gets: the asked one when its block size
/// divides the rows, else q8_0, else f16 (what llama.cpp's quantizer falls back to as well).
fn matrix_type(q: Quant, cols: usize) -> GgmlType {
    let ty = q.ggml();
    if cols % ty.block_size() == 0 {
        ty
    } else if q != Quant::F32 && cols % 32 == 0 {
        GgmlType::Q8_0
    } else if q == Quant::F32 {
        GgmlType::F32
    } else {
        GgmlType::F16
    }
}

pub fn gguf_writer(m: &Exportable, quant: Quant) -> Result<GgufWriter> {
    let c = &m.cfg;
    let mut w = GgufWriter::new();
    let mut notes = Vec::new();
    super::convert::write_hparams(&mut w, c, &mut notes)?;
    w.kv("general.name", Value::String(m.name.clone()))
        .kv("general.file_type", Value::U32(quant.file_type()))
        .kv("general.quantization_version", Value::U32(2));
    for (k, v) in padded_tokenizer_metadata(&m.tokenizer_dir, c.vocab_size, &mut notes)? {
        w.kv(&k, v);
    }
    for n in notes {
        tracing::warn!("{n}");
    }
    for (name, _) in crate::train::params::llama_tensor_shapes(c) {
        let mut t = m.tensor(&name)?.clone();
        if name.ends_with("attn_q.weight") {
            t = permute_rows_for_interleaved(&t, c.n_heads)?;
        } else if name.ends_with("attn_k.weight") {
            t = permute_rows_for_interleaved(&t, c.n_kv_heads)?;
        }
        let dims: Vec<usize> = t.dims().iter().rev().copied().collect(); // ggml: innermost first
        let ty = if t.rank() == 1 { GgmlType::F32 } else { matrix_type(quant, dims[0]) };
        w.tensor(&name, dims, ty, encode(&t, ty)?);
    }
    Ok(w)
}

pub fn export_gguf(m: &Exportable, quant: Quant, out: &Path) -> Result<()> {
    gguf_writer(m, quant)?.write(out)
}
