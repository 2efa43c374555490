//! A Hugging Face `tokenizer.json` (+ `tokenizer_config.json`) as GGUF `tokenizer.ggml.*`
//! metadata, in either of llama.cpp's two main forms:
//!
//! - **byte-level BPE** (GPT-2, Llama 3, Qwen 2, SmolLM, smelt's own trainer): `model =
//!   "gpt2"`, tokens in id order with their types, merges, and `pre`: the llama.cpp
//!   pre-tokenizer whose split rules reproduce the file's;
//! - **SentencePiece-style BPE** with byte fallback (Llama 2, TinyLlama, Mistral, Phi-3,
//!   Gemma): `model = "llama"`, tokens with scores (the merge rank that makes each token,
//!   negated: llama.cpp merges the highest-scoring pair first, which is the file's merge
//!   order), byte tokens typed as such, and `add_space_prefix`.
//!
//! Plus the special-token ids, the add-BOS/EOS flags and the chat template.
//!
//! llama.cpp's converter picks `pre` by hashing the tokenization of a test text; smelt does
//! the same check directly: the metadata is loaded back as smelt's GGUF tokenizer (the one
//! that reproduces llama.cpp's) and must tokenize a multilingual test text exactly as
//! `tokenizer.json` does. The first candidate that agrees is written; when none does, the
//! closest is written and the difference is reported as a note.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

use crate::load::gguf::{GgufFile, GgufWriter, Value};
use crate::load::hf::read_json;
use crate::tokenize::hf::{has_type, token_text};
use crate::tokenize::Tokenizer;

/// llama.cpp token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// Text the GGUF tokenizer must split exactly as tokenizer.json does: contractions,
/// digit runs, punctuation, whitespace runs and line ends, several scripts, emoji.
const CHECK_TEXT: &str = "Hello world! It's 2024: 1234567 apples cost $3.14159, DON'T they'll.\n\n  \tIndented code() { return x+=1; }  // done\r\nÉcoutez, naïve café — “quoted” ‘x’ … 日本語のテキスト 中文 한국어 Привет мир 🦙🚀\n\n\n   trailing   spaces   ";

/// Byte-level pre-tokenizers llama.cpp knows, one of each distinct rule set; tried in
/// this order after the ones whose regexes equal tokenizer.json's.
const BYTE_LEVEL_PRES: &[&str] = &[
    "gpt-2", "smollm", "qwen2", "llama-bpe", "dbrx", "qwen35", "gpt-4o", "tekken", "deepseek-v3", "deepseek-llm",
    "deepseek-coder", "falcon", "seed-coder", "bailingmoe", "ufakzeka", "viking", "poro-chat", "default",
];

/// The split regexes of a byte-level pre-tokenizer, in order, as llama.cpp would write
/// them (ByteLevel's own regex is GPT-2's; `Digits` splitting each digit is `\p{N}`).
fn split_regexes(p: &Json) -> Vec<String> {
    match p.get("type").and_then(Json::as_str) {
        Some("Sequence") => p.get("pretokenizers").and_then(Json::as_array).into_iter().flatten().flat_map(split_regexes).collect(),
        // Files write the contractions case-insensitively, llama.cpp with explicit classes.
        Some("Split") => p
            .pointer("/pattern/Regex")
            .and_then(Json::as_str)
            .map(|r| vec![r.replace("(?i:'s|'t|'re|'ve|'m|'ll|'d)", "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])")])
            .unwrap_or_default(),
        Some("Digits") if p.get("individual_digits").and_then(Json::as_bool) == Some(true) => vec![r"\p{N}".into()],
        Some("ByteLevel") if p.get("use_regex").and_then(Json::as_bool).unwrap_or(true) => {
            vec![crate::tokenize::pretok::PreTokenizer::for_name(Some("gpt-2")).map(|p| p.regexes[0].to_string()).unwrap_or_default()]
        }
        _ => Vec::new(),
    }
}

