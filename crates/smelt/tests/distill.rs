//! `smelt distill` end to end on a tiny GGUF teacher: the KD loss falls (top-k cache and
//! live teacher), an interrupted run resumes to the same weights, the teacher cache holds
//! what a direct teacher pass gives, and mismatched tokenizers or bad settings are
//! one-line errors.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use smelt::data::{DataMeta, TokenSplit};
use smelt::load::gguf::Value;
use smelt::sample::Rng;

/// A few thousand words of text the tiny vocabulary covers.
fn corpus(dir: &Path) -> PathBuf {
    let words = ["hello", "world", "the", "a", "is", "tea", "toast", "in", "hall", "lo"];
    let mut rng = Rng::new(3);
    let mut s = String::new();
    for i in 0..4000 {
        s.push_str(words[(rng.next_u64() % words.len() as u64) as usize]);
        s.push(if i % 13 == 12 { '\n' } else { ' ' });
    }
    let p = dir.join("corpus.txt");
    std::fs::write(&p, s).unwrap();
    p
}

fn teacher(dir: &Path) -> PathBuf {
    let p = dir.join("teacher.gguf");
    Tiny::default().write(&p);
    p
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

const STUDENT: [&str; 10] = ["--set", "model.dim=16", "--set", "model.layers=1", "--set", "model.heads=2", "--set", "model.kv_heads=2", "--set", "model.ffn=32"];

fn distill(teacher: &Path, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let (t, d, o) = (s(teacher), s(data), s(out));
    let mut args = vec!["-t", "2", "distill", "--teacher", &t, "--data", &d, "-o", &o, "--ctx", "32", "--windows", "24", "--batch-size", "4"];
    args.extend(["--lr", "0.01", "--set", "train.warmup_steps=2", "--set", "run.log_every=1", "--set", "run.eval_every=0", "--quiet"]);
    args.extend(STUDENT);
    args.extend(extra);
    run(&args)
}

/// (kl, ce) of every logged training step.
fn kd_curve(out: &Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("kl").is_some())
        .map(|v| (v["kl"].as_f64().unwrap(), v["ce"].as_f64().unwrap()))
        .collect()
}

fn assert_kl_falls(out: &Path, steps: usize) {
    let c = kd_curve(out);
    assert_eq!(c.len(), steps, "{c:?}");
    let first = c[0].0;
    let last = c[c.len() - 3..].iter().map(|x| x.0).sum::<f64>() / 3.0;
    assert!(last < 0.8 * first, "KL did not fall: first {first}, last three {last} ({c:?})");
}

