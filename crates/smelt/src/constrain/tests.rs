//! Hand-written prefixes and documents, accepted and rejected, keyword by keyword.

use serde_json::{json, Value};

use super::*;

fn c(schema: Option<Value>) -> JsonConstraint {
    JsonConstraint::new(schema.as_ref()).unwrap()
}

/// `text` is accepted byte by byte and is a complete document.
fn full(s: &JsonConstraint, text: &str) -> bool {
    let mut s = s.clone();
    text.bytes().all(|b| s.accepts(&[b]) && s.advance(&[b]).is_ok()) && s.can_finish()
}

/// `text` is accepted as a prefix (fed in one piece, checking `accepts` agrees with `advance`).
fn prefix(s: &JsonConstraint, text: &[u8]) -> bool {
    let ok = s.accepts(text);
    assert_eq!(ok, s.clone().advance(text).is_ok(), "accepts and advance disagree on {:?}", String::from_utf8_lossy(text));
    ok
}

fn err(schema: Value) -> String {
    format!("{:#}", JsonConstraint::new(Some(&schema)).unwrap_err())
}

#[test]
fn json_object_mode() {
    let s = c(None);
    for ok in [r#"{}"#, r#"{"a": [1, -2.5e3, "x", null, true, false, {"b": {}}, []]}"#, "\n{ \"k\" : 0 }\n"] {
        assert!(full(&s, ok), "{ok}");
    }
    for bad in ["[]", "\"x\"", "1", "{\"a\" 1}", "{,}", "{\"a\":1,}", "{\"a\":01}", "{\"a\":-}", "{\"a\":1.}", "{a:1}", "{'a':1}", "{} {}", "{}x"] {
        assert!(!full(&s, bad), "{bad}");
    }
    assert!(prefix(&s, b"{\"a\":[1,{\"b\""));
    assert!(!prefix(&s, b"{\"a\":1,}"));
    assert!(!prefix(&s, b"{\"a\":tru "));
}

#[test]
fn completion_and_trailing_whitespace() {
    let mut s = c(None);
    assert!(!s.can_finish() && !s.is_complete());
    s.advance(b"{\"a\":1").unwrap();
    assert!(!s.can_finish() && !s.is_complete());
    s.advance(b"}").unwrap();
    assert!(s.can_finish() && s.is_complete());
    assert!(s.accepts(b" \n"));
    assert!(!s.accepts(b"x") && !s.accepts(b"{"));
    s.advance(&[b' '; 20]).unwrap();
    assert!(!s.accepts(b" "), "trailing whitespace is limited");
    // A top-level number can finish but is not complete: more digits may follow.
    let mut n = c(Some(json!({"type": "number"})));
    n.advance(b"12").unwrap();
    assert!(n.can_finish() && !n.is_complete());
    assert!(n.accepts(b"3") && n.accepts(b" "));
    s.reset();
    assert!(!s.can_finish() && s.accepts(b"{"));
}

#[test]
fn whitespace_runs_are_limited() {
    let s = c(None);
    let ws = |n: usize| format!("{{{}}}", " ".repeat(n));
    assert!(full(&s, &ws(20)));
    assert!(!full(&s, &ws(21)));
    let tight = JsonConstraint::with_limits(None, Limits { max_ws: 2, max_depth: 8 }).unwrap();
    assert!(full(&tight, "{\n \"a\": [ 1 ,\t2 ] }"));
    assert!(!prefix(&tight, b"{\n  "));
    // Whitespace inside strings is content, not limited.
    assert!(full(&tight, "{\"a\":\"     \"}"));
}

