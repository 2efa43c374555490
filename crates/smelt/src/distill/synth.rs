//! `smelt synth`: sequence-level distillation data. Teacher replies to prompts, sampled
//! `n` per prompt in batches (every active sequence advances in one batched forward pass,
//! prompts prefilled alongside sequences already decoding), filtered (length, repetition,
//! optionally JSON validity, unfinished replies), deduplicated, and written as chat
//! `{"messages": [...]}` JSONL — the format `smelt finetune` reads.
//!
//! Each reply is sampled with its own seed (from `--seed`, the prompt's line and the sample
//! index), so what a prompt gets does not depend on which others share its batch.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value as Json};

use crate::load::Model;
use crate::model::{KvCache, Logits, SeqInput};
use crate::sample::{Sampler, SamplingParams};
use crate::template::{ChatTemplate, RenderOptions};

/// One prompt: the conversation so far (ending with a user turn) and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// 1-based line in the prompts file.
    pub line: usize,
    pub messages: Vec<Json>,
}

/// Malformed lines reported in one error at most.
const MAX_REPORTED: usize = 5;

fn parse_line(v: Json) -> std::result::Result<Vec<Json>, String> {
    let Json::Object(o) = v else { return Err("expected a JSON object".into()) };
    if let Some(p) = o.get("prompt") {
        let Some(p) = p.as_str() else { return Err("\"prompt\" must be a string".into()) };
        if p.trim().is_empty() {
            return Err("empty \"prompt\"".into());
        }
        return Ok(vec![json!({"role": "user", "content": p})]);
    }
    let Some(Json::Array(ms)) = o.get("messages") else {
        return Err("expected {\"prompt\": \"...\"} or {\"messages\": [...]}".into());
    };
    if ms.is_empty() {
        return Err("\"messages\" is empty".into());
    }
    for (i, m) in ms.iter().enumerate() {
        let role = m.get("role").and_then(Json::as_str);
        let content = m.get("content").and_then(Json::as_str);
        match (role, content) {
            (Some("system" | "user" | "assistant"), Some(_)) => {}
            (Some(r), Some(_)) => return Err(format!("message {i}: unknown role {r:?}")),
            _ => return Err(format!("message {i}: needs string \"role\" and \"content\"")),
        }
    }
    if ms.last().and_then(|m| m["role"].as_str()) != Some("user") {
        return Err("the last message must be from the user".into());
    }
    Ok(ms.clone())
}

/// Parse prompts JSONL (`{"prompt": ...}` or `{"messages": [...]}` per line; blank lines
/// skipped). Every malformed line is an error naming its line number.
pub fn parse_prompts(text: &str, name: &str) -> Result<Vec<Prompt>> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let mut n_bad = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Json>(line).map_err(|e| format!("not valid JSON ({e})")).and_then(parse_line);
        match parsed {
            Ok(messages) => out.push(Prompt { line: i + 1, messages }),
            Err(e) => {
                n_bad += 1;
                if bad.len() < MAX_REPORTED {
                    bad.push(format!("line {}: {e}", i + 1));
                }
            }
        }
    }
    if n_bad > 0 {
        let more = if n_bad > bad.len() { format!(" (and {} more)", n_bad - bad.len()) } else { String::new() };
        bail!("{name}: {n_bad} malformed prompt line{}: {}{more}", if n_bad == 1 { "" } else { "s" }, bad.join("; "));
    }
    if out.is_empty() {
        bail!("{name}: no prompts");
    }
    Ok(out)
}

pub fn read_prompts(path: &Path) -> Result<Vec<Prompt>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{}: not UTF-8 (byte {})", path.display(), e.utf8_error().valid_up_to()))?;
    parse_prompts(&text, &path.display().to_string())
}

#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Replies sampled per prompt.
    pub n: usize,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Sequences decoded together.
    pub batch: usize,
    /// Replies shorter than this many characters are dropped.
    pub min_chars: usize,
    /// Replies longer than this many characters are dropped (0 = no limit).
    pub max_chars: usize,
    /// Drop replies in which more than this fraction of word 3-grams are repeats.
    pub max_repeat: f64,
    /// Keep only replies that are valid JSON (a Markdown code fence around it is allowed).
    pub json: bool,
    /// Keep replies cut off by `max_tokens` (dropped by default).
    pub keep_truncated: bool,
    pub progress: bool,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SynthReport {
    pub prompts: usize,
    pub generated: usize,
    pub kept: usize,
    pub duplicates: usize,
    pub too_short: usize,
    pub too_long: usize,
    pub repetitive: usize,
    pub invalid_json: usize,
    pub truncated: usize,
    pub prompt_too_long: usize,
    pub tokens_generated: usize,
    pub seconds: f64,
}

