//! Real models against llama.cpp's own tokenizer (fixtures written by
//! scripts/fixtures/gen_tokenizer_refs.sh with llama-tokenize), decoding, streaming,
//! end-of-generation sets, Hugging Face folders and malformed GGUF metadata.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use smelt::load::gguf::{GgufFile, GgufWriter, Value};
use smelt::tokenize::{StreamDecoder, Tokenizer};

fn data_root() -> PathBuf {
    let root = std::env::var_os("SMELT_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/smelt-test"));
    assert!(
        root.join("models").is_dir(),
        "test data missing in {} — run scripts/fetch-test-data.sh",
        root.display()
    );
    root
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

fn model(file: &str) -> Tokenizer {
    let path = data_root().join("models").join(file);
    assert!(path.exists(), "{} missing — run scripts/fetch-test-data.sh", path.display());
    let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    Tokenizer::from_gguf(&f).unwrap_or_else(|e| panic!("{file}: {e:#}"))
}

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

fn ids(v: &Json) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn check_fixture(file: &str) {
    let tok = model(file);
    let stem = file.strip_suffix(".gguf").unwrap();
    let fx: Json = serde_json::from_slice(&std::fs::read(fixtures().join(format!("{stem}.json"))).unwrap()).unwrap();
    assert_eq!(fx["model"], file);
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 60, "fixture too small");
    let mut fails = Vec::new();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let plain = tok.encode(text, false, false).unwrap();
        if plain != ids(&c["plain"]) {
            fails.push(format!("plain {text:?}: got {plain:?}, llama.cpp {:?}", ids(&c["plain"])));
        }
        let special = tok.encode(text, tok.add_bos(), true).unwrap();
        if special != ids(&c["special"]) {
            fails.push(format!("special {text:?}: got {special:?}, llama.cpp {:?}", ids(&c["special"])));
        }
    }
    assert!(fails.is_empty(), "{file}: {} mismatches:\n{}", fails.len(), fails.join("\n"));
}

#[test]
fn smollm2_matches_llama_cpp() {
    check_fixture(SMOL);
}

#[test]
fn gemma3_matches_llama_cpp() {
    check_fixture(GEMMA);
}

#[test]
fn special_ids_and_eog_as_llama_cpp() {
    // llama.cpp's load log (print_info) for these files:
    //   SmolLM2: BOS 1, EOS 2, EOT 0, EOG {0 <|endoftext|>, 2 <|im_end|>, 4 <reponame>}, add_bos false
    //   Gemma 3: BOS 2, EOS 1, EOT 106, EOG {1 <eos>, 106 <end_of_turn>, 212 </s>}, add_bos true
    let smol = model(SMOL);
    assert_eq!((smol.bos_id(), smol.eos_id(), smol.eot_id(), smol.add_bos()), (Some(1), Some(2), Some(0), false));
    assert_eq!(smol.eog_ids(), &[0, 2, 4]);
    let gemma = model(GEMMA);
    assert_eq!((gemma.bos_id(), gemma.eos_id(), gemma.eot_id(), gemma.add_bos()), (Some(2), Some(1), Some(106), true));
    assert_eq!(gemma.eog_ids(), &[1, 106, 212]);
    assert_eq!(gemma.token_id("<end_of_turn>"), Some(106));
    assert!(gemma.is_special(106) && gemma.is_special(2) && !gemma.is_special(108));
    assert_eq!(gemma.token_str(108), Some("\n\n"));
    assert_eq!(gemma.vocab_size(), 262144);
    assert_eq!(smol.vocab_size(), 49152);
}

#[test]
fn token_bytes_map_back_to_raw_bytes() {
    let smol = model(SMOL);
    let the = smol.token_id("Ġthe").unwrap();
    assert_eq!(smol.token_bytes(the), b" the");
    assert_eq!(smol.token_bytes(smol.token_id("Ċ").unwrap()), b"\n");
    assert_eq!(smol.token_bytes(2), b"<|im_end|>");
    let gemma = model(GEMMA);
    assert_eq!(gemma.token_bytes(gemma.token_id("▁the").unwrap()), b" the");
    assert_eq!(gemma.token_bytes(gemma.token_id("<0xF0>").unwrap()), [0xF0]);
    assert_eq!(gemma.token_bytes(u32::MAX), b"");
}

