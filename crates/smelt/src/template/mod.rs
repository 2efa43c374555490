//! Chat templates, rendered exactly as transformers' `apply_chat_template(..., tokenize=False)` does.
//!
//! A model's chat template is a jinja2 program from its tokenizer config (or GGUF
//! `tokenizer.chat_template`). transformers renders it in a particular jinja2 sandbox; [`env`]
//! reproduces that environment on minijinja, [`pyjson`] its `tojson`, and [`source`] rewrites the one
//! tag jinja2 gets from a transformers extension. This module prepares the inputs the way
//! transformers does before rendering:
//!
//! * message keys whose value is `null` are dropped (OpenAI's `"content": null` becomes a missing key);
//! * a message's reasoning (`reasoning_content`, `thinking` or `reasoning`) is copied to both
//!   `thinking` (first key) and `reasoning_content`;
//! * the variables are `messages`, `tools` and `documents` (`none` when not given),
//!   `add_generation_prompt`, each special token that is set, then the extra kwargs, which win.
//!
//! Golden tests (`tests/chat_templates.rs`) compare the output with transformers' byte for byte.

mod env;
mod pycompat;
pub mod pyjson;
mod source;

use anyhow::{anyhow, bail, Context};
use minijinja::value::Value;
use minijinja::Environment;
use serde_json::{Map, Value as Json};

pub use env::RaisedException;

const TEMPLATE_NAME: &str = "chat_template";

/// The special tokens transformers passes to every template (`bos_token`, ...); unset ones stay
/// undefined in the template, as with transformers' `special_tokens_map`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
}

/// Everything a render takes besides the messages.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions<'a> {
    /// End with the header that starts an assistant turn.
    pub add_generation_prompt: bool,
    /// A list of tool JSON schemas (transformers' `tools`).
    pub tools: Option<&'a Json>,
    /// A list of documents for retrieval-augmented templates (`[{"title": .., "text": ..}]`).
    pub documents: Option<&'a Json>,
    /// Extra template variables (`enable_thinking`, `reasoning_effort`, ...); they override the rest.
    pub extra: Map<String, Json>,
    /// The date `strftime_now` sees (year, month, day; at midnight); `None` is the local time now.
    pub now: Option<(i32, u32, u32)>,
}

/// A compiled chat template and the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    special: SpecialTokens,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("special", &self.special)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported with its line and what the parser expected.
    pub fn new(source: &str, special: SpecialTokens) -> anyhow::Result<Self> {
        let mut env = env::environment();
        env.add_template_owned(TEMPLATE_NAME, source::rewrite(source))
            .map_err(|e| anyhow!("chat template syntax error: {}", describe(&e)))?;
        Ok(ChatTemplate { env, special })
    }

    /// Renders a conversation of OpenAI/transformers-shaped messages.
    pub fn render(&self, messages: &[Json], opts: &RenderOptions) -> anyhow::Result<String> {
        let none = || Value::from(());
        let mut ctx: Vec<(String, Value)> = vec![
            ("messages".into(), Value::from(prepare_messages(messages)?)),
            ("tools".into(), opts.tools.map_or_else(none, json_to_value)),
            ("documents".into(), opts.documents.map_or_else(none, json_to_value)),
            ("add_generation_prompt".into(), Value::from(opts.add_generation_prompt)),
        ];
        let SpecialTokens {
            bos_token,
            eos_token,
            unk_token,
            pad_token,
        } = &self.special;
        for (name, token) in [
            ("bos_token", bos_token),
            ("eos_token", eos_token),
            ("unk_token", unk_token),
            ("pad_token", pad_token),
        ] {
            if let Some(token) = token {
                ctx.push((name.into(), Value::from(token.as_str())));
            }
        }
        let now = opts.now;
        ctx.push((
            "strftime_now".into(),
            Value::from_function(move |fmt: &str| strftime_now(fmt, now)),
        ));
        for (key, value) in &opts.extra {
            ctx.push((key.clone(), json_to_value(value)));
        }
        let template = self.env.get_template(TEMPLATE_NAME).context("chat template missing")?;
        template
            .render(Value::from_pairs(ctx))
            .map_err(|e| match raised_message(&e) {
                Some(message) => anyhow!("chat template raised an exception: {message}"),
                None => anyhow!("chat template error: {}", describe(&e)),
            })
    }
}

/// The message of a `raise_exception` call that caused `err`, if one did.
fn raised_message(err: &minijinja::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<RaisedException>() {
            return Some(raised.0.clone());
        }
        source = e.source();
    }
    None
}

/// One line: what went wrong and where (`... (line 12)`), without minijinja's debug dump.
fn describe(err: &minijinja::Error) -> String {
    let what = match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    };
    match err.line() {
        Some(line) => format!("{what} (line {line})"),
        None => what,
    }
}

/// transformers' `_normalize_chat_messages` and `_alias_reasoning_fields`.
fn prepare_messages(messages: &[Json]) -> anyhow::Result<Vec<Value>> {
    const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];
    let mut out = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let Some(message) = message.as_object() else {
            bail!("chat message {i} must be a JSON object, got {}", json_kind(message));
        };
        let mut message: Map<String, Json> = message
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(reasoning) = REASONING_FIELDS.iter().find_map(|f| message.get(*f)).cloned() {
            // {"thinking": r, **message, "reasoning_content": r}: insertion keeps an existing key's place.
            let mut aliased = Map::new();
            aliased.insert("thinking".into(), reasoning.clone());
            aliased.extend(message);
            aliased.insert("reasoning_content".into(), reasoning);
            message = aliased;
        }
        out.push(json_to_value(&Json::Object(message)));
    }
    Ok(out)
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// JSON as template values: objects keep their key order, integers stay integers.
pub fn json_to_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::from_iter(items.iter().map(json_to_value)),
        Json::Object(map) => Value::from_pairs(map.iter().map(|(k, v)| (Value::from(k.as_str()), json_to_value(v)))),
    }
}

/// Python's `datetime.now().strftime(fmt)`; with `now` set, that day at midnight.
fn strftime_now(fmt: &str, now: Option<(i32, u32, u32)>) -> Result<String, minijinja::Error> {
    let fail = |e: jiff::Error| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("strftime_now({fmt:?}): {e}"),
        )
    };
    let datetime = match now {
        Some((y, m, d)) => {
            let (m, d) = (i8::try_from(m).unwrap_or(0), i8::try_from(d).unwrap_or(0));
            let y = i16::try_from(y).unwrap_or(0);
            jiff::civil::DateTime::new(y, m, d, 0, 0, 0, 0).map_err(fail)?
        }
        None => jiff::Zoned::now().datetime(),
    };
    jiff::fmt::strtime::format(fmt, datetime).map_err(fail)
}

#[cfg(test)]
mod tests;
