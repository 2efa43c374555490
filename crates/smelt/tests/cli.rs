//! The `smelt` binary on a tiny in-memory-built model: normal use, determinism, and every
//! kind of bad input giving a one-line error with exit code 1 (never a panic or a hang).

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;
use smelt::load::gguf::{GgmlType, Value};

fn tiny(dir: &std::path::Path) -> String {
    let p = dir.join("tiny.gguf");
    Tiny::default().write(&p);
    p.to_string_lossy().into_owned()
}

#[test]
fn info_describes_the_model() {
    let d = temp_dir("info");
    let m = tiny(&d);
    let o = run(&["info", &m, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["layers"], 2);
    assert_eq!(v["context_length"], 128);
    assert_eq!(v["tokenizer"]["bos"], "<s> (1)");
    assert!(v["chat_template"].as_u64().unwrap() > 0);
    let o = run(&["info", &m]);
    assert!(stdout(&o).contains("architecture   llama"), "{}", stdout(&o));
}

#[test]
fn greedy_and_seeded_runs_are_reproducible() {
    let d = temp_dir("repro");
    let m = tiny(&d);
    let go = |extra: &[&str]| {
        let mut args = vec!["run", m.as_str(), "hello world", "-n", "12"];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    assert_eq!(go(&["--temp", "0"]), go(&["--temp", "0"]));
    assert_eq!(go(&["--temp", "1.5", "--seed", "3"]), go(&["--temp", "1.5", "--seed", "3"]));
    // Raw mode and chat mode see different prompts.
    assert!(!go(&["--temp", "0", "--raw"]).is_empty() || !go(&["--temp", "0"]).is_empty());
}

#[test]
fn prompt_from_stdin() {
    let d = temp_dir("stdin");
    let m = tiny(&d);
    let mut child = smelt()
        .args(["run", "-m", &m, "--temp", "0", "-n", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn bad_prompts() {
    let d = temp_dir("prompts");
    let m = tiny(&d);
    assert_one_line_error(&run(&["run", &m, "   "]), "the prompt is empty");
    let mut child = smelt()
        .args(["run", "-m", &m])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"caf\xe9 \xff").unwrap();
    assert_one_line_error(&child.wait_with_output().unwrap(), "not valid UTF-8");
    // Longer than the context: refused, never truncated.
    let long = "hello world ".repeat(40);
    assert_one_line_error(&run(&["run", &m, &long, "--ctx", "16"]), "context is 16");
    assert_one_line_error(&run(&["run", &m, "hi", "--ctx", "4096"]), "larger than the 128 tokens");
    assert_one_line_error(&run(&["run", &m, "hi", "--top-p", "0"]), "top_p");
}

#[test]
fn corrupt_and_truncated_files() {
    let d = temp_dir("corrupt");
    let good = Tiny::default().writer().to_bytes();

    let p = d.join("trunc.gguf");
    std::fs::write(&p, &good[..good.len() - 100]).unwrap();
    assert_one_line_error(&run(&["info", p.to_str().unwrap()]), "truncated GGUF");

    let p = d.join("short.gguf");
    std::fs::write(&p, &good[..40]).unwrap();
    assert_one_line_error(&run(&["info", p.to_str().unwrap()]), "GGUF");

    let p = d.join("notgguf.gguf");
    std::fs::write(&p, b"this is plainly not a model file at all, just text").unwrap();
    assert_one_line_error(&run(&["info", p.to_str().unwrap()]), "GGUF");

    // Absurd counts in the header: rejected before any allocation.
    let mut b = good.clone();
    b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let p = d.join("count.gguf");
    std::fs::write(&p, &b).unwrap();
    assert_one_line_error(&run(&["info", p.to_str().unwrap()]), "tensors");

    // A metadata array claiming 2^40 items.
    let mut b = good.clone();
    let key = b"tokenizer.ggml.tokens";
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    b[at + 8..at + 16].copy_from_slice(&(1u64 << 40).to_le_bytes()); // after value type + item type
    let p = d.join("array.gguf");
    std::fs::write(&p, &b).unwrap();
    assert_one_line_error(&run(&["info", p.to_str().unwrap()]), "claims");
}

#[test]
fn wrong_models() {
    let d = temp_dir("wrong");
    let arg = |p: &std::path::Path| p.to_string_lossy().into_owned();

    let mut w = Tiny::default().writer();
    w.kv("general.architecture", Value::String("mamba".into()));
    let p = d.join("arch.gguf");
    w.write(&p).unwrap();
    assert_one_line_error(&run(&["info", &arg(&p)]), "unknown architecture \"mamba\"");

    let mut w = Tiny::default().writer();
    w.tensors.retain(|t| t.0 != "blk.1.ffn_down.weight");
    let p = d.join("missing.gguf");
    w.write(&p).unwrap();
    assert_one_line_error(&run(&["info", &arg(&p)]), "missing tensor \"blk.1.ffn_down.weight\"");

    let mut w = Tiny::default().writer();
    let t = w.tensors.iter_mut().find(|t| t.0 == "blk.0.attn_q.weight").unwrap();
    t.1 = vec![32, 16];
    t.3.truncate(32 * 16 * 4);
    let p = d.join("shape.gguf");
    w.write(&p).unwrap();
    assert_one_line_error(&run(&["info", &arg(&p)]), "blk.0.attn_q.weight has shape");

    // An unknown ggml type id in the tensor directory.
    let mut w = Tiny::default().writer();
    w.tensors.retain(|t| t.0 != "output_norm.weight");
    w.tensor("output_norm.weight", vec![32], GgmlType::F32, vec![0; 128]);
    let mut b = w.to_bytes();
    let name = b"output_norm.weight";
    let at = b.windows(name.len()).position(|x| x == name).unwrap() + name.len();
    let ty = at + 4 + 8; // n_dims, one dim
    b[ty..ty + 4].copy_from_slice(&77u32.to_le_bytes());
    let p = d.join("type.gguf");
    std::fs::write(&p, b).unwrap();
    assert_one_line_error(&run(&["info", &arg(&p)]), "unsupported ggml type 77");

    // Missing or contradictory tokenizer metadata.
    let mut w = Tiny::default().writer();
    w.kv("tokenizer.ggml.scores", Value::Array(vec![Value::F32(0.0); 3]));
    let p = d.join("tok.gguf");
    w.write(&p).unwrap();
    let o = run(&["info", &arg(&p)]);
    assert_one_line_error(&o, "tokenizer");

    assert_one_line_error(&run(&["info", &arg(&d.join("nope.gguf"))]), "no such file");
}
