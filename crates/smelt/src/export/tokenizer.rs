//! A byte-level BPE `tokenizer.json` (+ `tokenizer_config.json`) as GGUF `tokenizer.ggml.*`
//! metadata: `model = "gpt2"`, `pre = "gpt-2"` (llama.cpp's GPT-2 split regex, the one the
//! `ByteLevel` pre-tokenizer uses), tokens in id order with their types, merges, the special
//! token ids and the chat template.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

use crate::load::gguf::Value;

/// llama.cpp token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn has_type(v: &Json, ty: &str) -> bool {
    match v {
        Json::Object(o) => {
            o.get("type").and_then(Json::as_str) == Some(ty)
                || o.values().any(|x| matches!(x, Json::Array(_)) && has_type(x, ty))
        }
        Json::Array(a) => a.iter().any(|x| has_type(x, ty)),
        _ => false,
    }
}

/// A special token named in tokenizer_config.json: a string or `{"content": ...}`.
fn token_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// The `tokenizer.ggml.*` key/values for the tokenizer folder `dir`.
pub fn gguf_tokenizer_metadata(dir: &Path) -> Result<Vec<(String, Value)>> {
    let tj = read_json(&dir.join("tokenizer.json"))?;
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if cfg_path.is_file() { read_json(&cfg_path)? } else { Json::Null };
    let model = tj.get("model").context("tokenizer.json has no model")?;
    let byte_level = model.get("type").and_then(Json::as_str) == Some("BPE")
        && tj.get("pre_tokenizer").is_some_and(|p| has_type(p, "ByteLevel"))
        && tj.get("pre_tokenizer").and_then(|p| p.get("use_regex")).and_then(Json::as_bool).unwrap_or(true)
        && tj.get("normalizer").is_none_or(Json::is_null)
        && !model.get("byte_fallback").and_then(Json::as_bool).unwrap_or(false);
    if !byte_level {
        bail!("GGUF export supports byte-level BPE tokenizers (as smelt tokenizer train writes); this tokenizer.json is another kind");
    }

    let vocab = model.get("vocab").and_then(Json::as_object).context("tokenizer.json: model.vocab is missing")?;
    let mut by_id: HashMap<u32, (String, i32)> = HashMap::new();
    for (text, id) in vocab {
        let id = id.as_u64().context("tokenizer.json: a vocab id is not a number")? as u32;
        by_id.insert(id, (text.clone(), NORMAL));
    }
    for t in tj.get("added_tokens").and_then(Json::as_array).into_iter().flatten() {
        let id = t.get("id").and_then(Json::as_u64).context("tokenizer.json: added token without id")? as u32;
        let content = t.get("content").and_then(Json::as_str).context("tokenizer.json: added token without content")?;
        let special = t.get("special").and_then(Json::as_bool).unwrap_or(false);
        by_id.insert(id, (content.to_string(), if special { CONTROL } else { USER_DEFINED }));
    }
    let n = by_id.len();
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for id in 0..n as u32 {
        let (text, ty) = by_id.remove(&id).with_context(|| format!("tokenizer.json: token ids are not 0..{n} (id {id} is missing)"))?;
        tokens.push(Value::String(text));
        types.push(Value::I32(ty));
    }
    let merges: Vec<Value> = model
        .get("merges")
        .and_then(Json::as_array)
        .context("tokenizer.json: model.merges is missing")?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(Value::String(s.clone())),
            Json::Array(p) if p.len() == 2 => Ok(Value::String(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            ))),
            _ => bail!("tokenizer.json: a merge is neither \"a b\" nor [a, b]"),
        })
        .collect::<Result<_>>()?;

    let id_of = |key: &str| -> Option<u32> {
        let t = token_text(cfg.get(key))?;
        tokens.iter().position(|v| v.as_str() == Some(t.as_str())).map(|i| i as u32)
    };
    let mut kv = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String("gpt-2".into())),
    ];
    for (key, name) in [("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("pad_token", "padding_token_id")] {
        if let Some(id) = id_of(key) {
            kv.push((format!("tokenizer.ggml.{name}"), Value::U32(id)));
        }
    }
    let flag = |k: &str| cfg.get(k).and_then(Json::as_bool).unwrap_or(false);
    kv.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(flag("add_bos_token"))));
    kv.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(flag("add_eos_token"))));
    if let Some(t) = crate::load::hf::chat_template(dir)? {
        kv.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    kv.push(("tokenizer.ggml.tokens".into(), Value::Array(tokens)));
    kv.push(("tokenizer.ggml.token_type".into(), Value::Array(types)));
    kv.push(("tokenizer.ggml.merges".into(), Value::Array(merges)));
    Ok(kv)
}

/// [`gguf_tokenizer_metadata`] for a model of `vocab_size` embedding rows: a vocabulary
/// padded past the tokenizer (rows no token uses) gets `[PAD{i}]` tokens of type unused, as
/// llama.cpp's converter writes them, since llama.cpp wants one token per embedding row.
pub fn padded_tokenizer_metadata(dir: &Path, vocab_size: usize) -> Result<Vec<(String, Value)>> {
    let mut kv = gguf_tokenizer_metadata(dir)?;
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
            bail!("the tokenizer has {} tokens but the model only {vocab_size} embedding rows", t.len());
        }
    }
    Ok(kv)
}