#[test]
fn decode_round_trips_real_models() {
    let inputs: Json = serde_json::from_slice(&std::fs::read(fixtures().join("inputs.json")).unwrap()).unwrap();
    for file in [SMOL, GEMMA] {
        let tok = model(file);
        for t in inputs["texts"].as_array().unwrap() {
            let text = t.as_str().unwrap();
            if text.contains('\u{2581}') && !tok.kind().starts_with("BPE") {
                continue; // SentencePiece writes spaces as "▁": a literal "▁" decodes as a space
            }
            let ids = tok.encode(text, true, false).unwrap();
            assert_eq!(tok.decode(&ids, true), text, "{file}");
            // Streaming token by token gives the same text.
            let mut dec = StreamDecoder::new(&tok, true);
            let mut s: String = ids.iter().map(|&id| dec.push(id)).collect();
            s.push_str(&dec.finish());
            assert_eq!(s, text, "{file} streamed");
        }
        // With specials rendered, a chat turn comes back verbatim.
        let chat = "<|im_start|>user\nhi<|im_end|><start_of_turn>";
        let ids = tok.encode(chat, false, true).unwrap();
        assert_eq!(tok.decode(&ids, false), chat);
    }
}

/// A 4-byte character that the model writes as several tokens must come out whole.
fn stream_split_char(tok: &Tokenizer, ch: &str) {
    let ids = tok.encode(ch, false, false).unwrap();
    assert!(ids.len() >= 2, "{ch:?} is a single token {ids:?}; pick another character");
    let mut dec = StreamDecoder::new(tok, true);
    let outs: Vec<String> = ids.iter().map(|&id| dec.push(id)).collect();
    assert!(outs[..outs.len() - 1].iter().all(String::is_empty), "partial character emitted: {outs:?}");
    assert_eq!(outs.last().unwrap(), ch);
    assert_eq!(dec.finish(), "");
}

#[test]
fn stream_decoder_holds_split_characters() {
    let gemma = model(GEMMA);
    // U+10000 LINEAR B SYLLABLE B008 A is not in Gemma 3's vocabulary: byte-fallback tokens
    // <0xF0> <0x90> <0x80> <0x80>.
    let ids = gemma.encode("\u{10000}", false, false).unwrap();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(ids.iter().all(|&id| gemma.token_bytes(id).len() == 1));
    stream_split_char(&gemma, "\u{10000}");
    // SmolLM2's byte-level BPE writes the llama emoji (F0 9F A6 99) in several tokens.
    stream_split_char(&model(SMOL), "🦙");

    // An unfinished character at the end is replaced, never dropped or split.
    let mut dec = StreamDecoder::new(&gemma, true);
    assert_eq!(dec.push(ids[0]), "");
    assert_eq!(dec.push(ids[1]), "");
    assert_eq!(dec.pending_bytes(), &[0xF0, 0x90]);
    assert_eq!(dec.finish(), "\u{FFFD}");
    // A byte that cannot start or continue a character is replaced at once.
    let mut dec = StreamDecoder::new(&gemma, true);
    let cont = gemma.token_id("<0x9D>").unwrap();
    assert_eq!(dec.push(cont), "\u{FFFD}");
    assert_eq!(gemma.decode(&[ids[0], ids[1]], true), "\u{FFFD}");
}

// ---------------------------------------------------------------- synthetic GGUF vocabularies

fn strs(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
}

