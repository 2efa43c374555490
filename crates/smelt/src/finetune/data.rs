//! Fine-tuning data: JSONL records, chat (`{"messages": [...]}`) or prompt/completion
//! (`{"prompt": "...", "completion": "..."}`, optional `"system"`), turned into tokens with
//! the model's chat template and a mask of the tokens the loss counts: the assistant
//! replies (with the template's end-of-turn), or the completion.
//!
//! Assistant spans are found by rendering growing prefixes of the conversation (as
//! transformers' `return_assistant_tokens_mask` does): the text of assistant turn `i` is
//! what `messages[..=i]` adds to `messages[..i]` rendered with the generation prompt. A
//! template whose renders are not prefixes of one another (one that rewrites earlier turns)
//! cannot be masked this way, and is reported as such.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::template::{ChatTemplate, RenderOptions};
use crate::tokenize::Tokenizer;
use crate::train::loss::IGNORE;

/// One training record as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Chat(Vec<Value>),
    Completion { prompt: String, completion: String, system: Option<String> },
}

impl Record {
    /// The conversation this record stands for (a completion is one user/assistant exchange).
    pub fn messages(&self) -> Vec<Value> {
        match self {
            Record::Chat(m) => m.clone(),
            Record::Completion { prompt, completion, system } => {
                let mut m = Vec::new();
                if let Some(s) = system {
                    m.push(json!({"role": "system", "content": s}));
                }
                m.push(json!({"role": "user", "content": prompt}));
                m.push(json!({"role": "assistant", "content": completion}));
                m
            }
        }
    }
}

/// A record's tokens and which of them are trained.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    /// `trained[i]`: token `i` counts in the loss (predicted from the tokens before it).
    pub trained: Vec<bool>,
}

impl Example {
    /// The forward pass's input tokens (all but the last).
    pub fn inputs(&self) -> &[u32] {
        &self.tokens[..self.tokens.len() - 1]
    }

    /// One target per input token: the next token, or [`IGNORE`].
    pub fn targets(&self) -> impl Iterator<Item = u32> + '_ {
        self.tokens[1..].iter().zip(&self.trained[1..]).map(|(&t, &on)| if on { t } else { IGNORE })
    }

    pub fn n_trained(&self) -> usize {
        self.trained[1..].iter().filter(|&&b| b).count()
    }
}

fn parse_record(v: Value) -> std::result::Result<Record, String> {
    let Value::Object(o) = v else { return Err("a record must be a JSON object".into()) };
    if let Some(m) = o.get("messages") {
        let Value::Array(list) = m else { return Err("\"messages\" must be a list".into()) };
        for (i, msg) in list.iter().enumerate() {
            let role = msg.get("role").and_then(Value::as_str);
            let content = msg.get("content");
            match (role, content) {
                (Some(_), Some(Value::String(_))) => {}
                (None, _) => return Err(format!("message {} has no \"role\" string", i + 1)),
                (Some(_), _) => return Err(format!("message {} has no \"content\" string", i + 1)),
            }
        }
        if !list.iter().any(|m| m["role"] == "assistant") {
            return Err("the conversation has no assistant message to learn from".into());
        }
        return Ok(Record::Chat(list.clone()));
    }
    match (o.get("prompt"), o.get("completion")) {
        (Some(Value::String(p)), Some(Value::String(c))) => {
            if c.is_empty() {
                return Err("\"completion\" is empty".into());
            }
            let system = match o.get("system") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err("\"system\" must be a string".into()),
            };
            Ok(Record::Completion { prompt: p.clone(), completion: c.clone(), system })
        }
        (Some(_), Some(_)) => Err("\"prompt\" and \"completion\" must be strings".into()),
        _ => Err("expected \"messages\" (a list of {role, content}) or \"prompt\" and \"completion\" strings".into()),
    }
}

/// Records of a JSONL file with their line numbers. A bad line is an error naming the file
/// and line, unless `skip_bad` (then it is skipped and described in the second list).
pub fn read_records(path: &Path, skip_bad: bool) -> Result<(Vec<(usize, Record)>, Vec<String>)> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(text).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        anyhow::anyhow!("{} line {line}: not valid UTF-8", path.display())
    })?;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let rec = serde_json::from_str::<Value>(line).map_err(|e| format!("not valid JSON ({e})")).and_then(parse_record);
        match rec {
            Ok(r) => out.push((n, r)),
            Err(e) if skip_bad => skipped.push(format!("{} line {n}: {e}", path.display())),
            Err(e) => bail!("{} line {n}: {e} (fix the line, or pass --skip-bad to skip bad lines)", path.display()),
        }
    }
    if out.is_empty() {
        bail!("{}: no records", path.display());
    }
    Ok((out, skipped))
}

