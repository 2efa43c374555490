//! Training end to end through the `smelt` binary, on a committed public-domain text
//! (the first chapters of Pride and Prejudice) and a tiny model, so it runs in seconds:
//! tokenizer train → data prepare → train → resume → export (HF folder, GGUF) → load the
//! exports back and compare their logits with the checkpoint's; and every kind of bad input
//! (empty or non-UTF-8 corpus, a vocabulary the text cannot fill, a config that does not
//! match the checkpoint, a full disk while checkpointing) giving a one-line error with the
//! previous checkpoint left intact.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::*;
use smelt::model::{Decoder, Logits, SeqInput};
use smelt::train::checkpoint;

fn corpus() -> PathBuf {
    fixture("text/pride-and-prejudice-ch1-3.txt")
}

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "smelt failed: {}", stderr(o));
    stdout(o)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tokenizer (384 tokens) and prepared data (10% held out) in `dir`; returns the data folder.
fn prepare(dir: &Path) -> PathBuf {
    let (tok, data) = (dir.join("tok"), dir.join("data"));
    let out = ok(&run(&["tokenizer", "train", "-i", s(&corpus()), "--vocab-size", "384", "-o", s(&tok)]));
    assert!(out.contains("384 tokens"), "{out}");
    let out = ok(&run(&["data", "prepare", "-i", s(&corpus()), "--tokenizer", s(&tok), "-o", s(&data), "--val-fraction", "0.1", "--json"]));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["vocab_size"], 384);
    assert!(r["tokens_train"].as_u64().unwrap() > 4000 && r["tokens_val"].as_u64().unwrap() > 300, "{r}");
    data
}

/// `smelt train` flags for a 2-layer model of width 48 on 32-token windows.
fn train_args<'a>(data: &'a Path, out: &'a Path, steps: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train", "--data", s(data), "-o", s(out), "--steps", steps, "--batch-size", "4", "--quiet",
        "--set", "model.dim=48", "--set", "model.layers=2", "--set", "model.heads=4", "--set", "model.kv_heads=2",
        "--set", "model.ffn=128", "--set", "model.ctx=32", "--set", "train.warmup_steps=3", "--set", "train.lr=3e-3",
        "--set", "run.eval_every=4", "--set", "run.checkpoint_every=5", "--set", "run.log_every=1",
        "--set", "run.keep_checkpoints=5",
    ];
    a.extend_from_slice(extra);
    a
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn ckpt(run: &Path, step: u64) -> PathBuf {
    checkpoint::checkpoints_dir(run).join(format!("step-{step:08}"))
}

/// metrics.jsonl without the wall-clock fields, keyed by (step, kind).
fn metrics(run: &Path) -> Vec<(u64, String, serde_json::Value)> {
    let text = String::from_utf8(read(&run.join("metrics.jsonl"))).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("tok_per_s");
            o.remove("elapsed_s");
            let kind = if o.contains_key("val_loss") { "val" } else { "train" };
            (o["step"].as_u64().unwrap(), kind.to_string(), v)
        })
        .collect()
}

/// The final checkpoint of `b` equals `a`'s byte for byte (weights, optimizer moments), its
/// state differs only in wall-clock time and run folder, and `b`'s metrics contain `a`'s.
fn assert_same_run(a: &Path, b: &Path, step: u64) {
    for f in ["model.safetensors", "optimizer.safetensors", "tokenizer.json"] {
        assert!(read(&ckpt(a, step).join(f)) == read(&ckpt(b, step).join(f)), "{f} differs between {} and {}", a.display(), b.display());
    }
    let state = |r: &Path| {
        let mut v: serde_json::Value = serde_json::from_slice(&read(&ckpt(r, step).join("state.json"))).unwrap();
        v.as_object_mut().unwrap().remove("elapsed_s");
        v["config"]["run"].as_object_mut().unwrap().remove("out");
        v
    };
    assert_eq!(state(a), state(b));
    let (ma, mb) = (metrics(a), metrics(b));
    for rec in &ma {
        assert!(mb.contains(rec), "{} lacks {:?}", b.display(), rec);
    }
    // b may hold extra held-out evaluations (made where it paused), nothing else.
    assert!(mb.iter().all(|r| r.1 == "val" || ma.contains(r)));
}

