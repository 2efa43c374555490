//! Which type each tensor gets: llama.cpp's rules for a file type (llama-quant.cpp,
//! `llama_tensor_get_type`), for the types smelt writes.
//!
//! - Only 2-D-or-more tensors named `*weight` are quantized; norms stay as they are.
//! - `output.weight` (and `token_embd.weight` when the embeddings are tied) gets Q6_K,
//!   except for Q8_0 files (Q8_0), or Q8_0 when its rows do not split into its blocks.
//! - Q4_K_M / Q5_K_M: `attn_v` (and fused `attn_qkv`) gets Q6_K in "more bits" layers
//!   (the first and last eighth, and every third in between), as does `ffn_down`.
//! - A row length the type's block does not divide falls back: Q4_K→Q5_0, Q5_K→Q5_1,
//!   Q6_K→Q8_0, and to F16 when even that does not fit.

use anyhow::{bail, Result};

use crate::load::gguf::GgmlType;

/// A whole-file quantization choice (llama.cpp's `LLAMA_FTYPE_MOSTLY_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum FileType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K_M,
    Q5_K_M,
    Q6_K,
}

impl FileType {
    pub const ALL: [FileType; 10] = [
        FileType::F32,
        FileType::F16,
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::Q8_0,
        FileType::Q4_K_M,
        FileType::Q5_K_M,
        FileType::Q6_K,
    ];

