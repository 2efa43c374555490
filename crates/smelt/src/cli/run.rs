//! `smelt run [MODEL] [PROMPT]`: one prompt, streamed reply.

use std::ffi::OsString;
use std::io::Write;

use anyhow::Result;
use clap::Args;

use super::args::{load_model, looks_like_model, read_prompt, GenArgs, ModelArgs};
use super::chat::{encode_chat, Conversation};
use crate::generate::{generate, Flow, Session};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The model (path, alias or hub repo) and then the prompt. With one argument it is the
    /// prompt unless it names a model; with none, the prompt is read from stdin and the
    /// default model (smollm2-135m) is used.
    #[arg(value_name = "MODEL")]
    pub first: Option<OsString>,
    #[arg(value_name = "PROMPT")]
    pub second: Option<OsString>,
    /// The model, when you prefer to name it with a flag.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Plain completion: no chat template, the prompt continues as written.
    #[arg(long)]
    pub raw: bool,
    /// A system message placed before the prompt.
    #[arg(long, short = 's')]
    pub system: Option<String>,
    #[command(flatten)]
    pub model_args: ModelArgs,
    #[command(flatten)]
    pub gen: GenArgs,
}

/// Split the positional arguments into (model, prompt).
fn split_args(a: &RunArgs) -> Result<(Option<String>, Option<OsString>)> {
    let to_s = |o: &OsString| o.to_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("the model name is not valid UTF-8"));
    Ok(match (&a.model, &a.first, &a.second) {
        (Some(m), Some(p), None) => (Some(m.clone()), Some(p.clone())),
        (Some(_), Some(_), Some(_)) => anyhow::bail!("too many arguments: the model is already given with --model"),
        (m, None, _) => (m.clone(), None),
        (None, Some(f), Some(p)) => (Some(to_s(f)?), Some(p.clone())),
        (None, Some(f), None) => match f.to_str() {
            Some(s) if looks_like_model(s) => (Some(s.to_string()), None),
            _ => (None, Some(f.clone())),
        },
    })
}

pub fn run(a: RunArgs, verbose: bool) -> Result<()> {
    let (spec, prompt_arg) = split_args(&a)?;
    let params = a.gen.params()?;
    let prompt = read_prompt(prompt_arg)?;
    let model = load_model(spec.as_deref(), &a.model_args)?;
    let mut conv = Conversation::new(&model, a.system.clone(), a.raw)?;
    conv.push_user(&prompt);
    let tokens = encode_chat(&model, &conv)?;
    let mut session = Session::new(&model.decoder);
    let mut out = std::io::stdout().lock();
    let g = generate(&model.decoder, &model.tokenizer, &mut session, &tokens, &params, |piece| {
        let ok = out.write_all(piece.as_bytes()).and_then(|_| out.flush()).is_ok();
        if ok { Flow::Continue } else { Flow::Stop } // a closed pipe ends generation quietly
    })?;
    let _ = writeln!(out);
    if verbose {
        eprintln!(
            "prompt {} tokens ({} cached) at {:.1} tok/s; generated {} tokens at {:.1} tok/s; finish: {:?}",
            g.prompt_tokens,
            g.cached_tokens,
            g.prefill_tps(),
            g.tokens.len(),
            g.decode_tps(),
            g.finish
        );
    }
    Ok(())
}
