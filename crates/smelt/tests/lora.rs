//! LoRA: adapters written by Hugging Face PEFT give PEFT's logits in smelt (HF base, and
//! the same base as GGUF with its permuted q/k rows, f32 and quantized); smelt's own
//! adapters round-trip; `smelt finetune` learns, masks, packs, resumes and reports bad
//! input clearly. Fixtures: tests/fixtures/lora (scripts/fixtures/gen_lora.py, which also
//! checks smelt-written adapters in PEFT).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::*;
use smelt::export::gguf::{export_gguf, Quant};
use smelt::export::Exportable;
use smelt::load::tensors::{SafetensorsTensors, TensorSource};
use smelt::lora::Adapter;
use smelt::model::{Decoder, Logits, SeqInput};

fn base_dir() -> PathBuf {
    fixture("lora/base")
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("lora/expected.safetensors"), &Device::Cpu).unwrap()
}

fn input_ids(e: &HashMap<String, Tensor>) -> Vec<u32> {
    e["input_ids"].to_vec1::<i64>().unwrap().into_iter().map(|v| v as u32).collect()
}

fn logits(dec: &Decoder, ids: &[u32]) -> Tensor {
    dec.forward(&mut [SeqInput { tokens: ids, cache: None }], Logits::All).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn load(path: &Path) -> Decoder {
    smelt::load::load(path, &smelt::load::LoadOptions { ctx: Some(64), ..Default::default() }).unwrap().decoder
}

/// The fixture base written as a GGUF file by smelt's exporter (q/k rows permuted for
/// llama.cpp's interleaved rope, as every llama GGUF has them).
fn base_as_gguf(quant: Quant, tag: &str) -> PathBuf {
    let dir = base_dir();
    let cfg_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = smelt::load::hf_config::config_from_hf(&cfg_json).unwrap();
    let st = SafetensorsTensors::open(&[dir.join("model.safetensors")], cfg.arch, Device::Cpu).unwrap();
    let tensors = smelt::train::params::llama_tensor_shapes(&cfg)
        .into_iter()
        .map(|(n, _)| {
            let t = st.get_dense(&n).unwrap().unwrap();
            (n, t)
        })
        .collect();
    let shape = smelt::train::config::ModelShape::of_config(&cfg);
    let m = Exportable { shape, cfg, tensors, tokenizer_dir: dir, name: "lora base".into() };
    let out = temp_dir(&format!("lora-gguf-{tag}")).join("base.gguf");
    export_gguf(&m, quant, &out).unwrap();
    out
}

#[test]
fn peft_adapters_give_peft_logits_on_the_hf_base() {
    let e = expected();
    let ids = input_ids(&e);
    let base = load(&base_dir());
    let d = max_diff(&logits(&base, &ids), &e["base"]);
    assert!(d < 1e-4, "base model differs from transformers by {d}");
    for name in ["peft-all", "peft-rslora"] {
        let a = Adapter::load(&fixture(&format!("lora/{name}"))).unwrap();
        let mut dec = base.clone();
        a.attach(&mut dec, 1.0).unwrap();
        let got = logits(&dec, &ids);
        let d = max_diff(&got, &e[name]);
        assert!(d < 1e-4, "{name}: smelt and PEFT differ by {d}");
        assert!(max_diff(&e[name], &e["base"]) > 1e-2, "{name} must change the logits for this to check anything");
    }
}

#[test]
fn peft_adapters_give_peft_logits_on_a_gguf_base() {
    // GGUF llama files permute q/k rows; the adapter's B rows must follow.
    let e = expected();
    let ids = input_ids(&e);
    let base = load(&base_as_gguf(Quant::F32, "f32"));
    assert!(max_diff(&logits(&base, &ids), &e["base"]) < 1e-4);
    for name in ["peft-all", "peft-rslora"] {
        let mut dec = base.clone();
        Adapter::load(&fixture(&format!("lora/{name}"))).unwrap().attach(&mut dec, 1.0).unwrap();
        let d = max_diff(&logits(&dec, &ids), &e[name]);
        assert!(d < 1e-4, "{name} on the GGUF base: smelt and PEFT differ by {d}");
    }
}

#[test]
fn adapter_on_a_quantized_base_adds_peft_update() {
    // QLoRA-style inference: Q8_0 base weights, f32 adapter. The quantized base moves the
    // logits a little; the adapter's change must still be PEFT's.
    let e = expected();
    let ids = input_ids(&e);
    let base = load(&base_as_gguf(Quant::Q8_0, "q8"));
    let b = logits(&base, &ids);
    let mut dec = base.clone();
    Adapter::load(&fixture("lora/peft-all")).unwrap().attach(&mut dec, 1.0).unwrap();
    let ours = (logits(&dec, &ids) - &b).unwrap();
    let theirs = (&e["peft-all"] - &e["base"]).unwrap();
    let scale = theirs.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let d = max_diff(&ours, &theirs);
    assert!(d < 0.05 * scale, "update differs by {d} (update scale {scale})");
}

#[test]
fn user_scale_and_round_trip() {
    let e = expected();
    let ids = input_ids(&e);
    let base = load(&base_dir());
    let a = Adapter::load(&fixture("lora/peft-rslora")).unwrap();
    // Saved by smelt and read back: the same update.
    let dir = temp_dir("lora-roundtrip");
    a.save(&dir).unwrap();
    let b = Adapter::load(&dir).unwrap();
    let mut d1 = base.clone();
    a.attach(&mut d1, 1.0).unwrap();
    let mut d2 = base.clone();
    b.attach(&mut d2, 1.0).unwrap();
    assert_eq!(max_diff(&logits(&d1, &ids), &logits(&d2, &ids)), 0.0);
    // Scale 0 is the base model.
    let mut d0 = base.clone();
    a.attach(&mut d0, 0.0).unwrap();
    assert!(max_diff(&logits(&d0, &ids), &e["base"]) < 1e-4);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn adapter_for_another_base_is_rejected() {
    let dir = temp_dir("lora-wrong-base");
    let gguf = dir.join("tiny.gguf");
    Tiny::default().write(&gguf);
    let mut dec = load(&gguf);
    let err = Adapter::load(&fixture("lora/peft-all")).unwrap().attach(&mut dec, 1.0).unwrap_err().to_string();
    assert!(err.contains("another base model"), "{err}");
    // Through the CLI: one clear line.
    let o = run(&["run", gguf.to_str().unwrap(), "hi", "--lora", fixture("lora/peft-all").to_str().unwrap(), "-n", "2"]);
    assert_one_line_error(&o, "another base model");
    // Not an adapter folder / broken config.
    let o = run(&["run", gguf.to_str().unwrap(), "hi", "--lora", dir.to_str().unwrap()]);
    assert_one_line_error(&o, "not a LoRA adapter folder");
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("adapter_config.json"), r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": true}"#).unwrap();
    let o = run(&["run", gguf.to_str().unwrap(), "hi", "--lora", bad.to_str().unwrap()]);
    assert_one_line_error(&o, "DoRA");
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------- smelt finetune (CLI)

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn chat_records(n: usize, offset: usize) -> Vec<String> {
    (offset..offset + n)
        .map(|i| {
            let reply = ["red", "green", "blue", "white"][i % 4];
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("colour {}", i % 4)},
                {"role": "assistant", "content": reply},
            ]})
            .to_string()
        })
        .collect()
}

