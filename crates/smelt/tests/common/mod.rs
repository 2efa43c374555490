//! Shared test helpers: the test-data folder, a tiny valid GGUF model built in memory,
//! and running the `smelt` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use smelt::load::gguf::{GgmlType, GgufWriter, Value};
use smelt::sample::Rng;

/// `$SMELT_TEST_DATA` (default `~/.cache/smelt-test`), filled by `scripts/fetch-test-data.sh`.
pub fn test_data() -> PathBuf {
    let dir = std::env::var_os("SMELT_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/smelt-test"));
    assert!(
        dir.join("models").is_dir(),
        "test data missing in {}: run scripts/fetch-test-data.sh first",
        dir.display()
    );
    dir
}

pub fn smollm2() -> PathBuf {
    test_data().join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn gemma3() -> PathBuf {
    test_data().join("models/gemma-3-270m-q4_k_m.gguf")
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// A fresh temporary folder, removed by the caller (or left for inspection on failure).
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smelt-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Shape of the tiny model.
pub struct Tiny {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub ctx: usize,
    pub template: Option<&'static str>,
}

impl Default for Tiny {
    fn default() -> Self {
        Tiny { hidden: 32, layers: 2, heads: 4, kv_heads: 2, ffn: 48, ctx: 128, template: Some(CHATML) }
    }
}

pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The vocabulary: specials, 256 byte tokens, then a few word pieces (SentencePiece style).
pub fn tiny_vocab() -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
    let mut types = vec![2, 3, 3, 3, 3];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for w in ["▁", "e", "t", "a", "o", "▁t", "he", "▁the", "▁a", "in", "▁hello", "▁world", "ll", "lo", "he", "▁i", "s", "▁is"] {
        if !tokens.contains(&w.to_string()) {
            tokens.push(w.to_string());
            types.push(1);
        }
    }
    let scores = (0..tokens.len()).map(|i| if types[i] == 1 { -(i as f32) } else { 0.0 }).collect();
    (tokens, scores, types)
}

impl Tiny {
    /// A valid llama-architecture GGUF with random F32 weights.
    pub fn writer(&self) -> GgufWriter {
        let (tokens, scores, types) = tiny_vocab();
        let vocab = tokens.len();
        let hd = self.hidden / self.heads;
        let mut w = GgufWriter::new();
        let s = |x: &str| Value::String(x.to_string());
        w.kv("general.architecture", s("llama"))
            .kv("general.name", s("tiny test model"))
            .kv("llama.block_count", Value::U32(self.layers as u32))
            .kv("llama.context_length", Value::U32(self.ctx as u32))
            .kv("llama.embedding_length", Value::U32(self.hidden as u32))
            .kv("llama.feed_forward_length", Value::U32(self.ffn as u32))
            .kv("llama.attention.head_count", Value::U32(self.heads as u32))
            .kv("llama.attention.head_count_kv", Value::U32(self.kv_heads as u32))
            .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
            .kv("llama.rope.freq_base", Value::F32(10000.0))
            .kv("tokenizer.ggml.model", s("llama"))
            .kv("tokenizer.ggml.tokens", Value::Array(tokens.iter().map(|t| s(t)).collect()))
            .kv("tokenizer.ggml.scores", Value::Array(scores.into_iter().map(Value::F32).collect()))
            .kv("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect()))
            .kv("tokenizer.ggml.bos_token_id", Value::U32(1))
            .kv("tokenizer.ggml.eos_token_id", Value::U32(2))
            .kv("tokenizer.ggml.unknown_token_id", Value::U32(0))
            .kv("tokenizer.ggml.add_bos_token", Value::Bool(true));
        if let Some(t) = self.template {
            w.kv("tokenizer.chat_template", s(t));
        }
        let mut rng = Rng::new(7);
        let mut t = |name: &str, dims: Vec<usize>, scale: f32, base: f32| {
            let n: usize = dims.iter().product();
            let data: Vec<u8> =
                (0..n).flat_map(|_| (base + scale * rng.next_normal() as f32).to_le_bytes()).collect();
            w.tensor(name, dims, GgmlType::F32, data);
        };
        let (h, ff) = (self.hidden, self.ffn);
        t("token_embd.weight", vec![h, vocab], 0.5, 0.0);
        t("output_norm.weight", vec![h], 0.1, 1.0);
        for i in 0..self.layers {
            t(&format!("blk.{i}.attn_norm.weight"), vec![h], 0.1, 1.0);
            t(&format!("blk.{i}.attn_q.weight"), vec![h, self.heads * hd], 0.2, 0.0);
            t(&format!("blk.{i}.attn_k.weight"), vec![h, self.kv_heads * hd], 0.2, 0.0);
            t(&format!("blk.{i}.attn_v.weight"), vec![h, self.kv_heads * hd], 0.2, 0.0);
            t(&format!("blk.{i}.attn_output.weight"), vec![self.heads * hd, h], 0.2, 0.0);
            t(&format!("blk.{i}.ffn_norm.weight"), vec![h], 0.1, 1.0);
            t(&format!("blk.{i}.ffn_gate.weight"), vec![h, ff], 0.2, 0.0);
            t(&format!("blk.{i}.ffn_up.weight"), vec![h, ff], 0.2, 0.0);
            t(&format!("blk.{i}.ffn_down.weight"), vec![ff, h], 0.2, 0.0);
        }
        w
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.writer().to_bytes()).unwrap();
    }
}

pub fn smelt() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smelt"));
    // Keep tests away from the user's cache and from the network.
    c.env("SMELT_OFFLINE", "1").env("SMELT_HOME", std::env::temp_dir().join("smelt-test-home"));
    c
}

pub fn run(args: &[&str]) -> Output {
    smelt().args(args).output().expect("cannot run smelt")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed run with exactly one line on stderr, starting "error:", containing `needle`.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert_eq!(o.status.code(), Some(1), "exit code (a panic would be 101): {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(needle), "expected {needle:?} in: {err}");
}