    pub fn parse(s: &str) -> Result<FileType> {
        let l = s.to_ascii_lowercase();
        match FileType::ALL.iter().find(|t| t.name() == l) {
            Some(t) => Ok(*t),
            None => {
                let names: Vec<&str> = FileType::ALL.iter().map(|t| t.name()).collect();
                bail!("unknown quantization type {s:?} (choose one of {})", names.join(", "))
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "f32",
            FileType::F16 => "f16",
            FileType::Q4_0 => "q4_0",
            FileType::Q4_1 => "q4_1",
            FileType::Q5_0 => "q5_0",
            FileType::Q5_1 => "q5_1",
            FileType::Q8_0 => "q8_0",
            FileType::Q4_K_M => "q4_k_m",
            FileType::Q5_K_M => "q5_k_m",
            FileType::Q6_K => "q6_k",
        }
    }

    /// The type most matrices get.
    pub fn base(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::F16 => GgmlType::F16,
            FileType::Q4_0 => GgmlType::Q4_0,
            FileType::Q4_1 => GgmlType::Q4_1,
            FileType::Q5_0 => GgmlType::Q5_0,
            FileType::Q5_1 => GgmlType::Q5_1,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q4_K_M => GgmlType::Q4_K,
            FileType::Q5_K_M => GgmlType::Q5_K,
            FileType::Q6_K => GgmlType::Q6_K,
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn gguf_id(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q4_K_M => 15,
            FileType::Q5_K_M => 17,
            FileType::Q6_K => 18,
        }
    }
}

/// What a tensor is, for the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnV,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Category::TokenEmbd
    } else if name.contains("attn_v.weight") || name.contains("attn_qkv.weight") || name.contains("attn_kv_b.weight") {
        Category::AttnV
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// Whether llama.cpp would quantize a tensor of this name and rank at all.
pub fn is_quantizable(name: &str, n_dims: usize) -> bool {
    n_dims >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("position_embd")
        && !name.contains("token_types")
        && !name.contains("ssm_conv1d")
        && !name.contains("attn_rel_b.weight")
}

fn use_more_bits(i: usize, n: usize) -> bool {
    // The last test only runs when i ≥ n/8, so the subtraction cannot wrap.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// Picks types tensor by tensor, in file order (the counters follow llama.cpp's).
pub struct Mixer {
    ftype: FileType,
    tied: bool,
    n_attn_v: usize,
    i_attn_v: usize,
    n_layers: usize,
    i_ffn_down: usize,
}

impl Mixer {
    /// `names`: every tensor name in the file; `n_layers`: the block count.
    pub fn new<'a>(ftype: FileType, names: impl IntoIterator<Item = &'a str>, n_layers: usize) -> Mixer {
        let (mut tied, mut n_attn_v) = (true, 0);
        for n in names {
            match category(n) {
                Category::Output => tied = false,
                Category::AttnV => n_attn_v += 1,
                _ => {}
            }
        }
        Mixer { ftype, tied, n_attn_v, i_attn_v: 0, n_layers, i_ffn_down: 0 }
    }

    /// The type for the next tensor: `name`, ggml dims (`dims[0]` = row length), current type.
    pub fn choose(&mut self, name: &str, dims: &[usize], current: GgmlType) -> GgmlType {
        if !is_quantizable(name, dims.len()) {
            return current;
        }
        let base = self.ftype.base();
        if !base.is_quantized() {
            return base;
        }
        let cols = dims[0];
        let k_m = matches!(self.ftype, FileType::Q4_K_M | FileType::Q5_K_M);
        let cat = category(name);
        let mut t = base;
        if cat == Category::Output || (self.tied && cat == Category::TokenEmbd) {
            if !cols.is_multiple_of(base.block_size()) {
                t = GgmlType::Q8_0;
            } else if base != GgmlType::Q8_0 {
                t = GgmlType::Q6_K;
            }
        } else if cat == Category::AttnV {
            if k_m && use_more_bits(self.i_attn_v, self.n_attn_v) {
                t = GgmlType::Q6_K;
            }
            self.i_attn_v += 1;
        } else if cat == Category::FfnDown {
            if k_m && use_more_bits(self.i_ffn_down, self.n_layers) {
                t = GgmlType::Q6_K;
            }
            self.i_ffn_down += 1;
        }
        fallback(t, cols)
    }
}

/// The layer of `blk.N.…`, −1 for other tensors.
fn layer_of(name: &str) -> i64 {
    name.strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

/// llama.cpp's tensor order (its loader's `weight_name_comparer`): tensors outside the
/// blocks first, then block by block, by name within each. The layer counters of the
/// mixes run in this order, and llama-quantize writes its files in it.
pub fn llama_order(a: &str, b: &str) -> std::cmp::Ordering {
    (layer_of(a), a).cmp(&(layer_of(b), b))
}

/// llama.cpp's `tensor_type_fallback` for rows of `cols` values.
pub fn fallback(t: GgmlType, cols: usize) -> GgmlType {
    if cols.is_multiple_of(t.block_size()) {
        return t;
    }
    let f = match t {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    if cols.is_multiple_of(f.block_size()) {
        f
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_layers_match_llama_cpp() {
        // n = 22 (TinyLlama): n/8 = 2, 7n/8 = 19 → 0,1, then 4,7,10,13,16, then 19,20,21.
        let more: Vec<usize> = (0..22).filter(|&i| use_more_bits(i, 22)).collect();
        assert_eq!(more, vec![0, 1, 4, 7, 10, 13, 16, 19, 20, 21]);
    }

    #[test]
    fn q4_k_m_mix() {
        let mut names = vec!["token_embd.weight".to_string(), "output.weight".to_string()];
        for i in 0..8 {
            for t in ["attn_q", "attn_k", "attn_v", "ffn_down", "attn_norm"] {
                names.push(format!("blk.{i}.{t}.weight"));
            }
        }
        let mut m = Mixer::new(FileType::Q4_K_M, names.iter().map(String::as_str), 8);
        assert_eq!(m.choose("token_embd.weight", &[256, 100], GgmlType::F32), GgmlType::Q4_K);
        assert_eq!(m.choose("output.weight", &[256, 100], GgmlType::F32), GgmlType::Q6_K);
        let mut v = vec![];
        for i in 0..8 {
            assert_eq!(m.choose(&format!("blk.{i}.attn_q.weight"), &[256, 256], GgmlType::F32), GgmlType::Q4_K);
            v.push(m.choose(&format!("blk.{i}.attn_v.weight"), &[256, 64], GgmlType::F32));
            m.choose(&format!("blk.{i}.ffn_down.weight"), &[256, 256], GgmlType::F32);
            assert_eq!(m.choose(&format!("blk.{i}.attn_norm.weight"), &[256], GgmlType::F32), GgmlType::F32);
        }
        // n = 8: first (0), last (7), and (i − 1) % 3 == 2 → 3, 6.
        use GgmlType::{Q4_K as A, Q6_K as B};
        assert_eq!(v, vec![B, A, A, B, A, A, B, B]);
        // Rows of 96 do not fit 256-blocks: Q4_K falls back to Q5_0.
        assert_eq!(m.choose("blk.0.attn_q.weight", &[96, 32], GgmlType::F32), GgmlType::Q5_0);
    }

    #[test]
    fn tied_embeddings_get_the_output_type() {
        let names = ["token_embd.weight", "blk.0.attn_q.weight"];
        let mut m = Mixer::new(FileType::Q4_0, names, 1);
        assert_eq!(m.choose("token_embd.weight", &[64, 10], GgmlType::F16), GgmlType::Q8_0);
        let mut m = Mixer::new(FileType::Q4_0, names, 1);
        assert_eq!(m.choose("token_embd.weight", &[256, 10], GgmlType::F16), GgmlType::Q6_K);
        let mut m = Mixer::new(FileType::Q8_0, names, 1);
        assert_eq!(m.choose("token_embd.weight", &[256, 10], GgmlType::F16), GgmlType::Q8_0);
        let mut m = Mixer::new(FileType::F16, names, 1);
        assert_eq!(m.choose("token_embd.weight", &[256, 10], GgmlType::F32), GgmlType::F16);
    }

    #[test]
    fn order_is_by_layer_then_name() {
        let mut v = vec!["blk.10.attn_v.weight", "output.weight", "blk.2.ffn_up.weight", "blk.2.attn_k.weight", "token_embd.weight"];
        v.sort_by(|a, b| llama_order(a, b));
        assert_eq!(v, ["output.weight", "token_embd.weight", "blk.2.attn_k.weight", "blk.2.ffn_up.weight", "blk.10.attn_v.weight"]);
    }

    #[test]
    fn parse_names() {
        assert_eq!(FileType::parse("Q4_K_M").unwrap(), FileType::Q4_K_M);
        assert!(FileType::parse("q3_k").unwrap_err().to_string().contains("q4_k_m"));
    }
}
