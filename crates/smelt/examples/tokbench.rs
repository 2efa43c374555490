//! Tokenizer memory and speed: resident memory after parsing a GGUF, after building its
//! tokenizer, and after dropping the parsed file (with the freed heap returned); then
//! encoding a text file, best of 3.
//! `cargo run --release --example tokbench -- MODEL.gguf TEXT_FILE` (Linux: reads VmRSS).
use std::time::Instant;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (model, text) = (a.get(1).expect("MODEL.gguf TEXT_FILE"), a.get(2).expect("MODEL.gguf TEXT_FILE"));
    let r0 = rss_kib();
    let f = smelt::load::gguf::GgufFile::open(std::path::Path::new(model)).unwrap();
    let r1 = rss_kib();
    let t0 = Instant::now();
    let tok = smelt::tokenize::Tokenizer::from_gguf(&f).unwrap();
    let build = t0.elapsed().as_secs_f64();
    let r2 = rss_kib();
    drop(f);
    smelt::util::return_freed_memory();
    let r3 = rss_kib();
    println!("GGUF parsed: +{} KiB; tokenizer: +{} KiB in {build:.3} s; file dropped: process at {} KiB", r1 - r0, r2 - r1, r3);
    let text = std::fs::read_to_string(text).unwrap();
    let (mut best, mut n) = (f64::MAX, 0);
    for _ in 0..3 {
        let t0 = Instant::now();
        n = tok.encode(&text, false, false).unwrap().len();
        best = best.min(t0.elapsed().as_secs_f64());
    }
    println!("encode: {} bytes -> {n} tokens, best of 3 {best:.3} s, {:.1} MB/s", text.len(), text.len() as f64 / best / 1e6);
}