/// Token texts and types in id order, from the model's vocabulary and the added tokens.
fn tokens(tj: &Json, byte_fallback: bool, unk: Option<&str>) -> Result<(Vec<String>, Vec<i32>)> {
    let vocab = tj.pointer("/model/vocab").and_then(Json::as_object).context("tokenizer.json: model.vocab is missing")?;
    let mut by_id: HashMap<u32, (String, i32)> = HashMap::new();
    for (text, id) in vocab {
        let id = id.as_u64().context("tokenizer.json: a vocab id is not a number")? as u32;
        let ty = if Some(text.as_str()) == unk {
            UNKNOWN
        } else if byte_fallback && crate::tokenize::parse_byte_token(text).is_some() {
            BYTE
        } else {
            NORMAL
        };
        by_id.insert(id, (text.clone(), ty));
    }
    for t in tj.get("added_tokens").and_then(Json::as_array).into_iter().flatten() {
        let id = t.get("id").and_then(Json::as_u64).context("tokenizer.json: added token without id")? as u32;
        let content = t.get("content").and_then(Json::as_str).context("tokenizer.json: added token without content")?;
        let special = t.get("special").and_then(Json::as_bool).unwrap_or(false);
        let ty = if Some(content) == unk {
            UNKNOWN
        } else if special {
            CONTROL
        } else {
            USER_DEFINED
        };
        by_id.insert(id, (content.to_string(), ty));
    }
    let n = by_id.len();
    let mut texts = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for id in 0..n as u32 {
        let (text, ty) = by_id.remove(&id).with_context(|| format!("tokenizer.json: token ids are not 0..{n} (id {id} is missing)"))?;
        texts.push(text);
        types.push(ty);
    }
    Ok((texts, types))
}

/// The merges as "a b" strings, in rank order.
fn merges(tj: &Json) -> Result<Vec<String>> {
    tj.pointer("/model/merges")
        .and_then(Json::as_array)
        .context("tokenizer.json: model.merges is missing")?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 => Ok(format!("{} {}", p[0].as_str().unwrap_or_default(), p[1].as_str().unwrap_or_default())),
            _ => bail!("tokenizer.json: a merge is neither \"a b\" nor [a, b]"),
        })
        .collect()
}

/// The first difference between two tokenizers on [`CHECK_TEXT`], with and without the
/// BOS/EOS they add; None when they agree.
fn difference(want: &Tokenizer, got: &Tokenizer) -> Result<Option<String>> {
    for add_special in [false, true] {
        let (a, b) = (want.encode(CHECK_TEXT, add_special, false)?, got.encode(CHECK_TEXT, add_special, false)?);
        if a != b {
            let i = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
            let piece = |ids: &[u32]| ids.get(i).map(|&t| format!("{:?}", String::from_utf8_lossy(&want.token_bytes(t)))).unwrap_or_else(|| "the end".into());
            return Ok(Some(format!("token {i} is {} in tokenizer.json but {} in the GGUF", piece(&a), piece(&b))));
        }
    }
    Ok(None)
}

/// The tokenizer a set of `tokenizer.ggml.*` key/values describes, as smelt (and llama.cpp)
/// will run it.
fn gguf_tokenizer(kv: &[(String, Value)]) -> Result<Tokenizer> {
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.kv(k, v.clone());
    }
    Tokenizer::from_gguf(&GgufFile::from_vec(w.to_bytes())?)
}

