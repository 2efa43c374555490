//! A Hugging Face model folder of any architecture smelt runs (Llama, Mistral, Qwen 2/3,
//! Phi-3, Gemma 1/2/3) as an f32 GGUF in llama.cpp's layout for that architecture: what
//! `convert_hf_to_gguf.py` writes, so that `smelt quantize` takes a folder straight to a
//! quantized file.
//!
//! - hyper-parameters under `{arch}.*` (Mistral is llama.cpp's `llama`), rope scaling as
//!   keys (linear) or factor tensors (`rope_freqs` for Llama 3, `rope_factors_long/short`
//!   for Phi-3 longrope), Gemma's local rope base, sliding-window pattern and soft-caps;
//! - tensors under GGUF names (the loader's canonical names), Gemma norms as `1 + w`, llama
//!   q/k rows permuted for llama.cpp's interleaved rope, Qwen biases, Phi-3's fused qkv and
//!   gate/up kept fused;
//! - the tokenizer (when the folder has `tokenizer.json`) as `tokenizer.ggml.*`.
//!
//! The metadata (with the generated rope tensors) is read back with the GGUF loader's config
//! reader, and the configuration it describes must be the folder's (up to f32 rounding of
//! stored floats): anything GGUF cannot say is refused with the field that differs, never
//! written as a silently different model. Every tensor of the folder must land in the file.
//! The tensors themselves are read from the mapped safetensors one at a time, when the
//! quantizer asks ([`Converted`] is a [`crate::quantize::Source`]).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::load::gguf::{GgmlType, GgufFile, GgufWriter, TensorInfo, Value};
use crate::load::tensors::{GgufTensors, SafetensorsTensors, TensorSource};
use crate::model::config::{Arch, ModelConfig, RopeLayout, RopeScaling};
use crate::model::rope::{inv_freqs, permute_rows_for_interleaved};

/// A converted folder: GGUF metadata and a tensor directory (all f32) whose values are
/// read from the folder's memory-mapped safetensors when asked for, one tensor at a time
/// (the [`crate::quantize::Source`] `smelt quantize` reads), plus the configuration the
/// metadata reads back as and what the conversion could not keep (one line each).
pub struct Converted {
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    parts: Vec<Part>,
    st: SafetensorsTensors,
    in_bytes: u64,
    pub config: ModelConfig,
    pub notes: Vec<String>,
}

/// Where a tensor's values come from.
enum Part {
    /// The folder's tensor of this canonical name; Gemma norms get 1 added, llama q/k rows
    /// are permuted per head (the head count given).
    Stored { shift: bool, permute: Option<usize> },
    /// Made by the conversion (rope factors).
    Values(Vec<f32>),
}

impl Converted {
    fn part(&self, t: &TensorInfo) -> Result<&Part> {
        let i = self.tensors.iter().position(|x| x.name == t.name).with_context(|| format!("no tensor {}", t.name))?;
        Ok(&self.parts[i])
    }

    /// The whole f32 file in memory (small models and tests).
    pub fn to_gguf(&self) -> Result<GgufFile> {
        let mut w = GgufWriter::new();
        for (k, v) in &self.metadata {
            w.kv(k, v.clone());
        }
        for t in &self.tensors {
            let data = crate::quantize::Source::raw(self, t)?.into_owned();
            w.tensor(&t.name, t.dims.clone(), GgmlType::F32, data);
        }
        GgufFile::from_vec(w.to_bytes())
    }
}

