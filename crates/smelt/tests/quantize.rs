//! smelt's weight quantizers against llama.cpp's reference ones (fixture bytes made by
//! ggml's `quantize_row_*_ref`, see scripts/fixtures/gen_quant_refs.py), and round-trip
//! error bounds on random data.

use smelt::kernels::blocks::dequantize_row;
use smelt::kernels::quantize::quantize;
use smelt::load::gguf::GgmlType;
use smelt::sample::Rng;

mod common;

const ROWS: usize = 16;
const COLS: usize = 512;

fn input() -> Vec<f32> {
    let b = std::fs::read(common::fixture("quant/input.f32")).unwrap();
    assert_eq!(b.len(), ROWS * COLS * 4);
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Compare with ggml's bytes; returns the number of blocks that differ.
fn differing_blocks(t: GgmlType, file: &str) -> usize {
    let x = input();
    let ours = quantize(t, &x).unwrap();
    let theirs = std::fs::read(common::fixture(&format!("quant/{file}.bin"))).unwrap();
    assert_eq!(ours.len(), theirs.len(), "{t}: size");
    let ts = t.type_size();
    let bad: Vec<usize> = (0..ours.len() / ts).filter(|&b| ours[b * ts..(b + 1) * ts] != theirs[b * ts..(b + 1) * ts]).collect();
    // Whatever differs must still dequantize to nearly the same values.
    let (mut a, mut r) = (vec![0f32; x.len()], vec![0f32; x.len()]);
    dequantize_row(t, &ours, &mut a);
    dequantize_row(t, &theirs, &mut r);
    for &b in &bad {
        let bs = t.block_size();
        let scale = x[b * bs..(b + 1) * bs].iter().fold(0f32, |m, v| m.max(v.abs()));
        for i in b * bs..(b + 1) * bs {
            assert!((a[i] - r[i]).abs() <= scale * 0.2, "{t} block {b} value {i}: ours {} ggml {}", a[i], r[i]);
        }
    }
    bad.len()
}

#[test]
fn legacy_types_are_bit_identical_to_ggml() {
    for (t, f) in [
        (GgmlType::Q4_0, "q4_0"),
        (GgmlType::Q4_1, "q4_1"),
        (GgmlType::Q5_0, "q5_0"),
        (GgmlType::Q5_1, "q5_1"),
        (GgmlType::Q8_0, "q8_0"),
    ] {
        assert_eq!(differing_blocks(t, f), 0, "{t}");
    }
}

#[test]
fn k_quants_match_ggml() {
    // The scale searches are sensitive to float rounding order (a compiler-fused multiply-add
    // would flip near ties); smelt follows ggml's order, and these come out bit-identical.
    for (t, f) in [(GgmlType::Q4_K, "q4_K"), (GgmlType::Q5_K, "q5_K"), (GgmlType::Q6_K, "q6_K")] {
        let n = differing_blocks(t, f);
        eprintln!("{t}: {n} of {} super-blocks differ from ggml", ROWS * COLS / 256);
        assert_eq!(n, 0, "{t}: {n} super-blocks differ from ggml's reference");
    }
}

/// Root-mean-square error of dequantize(quantize(x)) relative to the rms of x.
fn rel_rmse(t: GgmlType, x: &[f32]) -> f32 {
    let q = quantize(t, x).unwrap();
    let mut y = vec![0f32; x.len()];
    if t == GgmlType::F16 {
        for (i, c) in q.chunks_exact(2).enumerate() {
            y[i] = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
        }
    } else {
        dequantize_row(t, &q, &mut y);
    }
    let err: f64 = x.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let sig: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (err / sig).sqrt() as f32
}

#[test]
fn round_trip_error_is_within_each_types_bound() {
    let mut rng = Rng::new(7);
    let x: Vec<f32> = (0..64 * 256).map(|_| (rng.next_f64() as f32 - 0.5) * 0.1 + (rng.next_f64() as f32 - 0.5) * 0.02).collect();
    // Bounds for uniform-ish data: half a step of 2^bits levels over the range, with margin.
    let bounds = [
        (GgmlType::F16, 1e-3),
        (GgmlType::Q8_0, 0.006),
        (GgmlType::Q6_K, 0.02),
        (GgmlType::Q5_0, 0.04),
        (GgmlType::Q5_1, 0.035),
        (GgmlType::Q5_K, 0.035),
        (GgmlType::Q4_0, 0.08),
        (GgmlType::Q4_1, 0.07),
        (GgmlType::Q4_K, 0.07),
    ];
    for (t, bound) in bounds {
        let e = rel_rmse(t, &x);
        eprintln!("{t}: relative rmse {e:.5}");
        assert!(e <= bound, "{t}: relative rmse {e} above {bound}");
        assert!(e > 0.0 || t == GgmlType::F16, "{t}: no error at all is suspicious");
    }
}

#[test]
fn zero_and_constant_blocks_round_trip_exactly() {
    for t in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let x = vec![0f32; 256];
        let q = quantize(t, &x).unwrap();
        let mut y = vec![1f32; 256];
        dequantize_row(t, &q, &mut y);
        assert!(y.iter().all(|&v| v == 0.0), "{t}: zeros");
    }
}

