//! Constrained JSON decoding: whatever path through the recogniser (random bytes, random
//! tokens of a real vocabulary, a real model sampling), the result parses with serde_json
//! and validates against the schema — checked by an independent validator.

mod common;
mod json_support;

use common::*;
use json_support::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use smelt::constrain::{pick_best, pick_token, JsonConstraint, TokenFilter, TokenTable};
use smelt::load::gguf::GgufFile;
use smelt::load::{load, LoadOptions};
use smelt::sample::{Rng, Sampler, SamplingParams};
use smelt::tokenize::Tokenizer;

fn fixed_schemas() -> Vec<Option<Value>> {
    vec![
        None,
        Some(json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"], "additionalProperties": false})),
        Some(json!({"$defs": {"node": {"type": "object", "properties": {"v": {"type": "number"},
            "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}}, "required": ["v"], "additionalProperties": false}},
            "$ref": "#/$defs/node"})),
        Some(json!({"type": "array", "prefixItems": [{"enum": ["a", "ab", 7]}, {"type": "boolean"}],
            "items": {"type": "string", "minLength": 1, "maxLength": 3}, "minItems": 3, "maxItems": 5})),
        Some(json!({"anyOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"type": "object", "properties": {"ab": {"type": "null"}}, "additionalProperties": {"type": "boolean"}}]})),
    ]
}

/// A random walk over `ALPHABET`: every byte (or run of bytes) tried must get the same
/// answer from `accepts` and `advance`; accepted ones are appended. Then finish the
/// document and check it.
fn walk(schema: Option<&Value>, seed: u64, steps: usize) -> Result<(), String> {
    let mut c = JsonConstraint::new(schema).map_err(|e| format!("{e:#}"))?;
    let mut rng = Rng::new(seed);
    let mut text = Vec::new();
    for _ in 0..steps {
        let n = 1 + (rng.next_u64() % 3) as usize * (rng.next_u64() % 2) as usize;
        let piece: Vec<u8> = (0..n).map(|_| ALPHABET[(rng.next_u64() as usize) % ALPHABET.len()]).collect();
        let ok = c.accepts(&piece);
        let mut probe = c.clone();
        if ok != probe.advance(&piece).is_ok() {
            return Err(format!("accepts/advance disagree on {piece:?} after {:?}", String::from_utf8_lossy(&text)));
        }
        if ok {
            c = probe;
            text.extend(piece);
        }
    }
    text.extend(finish(&mut c));
    check_document(schema, &text).map(|_| ())
}

#[test]
fn random_byte_walks_on_fixed_schemas() {
    for (i, s) in fixed_schemas().iter().enumerate() {
        for seed in 0..40 {
            walk(s.as_ref(), seed * 31 + i as u64, (seed as usize * 7) % 300).unwrap_or_else(|e| panic!("schema {i} seed {seed}: {e}"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Random schemas of the subset, random byte walks: the finished text always validates.
    #[test]
    fn random_schemas_random_walks(schema in schema(), seed in any::<u64>(), steps in 0usize..200) {
        match JsonConstraint::new(Some(&schema)) {
            Err(e) => prop_assert!(false, "the generator only makes supported schemas: {e:#}\n{schema}"),
            Ok(_) => {
                if let Err(e) = walk(Some(&schema), seed, steps) {
                    prop_assert!(false, "{e}\nschema: {schema}");
                }
            }
        }
    }

    /// Random JSON texts: whenever the recogniser takes a whole text, the validator agrees.
    #[test]
    fn whatever_is_accepted_validates(schema in schema(), doc in json_value(), pretty in any::<bool>()) {
        let c = JsonConstraint::new(Some(&schema)).unwrap();
        let text = if pretty { serde_json::to_string_pretty(&doc).unwrap() } else { serde_json::to_string(&doc).unwrap() };
        let mut d = c.clone();
        if d.advance(text.as_bytes()).is_ok() && d.can_finish() {
            prop_assert!(valid(&schema, &schema, &doc), "accepted but invalid: {text}\nschema: {schema}");
        }
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(Value::from),
        (-20i64..20).prop_map(Value::from),
        Just(json!(1.5)),
        prop::sample::select(vec!["", "a", "re", "red", "fixed", "x", "xy", "é😀", "q\"x"]).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec((prop::sample::select(NAMES), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

/// Random token choices over the real SmolLM2 (byte-level BPE, 49k) and Gemma 3
/// (SentencePiece with byte fallback, 262k) vocabularies: random candidate lists, the
/// whole-vocabulary fallback with random logits, then the recogniser's completion spelled
/// in tokens. The text the tokenizer decodes always parses and validates.
#[test]
fn random_tokens_of_real_vocabularies() {
    random_tokens(&smollm2(), &fixed_schemas(), 3);
    random_tokens(&gemma3(), &fixed_schemas()[..2], 1);
}

fn random_tokens(model: &std::path::Path, schemas: &[Option<Value>], seeds: u64) {
    let tok = Tokenizer::from_gguf(&GgufFile::open(model).unwrap()).unwrap();
    let table = TokenTable::new(&tok);
    let n = table.len() as u32;
    let eog = tok.eog_ids()[0];
    for (i, schema) in schemas.iter().enumerate() {
        for seed in 0..seeds {
            let mut rng = Rng::new(seed * 7 + i as u64);
            let mut c = JsonConstraint::new(schema.as_ref()).unwrap();
            let mut ids = Vec::new();
            for step in 0.. {
                assert!(step < 1000, "schema {i} seed {seed}: no end: {:?}", tok.decode(&ids, false));
                let next = if step < 60 {
                    let cands: Vec<u32> = (0..8).map(|_| (rng.next_u64() % n as u64) as u32).collect();
                    pick_token(&c, &table, cands).or_else(|| {
                        let logits: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32).collect();
                        pick_best(&c, &table, &logits)
                    })
                } else {
                    // Spell the recogniser's completion with the longest tokens that fit.
                    let tail = c.completion().expect("a completion");
                    let mut fits: Vec<u32> = (0..n).filter(|&id| !table.bytes(id).is_empty() && tail.starts_with(table.bytes(id))).collect();
                    fits.sort_by_key(|&id| std::cmp::Reverse(table.bytes(id).len()));
                    pick_token(&c, &table, std::iter::once(eog).chain(fits))
                };
                if step % 16 == 5 {
                    // The filter's shortcuts (first-byte table, one-byte tokens) change nothing.
                    let mut f = TokenFilter::new(&table, &c);
                    let differ = (0..n).find(|&id| f.allows(id) != table.allows(&c, id));
                    assert_eq!(differ, None, "after {:?}", tok.decode(&ids, false));
                }
                let id = next.unwrap_or_else(|| panic!("no token fits after {:?}", tok.decode(&ids, false)));
                table.advance(&mut c, id).unwrap();
                if table.is_eog(id) {
                    break;
                }
                ids.push(id);
            }
            let bytes: Vec<u8> = ids.iter().flat_map(|&id| table.bytes(id).to_vec()).collect();
            check_document(schema.as_ref(), &bytes).unwrap_or_else(|e| panic!("schema {i} seed {seed}: {e}"));
            assert_eq!(tok.decode(&ids, true).as_bytes(), &bytes[..], "the text the user sees is what was checked");
        }
    }
}

/// SmolLM2 asked for a person as JSON, greedy and sampled: the answer parses and matches.
#[test]
fn smollm2_writes_valid_json() {
    let model = load(&smollm2(), &LoadOptions { ctx: Some(512), ..Default::default() }).unwrap();
    let tok = &model.tokenizer;
    let table = TokenTable::new(tok);
    let schema = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"}},
        "required": ["name", "age"], "additionalProperties": false});
    let prompt = "<|im_start|>user\nDescribe a fictional person as a JSON object with a name and an age.<|im_end|>\n<|im_start|>assistant\n";
    let prompt = tok.encode(prompt, false, true).unwrap();
    for (temperature, seed) in [(0.0, 0), (0.8, 1), (0.8, 2)] {
        let params = SamplingParams { temperature, seed: Some(seed), ..Default::default() };
        let mut sampler = Sampler::new(params).unwrap();
        let mut c = JsonConstraint::new(Some(&schema)).unwrap();
        let mut cache = model.decoder.new_cache();
        let mut logits = model.decoder.step(&prompt, &mut cache).unwrap();
        let mut history = prompt.clone();
        let mut out = Vec::new();
        let mut ended = false;
        for _ in 0..48 {
            let mut f = TokenFilter::new(&table, &c);
            let id = sampler.sample_with(&mut logits, &history, &mut |id| f.allows(id)).expect("some token fits");
            table.advance(&mut c, id).unwrap();
            if table.is_eog(id) || c.is_complete() {
                if !table.is_eog(id) {
                    out.push(id);
                }
                ended = true;
                break;
            }
            out.push(id);
            history.push(id);
            logits = model.decoder.step(&[id], &mut cache).unwrap();
        }
        let text = tok.decode(&out, true);
        assert!(ended && c.can_finish(), "T={temperature} seed {seed}: unfinished after 48 tokens: {text:?}");
        let v = check_document(Some(&schema), text.as_bytes()).unwrap_or_else(|e| panic!("T={temperature} seed {seed}: {e}"));
        assert!(v["name"].is_string() && v["age"].is_i64(), "{v}");
        eprintln!("T={temperature} seed {seed}: {text:?}");
    }
}