/// Fraction of word 3-grams that repeat an earlier one (0 for fewer than 6 words).
pub fn repeat_fraction(text: &str) -> f64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 6 {
        return 0.0;
    }
    let grams: Vec<&[&str]> = words.windows(3).collect();
    let distinct: HashSet<&[&str]> = grams.iter().copied().collect();
    1.0 - distinct.len() as f64 / grams.len() as f64
}

/// Whether `text` (optionally in a ``` fence) parses as JSON.
pub fn is_json(text: &str) -> bool {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|r| r.trim_end().strip_suffix("```"))
        .unwrap_or(t);
    serde_json::from_str::<Json>(t.trim()).is_ok()
}

/// The key deduplication compares: the prompt and the reply, lower-cased, whitespace collapsed.
fn dedup_key(messages: &[Json], reply: &str) -> String {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    let mut k = String::new();
    for m in messages {
        k.push_str(&norm(m["content"].as_str().unwrap_or("")));
        k.push('\u{1}');
    }
    k.push_str(&norm(reply));
    k
}

fn job_seed(seed: u64, line: usize, sample: usize) -> u64 {
    let mut x = seed ^ (line as u64).wrapping_mul(0x9E3779B97F4A7C15) ^ (sample as u64 + 1).wrapping_mul(0xBF58476D1CE4E5B9);
    x = (x ^ (x >> 31)).wrapping_mul(0x94D049BB133111EB);
    x ^ (x >> 29)
}

/// The prompt's tokens through the model's chat template (or, without one, its text with BOS).
fn encode_prompt(model: &Model, template: Option<&ChatTemplate>, messages: &[Json]) -> Result<Vec<u32>> {
    match template {
        Some(t) => {
            let text = t.render(messages, &RenderOptions { add_generation_prompt: true, ..Default::default() })?;
            model.tokenizer.encode(&text, false, true)
        }
        None => {
            let text: Vec<&str> = messages.iter().filter_map(|m| m["content"].as_str()).collect();
            model.tokenizer.encode(&text.join("\n"), true, false)
        }
    }
}

struct Active {
    job: usize,
    prompt: Vec<u32>,
    out: Vec<u32>,
    cache: KvCache,
    sampler: Sampler,
    prefilled: bool,
    limit: usize,
}