impl crate::quantize::Source for Converted {
    fn metadata(&self) -> Vec<(&str, &Value)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }
    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    fn raw(&self, t: &TensorInfo) -> Result<std::borrow::Cow<'_, [u8]>> {
        Ok(std::borrow::Cow::Owned(self.values(t)?.iter().flat_map(|v| v.to_le_bytes()).collect()))
    }
    fn values(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        match self.part(t)? {
            Part::Values(v) => Ok(v.clone()),
            Part::Stored { shift, permute: heads } => {
                let mut x = self.st.get_dense(&t.name)?.with_context(|| format!("missing tensor {}", t.name))?;
                if *shift {
                    x = (x + 1.0)?;
                }
                if let Some(h) = heads {
                    x = permute(&x, *h)?;
                }
                Ok(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
            }
        }
    }
    fn size(&self) -> u64 {
        self.in_bytes
    }
}

/// llama.cpp's architecture name for a model family.
pub fn gguf_arch(arch: Arch) -> &'static str {
    match arch {
        // convert_hf_to_gguf writes MistralForCausalLM as a llama model.
        Arch::Llama | Arch::Mistral => "llama",
        other => other.name(),
    }
}

/// The per-layer tensors a model of `cfg` may have, GGUF names without `blk.N.`.
fn layer_tensors(cfg: &ModelConfig) -> Vec<&'static str> {
    let mut names = vec!["attn_norm", "attn_output", "ffn_norm", "ffn_up", "ffn_down"];
    if cfg.arch == Arch::Phi3 {
        names.push("attn_qkv"); // q, k, v fused; ffn_up holds gate and up
    } else {
        names.extend(["attn_q", "attn_k", "attn_v", "ffn_gate"]);
    }
    if cfg.qk_norm {
        names.extend(["attn_q_norm", "attn_k_norm"]);
    }
    if cfg.sandwich_norms {
        names.extend(["post_attention_norm", "post_ffw_norm"]);
    }
    names
}

/// `rows` of an f32 matrix (or vector, as one column) permuted per head for the
/// interleaved rope.
fn permute(t: &Tensor, n_heads: usize) -> Result<Tensor> {
    if t.rank() == 1 {
        let n = t.dim(0)?;
        return Ok(permute_rows_for_interleaved(&t.reshape((n, 1))?, n_heads)?.reshape(n)?);
    }
    permute_rows_for_interleaved(t, n_heads)
}

fn f32_vec_tensor(w: &mut GgufWriter, name: &str, v: &[f64]) {
    let data = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
    w.tensor(name, vec![v.len()], GgmlType::F32, data);
}

/// The smallest n for which llama.cpp's rule "layer il slides when il % n < n - 1" gives
/// `sliding`; None when no period does.
fn swa_period(sliding: &[bool]) -> Option<usize> {
    (1..=sliding.len() + 1).find(|&n| sliding.iter().enumerate().all(|(il, &s)| s == (il % n < n - 1)))
}

