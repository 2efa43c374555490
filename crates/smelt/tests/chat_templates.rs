//! Chat templates against transformers' own output.
//!
//! `tests/fixtures/templates/<name>.json` hold, per template, what transformers'
//! `apply_chat_template(..., tokenize=False)` rendered for a set of conversations (or the error it
//! raised); `scripts/fixtures/gen_template_goldens.py` wrote them. Every case must match byte for byte,
//! and every expected error must be an error (for `raise_exception`, carrying the template's message).
//! The few templates we knowingly render differently are listed in `KNOWN_EXCEPTIONS` with the reason;
//! such a case that starts passing fails the test, so the list cannot go stale.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use smelt::template::{ChatTemplate, RenderOptions, SpecialTokens};

/// (template, case name or "*", why it differs from transformers).
const KNOWN_EXCEPTIONS: &[(&str, &str, &str)] = &[];

/// Templates that must pass every case (no entry in KNOWN_EXCEPTIONS allowed).
const MUST_PASS: &[&str] = &[
    "SmolLM2-135M-Instruct",
    "gemma-3-270m",
    "meta-llama-Llama-3.1-8B-Instruct",
    "meta-llama-Llama-3.2-3B-Instruct",
    "meta-llama-Llama-3.3-70B-Instruct",
    "Qwen-Qwen2.5-7B-Instruct",
    "Qwen-Qwen3-0.6B",
    "microsoft-Phi-3.5-mini-instruct",
    "google-gemma-2-2b-it",
    "mistralai-Mistral-Nemo-Instruct-2407",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
    "ibm-granite-granite-3.3-2B-Instruct",
    "ibm-granite-granite-4.0",
    "HuggingFaceTB-SmolLM3-3B",
    "meetkai-functionary-medium-v3.1",
    "meetkai-functionary-medium-v3.2",
    "fireworks-ai-llama-3-firefunction-v2",
];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates")
}

