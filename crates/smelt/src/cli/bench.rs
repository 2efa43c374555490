//! `smelt bench [MODEL] [--shape NAME --quant TYPE [--out F]] [-p 512] [-n 128] [-d D] [-r 5] [--json]`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;

use crate::bench::{self, shapes, BenchReport, Kind};
use crate::kernels::Isa;
use crate::load::gguf::{Bytes, GgufFile};
use crate::quantize::FileType;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A GGUF file (or use --shape).
    pub model: Option<PathBuf>,
    /// Build a random-weight model of this real shape in memory: stories110m, smollm2-135m,
    /// smollm2-360m, tinyllama-1.1b, gemma-2b, phi3-mini, mistral-7b.
    #[arg(long, conflicts_with = "model")]
    pub shape: Option<String>,
    /// Type of the --shape model: q4_0, q4_1, q5_0, q5_1, q8_0, q4_k_m, q5_k_m, q6_k, f16.
    #[arg(long, default_value = "q4_0", requires = "shape")]
    pub quant: String,
    /// Write the --shape model to this GGUF file (for llama-bench) instead of benchmarking it.
    #[arg(long, requires = "shape")]
    pub out: Option<PathBuf>,
    /// Prompt tokens for the prefill test (0: skip).
    #[arg(long, short = 'p', default_value_t = 512)]
    pub prompt: usize,
    /// Tokens for the decode test (0: skip).
    #[arg(long, short = 'n', default_value_t = 128)]
    pub gen: usize,
    /// Tokens already in the cache before each test.
    #[arg(long, short = 'd', default_value_t = 0)]
    pub depth: usize,
    /// How the KV cache stores keys and values (llama-bench's -ctk/-ctv; f16 is both
    /// tools' default).
    #[arg(long = "kv-type", value_name = "f16|f32", default_value = "f16")]
    pub kv_type: crate::model::KvType,
    /// Timed repetitions of each test.
    #[arg(long, short = 'r', default_value_t = 5)]
    pub reps: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn bench(a: BenchArgs, threads: Option<usize>) -> Result<()> {
    let (file, label) = match (&a.model, &a.shape) {
        (Some(p), None) => (bench::open(p)?, p.display().to_string()),
        (None, Some(s)) => {
            let shape = shapes::find(s)?;
            let ftype = FileType::parse(&a.quant)?;
            eprintln!("building a random {} model in {} ...", shape.name, ftype.name());
            let w = shapes::random_gguf(&shape, ftype, 42)?;
            if let Some(out) = &a.out {
                w.write(out)?;
                println!("wrote {} ({} random weights, {}) to {}", shape.name, ftype.name(), human(std::fs::metadata(out)?.len()), out.display());
                return Ok(());
            }
            let bytes = w.to_bytes();
            drop(w);
            (Arc::new(GgufFile::from_bytes(Bytes::Owned(Arc::new(bytes)))?), format!("{} (random, {})", shape.name, ftype.name()))
        }
        (None, None) => bail!("give a GGUF file or --shape NAME"),
        (Some(_), Some(_)) => unreachable!("clap rejects MODEL with --shape"),
    };
    if a.prompt == 0 && a.gen == 0 {
        bail!("nothing to measure: -p and -n are both 0");
    }
    // The bandwidth probe first, with its 512 MiB buffer, then the peak RSS is reset so
    // that it (and `/usr/bin/time -v`'s maximum) covers the model's work only.
    let mem_read_gbs = bench::membw::read_bandwidth(512 << 20, 5);
    bench::reset_peak_rss();
    // The process holds what `smelt run` holds: the decoder (over the mapped bytes) and the
    // tokenizer, which llama-bench loads too. The parsed metadata it is built from (for
    // SmolLM2, 7 MB of token strings and merges) is dropped with `file` after the load, as
    // `smelt run` drops it; what the report says of the file is taken first.
    let (types, file_bytes, params, weight_bytes_per_token) =
        (bench::type_summary(&file), file.file_size() as u64, bench::n_params(&file), bench::weight_bytes_per_token(&file));
    let t0 = std::time::Instant::now();
    let _tokenizer = crate::tokenize::Tokenizer::from_gguf(&file).map_err(|e| tracing::debug!("no tokenizer: {e:#}")).ok();
    let mut dec = bench::decoder_from_gguf(file, bench::ctx_needed(a.prompt, a.gen, a.depth))?;
    dec.kv_type = a.kv_type;
    let load_s = t0.elapsed().as_secs_f64();
    let mut tests = Vec::new();
    if a.prompt > 0 {
        tests.push(bench::run_test(&dec, Kind::Prefill, a.prompt, a.depth, a.reps, 1)?);
    }
    if a.gen > 0 {
        tests.push(bench::run_test(&dec, Kind::Decode, a.gen, a.depth, a.reps, 2)?);
    }
    let threads = threads.unwrap_or_else(rayon::current_num_threads);
    let peak_rss_bytes = bench::peak_rss();
    let report = BenchReport {
        model: label,
        types,
        file_bytes,
        params,
        threads,
        isa: format!("{:?}", Isa::current()),
        kv_type: a.kv_type,
        weight_bytes_per_token,
        tests,
        mem_read_gbs,
        peak_rss_bytes,
        load_s,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "model: {} | {} | {} | {:.2} B params | {} threads | {} kernels | {} KV cache",
        report.model,
        report.types,
        human(report.file_bytes),
        report.params as f64 / 1e9,
        report.threads,
        report.isa,
        report.kv_type
    );
    println!("| test            |             t/s | bandwidth |");
    println!("| --------------- | --------------: | --------: |");
    for t in &report.tests {
        let bw = if t.kind == Kind::Decode { format!("{:.1} GB/s", report.decode_gbs(t)) } else { "-".into() };
        println!("| {:<15} | {:>8.2} ± {:<5.2} | {bw:>9} |", t.name, t.mean, t.sd);
    }
    println!(
        "weights read per decoded token: {}; memory read bandwidth with {} threads: {:.1} GB/s; peak RSS: {}; load: {:.2} s",
        human(report.weight_bytes_per_token),
        report.threads,
        report.mem_read_gbs,
        report.peak_rss_bytes.map_or("?".into(), human),
        report.load_s
    );
    Ok(())
}

fn human(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}