#[test]
fn bad_lengths_are_errors() {
    assert!(quantize(GgmlType::Q4_K, &[0.0; 32]).is_err());
    assert!(quantize(GgmlType::Q4_0, &[0.0; 33]).is_err());
    assert!(quantize(GgmlType::Q2_K, &[0.0; 256]).is_err());
}

// ---- whole files: `smelt quantize` on a tiny model, then load and run the result ----

use common::Tiny;
use smelt::load::gguf::GgufFile;
use smelt::load::{load, LoadOptions};

/// A tiny model with rows of 256 so the K-quants apply (not their fallbacks).
fn tiny256() -> Tiny {
    Tiny { hidden: 256, layers: 2, heads: 4, kv_heads: 2, ffn: 512, ctx: 64, template: Some(common::CHATML) }
}

fn logits(path: &std::path::Path, tokens: &[u32]) -> Vec<f32> {
    let m = load(path, &LoadOptions { ctx: Some(32), ..Default::default() }).unwrap();
    let mut cache = m.decoder.new_cache();
    m.decoder.step(tokens, &mut cache).unwrap()
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let e: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let s: f32 = b.iter().map(|y| y * y).sum();
    (e / s).sqrt()
}

#[test]
fn quantized_tiny_models_load_and_run() {
    let dir = common::temp_dir("quantize");
    let src = dir.join("f32.gguf");
    // Tiny's weights make a chaotic network (any perturbation is amplified); scaled down,
    // the layers are well-conditioned and logit errors reflect the weight errors.
    let mut w = tiny256().writer();
    for (name, dims, _, data) in &mut w.tensors {
        if dims.len() == 2 && name.starts_with("blk.") {
            for c in data.chunks_exact_mut(4) {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * 0.2;
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    std::fs::write(&src, w.to_bytes()).unwrap();
    let tokens = [1u32, 200, 270, 30, 5];
    let base = logits(&src, &tokens);
    // (type, tensor types expected among the matrices, max relative logit error: about twice
    // what was measured, in the order of the types' bits)
    let cases: &[(&str, &[&str], f32)] = &[
        ("f16", &["F16"], 0.002),
        ("q8_0", &["Q8_0"], 0.025),
        ("q6_k", &["Q6_K"], 0.06),
        ("q5_k_m", &["Q5_K", "Q6_K"], 0.09),
        ("q5_0", &["Q5_0", "Q6_K"], 0.1),
        ("q5_1", &["Q5_1", "Q6_K"], 0.1),
        ("q4_k_m", &["Q4_K", "Q6_K"], 0.15),
        ("q4_0", &["Q4_0", "Q6_K"], 0.18),
        ("q4_1", &["Q4_1", "Q6_K"], 0.17),
    ];
    let f = GgufFile::open(&src).unwrap();
    for &(ty, want, tol) in cases {
        let out = dir.join(format!("{ty}.gguf"));
        let o = common::run(&["quantize", src.to_str().unwrap(), out.to_str().unwrap(), "--type", ty]);
        assert!(o.status.success(), "{ty}: {}", common::stderr(&o));
        let q = GgufFile::open(&out).unwrap();
        // Metadata carried over, file type set.
        assert_eq!(q.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap().len(), f.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap().len());
        assert_eq!(q.get_str("tokenizer.chat_template"), f.get_str("tokenizer.chat_template"));
        assert_eq!(q.get_i64("llama.block_count"), Some(2));
        let mut types: Vec<&str> = q.tensors.iter().filter(|t| t.dims.len() == 2).map(|t| t.dtype.name()).collect();
        types.sort();
        types.dedup();
        assert_eq!(types, want, "{ty}: matrix types");
        assert!(q.tensors.iter().filter(|t| t.dims.len() == 1).all(|t| t.dtype == GgmlType::F32), "{ty}: norms stay f32");
        let ql = logits(&out, &tokens);
        let e = rel_err(&ql, &base);
        eprintln!("{ty}: {} bytes, relative logit error {e:.4}", std::fs::metadata(&out).unwrap().len());
        assert!(e < tol && e > 0.0, "{ty}: relative logit error {e} (bound {tol})");
    }
    // Quantizing a quantized file works (with a note) and still runs.
    let again = dir.join("again.gguf");
    let o = common::run(&["quantize", dir.join("q8_0.gguf").to_str().unwrap(), again.to_str().unwrap(), "--type", "q4_0"]);
    assert!(o.status.success() && common::stdout(&o).contains("already quantized"), "{}", common::stderr(&o));
    assert!(logits(&again, &tokens).iter().all(|v| v.is_finite()));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A Hugging Face folder (transformers' tiny llama, with its tokenizer) quantizes straight
/// to GGUF: tokenizer and hyper-parameters carried over, and the GGUF's logits follow the
/// folder's (exact rope re-layout, so f32 matches to rounding). A layout the GGUF writer
/// does not know is refused in one line.
#[test]
fn hugging_face_folders_quantize_to_gguf() {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora/base");
    let dir = common::temp_dir("quantize-hf");
    let tokens = [1u32, 100, 200, 30, 5, 17];
    let hf = {
        let m = load(&base, &LoadOptions { ctx: Some(32), ..Default::default() }).unwrap();
        let mut cache = m.decoder.new_cache();
        m.decoder.step(&tokens, &mut cache).unwrap()
    };
    for (ty, want, tol) in [("f32", "F32", 1e-5f32), ("f16", "F16", 0.002), ("q8_0", "Q8_0", 0.05)] {
        let out = dir.join(format!("{ty}.gguf"));
        let o = common::run(&["quantize", base.to_str().unwrap(), out.to_str().unwrap(), "--type", ty]);
        assert!(o.status.success(), "{ty}: {}", common::stderr(&o));
        let q = GgufFile::open(&out).unwrap();
        assert_eq!(q.get_str("general.architecture"), Some("llama"));
        assert_eq!(q.get_i64("llama.block_count"), Some(2));
        assert_eq!(q.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap().len(), 272);
        assert_eq!(q.tensor_info("blk.0.attn_q.weight").unwrap().dtype.name(), want, "{ty}");
        let e = rel_err(&logits(&out, &tokens), &hf);
        assert!(e < tol, "{ty}: relative logit error {e} against the folder (bound {tol})");
    }
    // A folder without its tokenizer, or with a tokenizer larger than the embedding table,
    // is refused in one line and nothing is written.
    let qwen = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/qwen2");
    let out = dir.join("qwen.gguf");
    common::assert_one_line_error(&common::run(&["quantize", qwen.to_str().unwrap(), out.to_str().unwrap(), "--type", "q8_0"]), "tokenizer.json");
    let small = dir.join("qwen2-with-tokenizer");
    std::fs::create_dir_all(&small).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(qwen.join(f), small.join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(base.join(f), small.join(f)).unwrap();
    }
    common::assert_one_line_error(&common::run(&["quantize", small.to_str().unwrap(), out.to_str().unwrap(), "--type", "q8_0"]), "268 tokens");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn quantize_errors_are_one_line() {
    let dir = common::temp_dir("quantize-err");
    let src = dir.join("m.gguf");
    Tiny::default().write(&src);
    let out = dir.join("o.gguf");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    common::assert_one_line_error(&common::run(&["quantize", &s(&src), &s(&out), "--type", "q3_k"]), "q4_k_m");
    common::assert_one_line_error(&common::run(&["quantize", &s(&dir.join("none.gguf")), &s(&out), "--type", "q4_0"]), "no such file");
    common::assert_one_line_error(&common::run(&["quantize", &s(&src), &s(&src), "--type", "q4_0"]), "overwrite");
    std::fs::write(dir.join("bad.gguf"), b"GGUF\x03\x00\x00\x00garbage").unwrap();
    common::assert_one_line_error(&common::run(&["quantize", &s(&dir.join("bad.gguf")), &s(&out), "--type", "q4_0"]), "bad.gguf");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
