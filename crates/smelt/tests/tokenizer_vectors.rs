//! llama.cpp's tokenizer test vectors (`ggml-vocab-*.gguf` + `.inp`/`.out`, tokenized with
//! add_special = false, parse_special = false as in `tests/test-tokenizer-0.cpp`) must be
//! reproduced exactly, and decoding must give the input back.

use std::collections::BTreeMap;
use std::path::PathBuf;

use smelt::load::gguf::GgufFile;
use smelt::tokenize::Tokenizer;

fn vocab_dir() -> PathBuf {
    let root = std::env::var_os("SMELT_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/smelt-test"));
    let dir = root.join("llama.cpp/models");
    assert!(
        dir.join("ggml-vocab-llama-spm.gguf").exists(),
        "test data missing in {} — run scripts/fetch-test-data.sh",
        dir.display()
    );
    dir
}

/// Vocab files whose vectors we do not reproduce, with the reason. Every other vocab file
/// that has vectors must pass all of them.
const EXCEPTIONS: &[(&str, &str)] = &[];

/// Vocab files that must be present and pass (the ones the project relies on).
const REQUIRED: &[&str] = &["llama-spm", "llama-bpe", "phi-3", "qwen2", "gpt-2"];

struct Case {
    input: String,
    expected: Vec<u32>,
}

fn read_cases(name: &str) -> Vec<Case> {
    let dir = vocab_dir();
    let inp = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.inp"))).expect("read .inp");
    let out = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.out"))).expect("read .out");
    // As test-tokenizer-0.cpp: inputs separated by "\n__ggml_vocab_test__\n"; a trailing
    // separator ends the list.
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(sep) {
            Some(p) => {
                inputs.push(rest[..p].to_string());
                rest = &rest[p + sep.len()..];
            }
            None => {
                inputs.push(rest.to_string());
                rest = "";
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().expect("token id")).collect())
        .collect();
    assert_eq!(inputs.len(), outputs.len(), "{name}: .inp and .out disagree on the number of tests");
    inputs.into_iter().zip(outputs).map(|(input, expected)| Case { input, expected }).collect()
}

fn load(name: &str) -> Tokenizer {
    let path = vocab_dir().join(format!("ggml-vocab-{name}.gguf"));
    let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    Tokenizer::from_gguf(&f).unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

/// (passed, failed, failure descriptions)
fn run(name: &str) -> (usize, usize, Vec<String>) {
    let tok = load(name);
    let mut ok = 0;
    let mut fails = Vec::new();
    for c in read_cases(name) {
        let got = tok.encode(&c.input, false, false).unwrap_or_else(|e| panic!("{name}: {:?}: {e:#}", c.input));
        if got == c.expected {
            ok += 1;
        } else {
            fails.push(format!("{:?}\n   expected {:?}\n   got      {:?}", c.input, c.expected, got));
        }
    }
    let n_fail = fails.len();
    (ok, n_fail, fails)
}

fn vector_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(vocab_dir())
        .expect("list vocab dir")
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            Some(n.strip_prefix("ggml-vocab-")?.strip_suffix(".gguf.out")?.to_string())
        })
        .collect();
    names.sort();
    names
}

#[test]
fn all_vocab_vectors() {
    let names = vector_names();
    for r in REQUIRED {
        assert!(names.iter().any(|n| n == r), "vectors for {r} are missing — run scripts/fetch-test-data.sh");
    }
    let mut report = BTreeMap::new();
    let mut bad = Vec::new();
    for name in &names {
        let (ok, n_fail, fails) = run(name);
        eprintln!("{name:>16}: {ok}/{} pass", ok + n_fail);
        report.insert(name.clone(), (ok, n_fail));
        let excepted = EXCEPTIONS.iter().any(|(n, _)| n == name);
        if n_fail > 0 && !excepted {
            bad.push(format!("{name}: {n_fail} failures, first: {}", fails[0]));
        }
        if n_fail == 0 && excepted {
            bad.push(format!("{name} is listed as an exception but passes: remove it from EXCEPTIONS"));
        }
    }
    for (n, _) in EXCEPTIONS {
        assert!(report.contains_key(*n), "exception {n} names a vocab without vectors");
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn vectors_decode_back() {
    // Decoding the expected ids gives the input back for these vocabularies (no
    // normalisation or unknown tokens on the way).
    for name in ["llama-bpe", "qwen2", "gpt-2", "phi-3", "llama-spm", "starcoder", "command-r"] {
        let tok = load(name);
        for c in read_cases(name) {
            let text = tok.decode(&c.expected, false);
            assert_eq!(text, c.input, "{name}: decode of {:?}", c.expected);
        }
    }
}
