//! Constrained JSON decoding (`response_format` `json_object` / `json_schema`): whatever the
//! model wants to say, the generated text parses as JSON and, with a schema, validates.
//!
//! Fast by construction: the sampler truncates first (top-k, min-p, top-p) and asks the
//! constraint only about the survivors, best first ([`crate::sample::Sampler::sample_with`]).
//! Only when none of them fits does it look at the rest of the vocabulary, in one pass that
//! asks only about tokens beating the best allowed one so far, while [`TokenFilter`] learns
//! which first bytes can come next and turns away every other token by a table lookup.
//!
//! One step of a decode loop (`table` built once per tokenizer, `c` once per request):
//! ```ignore
//! let mut f = TokenFilter::new(&table, &c);
//! let id = sampler.sample_with(&mut logits, &history, &mut |id| f.allows(id)).context("no token fits")?;
//! table.advance(&mut c, id)?;            // an end-of-generation token is accepted only when complete
//! if table.is_eog(id) || c.is_complete() { /* stop: the document is finished */ }
//! ```
//! At the token limit the text is cut like any other; [`JsonConstraint::completion`] gives
//! the bytes that would close it, for a caller that prefers valid JSON to a faithful cut.
//!
//! # Supported JSON Schema subset
//! `type` (one or a list), `properties`, `required`, `additionalProperties` (true / false /
//! schema; absent = true), `items`, `prefixItems` (and draft-07 `items: [..]` +
//! `additionalItems`), `minItems`/`maxItems`, `minLength`/`maxLength` (code points), `enum`,
//! `const`, `anyOf`/`oneOf` (both as any-of; siblings are merged into each alternative),
//! `$ref` to anywhere in the document (`#/$defs/..`, `#/definitions/..`, `#`; recursion
//! works, bounded by the nesting limit), `uniqueItems: false`. Ignored: annotations
//! (`title`, `description`, `default`, `examples`, `$schema`, `$id`, `$comment`, ...) and
//! `format`. **Not enforced**: `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`.
//! Rejected with an error naming the keyword: `pattern`, `patternProperties`, `allOf`, `not`,
//! `if`/`then`/`else`, `multipleOf`, `uniqueItems: true`, `minProperties`, ... (anything else).
//!
//! # What the generated text looks like
//! - Properties may come in any order; each at most once; `required` ones before `}`.
//! - `enum`/`const` values are written in compact JSON (`serde_json::to_string`).
//! - Keys of additional (unlisted) properties contain no escape sequences.
//! - Strings: any valid UTF-8 (control characters escaped), all JSON escapes, `\u` surrogate
//!   pairs only as pairs. Numbers: JSON grammar, at most 18 integer and 18 fraction digits
//!   and a 2-digit exponent; `integer` allows no fraction or exponent.
//! - At most [`Limits::max_ws`] whitespace bytes in a row outside strings (also after the
//!   document), objects/arrays nested at most [`Limits::max_depth`] deep: the model cannot
//!   loop on spaces, and a recursive schema always has a way out.

mod complete;
mod machine;
mod schema;
mod token;

pub use machine::Limits;
pub use token::{pick_best, pick_token, TokenFilter, TokenTable};

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use machine::{feed, Machine, Thread};
use schema::Schema;

/// Parse threads kept at most (alternatives of `anyOf` that share a prefix).
const MAX_THREADS: usize = 32;

impl Default for Limits {
    /// 20 whitespace bytes (a newline and indentation, as llama.cpp's JSON grammar allows),
    /// 32 levels of nesting.
    fn default() -> Self {
        Limits { max_ws: 20, max_depth: 32 }
    }
}

/// Incremental recogniser of JSON text valid against a schema. Cloning is cheap (the
/// compiled schema is shared), so a clone is a checkpoint.
#[derive(Clone)]
pub struct JsonConstraint {
    schema: Arc<Schema>,
    limits: Limits,
    threads: Vec<Thread>,
}

impl std::fmt::Debug for JsonConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonConstraint").field("threads", &self.threads).field("complete", &self.is_complete()).finish()
    }
}

impl JsonConstraint {
    /// `None`: any JSON object (OpenAI's `json_object` mode). Errors name the unsupported
    /// keyword or the impossible part of the schema.
    pub fn new(schema: Option<&Value>) -> Result<JsonConstraint> {
        Self::with_limits(schema, Limits::default())
    }

