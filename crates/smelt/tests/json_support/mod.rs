//! For the JSON-constraint tests: an independent validator for the supported JSON Schema
//! subset (written from the spec, sharing no code with `smelt::constrain`), a proptest
//! strategy for random schemas in that subset, and a byte-level "finish the document" driver.
#![allow(dead_code)]

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use smelt::constrain::JsonConstraint;

/// Does `v` satisfy schema `s` (`root` is the whole document, for `$ref`)?
pub fn valid(root: &Value, s: &Value, v: &Value) -> bool {
    let o = match s {
        Value::Bool(b) => return *b,
        Value::Object(o) => o,
        _ => panic!("bad schema {s}"),
    };
    if let Some(r) = o.get("$ref").and_then(Value::as_str) {
        let target = root.pointer(r.strip_prefix('#').unwrap()).unwrap_or_else(|| panic!("bad $ref {r}"));
        if !valid(root, target, v) {
            return false;
        }
    }
    for kw in ["anyOf", "oneOf"] {
        if let Some(alts) = o.get(kw).and_then(Value::as_array) {
            if !alts.iter().any(|a| valid(root, a, v)) {
                return false;
            }
        }
    }
    if o.get("enum").and_then(Value::as_array).is_some_and(|e| !e.contains(v)) {
        return false;
    }
    if o.get("const").is_some_and(|c| c != v) {
        return false;
    }
    if let Some(t) = o.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s],
            Value::Array(a) => a.iter().map(|x| x.as_str().unwrap()).collect(),
            _ => panic!("bad type"),
        };
        if !types.iter().any(|t| has_type(v, t)) {
            return false;
        }
    }
    let n = |k: &str| o.get(k).and_then(Value::as_u64).map(|n| n as usize);
    match v {
        Value::String(s) => {
            let len = s.chars().count();
            n("minLength").is_none_or(|m| len >= m) && n("maxLength").is_none_or(|m| len <= m)
        }
        Value::Array(a) => {
            if n("minItems").is_some_and(|m| a.len() < m) || n("maxItems").is_some_and(|m| a.len() > m) {
                return false;
            }
            let (prefix, rest) = match (o.get("prefixItems"), o.get("items")) {
                (Some(Value::Array(p)), rest) => (p.clone(), rest.cloned()),
                (None, Some(Value::Array(p))) => (p.clone(), o.get("additionalItems").cloned()),
                (_, rest) => (vec![], rest.cloned()),
            };
            a.iter().enumerate().all(|(i, x)| match prefix.get(i) {
                Some(p) => valid(root, p, x),
                None => rest.as_ref().is_none_or(|r| valid(root, r, x)),
            })
        }
        Value::Object(m) => {
            let props = o.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
            let required = o.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
            required.iter().all(|r| m.contains_key(r.as_str().unwrap()))
                && m.iter().all(|(k, x)| match props.get(k) {
                    Some(p) => valid(root, p, x),
                    None => o.get("additionalProperties").is_none_or(|a| valid(root, a, x)),
                })
        }
        _ => true,
    }
}

fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => panic!("bad type {t}"),
    }
}

/// Parse `bytes` as JSON and check them against `schema` (None = any object).
pub fn check_document(schema: Option<&Value>, bytes: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}: {bytes:?}"))?;
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}: {text:?}"))?;
    let ok = match schema {
        None => v.is_object(),
        Some(s) => valid(s, s, &v),
    };
    if ok {
        Ok(v)
    } else {
        Err(format!("does not validate: {text}"))
    }
}

/// Finish the document with the recogniser's own completion (checked by `advance`), and
/// return the bytes added. Panics if there is none: the text reached a dead end.
pub fn finish(c: &mut JsonConstraint) -> Vec<u8> {
    let tail = c.completion().unwrap_or_else(|| panic!("dead end: no completion from {c:?}"));
    c.advance(&tail).unwrap();
    assert!(c.can_finish(), "completion {:?} does not finish", String::from_utf8_lossy(&tail));
    tail
}

/// Bytes a random walk tries: JSON punctuation, digits, the letters of literals and of the
/// property names below, escapes, whitespace, UTF-8 pieces and some invalid bytes.
pub const ALPHABET: &[u8] = b"{}[]\",:{}[]\",:0123456789-+.eE truefalsnabcqxyz\\u\\\"DdEe8C\n\t\x01\xc3\xa9\xf0\x9f\x98\x80\xff\xed\xa0";

pub const NAMES: &[&str] = &["a", "ab", "abc", "b c", "q\"x", "é", "x"];

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(NAMES).prop_map(String::from)
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"type": "string"})),
        (0u32..3, 0u32..4).prop_map(|(min, extra)| json!({"type": "string", "minLength": min, "maxLength": min + extra})),
        Just(json!({"type": "integer"})),
        Just(json!({"type": "number"})),
        Just(json!({"type": "boolean"})),
        Just(json!({"type": "null"})),
        Just(json!({"type": ["string", "null"]})),
        Just(json!({})),
        Just(json!({"enum": ["red", "re", 1, 12, 1.5, null, [1, "a"], {"k": true}]})),
        Just(json!({"const": "fixed"})),
        Just(json!({"type": "string", "enum": ["x", "xy", 3]})),
    ]
}

/// Random schemas of the supported subset, a few levels deep.
pub fn schema() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            // object
            (
                prop::collection::vec((name(), inner.clone(), any::<bool>()), 0..4),
                prop_oneof![Just(None), Just(Some(json!(false))), Just(Some(json!(true))), inner.clone().prop_map(Some)],
            )
                .prop_map(|(props, additional)| {
                    let mut p = Map::new();
                    let mut required = Vec::new();
                    for (n, s, req) in props {
                        if req && !p.contains_key(&n) {
                            required.push(json!(n));
                        }
                        p.insert(n, s);
                    }
                    let mut o = json!({"type": "object", "properties": p, "required": required});
                    if let Some(a) = additional {
                        o["additionalProperties"] = a;
                    }
                    o
                }),
            // array
            (inner.clone(), 0u32..3, 0u32..3).prop_map(|(items, min, extra)| json!({"type": "array", "items": items, "minItems": min, "maxItems": min + extra})),
            (prop::collection::vec(inner.clone(), 1..3), any::<bool>())
                .prop_map(|(prefix, more)| json!({"type": "array", "prefixItems": prefix, "items": more})),
            // alternatives
            prop::collection::vec(inner, 2..4).prop_map(|alts| json!({"anyOf": alts})),
        ]
    })
}