/// Replies for every prompt, filtered and deduplicated: the JSONL records and the counts.
pub fn synth(model: &Model, prompts: &[Prompt], opts: &SynthOptions) -> Result<(Vec<Json>, SynthReport)> {
    if opts.n == 0 || opts.batch == 0 || opts.max_tokens == 0 {
        bail!("--n, --batch and --max-tokens must be at least 1");
    }
    let start = std::time::Instant::now();
    let template = match &model.chat_template {
        Some(src) => Some(ChatTemplate::new(src, model.special_tokens())?),
        None => None,
    };
    let dec = &model.decoder;
    let mut report = SynthReport { prompts: prompts.len(), ..Default::default() };
    // Jobs in order: prompt-major, so the output follows the prompts file.
    let mut encoded = Vec::with_capacity(prompts.len());
    for p in prompts {
        let ids = encode_prompt(model, template.as_ref(), &p.messages).with_context(|| format!("prompt on line {}", p.line))?;
        encoded.push(ids);
    }
    let jobs: Vec<(usize, usize)> = (0..prompts.len()).flat_map(|p| (0..opts.n).map(move |s| (p, s))).collect();
    let mut replies: Vec<Option<(Vec<u32>, bool)>> = vec![None; jobs.len()];
    let pb = ProgressBar::with_draw_target(Some(jobs.len() as u64), if opts.progress { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30.cyan/blue}] reply {pos}/{len} {msg} ETA {eta_precise}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut next = 0usize;
    let mut active: Vec<Active> = Vec::new();
    loop {
        while active.len() < opts.batch && next < jobs.len() {
            let (p, s) = jobs[next];
            let prompt = encoded[p].clone();
            let room = dec.n_ctx.saturating_sub(prompt.len());
            if prompt.is_empty() || room == 0 {
                report.prompt_too_long += 1;
                pb.inc(1);
                next += 1;
                continue;
            }
            let sampling = SamplingParams { seed: Some(job_seed(opts.sampling.seed.unwrap_or(0), prompts[p].line, s)), ..opts.sampling.clone() };
            active.push(Active { job: next, prompt, out: Vec::new(), cache: dec.new_cache(), sampler: Sampler::new(sampling)?, prefilled: false, limit: opts.max_tokens.min(room) });
            next += 1;
        }
        if active.is_empty() {
            break;
        }
        let logits = {
            let mut seqs: Vec<SeqInput<'_>> = active
                .iter_mut()
                .map(|a| {
                    let tokens: &[u32] = if a.prefilled { std::slice::from_ref(a.out.last().expect("decoding")) } else { &a.prompt };
                    SeqInput { tokens, cache: Some(&mut a.cache) }
                })
                .collect();
            dec.forward(&mut seqs, Logits::Last)?
        };
        let vocab = logits.dims()[1];
        let mut rows = logits.flatten_all()?.to_vec1::<f32>()?;
        let mut finished = Vec::new();
        for (i, a) in active.iter_mut().enumerate() {
            a.prefilled = true;
            let row = &mut rows[i * vocab..(i + 1) * vocab];
            let mut history = a.prompt.clone();
            history.extend_from_slice(&a.out);
            let t = a.sampler.sample(row, &history);
            report.tokens_generated += 1;
            if model.tokenizer.is_eog(t) {
                finished.push((i, true));
            } else {
                a.out.push(t);
                if a.out.len() >= a.limit {
                    finished.push((i, false));
                }
            }
        }
        for &(i, stopped) in finished.iter().rev() {
            let a = active.swap_remove(i);
            replies[a.job] = Some((a.out, stopped));
            pb.inc(1);
        }
        if !finished.is_empty() {
            pb.set_message(format!("{} tok/s", (report.tokens_generated as f64 / start.elapsed().as_secs_f64().max(1e-9)).round()));
        }
    }
    pb.finish_and_clear();

    let mut seen = HashSet::new();
    let mut records = Vec::new();
    for (j, r) in replies.into_iter().enumerate() {
        let Some((ids, stopped)) = r else { continue };
        report.generated += 1;
        let text = model.tokenizer.decode(&ids, true).trim().to_string();
        let chars = text.chars().count();
        let p = &prompts[jobs[j].0];
        if !stopped && !opts.keep_truncated {
            report.truncated += 1;
        } else if chars < opts.min_chars.max(1) {
            report.too_short += 1;
        } else if opts.max_chars > 0 && chars > opts.max_chars {
            report.too_long += 1;
        } else if repeat_fraction(&text) > opts.max_repeat {
            report.repetitive += 1;
        } else if opts.json && !is_json(&text) {
            report.invalid_json += 1;
        } else if !seen.insert(dedup_key(&p.messages, &text)) {
            report.duplicates += 1;
        } else {
            let mut messages = p.messages.clone();
            messages.push(json!({"role": "assistant", "content": text}));
            records.push(json!({ "messages": messages }));
        }
    }
    report.kept = records.len();
    report.seconds = start.elapsed().as_secs_f64();
    Ok((records, report))
}

/// Records as JSONL, written atomically.
pub fn write_jsonl(path: &Path, records: &[Json]) -> Result<()> {
    let mut out = String::new();
    for r in records {
        out.push_str(&serde_json::to_string(r)?);
        out.push('\n');
    }
    crate::util::write_atomic(path, out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_parse_and_bad_lines_are_named() {
        let ok = "{\"prompt\": \"hi\"}\n\n{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"q\"}]}\n";
        let p = parse_prompts(ok, "p.jsonl").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].line, p[1].line), (1, 3));
        assert_eq!(p[1].messages.len(), 2);
        let bad = "{\"prompt\": \"hi\"}\nnot json\n{\"text\": 1}\n{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n{\"prompt\": 3}\n";
        let e = parse_prompts(bad, "p.jsonl").unwrap_err().to_string();
        assert!(e.starts_with("p.jsonl: 4 malformed prompt lines: line 2: not valid JSON"), "{e}");
        assert!(e.contains("line 3: expected {\"prompt\""), "{e}");
        assert!(e.contains("line 4: the last message must be from the user"), "{e}");
        assert!(e.contains("line 5: \"prompt\" must be a string"), "{e}");
        assert!(!e.contains('\n'));
        assert!(parse_prompts("\n \n", "p.jsonl").unwrap_err().to_string().contains("no prompts"));
    }

    #[test]
    fn filters() {
        assert_eq!(repeat_fraction("a b c d e f g"), 0.0);
        assert!(repeat_fraction("the cat sat the cat sat the cat sat the cat sat") > 0.5);
        assert!(is_json("{\"a\": [1, 2]}"));
        assert!(is_json("```json\n{\"a\": 1}\n```"));
        assert!(!is_json("{\"a\": "));
        let m = vec![json!({"role": "user", "content": "Hi  there"})];
        assert_eq!(dedup_key(&m, "Hello\n world"), dedup_key(&[json!({"role": "user", "content": "hi there"})], "hello world"));
    }
}