/// A tiny SentencePiece vocabulary: <unk> <s> </s>, 256 byte tokens, then pieces.
fn spm_writer() -> (GgufWriter, Vec<String>) {
    let mut toks: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    toks.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    toks.extend(["▁", "a", "b", "▁a", "ab", "▁ab"].map(String::from));
    let n = toks.len();
    let mut types = vec![Value::I32(3); 3];
    types.extend(std::iter::repeat_n(Value::I32(6), 256));
    types.extend(std::iter::repeat_n(Value::I32(1), n - 259));
    let scores: Vec<Value> = (0..n).map(|i| Value::F32(-(i as f32))).collect();
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::String("llama".into()))
        .kv("tokenizer.ggml.model", Value::String("llama".into()))
        .kv("tokenizer.ggml.tokens", strs(&toks.iter().map(String::as_str).collect::<Vec<_>>()))
        .kv("tokenizer.ggml.scores", Value::Array(scores))
        .kv("tokenizer.ggml.token_type", Value::Array(types));
    (w, toks)
}

fn load_writer(w: &GgufWriter) -> anyhow::Result<Tokenizer> {
    let f = GgufFile::from_vec(w.to_bytes())?;
    Tokenizer::from_gguf(&f)
}

#[test]
fn synthetic_spm_byte_fallback_and_stream() {
    let (w, toks) = spm_writer();
    let tok = load_writer(&w).unwrap();
    let id = |s: &str| toks.iter().position(|t| t == s).unwrap() as u32;
    assert_eq!(tok.encode("ab", false, false).unwrap(), vec![id("▁ab")]);
    assert_eq!(tok.encode("ab", true, false).unwrap(), vec![1, id("▁ab")]);
    // "🦙" = F0 9F A6 99 is not a piece: four byte tokens.
    let ids = tok.encode("a🦙", false, false).unwrap();
    assert_eq!(ids, vec![id("▁a"), id("<0xF0>"), id("<0x9F>"), id("<0xA6>"), id("<0x99>")]);
    let mut dec = StreamDecoder::new(&tok, true);
    let outs: Vec<String> = ids.iter().map(|&i| dec.push(i)).collect();
    assert_eq!(outs, ["a", "", "", "", "🦙"]);
    assert_eq!(tok.decode(&ids, true), "a🦙");
    // Control tokens are text only with parse_special.
    assert_eq!(tok.encode("</s>", false, true).unwrap(), vec![2]);
    assert_ne!(tok.encode("</s>", false, false).unwrap(), vec![2]);
}