fn load_goldens() -> Vec<Json> {
    let dir = fixtures_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no golden files in {}", dir.display());
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

fn special_tokens(golden: &Json) -> SpecialTokens {
    let get = |k: &str| golden["special_tokens"].get(k).and_then(Json::as_str).map(String::from);
    SpecialTokens {
        bos_token: get("bos_token"),
        eos_token: get("eos_token"),
        unk_token: get("unk_token"),
        pad_token: get("pad_token"),
    }
}

/// The first place two strings differ, with a little context, for a readable failure.
fn first_difference(want: &str, got: &str) -> String {
    let at = want
        .char_indices()
        .zip(got.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or(want.len().min(got.len()));
    let from = want[..at].char_indices().rev().nth(40).map_or(0, |(i, _)| i);
    let clip = |s: &str| s.get(from..).unwrap_or("").chars().take(120).collect::<String>();
    format!(
        "first difference at byte {at} (want {} bytes, got {}):\n    want: {:?}\n    got:  {:?}",
        want.len(),
        got.len(),
        clip(want),
        clip(got)
    )
}

/// Runs one case: Ok(()) when it matches transformers, Err(why) otherwise.
fn run_case(template: &Result<ChatTemplate, String>, case: &Json, now: (i32, u32, u32)) -> Result<(), String> {
    let rendered = match template {
        Err(e) => Err(e.clone()),
        Ok(t) => {
            let messages = case["messages"].as_array().cloned().unwrap_or_default();
            let extra = case["extra"].as_object().cloned().unwrap_or_default();
            let opts = RenderOptions {
                add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap_or(false),
                tools: case.get("tools").filter(|t| !t.is_null()),
                documents: case.get("documents").filter(|d| !d.is_null()),
                extra,
                now: Some(now),
            };
            t.render(&messages, &opts).map_err(|e| format!("{e:#}"))
        }
    };
    match (case.get("expected").and_then(Json::as_str), rendered) {
        (Some(want), Ok(got)) if want == got => Ok(()),
        (Some(want), Ok(got)) => Err(first_difference(want, &got)),
        (Some(_), Err(e)) => Err(format!("error, but transformers rendered it: {e}")),
        (None, Ok(got)) => Err(format!(
            "rendered, but transformers raised {:?}; got {:?}",
            case["expected_error"].as_str().unwrap_or(""),
            got.chars().take(200).collect::<String>()
        )),
        (None, Err(e)) => {
            let want = case["expected_error"].as_str().unwrap_or("");
            if case["error_kind"] == "raise_exception" && !e.contains(want) {
                Err(format!("error {e:?} does not carry the template's message {want:?}"))
            } else {
                Ok(())
            }
        }
    }
}

#[test]
fn chat_templates_match_transformers() {
    let goldens = load_goldens();
    let names: Vec<&str> = goldens.iter().map(|g| g["name"].as_str().unwrap()).collect();
    for must in MUST_PASS {
        assert!(
            names.contains(must),
            "golden for {must} missing from {}",
            fixtures_dir().display()
        );
        assert!(
            !KNOWN_EXCEPTIONS.iter().any(|(t, _, _)| t == must),
            "{must} must pass fully, yet has a known exception"
        );
    }

    let (mut passed, mut total, mut excused) = (0, 0, 0);
    let mut failures = Vec::new();
    let mut stale = Vec::new();
    let mut full_templates = 0;
    for golden in &goldens {
        let name = golden["name"].as_str().unwrap();
        let now = &golden["now"];
        let now = (
            now[0].as_i64().unwrap() as i32,
            now[1].as_u64().unwrap() as u32,
            now[2].as_u64().unwrap() as u32,
        );
        let template =
            ChatTemplate::new(golden["source"].as_str().unwrap(), special_tokens(golden)).map_err(|e| format!("{e:#}"));
        let mut all_ok = true;
        for case in golden["cases"].as_array().unwrap() {
            let case_name = case["name"].as_str().unwrap();
            total += 1;
            let exception = KNOWN_EXCEPTIONS.iter().find(|(t, c, _)| {
                *t == name && (*c == "*" || *c == case_name || case_name.strip_suffix("+gen") == Some(c))
            });
            match (run_case(&template, case, now), exception) {
                (Ok(()), None) => passed += 1,
                (Ok(()), Some(_)) => stale.push(format!("{name} / {case_name}")),
                (Err(_), Some(_)) => {
                    excused += 1;
                    all_ok = false;
                }
                (Err(why), None) => {
                    all_ok = false;
                    failures.push(format!("{name} / {case_name}: {why}"));
                }
            }
        }
        full_templates += all_ok as usize;
    }

    println!(
        "chat templates: {} templates ({} fully passing), {passed}/{total} cases match transformers, {excused} known exceptions",
        goldens.len(),
        full_templates
    );
    for (t, c, why) in KNOWN_EXCEPTIONS {
        println!("  known exception {t} / {c}: {why}");
    }
    assert!(
        stale.is_empty(),
        "known exceptions that now pass (remove them from KNOWN_EXCEPTIONS):\n  {}",
        stale.join("\n  ")
    );
    assert!(
        failures.is_empty(),
        "{} cases differ from transformers:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Snippets that jinja2/Python treats in a way we knowingly do not reproduce: (name, why).
const KNOWN_SNIPPET_EXCEPTIONS: &[(&str, &str)] = &[
    (
        "percent_format",
        "printf-style `'%s' % x`: minijinja's `%` operator is arithmetic only and cannot be extended; \
         no chat template in the corpus uses it (`'{}'.format(x)` and `|format` work)",
    ),
    (
        "float_tilde",
        "`~` formats floats with minijinja's own Display (1e20 ~ '' gives 100000000000000000000.0, Python \
         1e+20); only floats >= 1e16 or < 1e-4 differ, and printing, |string and containers are right",
    ),
];

/// Small templates probing one jinja2/Python behaviour each (printing, undefined, slicing, str and dict
/// methods, filters, tests, tojson, whitespace control, ...), against the same transformers pipeline.
#[test]
fn jinja_semantics_match_transformers() {
    let path = fixtures_dir().join("snippets/semantics.json");
    let golden: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let now = &golden["now"];
    let now = (
        now[0].as_i64().unwrap() as i32,
        now[1].as_u64().unwrap() as u32,
        now[2].as_u64().unwrap() as u32,
    );
    let (mut passed, mut excused) = (0, 0);
    let mut failures = Vec::new();
    let mut stale = Vec::new();
    let cases = golden["cases"].as_array().unwrap();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let template =
            ChatTemplate::new(case["source"].as_str().unwrap(), SpecialTokens::default()).map_err(|e| format!("{e:#}"));
        let mut full = case.clone();
        full["messages"] = Json::Array(vec![]);
        full["extra"] = golden["vars"].clone();
        let exception = KNOWN_SNIPPET_EXCEPTIONS.iter().find(|(n, _)| *n == name);
        match (run_case(&template, &full, now), exception) {
            (Ok(()), None) => passed += 1,
            (Ok(()), Some(_)) => stale.push(name.to_string()),
            (Err(_), Some(_)) => excused += 1,
            (Err(why), None) => failures.push(format!("{name}: {why}")),
        }
    }
    println!(
        "jinja semantics: {passed}/{} snippets match transformers, {excused} known exceptions",
        cases.len()
    );
    for (n, why) in KNOWN_SNIPPET_EXCEPTIONS {
        println!("  known exception {n}: {why}");
    }
    assert!(stale.is_empty(), "known snippet exceptions that now pass: {stale:?}");
    assert!(
        failures.is_empty(),
        "{} snippets differ from transformers:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The SmolLM2 golden was made from the GGUF's own template: check we read the same one.
#[test]
fn smollm2_golden_uses_the_gguf_template() {
    let data = std::env::var_os("SMELT_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/smelt-test"));
    let path = data.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} missing: run scripts/fetch-test-data.sh",
        path.display()
    );
    let gguf = smelt::load::gguf::GgufFile::open(&path).unwrap();
    let source = gguf
        .get_str("tokenizer.chat_template")
        .expect("SmolLM2 GGUF has a chat template");
    let golden: Json =
        serde_json::from_str(&std::fs::read_to_string(fixtures_dir().join("SmolLM2-135M-Instruct.json")).unwrap())
            .unwrap();
    assert_eq!(golden["source"].as_str().unwrap(), source);
}