/// Model hyper-parameters as GGUF key/values and generated tensors (rope factors).
pub(crate) fn write_hparams(w: &mut GgufWriter, cfg: &ModelConfig, notes: &mut Vec<String>) -> Result<()> {
    let a = gguf_arch(cfg.arch);
    let k = |s: &str| format!("{a}.{s}");
    let rope = &cfg.ropes[0];
    w.kv("general.architecture", Value::String(a.into()))
        .kv(&k("vocab_size"), Value::U32(cfg.vocab_size as u32))
        .kv(&k("context_length"), Value::U32(cfg.max_position as u32))
        .kv(&k("embedding_length"), Value::U32(cfg.hidden as u32))
        .kv(&k("block_count"), Value::U32(cfg.n_layers() as u32))
        .kv(&k("feed_forward_length"), Value::U32(cfg.intermediate as u32))
        .kv(&k("attention.head_count"), Value::U32(cfg.n_heads as u32))
        .kv(&k("attention.head_count_kv"), Value::U32(cfg.n_kv_heads as u32))
        .kv(&k("attention.key_length"), Value::U32(cfg.head_dim as u32))
        .kv(&k("attention.value_length"), Value::U32(cfg.head_dim as u32))
        .kv(&k("attention.layer_norm_rms_epsilon"), Value::F32(cfg.norm_eps as f32))
        .kv(&k("rope.freq_base"), Value::F32(rope.theta as f32))
        .kv(&k("rope.dimension_count"), Value::U32(rope.rotary_dim as u32));
    match &rope.scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            w.kv(&k("rope.scaling.type"), Value::String("linear".into())).kv(&k("rope.scaling.factor"), Value::F32(*factor as f32));
        }
        RopeScaling::Llama3 { .. } => {
            // llama.cpp divides each base frequency by its `rope_freqs` entry.
            let plain = crate::model::config::RopeConfig { scaling: RopeScaling::None, ..rope.clone() };
            let (base, _) = inv_freqs(&plain, cfg.max_position);
            let (scaled, _) = inv_freqs(rope, cfg.max_position);
            let factors: Vec<f64> = base.iter().zip(&scaled).map(|(b, s)| b / s).collect();
            f32_vec_tensor(w, "rope_freqs.weight", &factors);
        }
        RopeScaling::Factors { factors, .. } => f32_vec_tensor(w, "rope_freqs.weight", factors),
        RopeScaling::LongRope { short, long, original_max, attn_factor } => {
            f32_vec_tensor(w, "rope_factors_long.weight", long);
            f32_vec_tensor(w, "rope_factors_short.weight", short);
            w.kv(&k("rope.scaling.attn_factor"), Value::F32(*attn_factor as f32))
                .kv(&k("rope.scaling.original_context_length"), Value::U32(*original_max as u32));
        }
    }
    // Gemma 3's local layers have a rope base of their own (llama.cpp's default: 10000).
    if let Some(l) = cfg.layers.iter().find(|l| l.sliding_window.is_some()).filter(|_| cfg.arch == Arch::Gemma3) {
        w.kv(&k("rope.freq_base_swa"), Value::F32(cfg.ropes[l.rope].theta as f32));
    }
    let windows: BTreeSet<usize> = cfg.layers.iter().filter_map(|l| l.sliding_window).collect();
    if windows.len() > 1 {
        bail!("layers use different sliding windows {windows:?}; GGUF has one");
    }
    if let Some(&win) = windows.iter().next() {
        let sliding: Vec<bool> = cfg.layers.iter().map(|l| l.sliding_window.is_some()).collect();
        match cfg.arch {
            Arch::Gemma2 | Arch::Gemma3 => {
                w.kv(&k("attention.sliding_window"), Value::U32(win as u32));
                let default = if cfg.arch == Arch::Gemma2 { 2 } else { 6 };
                match swa_period(&sliding) {
                    Some(n) if n == default => {}
                    Some(n) => {
                        w.kv(&k("attention.sliding_window_pattern"), Value::U32(n as u32));
                    }
                    None => {
                        w.kv(&k("attention.sliding_window_pattern"), Value::Array(sliding.iter().map(|&s| Value::Bool(s)).collect()));
                    }
                }
            }
            _ => {
                if cfg.arch == Arch::Phi3 {
                    w.kv(&k("attention.sliding_window"), Value::U32(win as u32));
                }
                notes.push(format!(
                    "the sliding window of {win} tokens is not kept: llama.cpp runs {a} GGUF files with full attention, so past {win} tokens outputs differ from transformers'"
                ));
            }
        }
    }
    if let Some(c) = cfg.attn_softcap {
        w.kv(&k("attn_logit_softcapping"), Value::F32(c as f32));
    }
    if let Some(c) = cfg.final_softcap {
        w.kv(&k("final_logit_softcapping"), Value::F32(c as f32));
    }
    Ok(())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1e-30)
}