#[test]
fn nesting_is_limited() {
    let s = JsonConstraint::with_limits(None, Limits { max_ws: 2, max_depth: 4 }).unwrap();
    assert!(full(&s, r#"{"a":[[{"b":1}]]}"#));
    assert!(!prefix(&s, br#"{"a":[[{"b":["#));
    assert!(prefix(&s, br#"{"a":[[{"b":1"#), "scalars still fit at the limit");
}

#[test]
fn strings_escapes_and_utf8() {
    let s = c(None);
    assert!(full(&s, r#"{"a":"\u00e9\n\"\\\/\b\f\r\t é 😀"}"#));
    assert!(full(&s, r#"{"a":"\ud83d\ude00 \uD83D\uDE00"}"#));
    for bad in [r#"{"a":"\ud83d"}"#, r#"{"a":"\ude00"}"#, r#"{"a":"\ud83dx"}"#, r#"{"a":"\ud83d\u0041"}"#, r#"{"a":"\x"}"#, r#"{"a":"\u12g4"}"#] {
        assert!(!full(&s, bad), "{bad}");
    }
    for bad in [&b"{\"a\":\"\x01"[..], b"{\"a\":\"\xff", b"{\"a\":\"\xc0\xaf", b"{\"a\":\"\xed\xa0\x80", b"{\"a\":\"\x80", b"{\"a\":\"\xf4\x90"] {
        assert!(!prefix(&s, bad), "{bad:?}");
    }
    assert!(prefix(&s, b"{\"a\":\"\xf0\x9f"), "a character may be split across tokens");
    let mut t = s.clone();
    t.advance(b"{\"a\":\"\xf0\x9f").unwrap();
    assert!(!t.accepts(b"\""), "no closing quote inside a UTF-8 sequence");
}

#[test]
fn scalar_types() {
    let int = c(Some(json!({"type": "integer"})));
    for ok in ["0", "-0", "42", "-17", "123456789012345678"] {
        assert!(full(&int, ok), "{ok}");
    }
    for bad in ["1.5", "1e3", "01", "-", "+1", "1234567890123456789"] {
        assert!(!full(&int, bad), "{bad}");
    }
    let num = c(Some(json!({"type": "number"})));
    for ok in ["1.5e-3", "0.0", "-0.5E+12", "7"] {
        assert!(full(&num, ok), "{ok}");
    }
    for bad in [".5", "1.", "1e", "1e+", "1e999", "NaN", "Infinity"] {
        assert!(!full(&num, bad), "{bad}");
    }
    let b = c(Some(json!({"type": "boolean"})));
    assert!(full(&b, "true") && full(&b, "false") && !full(&b, "null") && !full(&b, "tru"));
    let n = c(Some(json!({"type": "null"})));
    assert!(full(&n, "null") && !full(&n, "0"));
    let sn = c(Some(json!({"type": ["string", "null"]})));
    assert!(full(&sn, "\"x\"") && full(&sn, "null") && !full(&sn, "1"));
    let any = c(Some(json!({})));
    assert!(full(&any, "[1]") && full(&any, "\"s\"") && full(&any, "3.5") && full(&any, "{}"));
}

#[test]
fn object_keywords() {
    let person = json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"], "additionalProperties": false});
    let s = c(Some(person));
    assert!(full(&s, r#"{"name":"Ann","age":31}"#));
    assert!(full(&s, r#"{ "age": 31, "name": "Ann" }"#), "any order");
    assert!(!full(&s, r#"{"name":"Ann"}"#), "missing required");
    assert!(!prefix(&s, br#"{"name":"Ann"}"#));
    assert!(!prefix(&s, br#"{"x"#), "unknown key");
    assert!(prefix(&s, br#"{"na"#));
    assert!(!prefix(&s, br#"{"name":"Ann","name""#), "duplicate key");
    assert!(!prefix(&s, br#"{"name":1"#), "wrong type");
    assert!(!prefix(&s, br#"{"age":1.5"#));
    // Optional properties, additional properties with a schema.
    let s = c(Some(json!({"type": "object", "properties": {"a": {"type": "boolean"}}, "additionalProperties": {"type": "integer"}})));
    assert!(full(&s, r#"{}"#) && full(&s, r#"{"a":true,"b":2,"ab":3}"#));
    assert!(!full(&s, r#"{"b":"x"}"#) && !full(&s, r#"{"a":1}"#));
    assert!(!prefix(&s, br#"{"a":true,"a""#), "a free key spelling a listed one is that one");
    assert!(!prefix(&s, br#"{"b\"#), "no escapes in additional keys");
    // Absent additionalProperties = anything.
    let s = c(Some(json!({"type": "object", "properties": {"a": {"type": "string"}}})));
    assert!(full(&s, r#"{"z":[1,{"y":null}],"a":"s"}"#) && !full(&s, r#"{"a":1}"#));
    // Required but only through additionalProperties.
    let s = c(Some(json!({"type": "object", "required": ["id"], "additionalProperties": {"type": "integer"}})));
    assert!(full(&s, r#"{"id":1}"#) && !full(&s, r#"{"x":1}"#));
    // Names that need escaping are written escaped.
    let s = c(Some(json!({"type": "object", "properties": {"a\"b": {"const": 1}}, "required": ["a\"b"], "additionalProperties": false})));
    assert!(full(&s, r#"{"a\"b":1}"#) && !prefix(&s, br#"{"a""#));
    let s = c(Some(json!({"type": "object", "properties": {"a\\": {"const": 1}}, "additionalProperties": false})));
    assert!(full(&s, r#"{"a\\":1}"#));
    // After every property is used only `}` remains.
    let s = c(Some(json!({"type": "object", "properties": {"a": {"type": "null"}}, "additionalProperties": false})));
    assert!(full(&s, r#"{"a":null}"#) && !prefix(&s, br#"{"a":null,"#));
}

#[test]
fn array_keywords() {
    let s = c(Some(json!({"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3})));
    assert!(full(&s, "[1,2]") && full(&s, "[1, 2, 3]"));
    assert!(!full(&s, "[1]") && !full(&s, "[]") && !prefix(&s, b"[1,2,3,") && !prefix(&s, b"[1,\"x\""));
    let t = c(Some(json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}], "items": false})));
    assert!(full(&t, "[\"a\",true]") && full(&t, "[]") && full(&t, "[\"a\"]"));
    assert!(!prefix(&t, b"[true") && !prefix(&t, b"[\"a\",true,"));
    let d7 = c(Some(json!({"type": "array", "items": [{"type": "null"}], "additionalItems": {"type": "integer"}})));
    assert!(full(&d7, "[null,1,2]") && !full(&d7, "[1]"));
}

#[test]
fn enum_and_const() {
    let s = c(Some(json!({"enum": ["red", "green", 1, 12, null, {"a": [1]}]})));
    for ok in ["\"red\"", "\"green\"", "1", "12", "null", "{\"a\":[1]}"] {
        assert!(full(&s, ok), "{ok}");
    }
    for bad in ["\"blue\"", "\"re\"", "123", "2", "{\"a\": [1]}"] {
        assert!(!full(&s, bad), "{bad}");
    }
    assert!(prefix(&s, b"\"gr"));
    // `type` beside `enum` filters the values.
    let s = c(Some(json!({"type": "string", "enum": ["a", 1]})));
    assert!(full(&s, "\"a\"") && !full(&s, "1"));
    let s = c(Some(json!({"type": "object", "properties": {"k": {"const": "v"}}, "required": ["k"]})));
    assert!(full(&s, r#"{"k":"v"}"#) && !full(&s, r#"{"k":"w"}"#));
    // Inside objects a literal ends where the object goes on.
    let s = c(Some(json!({"type": "object", "properties": {"n": {"enum": [1, 12]}}, "required": ["n"], "additionalProperties": false})));
    assert!(full(&s, r#"{"n":1}"#) && full(&s, r#"{"n":12 }"#) && !full(&s, r#"{"n":13}"#));
}

#[test]
fn any_of_and_refs() {
    let s = c(Some(json!({"anyOf": [
        {"type": "object", "properties": {"cat": {"type": "string"}}, "required": ["cat"], "additionalProperties": false},
        {"type": "object", "properties": {"dog": {"type": "integer"}}, "required": ["dog"], "additionalProperties": false},
        {"type": "array", "items": {"type": "integer"}}]})));
    assert!(full(&s, r#"{"cat":"x"}"#) && full(&s, r#"{"dog":3}"#) && full(&s, "[1,2]"));
    assert!(!full(&s, r#"{"cat":3}"#) && !full(&s, r#"{"dog":"x"}"#) && !prefix(&s, br#"{"cow"#));
    let s = c(Some(json!({"oneOf": [{"type": "integer"}, {"type": "string", "maxLength": 1}], "title": "x"})));
    assert!(full(&s, "3") && full(&s, "\"a\"") && !full(&s, "\"ab\""));
    // Siblings of anyOf apply to every alternative.
    let s = c(Some(json!({"type": "string", "anyOf": [{"maxLength": 2}, {"minLength": 5}]})));
    assert!(full(&s, "\"ab\"") && full(&s, "\"abcde\"") && !full(&s, "\"abc\"") && !full(&s, "1"));
    let tree = json!({"$ref": "#/$defs/node", "$defs": {"node": {"type": "object",
        "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["v"], "additionalProperties": false}}});
    let s = JsonConstraint::with_limits(Some(&tree), Limits { max_ws: 2, max_depth: 6 }).unwrap();
    assert!(full(&s, r#"{"v":1,"kids":[{"v":2},{"v":3,"kids":[{"v":4}]}]}"#));
    assert!(!full(&s, r#"{"v":1,"kids":[{"w":2}]}"#));
    // Depth 6 = three levels of nodes (object + array each); the third node's `kids` can
    // only be empty.
    assert!(full(&s, r#"{"v":1,"kids":[{"v":2,"kids":[{"v":3,"kids":[]}]}]}"#));
    assert!(!prefix(&s, br#"{"v":1,"kids":[{"v":2,"kids":[{"v":3,"kids":[{"#));
    let s = JsonConstraint::with_limits(Some(&tree), Limits { max_ws: 2, max_depth: 5 }).unwrap();
    assert!(!prefix(&s, br#"{"kids":[{"kids":[{"v":1,"k"#), "a key whose value cannot fit is refused");
    assert!(prefix(&s, br#"{"kids":[{"kids":[{"v":1"#));
    let defs = json!({"definitions": {"s": {"type": "string"}}, "type": "object",
        "properties": {"a": {"$ref": "#/definitions/s", "description": "ignored"}, "b": {"$ref": "#/definitions/s", "maxLength": 1}}});
    let s = c(Some(defs));
    assert!(full(&s, r#"{"a":"long","b":"x"}"#) && !full(&s, r#"{"b":"xy"}"#) && !full(&s, r#"{"a":1}"#));
}

#[test]
fn string_lengths() {
    let s = c(Some(json!({"type": "string", "minLength": 2, "maxLength": 3})));
    assert!(full(&s, "\"ab\"") && full(&s, "\"a\\nc\"") && full(&s, "\"é😀\"") && full(&s, "\"\\ud83d\\ude00x\""));
    assert!(!full(&s, "\"a\"") && !prefix(&s, b"\"abcd") && !prefix(&s, b"\"abc\\"));
    let s = c(Some(json!({"type": "string", "maxLength": 0})));
    assert!(full(&s, "\"\"") && !prefix(&s, b"\"a"));
}

#[test]
fn schema_errors_are_clear() {
    assert!(err(json!({"type": "string", "pattern": "^a$"})).contains("`pattern`"));
    assert!(err(json!({"allOf": [{}]})).contains("`allOf`"));
    assert!(err(json!({"type": "object", "properties": {"x": {"foo": 1}}})).contains("`foo`"));
    assert!(err(json!({"type": "object", "properties": {"x": {"foo": 1}}})).contains("\"x\""), "names where");
    assert!(err(json!({"type": "integer", "multipleOf": 2})).contains("`multipleOf`"));
    assert!(err(json!({"type": "array", "uniqueItems": true})).contains("`uniqueItems`"));
    assert!(err(json!({"type": "string", "minLength": 3, "maxLength": 2})).contains("minLength"));
    assert!(err(json!({"type": "array", "minItems": 3, "maxItems": 1})).contains("minItems"));
    assert!(err(json!({"type": "array", "prefixItems": [{}], "items": false, "minItems": 2})).contains("minItems"));
    assert!(err(json!({"type": "object", "required": ["a"], "additionalProperties": false})).contains("\"a\""));
    assert!(err(json!({"$ref": "#"})).contains("no finite"));
    assert!(err(json!({"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]})).contains("no finite"));
    assert!(err(json!({"$ref": "http://example.com/s.json"})).contains("only references inside"));
    assert!(err(json!({"$ref": "#/$defs/missing"})).contains("points to nothing"));
    assert!(err(json!({"type": "strin"})).contains("strin"));
    assert!(err(json!({"enum": ["a"], "type": "integer"})).contains("enum"));
    assert!(err(json!(false)).contains("false"));
    assert!(err(json!({"type": "string", "anyOf": [{"type": "integer"}]})).contains("`type`"));
    // Ignored or documented-as-not-enforced keywords are fine.
    let ok = json!({"type": "integer", "minimum": 0, "maximum": 9, "description": "d", "title": "t", "format": "int32"});
    assert!(JsonConstraint::new(Some(&ok)).is_ok());
}

#[test]
fn response_format() {
    assert!(JsonConstraint::from_response_format(&json!({"type": "text"})).unwrap().is_none());
    let o = JsonConstraint::from_response_format(&json!({"type": "json_object"})).unwrap().unwrap();
    assert!(full(&o, "{}") && !full(&o, "[]"));
    let rf = json!({"type": "json_schema", "json_schema": {"name": "p", "strict": true,
        "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": false}}});
    let s = JsonConstraint::from_response_format(&rf).unwrap().unwrap();
    assert!(full(&s, r#"{"a":1}"#) && !full(&s, "{}"));
    let bad = json!({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "string", "pattern": "x"}}});
    let e = format!("{:#}", JsonConstraint::from_response_format(&bad).unwrap_err());
    assert!(e.contains("\"p\"") && e.contains("pattern"), "{e}");
    assert!(JsonConstraint::from_response_format(&json!({"type": "yaml"})).is_err());
}

#[test]
fn tokens() {
    let pieces: Vec<Vec<u8>> = vec![b"<eos>".to_vec(), b"{".to_vec(), b"}".to_vec(), b"{\"".to_vec(), b"a".to_vec(), b"\":".to_vec(), b"1".to_vec(), vec![], b"<s>".to_vec()];
    let t = TokenTable::from_parts(pieces, |id| id == 0 || id == 8, &[0]);
    let mut s = c(Some(json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})));
    assert_eq!(pick_token(&s, &t, [0, 8, 7, 4, 2, 3, 1]), Some(3), "eos, special and empty tokens are never allowed mid-document");
    assert_eq!(pick_best(&s, &t, &[9.0, 1.0, 0.0, 0.5, 3.0, 0.0, 0.0, 5.0, 5.0]), Some(1));
    for id in [3, 4, 5, 6] {
        t.advance(&mut s, id).unwrap();
    }
    assert!(t.advance(&mut s, 0).is_err() && t.advance(&mut s, 8).is_err());
    assert_eq!(pick_token(&s, &t, [0, 4, 6, 2]), Some(6));
    t.advance(&mut s, 2).unwrap();
    assert_eq!(pick_token(&s, &t, [4, 6, 1, 0]), Some(0), "end of generation once complete");
    assert!(t.advance(&mut s, 0).is_ok());
}


#[test]
fn completion_finishes_any_prefix() {
    let person = json!({"type": "object", "properties": {"name": {"type": "string", "minLength": 2}, "age": {"type": "integer"}},
        "required": ["name", "age"], "additionalProperties": false});
    let cases: &[(Option<Value>, &str, &str)] = &[
        (Some(person.clone()), "{\"na", "{\"name\":\"aa\",\"age\":0}"),
        (Some(person.clone()), "{\"age\":-", "{\"age\":-0,\"name\":\"aa\"}"),
        (Some(person), "{ \"name\": \"\\", "{ \"name\": \"\\na\",\"age\":0}"),
        (None, "{\"a\":\"\\ud83d", "{\"a\":\"\\ud83d\\uDC00\"}"),
        (None, "{\"a\":\"\\ud83d\\u", "{\"a\":\"\\ud83d\\uDC00\"}"),
        (None, "{\"a\":[1.", "{\"a\":[1.0]}"),
        (None, "{\"a\":{\"b\":tr", "{\"a\":{\"b\":true}}"),
        (None, "{\"a\":", "{\"a\":false}"),
        (None, "{\"a\":1,", "{\"a\":1,\"\":false}"),
        (Some(json!({"type": "array", "items": {"enum": ["xy", 3]}, "minItems": 2})), "[\"x", "[\"xy\",\"xy\"]"),
        (Some(json!({"type": "object", "properties": {"": {"type": "null"}}, "additionalProperties": {"type": "integer"}})), "{\"\":null,", "{\"\":null,\"_\":0}"),
    ];
    for (schema, prefix, want) in cases {
        let mut s = c(schema.clone());
        s.advance(prefix.as_bytes()).unwrap();
        let tail = s.completion().unwrap();
        assert_eq!(format!("{prefix}{}", String::from_utf8(tail).unwrap()), *want);
    }
    assert_eq!(c(None).completion().unwrap(), b"{}");
    let mut done = c(None);
    done.advance(b"{}").unwrap();
    assert_eq!(done.completion().unwrap(), b"");
}

#[test]
fn hostile_schemas_fail_fast() {
    // Each level refers twice to the next with a constraining sibling: 2^25 expansions.
    let mut defs = serde_json::Map::new();
    for i in 0..25 {
        let next = json!({"$ref": format!("#/$defs/d{}", i + 1), "minLength": 1});
        defs.insert(format!("d{i}"), json!({"type": "object", "properties": {"x": next, "y": next}}));
    }
    defs.insert("d25".into(), json!({"type": "string"}));
    let s = json!({"$defs": defs, "$ref": "#/$defs/d0"});
    let t = std::time::Instant::now();
    let e = err(s);
    assert!(e.contains("too large"), "{e}");
    assert!(t.elapsed().as_secs() < 5);
    // Self-reference through anyOf only, and deep recursion, end with an error or work.
    assert!(err(json!({"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"})).contains("no finite"));
    let list = json!({"$defs": {"l": {"type": "object", "properties": {"next": {"$ref": "#/$defs/l"}}}}, "$ref": "#/$defs/l"});
    let s = c(Some(list));
    let deep = format!("{}{}", "{\"next\":".repeat(31), "{}".to_string() + &"}".repeat(31));
    assert!(full(&s, &deep));
    assert!(!prefix(&s, format!("{}{{", "{\"next\":".repeat(32)).as_bytes()), "nesting stops at the limit");
}
