//! Task accuracy: greedy replies to held-out records compared with their reference answer
//! (`smelt eval-task`). Records are the fine-tuning formats (prompt/completion, or chat whose
//! last message is the assistant's reference reply).
//!
//! A reply matches when it equals the reference after trimming whitespace, or — with `json`
//! — when both parse as JSON and the values are equal (key order and spacing aside).

use anyhow::{bail, Result};
use serde_json::Value;

use crate::finetune::data::Record;
use crate::generate::{generate, Flow, GenerateParams, Session};
use crate::load::Model;
use crate::sample::SamplingParams;
use crate::template::{ChatTemplate, RenderOptions};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Prediction {
    pub line: usize,
    pub expected: String,
    pub reply: String,
    pub correct: bool,
    /// With `json`: the reply parsed.
    pub valid_json: Option<bool>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskReport {
    pub records: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// With `json`: replies that parse as JSON.
    pub valid_json: Option<usize>,
    pub predictions: Vec<Prediction>,
}

/// The conversation to answer and the reference reply.
fn split(rec: &Record) -> Result<(Vec<Value>, String)> {
    let mut msgs = rec.messages();
    match msgs.pop() {
        Some(m) if m["role"] == "assistant" => Ok((msgs, m["content"].as_str().unwrap_or_default().to_string())),
        _ => bail!("the last message must be the assistant's reference reply"),
    }
}

pub fn matches(reply: &str, expected: &str, json: bool) -> (bool, Option<bool>) {
    if !json {
        return (reply.trim() == expected.trim(), None);
    }
    match (serde_json::from_str::<Value>(reply.trim()), serde_json::from_str::<Value>(expected.trim())) {
        (Ok(a), Ok(b)) => (a == b, Some(true)),
        (Err(_), _) => (false, Some(false)),
        (Ok(_), Err(_)) => (reply.trim() == expected.trim(), Some(true)),
    }
}

/// Greedy replies (at most `max_tokens`) to every record; `raw` without the chat template.
pub fn eval_task(model: &Model, records: &[(usize, Record)], json: bool, max_tokens: usize, raw: bool, mut progress: impl FnMut(usize, usize)) -> Result<TaskReport> {
    let template = match (&model.chat_template, raw) {
        (Some(src), false) => Some(ChatTemplate::new(src, model.special_tokens())?),
        _ => None,
    };
    let params = GenerateParams {
        sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
        max_tokens: Some(max_tokens),
        stop: Vec::new(),
        ignore_eos: false,
    };
    let mut session = Session::new(&model.decoder);
    let mut predictions = Vec::with_capacity(records.len());
    let mut correct = 0;
    let mut valid = 0;
    for (i, (line, rec)) in records.iter().enumerate() {
        let (msgs, expected) = split(rec).map_err(|e| anyhow::anyhow!("line {line}: {e}"))?;
        let tokens = match &template {
            Some(t) => {
                let text = t.render(&msgs, &RenderOptions { add_generation_prompt: true, ..Default::default() })?;
                model.tokenizer.encode(&text, false, true)?
            }
            None => {
                let text: Vec<&str> = msgs.iter().filter_map(|m| m["content"].as_str()).collect();
                model.tokenizer.encode(&text.join("\n"), true, true)?
            }
        };
        let g = generate(&model.decoder, &model.tokenizer, &mut session, &tokens, &params, |_| Flow::Continue)?;
        let (ok, vj) = matches(&g.text, &expected, json);
        correct += ok as usize;
        valid += vj.unwrap_or(false) as usize;
        predictions.push(Prediction { line: *line, expected, reply: g.text, correct: ok, valid_json: vj });
        progress(i + 1, records.len());
    }
    let n = records.len();
    Ok(TaskReport { records: n, correct, accuracy: correct as f64 / n.max(1) as f64, valid_json: json.then_some(valid), predictions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_text_matching() {
        assert_eq!(matches(" {\"a\": 1, \"b\": \"x\"}\n", "{\"b\":\"x\",\"a\":1}", true), (true, Some(true)));
        assert_eq!(matches("{\"a\": 2}", "{\"a\": 1}", true), (false, Some(true)));
        assert_eq!(matches("{\"a\": 1", "{\"a\": 1}", true), (false, Some(false)));
        assert_eq!(matches(" yes ", "yes", false), (true, None));
        assert_eq!(matches("Yes", "yes", false), (false, None));
    }
}