fn finetune(dir: &Path, out: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "-t", "1", "finetune", base_dir().to_str().unwrap().to_string().leak(),
        "--data", dir.join("train.jsonl").to_str().unwrap().to_string().leak(),
        "-o", dir.join(out).to_str().unwrap().to_string().leak(),
        "--lr", "0.01", "--warmup-steps", "0", "--dropout", "0", "--batch-tokens", "64", "--quiet",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn finetune_learns_and_writes_a_peft_adapter() {
    let dir = temp_dir("ft-learn");
    write_lines(&dir.join("train.jsonl"), &chat_records(16, 0));
    write_lines(&dir.join("eval.jsonl"), &chat_records(4, 100));
    let eval = dir.join("eval.jsonl");
    let o = finetune(&dir, "run", &["--steps", "30", "--eval", eval.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = metrics(&dir.join("run/metrics.jsonl"));
    let val: Vec<f64> = m.iter().filter_map(|v| v["val_loss"].as_f64()).collect();
    assert!(val.len() >= 2 && val.last().unwrap() < &(val[0] * 0.5), "held-out loss did not fall: {val:?}");
    let train: Vec<f64> = m.iter().filter_map(|v| v["loss"].as_f64()).collect();
    assert!(train.last().unwrap() < &train[0], "{train:?}");
    // The run folder is a PEFT adapter folder that smelt loads.
    let a = Adapter::load(&dir.join("run")).unwrap();
    assert_eq!(a.layers.len(), 2 * 7);
    let out = stdout(&o);
    assert!(out.contains("held-out loss"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn finetune_resume_continues_exactly() {
    let dir = temp_dir("ft-resume");
    write_lines(&dir.join("train.jsonl"), &chat_records(12, 0));
    let o = finetune(&dir, "straight", &["--steps", "6", "--targets", "q_proj,v_proj"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = finetune(&dir, "paused", &["--steps", "6", "--targets", "q_proj,v_proj", "--stop-after", "3"]);
    assert!(o.status.success() && stdout(&o).contains("paused at step 3"), "{}{}", stdout(&o), stderr(&o));
    assert!(!dir.join("paused/adapter_model.safetensors").exists(), "no final adapter for a paused run");
    // Without --resume the run is not overwritten.
    let o = finetune(&dir, "paused", &["--steps", "6", "--targets", "q_proj,v_proj"]);
    assert_one_line_error(&o, "--resume");
    // Changed settings are refused.
    let o = finetune(&dir, "paused", &["--steps", "6", "--targets", "q_proj", "--resume"]);
    assert_one_line_error(&o, "settings differ");
    let o = finetune(&dir, "paused", &["--steps", "6", "--targets", "q_proj,v_proj", "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = Adapter::load(&dir.join("straight")).unwrap();
    let b = Adapter::load(&dir.join("paused")).unwrap();
    for (x, y) in a.layers.iter().zip(&b.layers) {
        assert_eq!(max_diff(&x.a, &y.a), 0.0, "{}", x.module);
        assert_eq!(max_diff(&x.b, &y.b), 0.0, "{}", x.module);
    }
    assert!(max_diff(&a.layers[0].b, &Tensor::zeros_like(&a.layers[0].b).unwrap()) > 0.0, "B was trained");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn finetune_bad_input_is_reported_with_line_numbers() {
    let dir = temp_dir("ft-bad");
    let mut lines = chat_records(4, 0);
    lines.insert(2, "{\"messages\": [{\"role\": \"user\"}]".into()); // line 3: broken JSON
    lines.push(r#"{"prompt": "a", "completion": 3}"#.into()); // line 6: wrong type
    lines.push(r#"{"messages": [{"role": "user", "content": "only a question"}]}"#.into()); // line 7
    write_lines(&dir.join("train.jsonl"), &lines);
    let o = finetune(&dir, "run", &["--steps", "1"]);
    assert_one_line_error(&o, "train.jsonl line 3: not valid JSON");
    let o = finetune(&dir, "run", &["--steps", "1", "--skip-bad"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    for l in ["line 3", "line 6: \"prompt\" and \"completion\" must be strings", "line 7: the conversation has no assistant message"] {
        assert!(err.contains(l), "{l:?} not reported in: {err}");
    }
    // Chat records without a template (--raw).
    write_lines(&dir.join("train.jsonl"), &chat_records(2, 0));
    let o = finetune(&dir, "raw", &["--steps", "1", "--raw"]);
    assert_one_line_error(&o, "line 1: chat records need a chat template");
    // Empty data, missing file.
    write_lines(&dir.join("train.jsonl"), &[]);
    assert_one_line_error(&finetune(&dir, "empty", &["--steps", "1"]), "no records");
    std::fs::remove_file(dir.join("train.jsonl")).unwrap();
    assert_one_line_error(&finetune(&dir, "missing", &["--steps", "1"]), "cannot read");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn finetune_smollm2_q4_1_loss_decreases() {
    // The real thing, briefly: SmolLM2-135M Q4_1 (frozen quantized weights, f32 adapters).
    let model = smollm2();
    let dir = temp_dir("ft-smollm2");
    let recs: Vec<String> = (0..8)
        .map(|i| serde_json::json!({"prompt": format!("Order #{i}: where is it?"), "completion": format!("{{\"intent\": \"track_order\", \"order\": {i}}}")}).to_string())
        .collect();
    write_lines(&dir.join("train.jsonl"), &recs);
    let o = run(&[
        "finetune", model.to_str().unwrap(), "--data", dir.join("train.jsonl").to_str().unwrap(), "-o", dir.join("run").to_str().unwrap(),
        "--steps", "4", "--lr", "2e-3", "--warmup-steps", "0", "--batch-tokens", "256", "--max-len", "128", "--quiet", "--dropout", "0",
        "--targets", "q_proj,v_proj",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let train: Vec<f64> = metrics(&dir.join("run/metrics.jsonl")).iter().filter_map(|v| v["loss"].as_f64()).collect();
    assert_eq!(train.len(), 4);
    assert!(train[3] < train[0] * 0.8, "loss did not decrease: {train:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn export_merge_lora_gives_the_adapted_model() {
    let e = expected();
    let ids = input_ids(&e);
    let dir = temp_dir("lora-merge");
    let adapter = fixture("lora/peft-all");
    // Hugging Face folder base -> folder.
    let out = dir.join("merged-hf");
    let o = run(&["export", base_dir().to_str().unwrap(), "--merge-lora", adapter.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let d = max_diff(&logits(&load(&out), &ids), &e["peft-all"]);
    assert!(d < 1e-4, "merged HF model differs from PEFT by {d}");
    // GGUF base (f32) -> GGUF, q/k rows permuted in the file.
    let gguf = base_as_gguf(Quant::F32, "merge");
    let out = dir.join("merged.gguf");
    let o = run(&["export", gguf.to_str().unwrap(), "--merge-lora", adapter.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let d = max_diff(&logits(&load(&out), &ids), &e["peft-all"]);
    assert!(d < 1e-4, "merged GGUF differs from PEFT by {d}");
    // A quantized base keeps its tensor types; scale 0 changes nothing.
    let q = base_as_gguf(Quant::Q8_0, "merge-q8");
    let out = dir.join("merged-q8.gguf");
    let spec = format!("{}:0", adapter.display());
    let o = run(&["export", q.to_str().unwrap(), "--merge-lora", &spec, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f = smelt::load::gguf::GgufFile::open(&out).unwrap();
    assert_eq!(f.tensor_info("blk.0.attn_q.weight").unwrap().dtype, smelt::load::gguf::GgmlType::Q8_0);
    assert!(max_diff(&logits(&load(&out), &ids), &logits(&load(&q), &ids)) < 1e-6);
    // Wrong base: a clear error, no output.
    let tiny = dir.join("tiny.gguf");
    Tiny::default().write(&tiny);
    let bad = dir.join("bad.gguf");
    let o = run(&["export", tiny.to_str().unwrap(), "--merge-lora", adapter.to_str().unwrap(), "-o", bad.to_str().unwrap()]);
    assert_one_line_error(&o, "another base model");
    assert!(!bad.exists());
    let _ = std::fs::remove_dir_all(dir);
}
