//! Per-token cost of JSON-constrained sampling against plain sampling, and against masking
//! the whole vocabulary every step (what grammar engines that filter before sampling do).
//!
//! A benchmark, not a test (ignored by default):
//! `cargo test --release --test constrain_bench -- --ignored --nocapture`
//! (SmolLM2-135M's vocabulary from `$SMELT_TEST_DATA`, or the GGUF in `$SMELT_BENCH_MODEL`).
//!
//! The recogniser is walked through a JSON answer token by token; at each position the
//! sampler sees synthetic logits: "model agrees" boosts the token the answer continues with
//! (the usual case: a model asked for JSON mostly writes valid JSON), "random" is pure noise
//! (the worst case: the top candidates are almost never valid).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;
use smelt::constrain::{JsonConstraint, TokenFilter, TokenTable};
use smelt::load::gguf::GgufFile;
use smelt::sample::{Rng, Sampler, SamplingParams};
use smelt::tokenize::Tokenizer;

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
fn constrained_sampling_overhead() -> Result<()> {
    let path = std::env::var_os("SMELT_BENCH_MODEL").map(PathBuf::from).unwrap_or_else(common::smollm2);
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path)?)?;
    let t0 = Instant::now();
    let table = TokenTable::new(&tok);
    println!("vocabulary: {} tokens; TokenTable built in {:.1} ms", table.len(), t0.elapsed().as_secs_f64() * 1e3);

    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"enum": ["admin", "user", "guest"]}},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}, "required": ["city"]}},
        "required": ["name", "age", "tags", "address"], "additionalProperties": false});
    let answer = "{\n  \"name\": \"Alejandro Hernández\",\n  \"age\": 31,\n  \"tags\": [\"admin\", \"user\"],\n  \"address\": {\"city\": \"Bogotá\", \"zip\": \"110111\"}\n}";
    let ids = tok.encode(answer, false, false)?;
    let mut states = Vec::new();
    let mut c = JsonConstraint::new(Some(&schema))?;
    for &id in &ids {
        states.push(c.clone());
        table.advance(&mut c, id)?;
    }
    assert!(c.is_complete());
    println!("answer: {} tokens, {} bytes\n", ids.len(), answer.len());

    let n = table.len();
    let mut rng = Rng::new(7);
    let noise: Vec<Vec<f32>> = ids.iter().map(|_| (0..n).map(|_| (rng.next_normal() * 2.0) as f32).collect()).collect();
    let agree: Vec<Vec<f32>> = noise.iter().zip(&ids).map(|(l, &id)| {
        let mut l = l.clone();
        l[id as usize] += 12.0;
        l
    }).collect();

    let sampled = SamplingParams { seed: Some(1), ..Default::default() };
    let greedy = SamplingParams::greedy();
    println!("{:<14} {:<26} {:>12} {:>13} {:>10} {:>14}", "logits", "sampling", "plain µs/tok", "constrained", "overhead", "full mask µs");
    for (name, logits) in [("model agrees", &agree), ("random", &noise)] {
        for (pname, params) in [("greedy", &greedy), ("T=0.8 k=40 p=.95 minp=.05", &sampled)] {
            // Passes over the answer, plain and constrained interleaved; the fastest pass of
            // each counts (this machine is shared: the minimum is the least disturbed).
            let mut buf = vec![0f32; n];
            let (mut plain, mut constrained, mut mask) = (f64::MAX, f64::MAX, f64::MAX);
            let (mut s1, mut s2) = (Sampler::new(params.clone())?, Sampler::new(params.clone())?);
            for pass in 0..30 {
                let t = Instant::now();
                for l in logits.iter() {
                    buf.copy_from_slice(l);
                    std::hint::black_box(s1.sample(&mut buf, &[]));
                }
                plain = plain.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                for (l, c) in logits.iter().zip(&states) {
                    buf.copy_from_slice(l);
                    let mut f = TokenFilter::new(&table, c);
                    std::hint::black_box(s2.sample_with(&mut buf, &[], &mut |id| f.allows(id)).expect("a token fits"));
                }
                constrained = constrained.min(t.elapsed().as_secs_f64());
                if pass < 3 {
                    // Every token of the vocabulary checked every step, as a filter-first
                    // design must (same recogniser, no shortcuts).
                    let t = Instant::now();
                    for c in &states {
                        std::hint::black_box((0..n as u32).filter(|&id| table.allows(c, id)).count());
                    }
                    mask = mask.min(t.elapsed().as_secs_f64());
                }
            }
            let per = |x: f64| x * 1e6 / ids.len() as f64;
            let (plain, constrained, mask) = (per(plain), per(constrained), per(mask));
            println!("{name:<14} {pname:<26} {plain:>12.1} {constrained:>13.1} {:>10.1} {mask:>14.0}", constrained - plain);
        }
    }
    println!("\n(µs per token; \"full mask\" = checking all {n} tokens once per step, before any sampling)");
    Ok(())
}