#[test]
fn stopped_resumed_and_failed_runs_end_bit_identical_to_an_uninterrupted_run() {
    let d = temp_dir("train-resume");
    let data = prepare(&d);
    let (a, b, c) = (d.join("a"), d.join("b"), d.join("c"));

    let out = ok(&run(&train_args(&data, &a, "12", &[])));
    assert!(out.contains("trained to step 12"), "{out}");
    let m = metrics(&a);
    let loss = |step: u64| m.iter().find(|r| r.0 == step && r.1 == "train").unwrap().2["loss"].as_f64().unwrap();
    assert!(loss(12) < loss(1) - 0.3, "training did not reduce the loss: {} -> {}", loss(1), loss(12));
    let vals: Vec<f64> = m.iter().filter(|r| r.1 == "val").map(|r| r.2["val_loss"].as_f64().unwrap()).collect();
    assert_eq!(vals.len(), 3, "held-out loss at steps 4, 8, 12");
    assert!(vals[2] < vals[0], "held-out loss did not fall: {vals:?}");
    assert!(String::from_utf8(read(&a.join("loss.svg"))).unwrap().contains("<svg"));
    assert_eq!(std::fs::read_to_string(checkpoint::checkpoints_dir(&a).join("latest")).unwrap().trim(), "step-00000012");

    // Stopped after 7 steps on one thread, resumed on two (results must not depend on it).
    let out = ok(&run(&[&["-t", "1"][..], &train_args(&data, &b, "12", &["--stop-after", "7"])].concat()));
    assert!(out.contains("trained to step 7 (paused"), "{out}");
    let out = ok(&run(&[&["-t", "2"][..], &train_args(&data, &b, "12", &["--resume"])].concat()));
    assert!(out.contains("trained to step 12"), "{out}");
    assert_same_run(&a, &b, 12);

    // A full disk while writing the step-10 checkpoint: a one-line error, step 5 stays the
    // latest checkpoint, no temporary folder is left; resuming from it ends where `a` did.
    let o = smelt().args(train_args(&data, &c, "12", &[])).env(checkpoint::FAULT_ENV, "10").output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: cannot write checkpoint") && last.contains("step-00000010"), "{err}");
    assert!(last.contains("step-00000005 is intact") && last.contains("No space left on device"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let root = checkpoint::checkpoints_dir(&c);
    assert_eq!(std::fs::read_to_string(root.join("latest")).unwrap().trim(), "step-00000005");
    let names: Vec<String> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.iter().all(|n| n == "latest" || n == "step-00000005"), "{names:?}");
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(read(&ckpt(&a, 5).join(f)) == read(&ckpt(&c, 5).join(f)), "step-5 {f} changed");
    }
    ok(&run(&train_args(&data, &c, "12", &["--resume"])));
    assert_same_run(&a, &c, 12);

    // Nothing left to do: resuming a finished run changes nothing.
    let before = read(&ckpt(&a, 12).join("model.safetensors"));
    let out = ok(&run(&train_args(&data, &a, "12", &["--resume"])));
    assert!(out.contains("trained to step 12"), "{out}");
    assert!(read(&ckpt(&a, 12).join("model.safetensors")) == before);
    let _ = std::fs::remove_dir_all(&d);
}

