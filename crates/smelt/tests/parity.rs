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

/// A copy of a case's model folder (config, weights, shards) without the expected-output
/// files, with `edit` applied to its config.
fn model_copy(src: &Path, tag: &str, edit: &dyn Fn(&mut serde_json::Value)) -> PathBuf {
    let tmp = std::env::temp_dir().join(format!("smelt-convert-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("model") {
            std::fs::copy(&p, tmp.join(&name)).unwrap();
        }
    }
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    tmp
}

/// Every architecture's folder converts to a GGUF in llama.cpp's layout whose logits are
/// the folder's (the file is read back by smelt's GGUF loader: llama q/k permuted for the
/// interleaved rope, Gemma norms shifted, rope factors as tensors, Gemma windows as keys;
/// the folder's own logits are transformers', by `every_architecture_matches_transformers`).
/// Where llama.cpp has no sliding window for the architecture, the conversion says so and
/// the logits agree up to the window. Gemma cases with a query scale llama.cpp cannot
/// express (`inexpressible_folders_are_refused`) are converted with the standard one.
#[test]
fn every_architecture_converts_to_gguf() {
    use smelt::export::convert::hf_dir_to_gguf;
    use smelt::load::tensors::GgufTensors;
    let mut failures = Vec::new();
    for src in all_cases() {
        let name = src.file_name().unwrap().to_string_lossy().into_owned();
        let dir = model_copy(&src, &name, &|c| {
            if c.get("query_pre_attn_scalar").is_some() {
                c["query_pre_attn_scalar"] = c.get("head_dim").cloned().unwrap_or(serde_json::json!(16));
            }
        });
        let case = read_case(&src);
        let hf = load_hf_decoder(&dir, None).unwrap();
        let want = hf.forward(&mut [SeqInput { tokens: &case.input_ids, cache: None }], Logits::All).unwrap();
        let c = match hf_dir_to_gguf(&dir) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{name}: {e:#}"));
                continue;
            }
        };
        let window = hf.cfg.layers.iter().filter_map(|l| l.sliding_window).min();
        let kept = c.config.layers.iter().any(|l| l.sliding_window.is_some());
        let rows = match (window, kept) {
            (Some(w), false) => {
                assert!(c.notes.iter().any(|n| n.contains("sliding window")), "{name}: window dropped without a note");
                w.min(case.input_ids.len())
            }
            _ => {
                assert!(c.notes.is_empty(), "{name}: {:?}", c.notes);
                case.input_ids.len()
            }
        };
        let file = std::sync::Arc::new(c.to_gguf().unwrap());
        let model = Decoder::load(&c.config, &GgufTensors::new(file.clone(), Device::Cpu), 64, &Device::Cpu).unwrap();
        let all = model.forward(&mut [SeqInput { tokens: &case.input_ids, cache: None }], Logits::All).unwrap();
        let d = max_diff(&all.narrow(0, 0, rows).unwrap(), &want.narrow(0, 0, rows).unwrap());
        eprintln!("{name}: {} tensors, {rows} positions compared, max diff {d:.2e}", file.tensors.len());
        if d > 1e-5 {
            failures.push(format!("{name}: GGUF logits differ from the folder's by {d}"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    assert!(failures.is_empty(), "conversion failures:\n{}", failures.join("\n"));
}

/// What GGUF cannot express is refused with the field, never written as another model.
#[test]
fn inexpressible_folders_are_refused() {
    use smelt::export::convert::hf_dir_to_gguf;
    let refused = |case: &str, edit: &dyn Fn(&mut serde_json::Value)| -> String {
        let dir = model_copy(&fixtures().join(case), &format!("bad-{case}"), edit);
        let e = format!("{:#}", hf_dir_to_gguf(&dir).err().expect("refused"));
        std::fs::remove_dir_all(&dir).unwrap();
        e
    };
    // llama.cpp scales Gemma queries by 1/sqrt(head_dim) (but for the 27B shapes).
    let e = refused("gemma3", &|_| {});
    assert!(e.contains("attention scale"), "{e}");
    let e = refused("gemma2", &|c| c["query_pre_attn_scalar"] = serde_json::json!(24));
    assert!(e.contains("attention scale"), "{e}");
    // Partial rotary does not fit llama's permuted layout.
    let e = refused("llama", &|c| c["partial_rotary_factor"] = serde_json::json!(0.5));
    assert!(e.contains("partial rotary"), "{e}");
    // Gemma 3's local layers take their rope from one base; a scaled local rope is lost.
    let e = refused("gemma3", &|c| {
        c["query_pre_attn_scalar"] = c["head_dim"].clone();
        c["rope_parameters"] = serde_json::json!({"sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
                                                  "full_attention": {"rope_type": "default", "rope_theta": 1e6}})
    });
    assert!(e.contains("rope"), "{e}");
    // A tensor the layout has no place for.
    let dir = model_copy(&fixtures().join("qwen2"), "extra", &|_| {});
    let extra = std::collections::HashMap::from([("model.layers.0.mlp.extra_proj.weight".to_string(), Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).unwrap())]);
    safetensors::save(&extra, dir.join("model-extra.safetensors")).unwrap();
    let e = format!("{:#}", hf_dir_to_gguf(&dir).err().expect("refused"));
    assert!(e.contains("extra_proj") && e.contains("no place"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
