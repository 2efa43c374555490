//! Named weights from a model file, under one canonical naming (GGUF's:
//! `token_embd.weight`, `blk.N.attn_q.weight`, ...), whatever the file calls them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::gguf::{GgmlType, GgufFile};
use crate::kernels::QWeight;
use crate::model::config::Arch;
use crate::model::linear::Weight;

/// A store of weights addressed by canonical name.
pub trait TensorSource: Send + Sync {
    /// `Ok(None)` when the file has no such tensor.
    fn get(&self, name: &str) -> Result<Option<Weight>>;

    /// A dense f32 tensor (norms, biases, factors): dequantized if the file stores it quantized.
    fn get_dense(&self, name: &str) -> Result<Option<Tensor>> {
        self.get(name)?.map(|w| w.to_dense()).transpose()
    }

    /// Every tensor name, canonical, for `smelt info` and sanity checks.
    fn names(&self) -> Vec<String>;

    fn require(&self, name: &str) -> Result<Weight> {
        self.get(name)?.with_context(|| format!("model file is missing tensor {name:?}"))
    }

    fn require_dense(&self, name: &str) -> Result<Tensor> {
        self.get_dense(name)?.with_context(|| format!("model file is missing tensor {name:?}"))
    }

    /// The model is built: drop whatever pages of a memory-mapped file loading left
    /// resident (the header read for the metadata, the 64 KiB windows around the small
    /// tensors that were copied out). Weights still read from the map fault back in from the
    /// page cache when used; nothing changes but the resident set.
    fn release_mapped(&self) {}
}

pub fn candle_dtype(t: GgmlType) -> Result<GgmlDType> {
    Ok(match t {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q8_1 => GgmlDType::Q8_1,
        GgmlType::Q2_K => GgmlDType::Q2K,
        GgmlType::Q3_K => GgmlDType::Q3K,
        GgmlType::Q4_K => GgmlDType::Q4K,
        GgmlType::Q5_K => GgmlDType::Q5K,
        GgmlType::Q6_K => GgmlDType::Q6K,
        GgmlType::Q8_K => GgmlDType::Q8K,
    })
}

/// Weights straight from a GGUF file (names are already canonical).
pub struct GgufTensors {
    pub file: Arc<GgufFile>,
    device: Device,
}

impl GgufTensors {
    pub fn new(file: Arc<GgufFile>, device: Device) -> Self {
        GgufTensors { file, device }
    }
}

impl TensorSource for GgufTensors {
    fn get(&self, name: &str) -> Result<Option<Weight>> {
        let Some(info) = self.file.tensor_info(name) else { return Ok(None) };
        if let (&[cols, rows], true) = (&info.dims[..], QWeight::supports(info.dtype)) {
            // Zero-copy: the kernels read the blocks straight from the memory map.
            let q = QWeight::new(self.file.bytes().clone(), self.file.data_offset + info.offset, info.dtype, rows, cols)
                .with_context(|| format!("cannot read tensor {name:?}"))?;
            return Ok(Some(Weight::Quant(q)));
        }
        let data = self.file.tensor_data(info);
        let shape = info.shape();
        let q = qtensor_from_ggml(candle_dtype(info.dtype)?, data, shape, &self.device)
            .with_context(|| format!("cannot read tensor {name:?}"))?;
        Ok(Some(if info.dtype.is_quantized() {
            Weight::Candle(Arc::new(q))
        } else {
            Weight::Dense(q.dequantize(&self.device)?.to_dtype(DType::F32)?)
        }))
    }

    fn names(&self) -> Vec<String> {
        self.file.tensors.iter().map(|t| t.name.clone()).collect()
    }

    fn release_mapped(&self) {
        let bytes = self.file.bytes();
        bytes.release(0, bytes.len());
    }
}