fn expect_err(w: &GgufWriter, needle: &str) {
    let err = match load_writer(w) {
        Ok(_) => panic!("expected an error mentioning {needle:?}"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains(needle), "error {err:?} does not mention {needle:?}");
    assert!(!err.contains('\n'), "error is not one line: {err:?}");
}

#[test]
fn malformed_metadata_is_a_clear_error() {
    let (mut w, _) = spm_writer();
    w.kv("tokenizer.ggml.scores", Value::Array(vec![Value::F32(0.0); 3]));
    expect_err(&w, "but 3 scores");

    let (mut w, toks) = spm_writer();
    let mut types = vec![Value::I32(1); toks.len()];
    types[7] = Value::I32(42);
    w.kv("tokenizer.ggml.token_type", Value::Array(types));
    expect_err(&w, "bad token type");

    let (mut w, toks) = spm_writer();
    w.kv("tokenizer.ggml.token_type", Value::Array(vec![Value::I32(1); toks.len() - 1]));
    expect_err(&w, "token types");

    let (mut w, mut toks) = spm_writer();
    toks[10] = "a".into();
    w.kv("tokenizer.ggml.tokens", strs(&toks.iter().map(String::as_str).collect::<Vec<_>>()));
    expect_err(&w, "duplicates token");

    let (mut w, _) = spm_writer();
    w.kv("tokenizer.ggml.model", Value::String("sentencepiece-ish".into()));
    expect_err(&w, "unknown tokenizer model");

    let (mut w, _) = spm_writer();
    w.kv("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.kv("tokenizer.ggml.pre", Value::String("gpt-2".into()));
    expect_err(&w, "no BPE merges");

    let (mut w, _) = spm_writer();
    w.kv("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.kv("tokenizer.ggml.pre", Value::String("no-such-pre".into()));
    w.kv("tokenizer.ggml.merges", strs(&["a b"]));
    expect_err(&w, "unsupported BPE pre-tokenizer");

    let (mut w, _) = spm_writer();
    w.kv("tokenizer.ggml.tokens", Value::Array(vec![Value::U32(1); 262]));
    expect_err(&w, "is not a string");

    let (mut w, _) = spm_writer();
    w.kv("tokenizer.ggml.tokens", Value::Array(vec![]));
    expect_err(&w, "empty");

    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::String("llama".into()));
    expect_err(&w, "tokenizer.ggml.model is missing");
}

// ---------------------------------------------------------------- Hugging Face folders

#[test]
fn hf_dir_tokenizer() {
    // tests/fixtures/tokenizer/hf_tiny: byte-level BPE over GPT-2's byte alphabet with 9 merges,
    // added tokens <|endoftext|> (265, special), <|im_end|> (266, special), <tool> (267, not
    // special). Expected ids from the Python `tokenizers` library.
    let tok = Tokenizer::from_hf_dir(&fixtures().join("hf_tiny")).unwrap();
    assert_eq!(tok.vocab_size(), 268);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.add_bos(), tok.add_eos()), (Some(265), Some(266), true, false));
    assert_eq!(tok.encode(" the world", false, false).unwrap(), vec![258, 263]);
    let text = "the world<tool> the<|endoftext|>";
    assert_eq!(tok.encode(text, false, true).unwrap(), vec![116, 257, 263, 267, 258, 265]);
    assert_eq!(
        tok.encode(text, false, false).unwrap(),
        vec![116, 257, 263, 267, 258, 60, 124, 101, 110, 100, 111, 102, 116, 101, 120, 116, 124, 62]
    );
    assert_eq!(tok.encode("  é🦙", false, false).unwrap(), vec![32, 32, 195, 169, 240, 159, 166, 153]);
    assert_eq!(tok.encode(" the", true, false).unwrap(), vec![265, 258]);
    assert!(tok.is_special(265) && !tok.is_special(267));
    assert_eq!(tok.eog_ids(), &[265, 266]);
    assert_eq!(tok.token_bytes(258), b" the");
    assert_eq!(tok.decode(&tok.encode(text, true, true).unwrap(), true), "the world<tool> the");
    stream_split_char(&tok, "🦙");
}

#[test]
fn hf_dir_errors() {
    let dir = std::env::temp_dir().join(format!("smelt-hf-missing-{}", std::process::id()));
    let err = Tokenizer::from_hf_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{not json").unwrap();
    let err = format!("{:#}", Tokenizer::from_hf_dir(&dir).unwrap_err());
    assert!(err.contains("not valid JSON"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn set_eog_ids() {
    let mut tok = model(SMOL);
    tok.set_eog_ids(&[2, 0, 2]).unwrap();
    assert_eq!(tok.eog_ids(), &[0, 2]);
    assert!(tok.is_eog(2) && !tok.is_eog(4));
    assert!(tok.set_eog_ids(&[49152]).is_err());
}

/// Encoding speed on a long text (a novel for perplexity). Opt-in, in release mode:
/// `SMELT_BENCH_TEXT=/path/to/text cargo test --release --test tokenizer_models -- --ignored --nocapture`
#[test]
#[ignore]
fn encode_speed_long_text() {
    let path = std::env::var("SMELT_BENCH_TEXT").expect("set SMELT_BENCH_TEXT to a long UTF-8 text file");
    let text = std::fs::read_to_string(&path).unwrap();
    for file in [SMOL, GEMMA] {
        let tok = model(file);
        let t = std::time::Instant::now();
        let ids = tok.encode(&text, false, false).unwrap();
        let dt = t.elapsed();
        eprintln!("{file}: {} bytes -> {} tokens in {dt:.2?} ({:.1} MB/s)", text.len(), ids.len(), text.len() as f64 / 1e6 / dt.as_secs_f64());
        assert_eq!(tok.decode(&ids, false), text);
        assert!(dt.as_secs() < 30, "tokenizing is far too slow");
    }
}
