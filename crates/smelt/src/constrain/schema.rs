//! Compiling a JSON Schema (the subset structured-output APIs use) into a small graph of
//! [`Node`]s that the byte recogniser walks. Anything outside the subset is an error naming
//! the keyword, never silently ignored — except the documented annotations and the numeric
//! bounds (`minimum`, `maximum`, `exclusive*`), which are accepted but not enforced.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

pub type NodeId = u32;

/// "No upper bound" for string lengths and item counts.
pub const UNBOUNDED: u32 = u32::MAX;
/// More than any real nesting: "cannot be completed".
pub const INFINITE: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub enum Node {
    /// One of these exact byte strings (sorted, deduplicated): `null`, booleans, `enum`/`const`.
    Literal(Vec<Vec<u8>>),
    Number { integer: bool },
    /// Length bounds in Unicode code points (what JSON Schema counts).
    String { min: u32, max: u32 },
    Object(Object),
    Array { prefix: Vec<NodeId>, items: Option<NodeId>, min: u32, max: u32 },
    /// Any of these (also the alias a `$ref` compiles to).
    AnyOf(Vec<NodeId>),
}

#[derive(Debug, Clone)]
pub struct Object {
    /// Property names as they appear between the quotes (JSON-escaped), sorted bytewise.
    pub names: Vec<Vec<u8>>,
    /// Schema of `names[i]`.
    pub props: Vec<NodeId>,
    pub required: Vec<bool>,
    /// Schema of keys not in `names`; None = not allowed.
    pub additional: Option<NodeId>,
}

/// The compiled schema: nodes plus what the recogniser needs precomputed.
#[derive(Debug)]
pub struct Schema {
    pub nodes: Vec<Node>,
    pub root: NodeId,
    /// Non-`AnyOf` nodes each node stands for (itself, or its alternatives flattened).
    pub leaves: Vec<Vec<NodeId>>,
    /// Fewest nested containers (objects/arrays) any instance of the node needs.
    pub min_depth: Vec<u32>,
}

/// Compiled nodes at most: `$ref`s with sibling keywords are expanded, not shared, so a
/// small hostile schema could otherwise blow up.
const MAX_NODES: usize = 10_000;

/// Keywords that describe but do not constrain (or that we document as not enforced).
const IGNORED: &[&str] = &[
    "title", "description", "default", "examples", "$schema", "$id", "$anchor", "$comment", "deprecated",
    "readOnly", "writeOnly", "format", "$defs", "definitions", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "contentEncoding", "contentMediaType",
];
const HANDLED: &[&str] = &[
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "additionalItems",
    "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "$ref", "minLength", "maxLength", "uniqueItems",
];

impl Schema {
    /// `None` = any JSON object (OpenAI's `json_object` mode).
    pub fn compile(schema: Option<&Value>, max_depth: u32) -> Result<Schema> {
        let mut c = Compiler { doc: schema.unwrap_or(&Value::Null), nodes: Vec::new(), refs: HashMap::new(), nesting: 0, any: 0 };
        c.any = c.build_any();
        let root = match schema {
            None => c.any + 4, // the free-form object, see build_any
            Some(s) => c.compile(s).context("JSON schema")?,
        };
        let s = Schema::from_nodes(c.nodes, root);
        let need = s.min_depth[root as usize];
        if need == INFINITE {
            bail!("JSON schema: no finite JSON document satisfies it (a required value is impossible or infinitely recursive)");
        }
        if need > max_depth {
            bail!("JSON schema: every valid document nests {need} levels deep, more than the limit of {max_depth}");
        }
        Ok(s)
    }

    pub fn from_nodes(nodes: Vec<Node>, root: NodeId) -> Schema {
        let mut s = Schema { leaves: leaves(&nodes), min_depth: Vec::new(), nodes, root };
        s.min_depth = min_depth(&s);
        s
    }