#[test]
fn distill_with_topk_cache_lowers_kl_and_resumes_exactly() {
    let d = temp_dir("distill-cache");
    let (t, text) = (teacher(&d), corpus(&d));
    let a = d.join("a");
    let o = distill(&t, &text, &a, &["--steps", "30", "--top-k", "8", "--kd-ratio", "0.9", "--temperature", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("trained to step 30"), "{}", stdout(&o));
    assert_kl_falls(&a, 30);
    // The data was tokenized with the teacher's vocabulary, kept as tokenizer.gguf.
    assert!(a.join("data/tokenizer.gguf").is_file());

    // Interrupted after 12 steps, resumed: the same weights as the uninterrupted run.
    let b = d.join("b");
    let o = distill(&t, &text, &b, &["--steps", "30", "--top-k", "8", "--kd-ratio", "0.9", "--temperature", "2", "--stop-after", "12"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("trained to step 12"), "{}", stdout(&o));
    let o = distill(&t, &text, &b, &["--steps", "30", "--top-k", "8", "--kd-ratio", "0.9", "--temperature", "2", "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let w = |r: &Path| std::fs::read(r.join("checkpoints/step-00000030/model.safetensors")).unwrap();
    assert!(w(&a) == w(&b), "the resumed run's weights differ from the uninterrupted run's");

    // Without --resume the run folder is refused before anything is overwritten.
    let o = distill(&t, &text, &b, &["--steps", "30"]);
    assert_one_line_error(&o, "already holds a run");

    // The cache holds what a direct teacher pass gives for the same window.
    let meta: smelt::distill::cache::CacheMeta = serde_json::from_str(&std::fs::read_to_string(a.join("teacher-topk/meta.json")).unwrap()).unwrap();
    assert_eq!((meta.k, meta.seq, meta.windows), (8, 32, 24));
    let cache = smelt::distill::cache::TopKCache::open(&a.join("teacher-topk"), &meta).unwrap();
    let dm = DataMeta::read(&a.join("data")).unwrap();
    let split = TokenSplit::open(&a.join("data"), &dm, &dm.train).unwrap();
    let teach = smelt::distill::load_teacher(&t, 32).unwrap();
    let win = split.window(5 * 32, 33);
    let direct = smelt::distill::teacher::topk_targets(&teach.decoder, &[&win[..32]], 8, 2.0).unwrap();
    let cached = cache.targets(&[5 * 32]).unwrap();
    assert_eq!(cached, direct);
    assert!(cache.targets(&[7]).is_err(), "an unaligned start must be refused");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn distill_with_live_teacher_lowers_kl() {
    let d = temp_dir("distill-live");
    let (t, text) = (teacher(&d), corpus(&d));
    let a = d.join("a");
    let o = distill(&t, &text, &a, &["--steps", "20", "--top-k", "0", "--kd-ratio", "1", "--temperature", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_kl_falls(&a, 20);
    assert!(!a.join("teacher-topk").exists(), "no cache without --top-k");
    // A student that starts from that run's checkpoint keeps its shape and weights.
    let c = d.join("c");
    let o = distill(&t, &a.join("data"), &c, &["--steps", "2", "--top-k", "0", "--kd-ratio", "1", "--temperature", "1", "--student", &s(&a), "--set", "model.dim=48"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = std::fs::read_to_string(c.join("config.toml")).unwrap();
    assert!(cfg.contains("dim = 16"), "the student's shape, not --set model.dim: {cfg}");
    let kl_c = kd_curve(&c)[0].0;
    let kl_a_end = kd_curve(&a).last().unwrap().0;
    assert!(kl_c < kd_curve(&a)[0].0 && (kl_c - kl_a_end).abs() < 0.5 * kl_a_end, "continues from the trained student: {kl_c} vs {kl_a_end}");
    // --kd-ratio 0 is plain training: no KL logged, no teacher pass.
    let b = d.join("b");
    let o = distill(&t, &text, &b, &["--steps", "3", "--kd-ratio", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(kd_curve(&b).is_empty());
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn mismatched_tokenizers_and_bad_settings_are_clear_errors() {
    let d = temp_dir("distill-bad");
    let (t, text) = (teacher(&d), corpus(&d));
    let (tokens, scores, types) = tiny_vocab();
    let prep = |name: &str, w: smelt::load::gguf::GgufWriter| -> PathBuf {
        let g = d.join(format!("{name}.gguf"));
        std::fs::write(&g, w.to_bytes()).unwrap();
        let out = d.join(name);
        let o = run(&["data", "prepare", "--input", &s(&text), "--tokenizer", &s(&g), "--out", &s(&out)]);
        assert!(o.status.success(), "{}", stderr(&o));
        out
    };
    let str_arr = |v: &[String]| Value::Array(v.iter().map(|x| Value::String(x.clone())).collect());
    // Same size, one token spelled differently.
    let mut renamed = tokens.clone();
    let i = renamed.iter().position(|x| x == "▁world").unwrap();
    renamed[i] = "▁worlds".into();
    let mut w = Tiny::default().writer();
    w.kv("tokenizer.ggml.tokens", str_arr(&renamed));
    let data = prep("renamed", w);
    let o = distill(&t, &data, &d.join("r1"), &["--steps", "2"]);
    assert_one_line_error(&o, &format!("do not share a tokenizer: token {i} is"));
    // One token more.
    let mut longer = tokens.clone();
    longer.push("▁extra".into());
    let mut w = Tiny::default().writer();
    w.kv("tokenizer.ggml.tokens", str_arr(&longer));
    w.kv("tokenizer.ggml.scores", Value::Array(scores.iter().copied().chain([-999.0]).map(Value::F32).collect()));
    w.kv("tokenizer.ggml.token_type", Value::Array(types.iter().copied().chain([1]).map(Value::I32).collect()));
    let data = prep("longer", w);
    let o = distill(&t, &data, &d.join("r2"), &["--steps", "2"]);
    assert_one_line_error(&o, &format!("{} tokens vs {}", tokens.len(), tokens.len() + 1));
    // Settings.
    let o = distill(&t, &text, &d.join("r3"), &["--kd-ratio", "1.5"]);
    assert_one_line_error(&o, "kd_ratio");
    let o = distill(&t, &text, &d.join("r4"), &["--temperature", "0"]);
    assert_one_line_error(&o, "temperature");
    let o = distill(&d.join("missing.gguf"), &text, &d.join("r5"), &["--steps", "1"]);
    assert_one_line_error(&o, "missing.gguf");
    let o = distill(&t, &text, &d.join("r6"), &["--student", &s(&t)]);
    assert_one_line_error(&o, "GGUF files are not supported as students");
    let _ = std::fs::remove_dir_all(d);
}
