//! `smelt export BASE --merge-lora DIR[:SCALE]`: a base model with LoRA updates folded into
//! its weights (`W + s·B·A`), written in the base's own format with everything else as it was:
//!
//! * a GGUF base gives a GGUF file: metadata and untouched tensors copied byte for byte,
//!   each adapted matrix dequantized, merged, and re-encoded in its original type (or
//!   `--quant`'s);
//! * a Hugging Face folder gives a folder: its files copied, the adapted tensors of
//!   `model.safetensors` (or its shards, written as one file) merged in their dtype.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use crate::load::gguf::{GgmlType, GgufFile, GgufWriter};
use crate::load::tensors::candle_dtype;
use crate::lora::{Adapter, AdapterSpec};

/// GGUF name of a PEFT module's weight in block `layer`.
fn gguf_name(layer: usize, module: &str) -> Result<String> {
    let base = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" | "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => bail!("cannot merge module {other}"),
    };
    Ok(format!("blk.{layer}.{base}.weight"))
}

fn encode(t: &Tensor, ty: GgmlType) -> Result<Vec<u8>> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    Ok(match ty {
        GgmlType::F32 => t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        GgmlType::BF16 => t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        q => QTensor::quantize(&t, candle_dtype(q)?).with_context(|| format!("cannot quantize to {q}"))?.data()?.into_owned(),
    })
}

/// Sum of every adapter's `(GGUF tensor name → ΔW)` in the model's row order.
fn gguf_deltas(base: &Path, specs: &[AdapterSpec]) -> Result<HashMap<String, Tensor>> {
    let model = crate::load::load(base, &crate::load::LoadOptions { ctx: Some(2), ..Default::default() })?;
    let mut dec = model.decoder;
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for s in specs {
        let a = Adapter::load(&s.dir)?;
        for (layer, module, d) in a.deltas(&mut dec, s.scale).with_context(|| format!("LoRA adapter {}", s.dir.display()))? {
            let name = gguf_name(layer, &module)?;
            let sum = match out.remove(&name) {
                Some(prev) => (prev + d)?,
                None => d,
            };
            out.insert(name, sum);
        }
    }
    Ok(out)
}

/// Merge into a GGUF base; `quant` overrides the merged matrices' type.
pub fn merge_gguf(base: &Path, specs: &[AdapterSpec], quant: Option<GgmlType>, out: &Path) -> Result<usize> {
    let file = GgufFile::open(base)?;
    let mut deltas = gguf_deltas(base, specs)?;
    let src = crate::load::tensors::GgufTensors::new(std::sync::Arc::new(GgufFile::open(base)?), Device::Cpu);
    let mut w = GgufWriter::new();
    w.alignment = file.alignment;
    for (k, v) in &file.metadata {
        w.kv(k, v.clone());
    }
    let mut merged = 0;
    for t in &file.tensors {
        match deltas.remove(&t.name) {
            None => {
                w.tensor(&t.name, t.dims.clone(), t.dtype, file.tensor_data(t).to_vec());
            }
            Some(d) => {
                use crate::load::tensors::TensorSource;
                let wt = src.require(&t.name)?.to_dense()?;
                let m = (wt + d)?;
                let mut ty = quant.unwrap_or(t.dtype);
                if !t.dims[0].is_multiple_of(ty.block_size()) {
                    ty = GgmlType::F16;
                }
                w.tensor(&t.name, t.dims.clone(), ty, encode(&m, ty)?);
                merged += 1;
            }
        }
    }
    if let Some(name) = deltas.keys().next() {
        bail!("the adapter changes {name}, which {} does not have", base.display());
    }
    let bytes = w.to_bytes();
    crate::util::write_atomic(out, &bytes)?;
    Ok(merged)
}

/// Merge into a Hugging Face folder base, writing a new folder.
pub fn merge_hf(base: &Path, specs: &[AdapterSpec], out: &Path) -> Result<usize> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("{} exists and is not empty", out.display());
    }
    // Check every adapter against the model first (shapes, layers).
    let model = crate::load::load(base, &crate::load::LoadOptions { ctx: Some(2), ..Default::default() })?;
    let mut dec = model.decoder;
    let adapters: Vec<(Adapter, f64)> = specs.iter().map(|s| Ok((Adapter::load(&s.dir)?, s.scale))).collect::<Result<_>>()?;
    for (a, s) in &adapters {
        a.deltas(&mut dec, *s)?;
    }
    let files = crate::load::hf::safetensors_files(base)?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for f in &files {
        let mut part: Vec<(String, Tensor)> = candle_core::safetensors::load(f, &Device::Cpu)?.into_iter().collect();
        part.sort_by(|a, b| a.0.cmp(&b.0));
        tensors.extend(part);
    }
    let mut merged = 0;
    for (a, scale) in &adapters {
        for l in &a.layers {
            let suffix = format!("layers.{}.{}.weight", l.layer, l.module);
            let Some((_, t)) = tensors.iter_mut().find(|(n, _)| n.ends_with(&suffix) && (n.len() == suffix.len() || n[..n.len() - suffix.len()].ends_with('.'))) else {
                bail!("{}: no tensor for {suffix}", base.display());
            };
            let dtype = t.dtype();
            let d = (l.b.matmul(&l.a)? * (l.scale * scale))?;
            *t = (t.to_dtype(DType::F32)? + d)?.to_dtype(dtype)?;
            merged += 1;
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for e in std::fs::read_dir(base)? {
        let p = e?.path();
        let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if p.is_file() && !name.ends_with(".safetensors") && name != "model.safetensors.index.json" {
            std::fs::copy(&p, out.join(&name)).with_context(|| format!("cannot copy {}", p.display()))?;
        }
    }
    let bytes = super::safetensors::to_bytes(&tensors, &[("format", "pt")])?;
    crate::util::write_atomic(&out.join("model.safetensors"), &bytes)?;
    Ok(merged)
}

/// A ggml type by name (`q8_0`, `Q4_K`, `f16`, ...), for `--quant` when merging.
pub fn parse_type(s: &str) -> Result<GgmlType> {
    use GgmlType::*;
    [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K]
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(s) || (s.eq_ignore_ascii_case("q4_k_m") && *t == Q4_K))
        .with_context(|| format!("unknown tensor type {s:?} (f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k … q6_k)"))
}