    /// Schema for array index `i`, if an item may be there at all.
    pub fn item(&self, node: NodeId, i: u32) -> Option<NodeId> {
        match &self.nodes[node as usize] {
            Node::Array { prefix, items, max, .. } if i < *max => prefix.get(i as usize).copied().or(*items),
            _ => None,
        }
    }
}

struct Compiler<'a> {
    doc: &'a Value,
    nodes: Vec<Node>,
    refs: HashMap<String, NodeId>,
    nesting: usize,
    any: NodeId,
}

fn lit(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

impl Compiler<'_> {
    fn push(&mut self, n: Node) -> NodeId {
        self.nodes.push(n);
        (self.nodes.len() - 1) as NodeId
    }

    /// The "any JSON value" nodes: any, then null/booleans, number, string, object, array.
    fn build_any(&mut self) -> NodeId {
        let any = self.nodes.len() as NodeId;
        self.push(Node::AnyOf(vec![any + 1, any + 2, any + 3, any + 4, any + 5]));
        self.push(Node::Literal(vec![lit("false"), lit("null"), lit("true")]));
        self.push(Node::Number { integer: false });
        self.push(Node::String { min: 0, max: UNBOUNDED });
        self.push(Node::Object(Object { names: vec![], props: vec![], required: vec![], additional: Some(any) }));
        self.push(Node::Array { prefix: vec![], items: Some(any), min: 0, max: UNBOUNDED });
        any
    }

    fn compile(&mut self, s: &Value) -> Result<NodeId> {
        self.nesting += 1;
        if self.nesting > 64 {
            bail!("the schema nests (or expands `$ref`s) more than 64 levels deep");
        }
        if self.nodes.len() > MAX_NODES {
            bail!("the schema is too large (more than {MAX_NODES} parts once `$ref`s are expanded)");
        }
        let r = self.compile_inner(s);
        self.nesting -= 1;
        r
    }

    fn compile_inner(&mut self, s: &Value) -> Result<NodeId> {
        let obj = match s {
            Value::Bool(true) => return Ok(self.any),
            Value::Bool(false) => bail!("the schema `false` allows nothing"),
            Value::Object(o) => o,
            other => bail!("a schema must be an object or a boolean, got {other}"),
        };
        for k in obj.keys() {
            if !IGNORED.contains(&k.as_str()) && !HANDLED.contains(&k.as_str()) {
                bail!("unsupported JSON Schema keyword `{k}`{}", hint(k));
            }
        }
        if obj.get("uniqueItems").is_some_and(|v| v != &Value::Bool(false)) {
            bail!("unsupported JSON Schema keyword `uniqueItems` (only `false` is accepted)");
        }
        // Keywords that constrain, i.e. that `$ref`/`anyOf` must combine with.
        let rest = |skip: &[&str]| -> Map<String, Value> {
            obj.iter().filter(|(k, _)| !IGNORED.contains(&k.as_str()) && !skip.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        if let Some(r) = obj.get("$ref") {
            let r = r.as_str().context("`$ref` must be a string")?;
            let siblings = rest(&["$ref"]);
            if siblings.is_empty() {
                return self.reference(r);
            }
            let target = self.resolve(r)?.clone();
            return self.compile(&Value::Object(merge(&target, &siblings, "$ref")?)).with_context(|| format!("in `$ref` {r}"));
        }
        if obj.contains_key("anyOf") && obj.contains_key("oneOf") {
            bail!("`anyOf` together with `oneOf` in one schema is not supported");
        }
        if let Some((kw, alts)) = obj.get("anyOf").map(|a| ("anyOf", a)).or(obj.get("oneOf").map(|a| ("oneOf", a))) {
            let alts = alts.as_array().filter(|a| !a.is_empty()).with_context(|| format!("`{kw}` must be a non-empty array"))?;
            let siblings = rest(&[kw]);
            let mut ids = Vec::new();
            for (i, alt) in alts.iter().enumerate() {
                let id = if siblings.is_empty() { self.compile(alt) } else { self.compile(&Value::Object(merge(alt, &siblings, kw)?)) };
                ids.push(id.with_context(|| format!("in `{kw}`[{i}]"))?);
            }
            return Ok(self.push(Node::AnyOf(ids)));
        }
        if obj.contains_key("enum") || obj.contains_key("const") {
            return self.literals(obj, rest(&["enum", "const"]));
        }
        let types: Vec<&str> = match obj.get("type") {
            None => vec!["null", "boolean", "number", "string", "array", "object"],
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) if !ts.is_empty() => {
                ts.iter().map(|t| t.as_str().context("`type` entries must be strings")).collect::<Result<_>>()?
            }
            Some(other) => bail!("`type` must be a string or a non-empty array of strings, got {other}"),
        };
        let has_number = types.contains(&"number");
        let mut ids = Vec::new();
        for t in types {
            let id = match t {
                "null" => self.push(Node::Literal(vec![lit("null")])),
                "boolean" => self.push(Node::Literal(vec![lit("false"), lit("true")])),
                "integer" if has_number => continue,
                "integer" | "number" => self.push(Node::Number { integer: t == "integer" }),
                "string" => self.string(obj)?,
                "array" => self.array(obj)?,
                "object" => self.object(obj)?,
                other => bail!("unknown `type` {other:?}"),
            };
            ids.push(id);
        }
        Ok(if ids.len() == 1 { ids[0] } else { self.push(Node::AnyOf(ids)) })
    }

    fn string(&mut self, obj: &Map<String, Value>) -> Result<NodeId> {
        let min = count(obj, "minLength")?.unwrap_or(0);
        let max = count(obj, "maxLength")?.unwrap_or(UNBOUNDED);
        if min > max {
            bail!("`minLength` {min} is larger than `maxLength` {max}");
        }
        Ok(self.push(Node::String { min, max }))
    }

    fn array(&mut self, obj: &Map<String, Value>) -> Result<NodeId> {
        let min = count(obj, "minItems")?.unwrap_or(0);
        let max = count(obj, "maxItems")?.unwrap_or(UNBOUNDED);
        if min > max {
            bail!("`minItems` {min} is larger than `maxItems` {max}");
        }
        // 2020-12 `prefixItems` + `items`, or draft-07 `items: [..]` + `additionalItems`.
        let (prefix, rest) = match (obj.get("prefixItems"), obj.get("items")) {
            (Some(_), Some(Value::Array(_))) => bail!("`items` must be a schema when `prefixItems` is given"),
            (Some(p), rest) => (Some(p), rest),
            (None, Some(Value::Array(_))) => (obj.get("items"), obj.get("additionalItems")),
            (None, rest) => (None, rest),
        };
        let mut ids = Vec::new();
        if let Some(p) = prefix {
            for (i, s) in p.as_array().context("`prefixItems` must be an array")?.iter().enumerate() {
                ids.push(self.compile(s).with_context(|| format!("in `prefixItems`[{i}]"))?);
            }
        }
        let items = match rest {
            None | Some(Value::Bool(true)) => Some(self.any),
            Some(Value::Bool(false)) => None,
            Some(s) => Some(self.compile(s).context("in `items`")?),
        };
        if items.is_none() && (min as usize) > ids.len() {
            bail!("`minItems` {min} needs more items than the {} the schema allows", ids.len());
        }
        Ok(self.push(Node::Array { prefix: ids, items, min, max }))
    }

    fn object(&mut self, obj: &Map<String, Value>) -> Result<NodeId> {
        let props = match obj.get("properties") {
            None => Map::new(),
            Some(Value::Object(p)) => p.clone(),
            Some(other) => bail!("`properties` must be an object, got {other}"),
        };
        let additional = match obj.get("additionalProperties") {
            None | Some(Value::Bool(true)) => Some(self.any),
            Some(Value::Bool(false)) => None,
            Some(s) => Some(self.compile(s).context("in `additionalProperties`")?),
        };
        let mut entries: Vec<(Vec<u8>, NodeId, bool)> = Vec::new();
        for (name, s) in &props {
            if name.len() > 4096 {
                bail!("property names longer than 4096 bytes are not supported");
            }
            let id = self.compile(s).with_context(|| format!("in property {name:?}"))?;
            entries.push((escaped(name), id, false));
        }
        let required = match obj.get("required") {
            None => vec![],
            Some(Value::Array(r)) => r.iter().map(|v| v.as_str().context("`required` entries must be strings")).collect::<Result<Vec<_>>>()?,
            Some(other) => bail!("`required` must be an array of strings, got {other}"),
        };
        for name in required {
            let key = escaped(name);
            match entries.iter_mut().find(|e| e.0 == key) {
                Some(e) => e.2 = true,
                // Required but only allowed through `additionalProperties`: list it explicitly.
                None => match additional {
                    Some(a) => entries.push((key, a, true)),
                    None => bail!("required property {name:?} is not in `properties` and `additionalProperties` is false"),
                },
            }
        }
        if entries.len() > 128 {
            bail!("objects with more than 128 listed properties are not supported ({})", entries.len());
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let o = Object {
            names: entries.iter().map(|e| e.0.clone()).collect(),
            props: entries.iter().map(|e| e.1).collect(),
            required: entries.iter().map(|e| e.2).collect(),
            additional,
        };
        Ok(self.push(Node::Object(o)))
    }

    /// `enum` / `const`: the values' compact serialisations, keeping those the rest of the
    /// schema (e.g. a `type` beside the `enum`) also accepts.
    fn literals(&mut self, obj: &Map<String, Value>, rest: Map<String, Value>) -> Result<NodeId> {
        let mut values: Vec<&Value> = match obj.get("enum") {
            Some(Value::Array(vs)) => vs.iter().collect(),
            Some(other) => bail!("`enum` must be an array, got {other}"),
            None => vec![&obj["const"]],
        };
        if let (Some(c), true) = (obj.get("const"), obj.contains_key("enum")) {
            values.retain(|v| *v == c);
        }
        let check = if rest.is_empty() { None } else { Some(self.compile(&Value::Object(rest))?) };
        let check = check.map(|id| Schema::from_nodes(self.nodes.clone(), id));
        let mut lits = Vec::new();
        for v in values {
            let bytes = serde_json::to_vec(v)?;
            if check.as_ref().is_none_or(|s| s.matches(&bytes)) {
                lits.push(bytes);
            }
        }
        if lits.is_empty() {
            bail!("no value of `enum`/`const` satisfies the rest of its schema");
        }
        lits.sort();
        lits.dedup();
        Ok(self.push(Node::Literal(lits)))
    }

    /// A `$ref` without siblings: one node per reference, so recursion works.
    fn reference(&mut self, r: &str) -> Result<NodeId> {
        if let Some(&id) = self.refs.get(r) {
            return Ok(id);
        }
        let id = self.push(Node::AnyOf(vec![]));
        self.refs.insert(r.to_string(), id);
        let target = self.resolve(r)?.clone();
        let t = self.compile(&target).with_context(|| format!("in `$ref` {r}"))?;
        self.nodes[id as usize] = Node::AnyOf(vec![t]);
        Ok(id)
    }

    fn resolve(&self, r: &str) -> Result<&Value> {
        let Some(pointer) = r.strip_prefix('#') else {
            bail!("`$ref` {r:?}: only references inside the schema (\"#/$defs/...\") are supported");
        };
        let mut v = self.doc;
        for part in pointer.split('/').skip(1) {
            let part = part.replace("~1", "/").replace("~0", "~");
            v = match v {
                Value::Object(o) => o.get(&part),
                Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            }
            .with_context(|| format!("`$ref` {r:?} points to nothing"))?;
        }
        Ok(v)
    }
}

fn hint(k: &str) -> &'static str {
    match k {
        "pattern" | "patternProperties" => " (regular expressions cannot be enforced yet)",
        "allOf" | "not" | "if" | "then" | "else" => " (use `anyOf`, or merge the schemas by hand)",
        _ => "",
    }
}

/// `base` with `extra`'s keywords added; the same keyword with a different value in both is
/// an intersection we cannot express.
fn merge(base: &Value, extra: &Map<String, Value>, kw: &str) -> Result<Map<String, Value>> {
    let mut m = match base {
        Value::Object(o) => o.clone(),
        Value::Bool(true) => Map::new(),
        other => bail!("`{kw}` alternative must be an object schema, got {other}"),
    };
    for (k, v) in extra {
        match m.get(k) {
            Some(old) if old != v => bail!("`{k}` beside `{kw}` conflicts with the same keyword inside it; merge them by hand"),
            _ => {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(m)
}

fn count(obj: &Map<String, Value>, kw: &str) -> Result<Option<u32>> {
    match obj.get(kw) {
        None => Ok(None),
        Some(v) => {
            let n = v.as_u64().with_context(|| format!("`{kw}` must be a non-negative integer, got {v}"))?;
            Ok(Some(n.min(UNBOUNDED as u64 - 1) as u32))
        }
    }
}

/// The bytes of `name` between its quotes in compact JSON.
fn escaped(name: &str) -> Vec<u8> {
    let s = serde_json::to_string(name).expect("strings serialise");
    s.as_bytes()[1..s.len() - 1].to_vec()
}

fn leaves(nodes: &[Node]) -> Vec<Vec<NodeId>> {
    fn walk(nodes: &[Node], id: NodeId, seen: &mut [bool], touched: &mut Vec<NodeId>, out: &mut Vec<NodeId>) {
        if std::mem::replace(&mut seen[id as usize], true) {
            return;
        }
        touched.push(id);
        match &nodes[id as usize] {
            Node::AnyOf(alts) => alts.iter().for_each(|&a| walk(nodes, a, seen, touched, out)),
            _ => out.push(id),
        }
    }
    let mut seen = vec![false; nodes.len()];
    let mut touched = Vec::new();
    (0..nodes.len() as NodeId)
        .map(|id| match &nodes[id as usize] {
            Node::AnyOf(_) => {
                let mut out = Vec::new();
                walk(nodes, id, &mut seen, &mut touched, &mut out);
                touched.drain(..).for_each(|t| seen[t as usize] = false);
                out
            }
            _ => vec![id],
        })
        .collect()
}

/// Fixed point of "containers needed to finish an instance" (INFINITE = impossible).
fn min_depth(s: &Schema) -> Vec<u32> {
    let mut d = vec![INFINITE; s.nodes.len()];
    loop {
        let mut changed = false;
        for id in 0..s.nodes.len() {
            let inner = |c: Option<NodeId>, d: &[u32]| c.map_or(INFINITE, |c| d[c as usize]);
            let v = match &s.nodes[id] {
                Node::Literal(_) | Node::Number { .. } | Node::String { .. } => 0,
                Node::AnyOf(_) => s.leaves[id].iter().map(|&l| d[l as usize]).min().unwrap_or(INFINITE),
                Node::Object(o) => o.props.iter().zip(&o.required).filter(|p| *p.1).map(|p| d[*p.0 as usize]).max().unwrap_or(0).saturating_add(1),
                // Items past the prefix all share one schema: looking at one of them is enough.
                Node::Array { min, prefix, .. } => (0..(*min).min(prefix.len() as u32 + 1)).map(|i| inner(s.item(id as NodeId, i), &d)).max().unwrap_or(0).saturating_add(1),
            };
            if v < d[id] {
                d[id] = v;
                changed = true;
            }
        }
        if !changed {
            return d;
        }
    }
}