fn logits(dec: &Decoder, ids: &[u32]) -> Tensor {
    dec.forward(&mut [SeqInput { tokens: ids, cache: None }], Logits::All).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn perplexity_cli(model: &Path) -> f64 {
    let out = ok(&run(&["perplexity", s(model), "-f", s(&corpus()), "-c", "32", "--chunks", "40", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["ppl"].as_f64().unwrap()
}

/// Train, export to a Hugging Face folder and to GGUF (f32 and q8_0), load each back with
/// smelt's loaders and compare logits and perplexity with the checkpoint's own decoder.
fn export_round_trip(tag: &str, tied: bool) {
    let d = temp_dir(tag);
    let data = prepare(&d);
    let r = d.join("run");
    let tie = if tied { "model.tie_embeddings=true" } else { "model.tie_embeddings=false" };
    ok(&run(&train_args(&data, &r, "12", &["--set", tie])));
    let hf = d.join("hf");
    let out = ok(&run(&["export", s(&r), "--format", "hf", "-o", s(&hf)]));
    assert!(out.contains("step 12"), "{out}");
    let (g32, g8) = (d.join("m-f32.gguf"), d.join("m-q8.gguf"));
    ok(&run(&["export", s(&r), "--format", "gguf", "-o", s(&g32)]));
    ok(&run(&["export", s(&ckpt(&r, 12)), "--format", "gguf", "--quant", "q8_0", "-o", s(&g8)]));

    // The checkpoint's decoder, as training evaluates it.
    let dir = checkpoint::resolve(&r).unwrap();
    let state = checkpoint::read_state(&dir).unwrap();
    assert_eq!(state.step, 12);
    let params = checkpoint::load_params(&dir, &state, &Device::Cpu).unwrap();
    let own = params.eval_decoder(32).unwrap();
    let text = String::from_utf8(read(&corpus())).unwrap();
    let hf_tok = smelt::tokenize::Tokenizer::from_hf_dir(&hf).unwrap();
    let ids: Vec<u32> = hf_tok.encode(&text[2000..3000], false, false).unwrap()[..32].to_vec();
    let want = logits(&own, &ids);
    assert!(max_abs(&want) > 0.5, "logits too flat to compare: {}", max_abs(&want));

    let from_hf = smelt::load::load(&hf, &Default::default()).unwrap();
    let d_hf = max_diff(&logits(&from_hf.decoder, &ids), &want);
    assert!(d_hf < 1e-4, "HF export: logits differ by {d_hf}");
    assert_eq!(from_hf.tokenizer.encode(&text, false, false).unwrap(), hf_tok.encode(&text, false, false).unwrap());

    let from_gguf = smelt::load::load(&g32, &Default::default()).unwrap();
    let d_gguf = max_diff(&logits(&from_gguf.decoder, &ids), &want);
    assert!(d_gguf < 1e-4, "GGUF export: logits differ by {d_gguf}");
    // The GGUF's own tokenizer (tokenizer.ggml.*) splits text as tokenizer.json does.
    assert_eq!(from_gguf.tokenizer.encode(&text, false, false).unwrap(), hf_tok.encode(&text, false, false).unwrap());
    assert_eq!(from_gguf.tokenizer.eos_id(), Some(0));

    let q8 = smelt::load::load(&g8, &Default::default()).unwrap();
    let d_q8 = max_diff(&logits(&q8.decoder, &ids), &want);
    assert!(d_q8 > 0.0 && d_q8 < 0.05 * max_abs(&want), "q8_0 export: logits differ by {d_q8}");

    // Perplexity through the CLI on each export, and in-process on the checkpoint.
    let tokens = hf_tok.encode(&text, false, false).unwrap();
    let want_ppl = smelt::eval::perplexity::perplexity(&own, &tokens, 32, Some(40), None, |_, _, _| {}).unwrap().ppl;
    assert!(want_ppl > 1.0 && want_ppl < 384.0, "{want_ppl}");
    for m in [&hf, &g32] {
        let p = perplexity_cli(m);
        assert!((p - want_ppl).abs() / want_ppl < 1e-5, "{}: perplexity {p} vs checkpoint {want_ppl}", m.display());
    }
    let p8 = perplexity_cli(&g8);
    assert!((p8 - want_ppl).abs() / want_ppl < 0.02, "q8_0 perplexity {p8} vs {want_ppl}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn exports_of_tied_model_match_the_checkpoint() {
    export_round_trip("train-export-tied", true);
}

#[test]
fn exports_of_untied_model_match_the_checkpoint() {
    export_round_trip("train-export-untied", false);
}

#[test]
fn bad_corpora_give_one_line_errors() {
    let d = temp_dir("train-bad-corpus");
    let tok = d.join("tok");
    let empty = d.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let blank = d.join("blank.txt");
    std::fs::write(&blank, " \n\n \n").unwrap();
    let latin1 = d.join("latin1.txt");
    std::fs::write(&latin1, b"first line\nna\xefve caf\xe9\n").unwrap();
    for f in [&empty, &blank] {
        assert_one_line_error(&run(&["tokenizer", "train", "-i", s(f), "-o", s(&tok)]), "the corpus is empty");
    }
    assert_one_line_error(&run(&["tokenizer", "train", "-i", s(&latin1), "-o", s(&tok)]), "not valid UTF-8 (byte 0xef at offset 13, line 2)");
    assert_one_line_error(&run(&["tokenizer", "train", "-i", s(&d.join("missing.txt")), "-o", s(&tok)]), "no such file");
    assert_one_line_error(&run(&["tokenizer", "train", "-i", s(&corpus()), "--vocab-size", "100", "-o", s(&tok)]), "too small");
    assert_one_line_error(&run(&["tokenizer", "train", "-i", s(&corpus()), "--vocab-size", "20000", "-o", s(&tok)]), "the corpus supports only");
    assert!(!tok.join("tokenizer.json").exists(), "a failed training wrote a tokenizer");

    ok(&run(&["tokenizer", "train", "-i", s(&corpus()), "--vocab-size", "300", "-o", s(&tok)]));
    let data = d.join("data");
    for f in [&empty, &blank] {
        assert_one_line_error(&run(&["data", "prepare", "-i", s(f), "--tokenizer", s(&tok), "-o", s(&data)]), "the corpus is empty");
    }
    assert_one_line_error(&run(&["data", "prepare", "-i", s(&latin1), "--tokenizer", s(&tok), "-o", s(&data)]), "not valid UTF-8");
    assert_one_line_error(&run(&["data", "prepare", "-i", s(&corpus()), "--tokenizer", s(&d), "-o", s(&data)]), "no tokenizer.json");
    assert_one_line_error(&run(&["data", "prepare", "-i", s(&corpus()), "--tokenizer", s(&tok), "-o", s(&data), "--val-fraction", "1.5"]), "--val-fraction");
    assert!(!data.join("meta.json").exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_training_setups_give_one_line_errors() {
    let d = temp_dir("train-bad-setup");
    let data = prepare(&d);
    let r = d.join("run");
    // No prepared data.
    assert_one_line_error(&run(&train_args(&d.join("nothing"), &r, "4", &[])), "nothing");
    // Unknown and invalid settings.
    assert_one_line_error(&run(&train_args(&data, &r, "4", &["--set", "train.lrr=1"])), "lrr");
    assert_one_line_error(&run(&train_args(&data, &r, "4", &["--set", "model.heads=5"])), "not a multiple of 5 heads");
    assert_one_line_error(&run(&train_args(&data, &r, "4", &["--set", "model.vocab=100"])), "smaller than the tokenizer");
    // --resume with nothing to resume.
    assert_one_line_error(&run(&train_args(&data, &r, "4", &["--resume"])), "no checkpoint to continue from");

    ok(&run(&train_args(&data, &r, "6", &["--stop-after", "3"])));
    let latest = checkpoint::latest(&r).unwrap().unwrap();
    let before = read(&latest.join("model.safetensors"));
    // Starting over in a folder that holds a run.
    assert_one_line_error(&run(&train_args(&data, &r, "6", &[])), "add --resume");
    // A config that does not match the checkpoint.
    assert_one_line_error(&run(&train_args(&data, &r, "6", &["--resume", "--set", "model.dim=64"])), "model.dim: 64 vs 48");
    assert_one_line_error(&run(&train_args(&data, &r, "6", &["--resume", "--set", "train.lr=0.01"])), "train.lr: 0.01 vs 0.003");
    // Data prepared with another tokenizer of the same size (trained on part of the text).
    let tok2 = d.join("tok2");
    let part = d.join("part.txt");
    std::fs::write(&part, &read(&corpus())[..9000]).unwrap();
    ok(&run(&["tokenizer", "train", "-i", s(&part), "--vocab-size", "384", "-o", s(&tok2)]));
    let data2 = d.join("data2");
    ok(&run(&["data", "prepare", "-i", s(&corpus()), "--tokenizer", s(&tok2), "-o", s(&data2), "--val-fraction", "0.1"]));
    assert_one_line_error(&run(&train_args(&data2, &r, "6", &["--resume"])), "different tokenizer");
    // None of that touched the checkpoint; it still resumes.
    assert_eq!(checkpoint::latest(&r).unwrap().unwrap(), latest);
    assert!(read(&latest.join("model.safetensors")) == before);
    let out = ok(&run(&train_args(&data, &r, "6", &["--resume"])));
    assert!(out.contains("trained to step 6"), "{out}");

    // Exporting something that is not a checkpoint.
    assert_one_line_error(&run(&["export", s(&d), "--format", "hf", "-o", s(&d.join("x"))]), "not a checkpoint");
    assert_one_line_error(&run(&["export", s(&r), "--format", "gguf", "--quant", "q3_x", "-o", s(&d.join("x.gguf"))]), "q3_x");
    let _ = std::fs::remove_dir_all(&d);
}
