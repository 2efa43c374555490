//! Parity with Hugging Face transformers: every architecture's tiny random model
//! (fixtures made by scripts/fixtures/gen_parity.py) must give transformers' f32 logits
//! within 1e-4 at every position, cached decoding (f32 cache) must equal uncached, and greedy
//! decoding must pick transformers' tokens with the same per-step logits. The default f16
//! cache must stay within f16's rounding of them.

use std::path::{Path, PathBuf};

use candle_core::{safetensors, Device, Tensor};
use smelt::load::hf::load_hf_decoder;
use smelt::model::{Decoder, KvCache, KvType, Logits, SeqInput};
use smelt::sample::argmax;

const TOL: f32 = 1e-4;
/// f16 keys and values (11-bit significands): logits within this fraction of their
/// largest magnitude.
const TOL_F16: f32 = 4e-3;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

struct Case {
    name: String,
    input_ids: Vec<u32>,
    greedy: Vec<u32>,
    logits: Tensor,
    greedy_logits: Tensor,
}

fn read_case(dir: &Path) -> Case {
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<u32> { meta[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect() };
    let exp = safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    Case {
        name: meta["case"].as_str().unwrap().to_string(),
        input_ids: ids("input_ids"),
        greedy: ids("greedy"),
        logits: exp["logits"].clone(),
        greedy_logits: exp["greedy_logits"].clone(),
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn all_cases() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("parity fixtures missing")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 13, "expected at least 13 parity cases, found {}", dirs.len());
    dirs
}

fn check(dir: &Path) -> Result<String, String> {
    let case = read_case(dir);
    let model: Decoder = load_hf_decoder(dir, None).map_err(|e| format!("load: {e:#}"))?;
    let n = case.input_ids.len();

    // 1. Uncached forward, every position.
    let all = model
        .forward(&mut [SeqInput { tokens: &case.input_ids, cache: None }], Logits::All)
        .map_err(|e| format!("forward: {e:#}"))?;
    let d_full = max_diff(&all, &case.logits);
    if d_full > TOL {
        return Err(format!("logits differ by {d_full}"));
    }

    // 2. Cached: prefill in two uneven pieces, then one token at a time; compare every row.
    let mut model = model;
    model.kv_type = KvType::F32;
    let mut cache = model.new_cache();
    let cached = cached_rows(&model, &case.input_ids, &mut cache);
    let d_cache = max_diff(&cached, &case.logits);
    if d_cache > TOL {
        return Err(format!("cached logits differ by {d_cache}"));
    }
    // The same with the default f16 cache.
    let mut half_model = load_hf_decoder(dir, None).map_err(|e| format!("load: {e:#}"))?;
    half_model.kv_type = KvType::F16;
    let mut half_cache = half_model.new_cache();
    let d_f16 = max_diff(&cached_rows(&half_model, &case.input_ids, &mut half_cache), &case.logits);
    let scale = case.logits.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    if d_f16 > TOL_F16 * scale || d_f16 == 0.0 {
        return Err(format!("f16-cache logits differ by {d_f16} (scale {scale})"));
    }

    // 3. Greedy decoding with the cache: same tokens, same per-step logits.
    let mut got = Vec::new();
    let mut step_rows = Vec::new();
    let mut next = case.logits.get(n - 1).unwrap();
    for _ in 0..case.greedy.len() {
        step_rows.push(next.clone());
        let tok = argmax(&next.to_vec1::<f32>().unwrap());
        got.push(tok);
        next = model
            .forward(&mut [SeqInput { tokens: &[tok], cache: Some(&mut cache) }], Logits::Last)
            .unwrap()
            .squeeze(0)
            .unwrap();
    }
    if got != case.greedy {
        return Err(format!("greedy {got:?} != transformers {:?}", case.greedy));
    }
    let d_greedy = max_diff(&Tensor::stack(&step_rows, 0).unwrap(), &case.greedy_logits);
    if d_greedy > TOL {
        return Err(format!("greedy-step logits differ by {d_greedy}"));
    }
    Ok(format!("{:<14} full {d_full:.1e}  cached {d_cache:.1e}  f16 cache {:.1e}  greedy {d_greedy:.1e}", case.name, d_f16 / scale))
}

/// Logits of every position, run through `cache`: a prefill in two uneven pieces, then one
/// token at a time.
fn cached_rows(model: &Decoder, ids: &[u32], cache: &mut KvCache) -> Tensor {
    let split = ids.len() / 3;
    let mut rows = Vec::new();
    for piece in [&ids[..split], &ids[split..split + 2]] {
        rows.push(model.forward(&mut [SeqInput { tokens: piece, cache: Some(&mut *cache) }], Logits::All).unwrap());
    }
    for t in &ids[split + 2..] {
        rows.push(model.forward(&mut [SeqInput { tokens: std::slice::from_ref(t), cache: Some(&mut *cache) }], Logits::All).unwrap());
    }
    Tensor::cat(&rows, 0).unwrap()
}

#[test]
fn every_architecture_matches_transformers() {
    let mut failures = Vec::new();
    for dir in all_cases() {
        match check(&dir) {
            Ok(line) => eprintln!("ok   {line}"),
            Err(e) => {
                eprintln!("FAIL {}: {e}", dir.display());
                failures.push(format!("{}: {e}", dir.file_name().unwrap().to_string_lossy()));
            }
        }
    }
    assert!(failures.is_empty(), "parity failures:\n{}", failures.join("\n"));
}

#[test]
fn batched_sequences_equal_separate_runs() {
    // Two sequences of different lengths in one forward pass (continuous batching's shape)
    // must give exactly what each gives alone: uncached beside an f32 cache, and each
    // alone with its own cache of the same type for f16.
    let dir = fixtures().join("qwen2");
    let case = read_case(&dir);
    let mut model = load_hf_decoder(&dir, None).unwrap();
    let a = &case.input_ids[..7];
    let b = &case.input_ids[3..];
    for kv_type in [KvType::F32, KvType::F16] {
        model.kv_type = kv_type;
        let (mut ca, mut cb) = (model.new_cache(), model.new_cache());
        let both = model
            .forward(&mut [SeqInput { tokens: a, cache: Some(&mut ca) }, SeqInput { tokens: b, cache: Some(&mut cb) }], Logits::Last)
            .unwrap();
        let alone = |ids: &[u32]| {
            let mut c = model.new_cache();
            let cache = (kv_type == KvType::F16).then_some(&mut c);
            model.forward(&mut [SeqInput { tokens: ids, cache }], Logits::Last).unwrap()
        };
        let (la, lb) = (alone(a), alone(b));
        assert!(max_diff(&both.get(0).unwrap(), &la.squeeze(0).unwrap()) < 1e-5, "{kv_type}");
        assert!(max_diff(&both.get(1).unwrap(), &lb.squeeze(0).unwrap()) < 1e-5, "{kv_type}");
    }
}

#[test]
fn config_mismatch_is_a_clear_error() {
    // A config promising more layers than the weights hold must name the missing tensor.
    let src = fixtures().join("llama");
    let tmp = std::env::temp_dir().join(format!("smelt-parity-bad-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["model.safetensors", "generation_config.json"] {
        std::fs::copy(src.join(f), tmp.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["num_hidden_layers"] = serde_json::json!(9);
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    let err = format!("{:#}", load_hf_decoder(&tmp, None).unwrap_err());
    assert!(err.contains("missing tensor") && err.contains("blk.2."), "{err}");
    cfg["num_hidden_layers"] = serde_json::json!(2);
    cfg["hidden_size"] = serde_json::json!(48);
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    let err = format!("{:#}", load_hf_decoder(&tmp, None).unwrap_err());
    assert!(err.contains("shape"), "{err}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