    pub fn with_limits(schema: Option<&Value>, limits: Limits) -> Result<JsonConstraint> {
        let schema = Arc::new(Schema::compile(schema, limits.max_depth as u32)?);
        let threads = vec![Machine { s: &schema, limits }.start()];
        Ok(JsonConstraint { schema, limits, threads })
    }

    /// From an OpenAI `response_format` object: `{"type": "text"}` → None;
    /// `{"type": "json_object"}`; `{"type": "json_schema", "json_schema": {"name", "schema",
    /// "strict"}}` (the schema is always enforced, `strict` or not).
    pub fn from_response_format(rf: &Value) -> Result<Option<JsonConstraint>> {
        let kind = rf.get("type").and_then(Value::as_str).context("response_format needs a string \"type\"")?;
        match kind {
            "text" => Ok(None),
            "json_object" => Ok(Some(Self::new(None)?)),
            "json_schema" => {
                let js = rf.get("json_schema").context("response_format json_schema needs a \"json_schema\" object")?;
                if !js.is_object() {
                    bail!("response_format \"json_schema\" must be an object");
                }
                let name = js.get("name").and_then(Value::as_str).unwrap_or("schema");
                let c = Self::new(js.get("schema")).with_context(|| format!("response_format schema {name:?}"))?;
                Ok(Some(c))
            }
            other => bail!("unsupported response_format type {other:?} (expected text, json_object or json_schema)"),
        }
    }

    fn machine(&self) -> Machine<'_> {
        Machine { s: &self.schema, limits: self.limits }
    }

    /// Can `bytes` be appended with the text still the prefix of a valid document?
    pub fn accepts(&self, bytes: &[u8]) -> bool {
        let m = self.machine();
        if let [t] = self.threads.as_slice() {
            // One thread (the usual case): step a copy, going general only if it forks.
            let mut t = t.clone();
            let mut forks = Vec::new();
            for (i, &b) in bytes.iter().enumerate() {
                let alive = m.step(&mut t, b, &mut forks);
                if !forks.is_empty() {
                    let mut threads: Vec<Thread> = if alive { vec![t] } else { vec![] };
                    threads.append(&mut forks);
                    return feed(&m, &mut threads, &bytes[i + 1..], MAX_THREADS);
                }
                if !alive {
                    return false;
                }
            }
            return true;
        }
        let mut threads = self.threads.clone();
        feed(&m, &mut threads, bytes, MAX_THREADS)
    }

    /// Append `bytes`; an error (and no change) if they cannot continue a valid document.
    pub fn advance(&mut self, bytes: &[u8]) -> Result<()> {
        let mut threads = self.threads.clone();
        if !feed(&self.machine(), &mut threads, bytes, MAX_THREADS) {
            bail!("{:?} cannot continue the JSON document here", String::from_utf8_lossy(bytes));
        }
        self.threads = threads;
        Ok(())
    }

    /// A complete document has been written and nothing but (limited) trailing whitespace
    /// may follow: generation should stop now.
    pub fn is_complete(&self) -> bool {
        self.threads.iter().all(|t| t.len() == 1)
    }

    /// The text so far is a complete valid document (end of generation is allowed). Unlike
    /// [`is_complete`](Self::is_complete) more may follow, e.g. digits of a top-level number.
    pub fn can_finish(&self) -> bool {
        let m = self.machine();
        self.threads.iter().any(|t| m.can_finish(t))
    }

    /// Bytes that would finish the document from here (minimal values for what is still
    /// required, then closing brackets), e.g. to end a response cut off at the token limit
    /// with valid JSON. Empty when [`can_finish`](Self::can_finish) already. Checked by
    /// running it through the recogniser; None would be a bug (a state with no way out).
    pub fn completion(&self) -> Option<Vec<u8>> {
        let m = self.machine();
        self.threads.iter().map(|t| m.completion(t)).find(|bytes| {
            let mut probe = self.clone();
            probe.advance(bytes).is_ok() && probe.can_finish()
        })
    }

    /// Back to the empty document.
    pub fn reset(&mut self) {
        self.threads = vec![self.machine().start()];
    }
}

#[cfg(test)]
mod tests;