/// Turns records into [`Example`]s for one model.
pub struct Encoder<'a> {
    pub tokenizer: &'a Tokenizer,
    /// `None`: plain text (`--raw`, or a model without a template): prompt then completion
    /// then the end-of-sequence token, with the model's BOS.
    pub template: Option<&'a ChatTemplate>,
    /// Longest example in tokens; longer ones are cut.
    pub max_len: usize,
}

impl Encoder<'_> {
    /// Tokens and mask of one record, and whether it was cut to `max_len`.
    pub fn encode(&self, rec: &Record) -> Result<(Example, bool)> {
        let (mut tokens, mut trained) = match (self.template, rec) {
            (Some(t), _) => self.chat(t, &rec.messages())?,
            (None, Record::Completion { prompt, completion, system }) => {
                let mut p = String::new();
                if let Some(s) = system {
                    p.push_str(s);
                    p.push('\n');
                }
                p.push_str(prompt);
                let a = self.tokenizer.encode(&p, true, true)?;
                let mut b = self.tokenizer.encode(completion, false, true)?;
                b.extend(self.tokenizer.eos_id());
                let trained = std::iter::repeat_n(false, a.len()).chain(std::iter::repeat_n(true, b.len())).collect();
                ([a, b].concat(), trained)
            }
            (None, Record::Chat(_)) => bail!("chat records need a chat template, and this model has none (or --raw was given): use prompt/completion records"),
        };
        let cut = tokens.len() > self.max_len;
        tokens.truncate(self.max_len);
        trained.truncate(self.max_len);
        if tokens.len() < 2 {
            bail!("the record renders to fewer than 2 tokens");
        }
        Ok((Example { tokens, trained }, cut))
    }

    fn chat(&self, t: &ChatTemplate, msgs: &[Value]) -> Result<(Vec<u32>, Vec<bool>)> {
        let render = |m: &[Value], gen: bool| t.render(m, &RenderOptions { add_generation_prompt: gen, ..Default::default() });
        let full = render(msgs, false).context("the chat template cannot render this record")?;
        // Character spans [start, end) of the assistant turns in `full`.
        let mut spans = Vec::new();
        for (i, _) in msgs.iter().enumerate().filter(|(_, m)| m["role"] == "assistant") {
            let before = render(&msgs[..i], true).context("the chat template cannot render this record's prefix")?;
            let upto = render(&msgs[..=i], false).context("the chat template cannot render this record's prefix")?;
            let start = before.len();
            if !upto.starts_with(&before) || !full.starts_with(&upto) || spans.last().is_some_and(|&(_, e)| e > start) {
                bail!(
                    "the chat template renders earlier turns differently once later ones follow (assistant message {}), so the assistant tokens cannot be marked; use prompt/completion records with --raw",
                    i + 1
                );
            }
            spans.push((start, upto.len()));
        }
        let mut tokens = Vec::new();
        let mut trained = Vec::new();
        let mut pos = 0;
        let piece = |text: &str, on: bool, tokens: &mut Vec<u32>, trained: &mut Vec<bool>| -> Result<()> {
            if !text.is_empty() {
                let ids = self.tokenizer.encode(text, false, true)?;
                trained.extend(std::iter::repeat_n(on, ids.len()));
                tokens.extend(ids);
            }
            Ok(())
        };
        for (s, e) in spans {
            piece(&full[pos..s], false, &mut tokens, &mut trained)?;
            piece(&full[s..e], true, &mut tokens, &mut trained)?;
            pos = e;
        }
        piece(&full[pos..], false, &mut tokens, &mut trained)?;
        Ok((tokens, trained))
    }
}

/// What loading a data file produced.
pub struct Dataset {
    pub examples: Vec<Example>,
    /// Records cut to `max_len`.
    pub truncated: usize,
    /// Descriptions of skipped lines (`--skip-bad`).
    pub skipped: Vec<String>,
}

impl Dataset {
    pub fn load(path: &Path, enc: &Encoder<'_>, skip_bad: bool) -> Result<Dataset> {
        let (records, mut skipped) = read_records(path, skip_bad)?;
        let mut examples = Vec::with_capacity(records.len());
        let mut truncated = 0;
        for (line, rec) in records {
            match enc.encode(&rec) {
                Ok((ex, _)) if ex.n_trained() == 0 => {
                    let e = format!("{} line {line}: nothing left to train after cutting to {} tokens (raise --max-len)", path.display(), enc.max_len);
                    if !skip_bad {
                        bail!("{e}");
                    }
                    skipped.push(e);
                }
                Ok((ex, cut)) => {
                    truncated += cut as usize;
                    examples.push(ex);
                }
                Err(e) if skip_bad => skipped.push(format!("{} line {line}: {e:#}", path.display())),
                Err(e) => return Err(e.context(format!("{} line {line}", path.display()))),
            }
        }
        if examples.is_empty() {
            bail!("{}: no usable records", path.display());
        }
        Ok(Dataset { examples, truncated, skipped })
    }

