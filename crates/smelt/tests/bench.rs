//! `smelt bench`: shapes, and a run on a tiny model with JSON output.

mod common;

use common::Tiny;
use smelt::bench::shapes::{find, random_gguf, SHAPES};
use smelt::load::gguf::GgufFile;
use smelt::quantize::FileType;

#[test]
fn shapes_have_their_real_parameter_counts() {
    // As llama-bench / transformers report them.
    let want = [("tinyllama-1.1b", 1_100_048_384usize), ("smollm2-135m", 134_515_008), ("stories110m", 109_529_856)];
    for (name, n) in want {
        assert_eq!(find(name).unwrap().n_params(), n, "{name}");
    }
    assert!(find("gpt-5").unwrap_err().to_string().contains("tinyllama-1.1b"));
    assert!(SHAPES.len() >= 6);
}

#[test]
fn random_shape_models_are_valid_ggufs() {
    let s = find("stories110m").unwrap();
    let w = random_gguf(&s, FileType::Q4_K_M, 1).unwrap();
    let f = GgufFile::from_vec(w.to_bytes()).unwrap();
    assert_eq!(f.get_i64("llama.block_count"), Some(12));
    let n: usize = f.tensors.iter().map(|t| t.n_elements()).sum();
    assert_eq!(n, s.n_params());
    assert_eq!(f.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap().len(), 32000);
    // The mix: Q6_K for the tied embeddings/output and some attn_v/ffn_down.
    assert_eq!(f.tensor_info("token_embd.weight").unwrap().dtype.name(), "Q6_K");
    assert_eq!(f.tensor_info("blk.0.ffn_down.weight").unwrap().dtype.name(), "Q6_K");
    assert_eq!(f.tensor_info("blk.2.ffn_down.weight").unwrap().dtype.name(), "Q4_K");
    let dec = smelt::bench::decoder_from_gguf(std::sync::Arc::new(f), 8).unwrap();
    let mut cache = dec.new_cache();
    assert!(dec.step(&[1, 2, 3], &mut cache).unwrap().iter().all(|v| v.is_finite()));
}

#[test]
fn bench_reports_json() {
    let dir = common::temp_dir("bench");
    let p = dir.join("m.gguf");
    Tiny::default().write(&p);
    let o = common::run(&["bench", p.to_str().unwrap(), "-p", "16", "-n", "4", "-d", "8", "-r", "2", "-t", "1", "--json"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    let tests = v["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 2);
    assert_eq!(tests[0]["name"], "pp16 @ d8");
    assert_eq!(tests[1]["name"], "tg4 @ d8");
    for t in tests {
        assert_eq!(t["samples"].as_array().unwrap().len(), 2);
        assert!(t["mean"].as_f64().unwrap() > 0.0);
    }
    assert!(v["mem_read_gbs"].as_f64().unwrap() > 0.1);
    assert!(v["weight_bytes_per_token"].as_u64().unwrap() > 0);
    assert_eq!(v["threads"], 1);
    let o = common::run(&["bench", p.to_str().unwrap(), "-p", "0", "-n", "0"]);
    common::assert_one_line_error(&o, "nothing to measure");
    let o = common::run(&["bench", p.to_str().unwrap(), "-p", "200"]);
    common::assert_one_line_error(&o, "context");
    std::fs::remove_dir_all(&dir).unwrap();
}