fn close_opt(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => close(a, b),
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// Does the GGUF's reading `got` describe the folder's model `want`? Floats match to f32
/// rounding, rope scalings by the frequencies they produce, and windows llama.cpp does not
/// run (noted by [`write_hparams`]) are left out.
fn check_same(want: &ModelConfig, got: &ModelConfig) -> Result<()> {
    let mut want = want.clone();
    let mut got = got.clone();
    if gguf_arch(want.arch) == "llama" {
        want.arch = got.arch;
        for r in &mut want.ropes {
            r.layout = RopeLayout::Interleaved;
        }
    }
    if !matches!(want.arch, Arch::Gemma2 | Arch::Gemma3) {
        for l in &mut want.layers {
            l.sliding_window = None;
        }
    }
    let floats = [
        ("norm eps", want.norm_eps, got.norm_eps),
        ("attention scale", want.attn_scale, got.attn_scale),
    ];
    for (what, a, b) in floats {
        if !close(a, b) {
            bail!("{what} {a} would be read back as {b}");
        }
    }
    for (what, a, b) in [
        ("embedding scale", want.embed_scale, got.embed_scale),
        ("attention soft-cap", want.attn_softcap, got.attn_softcap),
        ("final soft-cap", want.final_softcap, got.final_softcap),
    ] {
        if !close_opt(a, b) {
            bail!("{what} {a:?} would be read back as {b:?}");
        }
    }
    got.norm_eps = want.norm_eps;
    got.attn_scale = want.attn_scale;
    got.embed_scale = want.embed_scale;
    got.attn_softcap = want.attn_softcap;
    got.final_softcap = want.final_softcap;
    if want.layers.len() != got.layers.len() {
        bail!("{} layers would be read back as {}", want.layers.len(), got.layers.len());
    }
    for (il, (la, lb)) in want.layers.iter().zip(&got.layers).enumerate() {
        let (a, b) = (&want.ropes[la.rope], &got.ropes[lb.rope]);
        if a.rotary_dim != b.rotary_dim || a.layout != b.layout || !close(a.theta, b.theta) {
            bail!("layer {il}: rope {a:?} would be read back as {b:?}");
        }
        // Both below and beyond a longrope model's original length.
        for n_ctx in [1, want.max_position] {
            let (fa, ma) = inv_freqs(a, n_ctx);
            let (fb, mb) = inv_freqs(b, n_ctx);
            if fa.len() != fb.len() || !close(ma, mb) || fa.iter().zip(&fb).any(|(x, y)| (x - y).abs() > 1e-6 * x.abs()) {
                bail!("layer {il}: rope scaling {:?} would be read back as {:?}", a.scaling, b.scaling);
            }
        }
    }
    // Ropes compared per layer above; which variant index a layer uses is bookkeeping.
    for c in [&mut want, &mut got] {
        c.ropes.clear();
        for l in &mut c.layers {
            l.rope = 0;
        }
    }
    if want != got {
        let (a, b) = (format!("{want:#?}"), format!("{got:#?}"));
        let diff = a.lines().zip(b.lines()).find(|(x, y)| x != y).map(|(x, y)| format!("`{}` would be read back as `{}`", x.trim(), y.trim()));
        bail!("{}", diff.unwrap_or_else(|| "the configuration would be read back differently".into()));
    }
    Ok(())
}

/// Convert the folder `dir`; the tokenizer is included when the folder has one.
pub fn hf_dir_to_gguf(dir: &Path) -> Result<Converted> {
    let root = crate::load::hf::read_json(&dir.join("config.json"))?;
    let cfg = crate::load::hf_config::config_from_hf(&root).with_context(|| format!("{}/config.json", dir.display()))?;
    let refuse = |why: String| -> anyhow::Error {
        anyhow::anyhow!("{}: {why}; this {} model cannot be written as a GGUF by smelt", dir.display(), cfg.arch.name())
    };
    let llama = gguf_arch(cfg.arch) == "llama";
    if llama && cfg.ropes.iter().any(|r| r.rotary_dim != cfg.head_dim) {
        return Err(refuse("partial rotary embeddings do not fit llama.cpp's llama layout".into()));
    }
    let files = crate::load::hf::safetensors_files(dir)?;
    let in_bytes = files.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
    let st = SafetensorsTensors::open(&files, cfg.arch, Device::Cpu)?;

    // Metadata and the generated tensors (rope factors) first: read back on their own.
    let mut w = GgufWriter::new();
    let mut notes = Vec::new();
    write_hparams(&mut w, &cfg, &mut notes).map_err(|e| refuse(e.to_string()))?;
    let name = dir.canonicalize().ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| "model".into());
    w.kv("general.name", Value::String(name)).kv("general.file_type", Value::U32(0)).kv("general.quantization_version", Value::U32(2));
    if dir.join("tokenizer.json").is_file() {
        for (key, v) in super::tokenizer::padded_tokenizer_metadata(dir, cfg.vocab_size, &mut notes)? {
            w.kv(&key, v);
        }
    }
    let head = Arc::new(GgufFile::from_vec(w.to_bytes())?);
    let embd = st.stored_shape("token_embd.weight").with_context(|| format!("{}: no token embeddings", dir.display()))?;
    let vocab = embd.first().copied().unwrap_or(0);
    let back = crate::load::gguf_config::config_from_metadata(&head, vocab, cfg.tie_embeddings, &GgufTensors::new(head.clone(), Device::Cpu))
        .context("the GGUF metadata does not read back")?;
    check_same(&cfg, &back).map_err(|e| refuse(format!("GGUF cannot express it: {e}")))?;

    let mut tensors = Vec::new();
    let mut parts = Vec::new();
    let mut add = |name: &str, shape: &[usize], part: Part| {
        let dims: Vec<usize> = shape.iter().rev().copied().collect(); // ggml: innermost first
        let n: usize = dims.iter().product();
        tensors.push(TensorInfo { name: name.to_string(), dims, dtype: GgmlType::F32, offset: 0, size: n * 4 });
        parts.push(part);
    };
    for (name, _, _, data) in &w.tensors {
        let v: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        add(name, &[v.len()], Part::Values(v));
    }
    let mut used = BTreeSet::new();
    let mut names: Vec<String> = vec!["token_embd.weight".into(), "output_norm.weight".into()];
    if !cfg.tie_embeddings {
        names.push("output.weight".into());
    }
    for il in 0..cfg.n_layers() {
        for t in layer_tensors(&cfg) {
            for kind in ["weight", "bias"] {
                names.push(format!("blk.{il}.{t}.{kind}"));
            }
        }
    }
    for name in names {
        let Some(shape) = st.stored_shape(&name) else {
            if name.ends_with(".weight") {
                return Err(refuse(format!("tensor {name} ({}) is missing", st.stored_name(&name).unwrap_or_default())));
            }
            continue;
        };
        used.insert(st.stored_name(&name).unwrap_or_default());
        let permute = match name.rsplit('.').nth(1) {
            Some("attn_q") if llama => Some(cfg.n_heads),
            Some("attn_k") if llama => Some(cfg.n_kv_heads),
            _ => None,
        };
        add(&name, &shape, Part::Stored { shift: crate::load::hf::shifted_norm(cfg.arch, &name), permute });
    }
    let left: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| !used.contains(n) && !n.ends_with("rotary_emb.inv_freq"))
        .filter(|n| !(cfg.tie_embeddings && n == "lm_head.weight"))
        .collect();
    if let Some(n) = left.first() {
        return Err(refuse(format!("tensor {n} (and {} more) has no place in the GGUF layout", left.len() - 1)));
    }
    Ok(Converted { metadata: w.metadata, tensors, parts, st, in_bytes, config: back, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swa_periods() {
        assert_eq!(swa_period(&[true, false, true, false]), Some(2));
        assert_eq!(swa_period(&[true, true, true, true, true, false, true]), Some(6));
        assert_eq!(swa_period(&[false, false]), Some(1));
        assert_eq!(swa_period(&[true, true]), Some(3));
        assert_eq!(swa_period(&[false, true]), None);
    }
}