    pub fn trained_tokens(&self) -> usize {
        self.examples.iter().map(Example::n_trained).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::SpecialTokens;

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_hf_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/hf_tiny")).unwrap()
    }

    fn trained_text(tok: &Tokenizer, ex: &Example) -> Vec<String> {
        // Runs of trained tokens, decoded.
        let mut runs = Vec::new();
        let mut cur: Vec<u32> = Vec::new();
        for (t, on) in ex.tokens.iter().zip(&ex.trained) {
            if *on {
                cur.push(*t);
            } else if !cur.is_empty() {
                runs.push(tok.decode(&std::mem::take(&mut cur), false));
            }
        }
        if !cur.is_empty() {
            runs.push(tok.decode(&cur, false));
        }
        runs
    }

    #[test]
    fn only_assistant_turns_are_trained() {
        let tok = tokenizer();
        let t = ChatTemplate::new(CHATML, SpecialTokens::default()).unwrap();
        let enc = Encoder { tokenizer: &tok, template: Some(&t), max_len: 512 };
        let rec = Record::Chat(vec![
            json!({"role": "system", "content": "be brief"}),
            json!({"role": "user", "content": "hi"}),
            json!({"role": "assistant", "content": "hello there"}),
            json!({"role": "user", "content": "bye"}),
            json!({"role": "assistant", "content": "see you"}),
        ]);
        let (ex, cut) = enc.encode(&rec).unwrap();
        assert!(!cut);
        assert_eq!(trained_text(&tok, &ex), ["hello there<|im_end|>\n", "see you<|im_end|>\n"]);
        let targets: Vec<u32> = ex.targets().collect();
        assert_eq!(targets.len(), ex.inputs().len());
        assert_eq!(targets.iter().filter(|&&t| t != IGNORE).count(), ex.n_trained());
        // prompt/completion = one exchange; cutting keeps the head.
        let pc = Record::Completion { prompt: "hi".into(), completion: "hello there".into(), system: None };
        assert_eq!(trained_text(&tok, &enc.encode(&pc).unwrap().0), ["hello there<|im_end|>\n"]);
        let short = Encoder { max_len: 6, ..enc };
        let (ex, cut) = short.encode(&pc).unwrap();
        assert!(cut && ex.tokens.len() == 6);
        // Raw: BOS + prompt untrained, completion + EOS trained.
        let raw = Encoder { template: None, max_len: 512, ..enc };
        let (ex, _) = raw.encode(&pc).unwrap();
        assert_eq!(trained_text(&tok, &ex), ["hello there<|im_end|>"]);
    }

    #[test]
    fn a_template_that_rewrites_earlier_turns_is_reported() {
        // Renders earlier assistant turns differently once a later turn exists (as reasoning
        // templates drop old thinking).
        let src = "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}[old]{% else %}{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}";
        let t = ChatTemplate::new(src, SpecialTokens::default()).unwrap();
        let tok = tokenizer();
        let enc = Encoder { tokenizer: &tok, template: Some(&t), max_len: 512 };
        let rec = Record::Chat(vec![
            json!({"role": "user", "content": "a"}),
            json!({"role": "assistant", "content": "b"}),
            json!({"role": "user", "content": "c"}),
            json!({"role": "assistant", "content": "d"}),
        ]);
        let err = enc.encode(&rec).unwrap_err().to_string();
        assert!(err.contains("renders earlier turns differently"), "{err}");
        // A template error is an error, not a panic.
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", SpecialTokens::default()).unwrap();
        let enc = Encoder { tokenizer: &tok, template: Some(&t), max_len: 512 };
        let err = format!("{:#}", enc.encode(&rec).unwrap_err());
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn records_are_validated() {
        let dir = std::env::temp_dir().join(format!("smelt-ft-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("d.jsonl");
        std::fs::write(&p, "{\"prompt\": \"a\", \"completion\": \"b\"}\n\n[1, 2]\n").unwrap();
        let err = read_records(&p, false).unwrap_err().to_string();
        assert!(err.contains("line 3: a record must be a JSON object"), "{err}");
        let (recs, skipped) = read_records(&p, true).unwrap();
        assert_eq!((recs.len(), skipped.len()), (1, 1));
        std::fs::write(&p, b"{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"\xff\"}\n").unwrap();
        assert!(read_records(&p, false).unwrap_err().to_string().contains("line 2: not valid UTF-8"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
