//! Random-weight models of real shapes, so that speed can be measured without a download.
//!
//! Every shape is written as a llama-architecture GGUF with the real model's dimensions
//! (hidden size, layers, heads, kv heads, head size, feed-forward size, vocabulary, tied
//! or not): the same matrices, so the same bytes read and the same arithmetic per token.
//! Architecture details that cost little (Gemma's GeGLU and embedding scale, Phi-3's fused
//! projections) are not reproduced. Weights are quantized with smelt's quantizers under
//! llama.cpp's per-tensor mix ([`crate::quantize::mix`]); to keep building fast, each
//! (type, row length) quantizes a pool of random rows that is repeated through the tensor
//! (every tensor still has its own memory, so nothing is shared in the caches). The file
//! carries a SentencePiece-style vocabulary of placeholder tokens so llama.cpp loads it.

use anyhow::{bail, Result};
use std::collections::HashMap;

use crate::load::gguf::{GgmlType, GgufWriter, Value};
use crate::quantize::{quantize_f32, FileType, Mixer};
use crate::sample::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub name: &'static str,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub ctx: usize,
    pub tied: bool,
}

const fn shape(name: &'static str, hidden: usize, layers: usize, heads: usize, kv_heads: usize, head_dim: usize, ffn: usize, vocab: usize, ctx: usize, tied: bool) -> Shape {
    Shape { name, hidden, layers, heads, kv_heads, head_dim, ffn, vocab, ctx, tied }
}

/// The shapes `smelt bench --shape` knows (dimensions from each model's config.json).
pub const SHAPES: &[Shape] = &[
    shape("stories110m", 768, 12, 12, 12, 64, 2048, 32000, 1024, true),
    shape("smollm2-135m", 576, 30, 9, 3, 64, 1536, 49152, 8192, true),
    shape("smollm2-360m", 960, 32, 15, 5, 64, 2560, 49152, 8192, true),
    shape("tinyllama-1.1b", 2048, 22, 32, 4, 64, 5632, 32000, 2048, false),
    shape("gemma-2b", 2048, 18, 8, 1, 256, 16384, 256000, 8192, true),
    shape("phi3-mini", 3072, 32, 32, 32, 96, 8192, 32064, 4096, false),
    shape("mistral-7b", 4096, 32, 32, 8, 128, 14336, 32000, 32768, false),
];

pub fn find(name: &str) -> Result<Shape> {
    match SHAPES.iter().find(|s| s.name.eq_ignore_ascii_case(name)) {
        Some(s) => Ok(*s),
        None => {
            let names: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
            bail!("unknown shape {name:?} (choose one of {})", names.join(", "))
        }
    }
}

impl Shape {
    /// Tensor names and ggml dims (row length first), in llama.cpp's file order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, hd, ff) = (self.hidden, self.head_dim, self.ffn);
        let mut t = vec![("token_embd.weight".to_string(), vec![h, self.vocab])];
        for i in 0..self.layers {
            let p = |n: &str| format!("blk.{i}.{n}.weight");
            t.push((p("attn_norm"), vec![h]));
            t.push((p("attn_q"), vec![h, self.heads * hd]));
            t.push((p("attn_k"), vec![h, self.kv_heads * hd]));
            t.push((p("attn_v"), vec![h, self.kv_heads * hd]));
            t.push((p("attn_output"), vec![self.heads * hd, h]));
            t.push((p("ffn_norm"), vec![h]));
            t.push((p("ffn_gate"), vec![h, ff]));
            t.push((p("ffn_up"), vec![h, ff]));
            t.push((p("ffn_down"), vec![ff, h]));
        }
        t.push(("output_norm.weight".to_string(), vec![h]));
        if !self.tied {
            t.push(("output.weight".to_string(), vec![h, self.vocab]));
        }
        t
    }

    pub fn n_params(&self) -> usize {
        self.tensors().iter().map(|(_, d)| d.iter().product::<usize>()).sum()
    }
}