/// Weights from Hugging Face safetensors (single file or shards), renamed to canonical.
pub struct SafetensorsTensors {
    st: MmapedSafetensors,
    arch: Arch,
    /// Prefix before `layers.N...` / `embed_tokens` (`model.`, `model.language_model.`, ...).
    prefix: String,
    device: Device,
}

impl SafetensorsTensors {
    pub fn open(paths: &[PathBuf], arch: Arch, device: Device) -> Result<Self> {
        if paths.is_empty() {
            bail!("no .safetensors files found");
        }
        // SAFETY: read-only maps of files we do not modify.
        let st = unsafe { MmapedSafetensors::multi(paths) }
            .with_context(|| format!("cannot read safetensors {}", paths[0].display()))?;
        let names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
        let prefix = ["model.", "model.language_model.", "language_model.model.", ""]
            .into_iter()
            .find(|p| names.iter().any(|n| n == &format!("{p}embed_tokens.weight")))
            .with_context(|| "safetensors has no embed_tokens.weight (is this a decoder-only language model?)")?
            .to_string();
        Ok(SafetensorsTensors { st, arch, prefix, device })
    }

    /// Canonical name -> the name in the checkpoint.
    pub fn stored_name(&self, name: &str) -> Option<String> {
        let p = &self.prefix;
        let sandwich = matches!(self.arch, Arch::Gemma2 | Arch::Gemma3);
        Some(match name {
            "token_embd.weight" => format!("{p}embed_tokens.weight"),
            "output_norm.weight" => format!("{p}norm.weight"),
            "output.weight" => "lm_head.weight".to_string(),
            _ => {
                let rest = name.strip_prefix("blk.")?;
                let (layer, tail) = rest.split_once('.')?;
                let (base, kind) = tail.rsplit_once('.')?; // kind: weight | bias
                let hf = match base {
                    "attn_norm" => "input_layernorm",
                    "attn_q" => "self_attn.q_proj",
                    "attn_k" => "self_attn.k_proj",
                    "attn_v" => "self_attn.v_proj",
                    "attn_qkv" => "self_attn.qkv_proj",
                    "attn_output" => "self_attn.o_proj",
                    "attn_q_norm" => "self_attn.q_norm",
                    "attn_k_norm" => "self_attn.k_norm",
                    "post_attention_norm" => "post_attention_layernorm",
                    "ffn_norm" if sandwich => "pre_feedforward_layernorm",
                    "ffn_norm" => "post_attention_layernorm",
                    "post_ffw_norm" => "post_feedforward_layernorm",
                    "ffn_gate" => "mlp.gate_proj",
                    "ffn_up" if self.arch == Arch::Phi3 => "mlp.gate_up_proj",
                    "ffn_up" => "mlp.up_proj",
                    "ffn_down" => "mlp.down_proj",
                    _ => return None,
                };
                format!("{p}layers.{layer}.{hf}.{kind}")
            }
        })
    }
}

impl SafetensorsTensors {
    /// The stored shape of a tensor, by canonical name, without reading it.
    pub fn stored_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.st.get(&self.stored_name(name)?).ok().map(|v| v.shape().to_vec())
    }

    /// Stored dtype → number of tensors, for `smelt info`.
    pub fn dtype_counts(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for (_, v) in self.st.tensors() {
            *m.entry(format!("{:?}", v.dtype())).or_insert(0) += 1;
        }
        m
    }
}

impl TensorSource for SafetensorsTensors {
    fn get(&self, name: &str) -> Result<Option<Weight>> {
        let Some(hf) = self.stored_name(name) else { return Ok(None) };
        if self.st.get(&hf).is_err() {
            return Ok(None);
        }
        let t = self.st.load(&hf, &self.device).with_context(|| format!("cannot read tensor {hf:?}"))?;
        Ok(Some(Weight::Dense(t.to_dtype(DType::F32)?)))
    }

    fn names(&self) -> Vec<String> {
        self.st.tensors().into_iter().map(|(n, _)| n).collect()
    }
}