/// The `tokenizer.ggml.*` key/values for the tokenizer folder `dir`, and a note when the
/// GGUF tokenizer cannot reproduce tokenizer.json exactly.
pub fn gguf_tokenizer_metadata(dir: &Path) -> Result<(Vec<(String, Value)>, Option<String>)> {
    let tj = read_json(&dir.join("tokenizer.json"))?;
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if cfg_path.is_file() { read_json(&cfg_path)? } else { Json::Null };
    let hf = Tokenizer::from_hf_dir(dir).with_context(|| format!("{}: tokenizer", dir.display()))?;
    let model = tj.get("model").context("tokenizer.json has no model")?;
    let is_bpe = model.get("type").and_then(Json::as_str) == Some("BPE");
    let byte_fallback = model.get("byte_fallback").and_then(Json::as_bool).unwrap_or(false);
    let pre_tok = tj.get("pre_tokenizer").cloned().unwrap_or(Json::Null);
    let byte_level = is_bpe && !byte_fallback && (has_type(&pre_tok, "ByteLevel") || tj.get("decoder").is_some_and(|d| has_type(d, "ByteLevel")));
    let spm = is_bpe && byte_fallback && !byte_level;
    if !byte_level && !spm {
        bail!("{}: GGUF export supports byte-level BPE and SentencePiece-style BPE (byte fallback) tokenizers; this tokenizer.json is another kind", dir.display());
    }

    let unk = model.get("unk_token").and_then(Json::as_str).map(str::to_string).or_else(|| token_text(cfg.get("unk_token")));
    let (texts, types) = tokens(&tj, byte_fallback, unk.as_deref())?;
    let merges = merges(&tj)?;
    let id_of = |t: &str| texts.iter().position(|x| x == t).map(|i| i as u32);

    let mut kv: Vec<(String, Value)> = Vec::new();
    let mut candidates: Vec<Option<&str>> = vec![None];
    if byte_level {
        kv.push(("tokenizer.ggml.model".into(), Value::String("gpt2".into())));
        kv.push(("tokenizer.ggml.pre".into(), Value::String(String::new()))); // chosen below
        // Candidates whose regexes are the file's first, then those with its merge rule.
        let want = split_regexes(&pre_tok);
        let ignore_merges = model.get("ignore_merges").and_then(Json::as_bool).unwrap_or(false);
        let mut names: Vec<&str> = BYTE_LEVEL_PRES.to_vec();
        names.sort_by_key(|n| {
            let p = crate::tokenize::pretok::PreTokenizer::for_name(Some(n)).ok();
            let same_regexes = p.as_ref().is_some_and(|p| p.regexes.iter().map(|r| r.to_string()).collect::<Vec<_>>() == want);
            let same_merges = p.as_ref().is_some_and(|p| p.ignore_merges == ignore_merges);
            (!same_regexes, !same_merges)
        });
        candidates = names.into_iter().map(Some).collect();
    } else {
        kv.push(("tokenizer.ggml.model".into(), Value::String("llama".into())));
        // Score = minus the rank of the first merge that makes the token.
        let mut score: HashMap<String, f32> = HashMap::new();
        for (rank, m) in merges.iter().enumerate() {
            score.entry(m.replacen(' ', "", 1)).or_insert(-(rank as f32));
        }
        let scores = texts.iter().zip(&types).map(|(t, &ty)| Value::F32(if ty == NORMAL { score.get(t).copied().unwrap_or(0.0) } else { 0.0 })).collect();
        kv.push(("tokenizer.ggml.scores".into(), Value::Array(scores)));
        kv.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(hf.add_space_prefix())));
    }
    for (id, name) in [(hf.bos_id(), "bos_token_id"), (hf.eos_id(), "eos_token_id"), (hf.unk_id(), "unknown_token_id")] {
        if let Some(id) = id {
            kv.push((format!("tokenizer.ggml.{name}"), Value::U32(id)));
        }
    }
    if let Some(id) = token_text(cfg.get("pad_token")).and_then(|t| id_of(&t)) {
        kv.push(("tokenizer.ggml.padding_token_id".into(), Value::U32(id)));
    }
    kv.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(hf.add_bos())));
    kv.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(hf.add_eos())));
    if let Some(t) = crate::load::hf::chat_template(dir)? {
        kv.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    kv.push(("tokenizer.ggml.tokens".into(), Value::Array(texts.into_iter().map(Value::String).collect())));
    kv.push(("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())));
    if byte_level {
        kv.push(("tokenizer.ggml.merges".into(), Value::Array(merges.into_iter().map(Value::String).collect())));
    }

    // The first candidate that tokenizes the test text as tokenizer.json does.
    let mut first_miss = None;
    for pre in &candidates {
        if let Some(p) = pre {
            kv[1].1 = Value::String(p.to_string());
        }
        match difference(&hf, &gguf_tokenizer(&kv)?)? {
            None => return Ok((kv, None)),
            Some(d) => {
                first_miss.get_or_insert((*pre, d));
            }
        }
    }
    let (pre, d) = first_miss.expect("at least one candidate");
    if let Some(p) = pre {
        kv[1].1 = Value::String(p.to_string());
    }
    let what = pre.map(|p| format!("with llama.cpp's {p:?} pre-tokenizer, the closest it has, ")).unwrap_or_default();
    Ok((kv, Some(format!("{what}the GGUF tokenizer differs from tokenizer.json: {d}"))))
}

/// [`gguf_tokenizer_metadata`] for a model of `vocab_size` embedding rows: a vocabulary
/// padded past the tokenizer (rows no token uses) gets `[PAD{i}]` tokens of type unused, as
/// llama.cpp's converter writes them, since llama.cpp wants one token per embedding row.
pub fn padded_tokenizer_metadata(dir: &Path, vocab_size: usize, notes: &mut Vec<String>) -> Result<Vec<(String, Value)>> {
    let (mut kv, note) = gguf_tokenizer_metadata(dir)?;
    notes.extend(note);
    for (k, v) in &mut kv {
        if let Value::Array(a) = v {
            let pad = |i: usize| match k.as_str() {
                "tokenizer.ggml.tokens" => Some(Value::String(format!("[PAD{i}]"))),
                "tokenizer.ggml.token_type" => Some(Value::I32(UNUSED)),
                "tokenizer.ggml.scores" => Some(Value::F32(-1000.0)),
                _ => None,
            };
            while a.len() < vocab_size {
                match pad(a.len()) {
                    Some(p) => a.push(p),
                    None => break,
                }
            }
        }
    }
    if let Some((_, Value::Array(t))) = kv.iter().find(|(k, _)| k == "tokenizer.ggml.tokens") {
        if t.len() > vocab_size {
            bail!("{}: the tokenizer has {} tokens but the model only {vocab_size} embedding rows", dir.display(), t.len());
        }
    }
    Ok(kv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Training text with what tells pre-tokenizers apart: digit runs, contractions,
    /// punctuation next to letters, whitespace runs.
    fn corpus() -> String {
        let book = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text/pride-and-prejudice-ch1-3.txt")).unwrap();
        let extra = "In 1811, 2024 and 1234567 people said: it's (true) -- they'll pay $3.14 or 42.5%!\n\tcode() { x += 1; }\n\n   Café naïve 日本 🦙\n";
        format!("{book}\n{}", extra.repeat(40))
    }

    fn write(dir: &Path, tj: &Json, cfg: &Json) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(tj).unwrap()).unwrap();
        std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string(cfg).unwrap()).unwrap();
    }

    fn temp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("smelt-tok-export-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Exported metadata → the tokenizer smelt builds from a GGUF: same ids as
    /// tokenizer.json on the check text and on `text`.
    fn round_trip(dir: &Path, text: &str) -> (Vec<(String, Value)>, Option<String>) {
        let (kv, note) = gguf_tokenizer_metadata(dir).unwrap();
        let hf = Tokenizer::from_hf_dir(dir).unwrap();
        let gguf = gguf_tokenizer(&kv).unwrap();
        for add in [false, true] {
            assert_eq!(hf.encode(text, add, false).unwrap(), gguf.encode(text, add, false).unwrap(), "{}", dir.display());
        }
        (kv, note)
    }

    fn pre(kv: &[(String, Value)]) -> String {
        kv.iter().find(|(k, _)| k == "tokenizer.ggml.pre").and_then(|(_, v)| v.as_str()).unwrap_or_default().to_string()
    }

    #[test]
    fn byte_level_pre_tokenizers_are_recognised() {
        let root = temp("bpe");
        std::fs::create_dir_all(&root).unwrap();
        let text = corpus();
        std::fs::write(root.join("corpus.txt"), &text).unwrap();
        let c = crate::data::corpus::Corpus::read(&[root.join("corpus.txt")], &Default::default()).unwrap();
        let opts = crate::data::tokenizer::TokenizerTrainOptions { vocab_size: 1000, ..Default::default() };
        let trained = crate::data::tokenizer::train_tokenizer(&c, &opts).unwrap();
        let base: Json = serde_json::from_str(&trained.tokenizer_json).unwrap();
        let cfg: Json = serde_json::from_str(&trained.tokenizer_config_json).unwrap();
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
        let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
        // The regexes as the models' tokenizer.json files write them.
        let qwen2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        let llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        let cases = [
            ("gpt-2", base["pre_tokenizer"].clone(), false),
            ("smollm", json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]}), false),
            ("qwen2", json!({"type": "Sequence", "pretokenizers": [split(qwen2), byte_level.clone()]}), false),
            ("llama-bpe", json!({"type": "Sequence", "pretokenizers": [split(llama3), byte_level.clone()]}), true),
        ];
        let mut seen = Vec::new();
        for (want, pre_tok, ignore_merges) in cases {
            let mut tj = base.clone();
            tj["pre_tokenizer"] = pre_tok;
            tj["model"]["ignore_merges"] = json!(ignore_merges);
            let dir = root.join(want);
            write(&dir, &tj, &cfg);
            let (kv, note) = round_trip(&dir, &text[..4000]);
            assert_eq!(note, None, "{want}");
            assert_eq!(pre(&kv), want);
            let hf = Tokenizer::from_hf_dir(&dir).unwrap();
            seen.push(hf.encode(CHECK_TEXT, false, false).unwrap());
        }
        // The four really split differently (else the check above would prove nothing).
        for i in 0..seen.len() {
            for j in i + 1..seen.len() {
                assert_ne!(seen[i], seen[j], "cases {i} and {j} tokenize alike");
            }
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn file_regexes_read_as_llama_cpp_writes_them() {
        let file = json!({"type": "Split", "pattern": {"Regex": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"}});
        let qwen2 = crate::tokenize::pretok::PreTokenizer::for_name(Some("qwen2")).unwrap();
        assert_eq!(split_regexes(&file), vec![qwen2.regexes[0].to_string()]);
    }

    #[test]
    fn sentencepiece_style_bpe_exports_with_scores() {
        use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
        use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
        use tokenizers::{AddedToken, TokenizerBuilder};
        let root = temp("spm");
        let specials: Vec<AddedToken> = ["<unk>", "<s>", "</s>"].iter().map(|t| AddedToken::from(t.to_string(), true)).collect();
        let mut trainer = BpeTrainerBuilder::new().vocab_size(900).special_tokens(specials.clone()).build();
        let mut tok = TokenizerBuilder::new()
            .with_model(BPE::builder().byte_fallback(true).unk_token("<unk>".into()).build().unwrap())
            .with_normalizer(None::<tokenizers::NormalizerWrapper>)
            .with_pre_tokenizer(Some(tokenizers::PreTokenizerWrapper::Metaspace(Metaspace::new('\u{2581}', PrependScheme::First, true))))
            .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
            .with_decoder(None::<tokenizers::DecoderWrapper>)
            .build()
            .unwrap();
        let text = corpus().replace(['日', '本', '🦙'], "");
        tok.train(&mut trainer, text.lines().map(str::to_string)).unwrap();
        let mut tj: Json = serde_json::from_str(&tok.to_string(false).unwrap()).unwrap();
        // Byte tokens for what the vocabulary lacks (CJK, emoji), after the learned ones.
        let vocab = tj["model"]["vocab"].as_object_mut().unwrap();
        let n = vocab.len() as u64;
        for b in 0..=255u64 {
            vocab.insert(format!("<0x{b:02X}>"), json!(n + b));
        }
        let cfg = json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true, "add_eos_token": false});
        // Llama 2 / Mistral: a space is put before the text.
        tj["pre_tokenizer"] = json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false});
        let dir = root.join("llama");
        write(&dir, &tj, &cfg);
        let (kv, note) = round_trip(&dir, &text[..4000]);
        assert_eq!(note, None);
        let get = |k: &str| kv.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get("tokenizer.ggml.model").as_str(), Some("llama"));
        assert_eq!(get("tokenizer.ggml.add_space_prefix").as_bool(), Some(true));
        assert_eq!(get("tokenizer.ggml.bos_token_id").as_i64(), Some(1));
        let types = get("tokenizer.ggml.token_type");
        let types = types.as_array().unwrap();
        assert_eq!(types[0].as_i64(), Some(UNKNOWN as i64));
        assert_eq!(types.iter().filter(|t| t.as_i64() == Some(BYTE as i64)).count(), 256);
        // Gemma: spaces become "▁" with nothing put before the text.
        tj["pre_tokenizer"] = Json::Null;
        tj["normalizer"] = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
        let dir = root.join("gemma");
        write(&dir, &tj, &cfg);
        let (kv, note) = round_trip(&dir, &text[..4000]);
        assert_eq!(note, None);
        assert!(kv.iter().any(|(k, v)| k == "tokenizer.ggml.add_space_prefix" && v.as_bool() == Some(false)));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_tokenizer_no_candidate_reproduces_is_written_with_a_note() {
        // Splitting on every letter is no pre-tokenizer llama.cpp has.
        let mut vocab = serde_json::Map::new();
        for b in 0..=255u8 {
            let mut s = String::new();
            crate::tokenize::bytelevel::encode_into(&[b], &mut s);
            vocab.insert(s, json!(b));
        }
        vocab.insert("\u{120}t".into(), json!(256));
        vocab.insert("he".into(), json!(257));
        let tj = json!({
            "version": "1.0", "added_tokens": [], "normalizer": null, "post_processor": null, "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]},
            "model": {"type": "BPE", "vocab": vocab, "merges": [["\u{120}", "t"], ["h", "e"]]}
        });
        let dir = temp("odd");
        write(&dir, &tj, &json!({}));
        let (_, note) = gguf_tokenizer_metadata(&dir).unwrap();
        let note = note.expect("a note");
        assert!(note.contains("differs from tokenizer.json"), "{note}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