/// Placeholder SentencePiece vocabulary: `<unk> <s> </s>`, the 256 byte tokens, then words.
fn vocab_metadata(w: &mut GgufWriter, n: usize) {
    let mut tokens = vec![Value::String("<unk>".into()), Value::String("<s>".into()), Value::String("</s>".into())];
    let mut types = vec![Value::I32(2), Value::I32(3), Value::I32(3)];
    for b in 0..256 {
        tokens.push(Value::String(format!("<0x{b:02X}>")));
        types.push(Value::I32(6));
    }
    let mut i = 0;
    while tokens.len() < n {
        tokens.push(Value::String(format!("▁w{i}")));
        types.push(Value::I32(1));
        i += 1;
    }
    tokens.truncate(n);
    types.truncate(n);
    let scores = (0..n).map(|i| Value::F32(-(i as f32))).collect();
    w.kv("tokenizer.ggml.model", Value::String("llama".into()))
        .kv("tokenizer.ggml.tokens", Value::Array(tokens))
        .kv("tokenizer.ggml.scores", Value::Array(scores))
        .kv("tokenizer.ggml.token_type", Value::Array(types))
        .kv("tokenizer.ggml.bos_token_id", Value::U32(1))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(2))
        .kv("tokenizer.ggml.unknown_token_id", Value::U32(0))
        .kv("tokenizer.ggml.add_bos_token", Value::Bool(true));
}

/// Rows in each random pool.
const POOL_ROWS: usize = 64;

/// A GGUF of `shape` with random weights in `ftype`'s mix.
pub fn random_gguf(shape: &Shape, ftype: FileType, seed: u64) -> Result<GgufWriter> {
    let mut w = GgufWriter::new();
    let a = "llama";
    let u = |v: usize| Value::U32(v as u32);
    w.kv("general.architecture", Value::String(a.into()))
        .kv("general.name", Value::String(format!("{} (random weights, smelt bench)", shape.name)))
        .kv("general.file_type", Value::U32(ftype.gguf_id()))
        .kv("general.quantization_version", Value::U32(2))
        .kv(&format!("{a}.vocab_size"), u(shape.vocab))
        .kv(&format!("{a}.context_length"), u(shape.ctx))
        .kv(&format!("{a}.embedding_length"), u(shape.hidden))
        .kv(&format!("{a}.block_count"), u(shape.layers))
        .kv(&format!("{a}.feed_forward_length"), u(shape.ffn))
        .kv(&format!("{a}.attention.head_count"), u(shape.heads))
        .kv(&format!("{a}.attention.head_count_kv"), u(shape.kv_heads))
        .kv(&format!("{a}.attention.key_length"), u(shape.head_dim))
        .kv(&format!("{a}.attention.value_length"), u(shape.head_dim))
        .kv(&format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5))
        .kv(&format!("{a}.rope.freq_base"), Value::F32(10000.0))
        .kv(&format!("{a}.rope.dimension_count"), u(shape.head_dim));
    vocab_metadata(&mut w, shape.vocab);
    let tensors = shape.tensors();
    let mut mixer = Mixer::new(ftype, tensors.iter().map(|(n, _)| n.as_str()), shape.layers);
    let mut rng = Rng::new(seed);
    let mut pools: HashMap<(GgmlType, usize), Vec<u8>> = HashMap::new();
    for (name, dims) in &tensors {
        if dims.len() == 1 {
            let ones: Vec<u8> = (0..dims[0]).flat_map(|_| 1f32.to_le_bytes()).collect();
            w.tensor(name, dims.clone(), GgmlType::F32, ones);
            continue;
        }
        let ty = mixer.choose(name, dims, GgmlType::F32);
        let (cols, rows) = (dims[0], dims[1]);
        let pool = match pools.entry((ty, cols)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let x: Vec<f32> = (0..POOL_ROWS * cols).map(|_| 0.02 * rng.next_normal() as f32).collect();
                e.insert(quantize_f32(ty, &x, cols)?)
            }
        };
        let rb = pool.len() / POOL_ROWS;
        let mut data = Vec::with_capacity(rows * rb);
        while data.len() < rows * rb {
            let take = (rows * rb - data.len()).min(pool.len());
            data.extend_from_slice(&pool[..take]);
        }
        w.tensor(name, dims.clone(), ty, data);
    }
    Ok(w)
}
