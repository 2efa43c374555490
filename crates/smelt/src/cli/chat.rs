//! `smelt chat [MODEL]`: interactive multi-turn chat, plus the prompt building shared
//! with `smelt run` (chat template, or plain text with `--raw`).

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use super::args::{load_model, GenArgs, ModelArgs};
use crate::generate::{generate, Flow, Session};
use crate::load::Model;
use crate::template::{ChatTemplate, RenderOptions};

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// The model: path, alias or hub repo (default: smollm2-135m).
    pub model: Option<String>,
    /// A system message for the whole conversation.
    #[arg(long, short = 's')]
    pub system: Option<String>,
    #[command(flatten)]
    pub model_args: ModelArgs,
    #[command(flatten)]
    pub gen: GenArgs,
}

/// The messages so far, and how to turn them into tokens.
pub struct Conversation {
    pub messages: Vec<serde_json::Value>,
    system: Option<String>,
    template: Option<ChatTemplate>,
}

impl Conversation {
    /// `raw`: no template (plain completion). A model without a template also runs raw,
    /// and says so once on stderr — smelt never substitutes a made-up template.
    pub fn new(model: &Model, system: Option<String>, raw: bool) -> Result<Conversation> {
        let template = match (&model.chat_template, raw) {
            (_, true) => None,
            (None, false) => {
                eprintln!("note: this model has no chat template; running as plain completion (as with --raw)");
                None
            }
            (Some(src), false) => Some(ChatTemplate::new(src, model.special_tokens()).context("the model's chat template")?),
        };
        let mut c = Conversation { messages: Vec::new(), system, template };
        c.clear();
        Ok(c)
    }

    pub fn clear(&mut self) {
        self.messages.clear();
        if let Some(s) = &self.system {
            self.messages.push(json!({"role": "system", "content": s}));
        }
    }

    pub fn push_user(&mut self, text: &str) {
        self.messages.push(json!({"role": "user", "content": text}));
    }

    pub fn push_assistant(&mut self, text: &str) {
        self.messages.push(json!({"role": "assistant", "content": text}));
    }
}

/// Tokens for the conversation: rendered through the template and tokenized without
/// adding BOS (templates write their own, as transformers' `apply_chat_template` assumes),
/// or, raw, the plain text with the model's BOS.
pub fn encode_chat(model: &Model, conv: &Conversation) -> Result<Vec<u32>> {
    match &conv.template {
        Some(t) => {
            let text = t.render(&conv.messages, &RenderOptions { add_generation_prompt: true, ..Default::default() })?;
            model.tokenizer.encode(&text, false, true)
        }
        None => {
            let text: Vec<&str> = conv.messages.iter().filter_map(|m| m["content"].as_str()).collect();
            model.tokenizer.encode(&text.join("\n"), true, true)
        }
    }
}

pub fn chat(a: ChatArgs, verbose: bool) -> Result<()> {
    let params = a.gen.params()?;
    let model = load_model(a.model.as_deref(), &a.model_args)?;
    let mut conv = Conversation::new(&model, a.system.clone(), false)?;
    let mut session = Session::new(&model.decoder);
    let stdin = std::io::stdin();
    let interactive = std::io::IsTerminal::is_terminal(&stdin);
    if interactive {
        eprintln!("Chatting with {} — /clear to start over, /exit or Ctrl-D to leave.", model.info.name.as_deref().unwrap_or("the model"));
    }
    let mut out = std::io::stdout();
    let mut line = String::new();
    loop {
        if interactive {
            eprint!(">>> ");
            let _ = std::io::stderr().flush();
        }
        line.clear();
        if stdin.lock().read_line(&mut line).context("cannot read stdin")? == 0 {
            break;
        }
        let input = line.trim_end_matches(['\n', '\r']);
        match input.trim() {
            "" => continue,
            "/exit" | "/quit" | "/bye" => break,
            "/clear" => {
                conv.clear();
                session.clear();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        conv.push_user(input);
        let tokens = match encode_chat(&model, &conv) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e:#}");
                conv.messages.pop();
                continue;
            }
        };
        let result = generate(&model.decoder, &model.tokenizer, &mut session, &tokens, &params, |piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
            Flow::Continue
        });
        let _ = writeln!(out);
        match result {
            Ok(g) => {
                conv.push_assistant(&g.text);
                if verbose {
                    eprintln!(
                        "[{} prompt tokens, {} reused; {:.1} tok/s prefill, {:.1} tok/s decode]",
                        g.prompt_tokens,
                        g.cached_tokens,
                        g.prefill_tps(),
                        g.decode_tps()
                    );
                }
            }
            Err(e) => {
                // e.g. the conversation no longer fits the context: say so, keep the session.
                eprintln!("error: {e:#}");
                conv.messages.pop();
            }
        }
    }
    Ok(())
}
