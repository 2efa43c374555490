//! The `smelt` command line: Ollama-like verbs over the library.

mod args;
mod chat;
mod data;
mod distill;
mod eval_task;
mod export;
mod finetune;
mod info;
mod logits;
mod models;
mod perplexity;
mod quantize;
mod bench;
mod run;
mod serve;
mod tokenizer;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use args::{GenArgs, ModelArgs};

#[derive(Parser, Debug)]
#[command(name = "smelt", version, about = "Run, serve, fine-tune and train small language models on your own machine.")]
#[command(propagate_version = true, arg_required_else_help = true)]
pub struct Cli {
    /// Worker threads for matrix work (default: all cores).
    #[arg(long, short = 't', global = true, env = "SMELT_THREADS")]
    pub threads: Option<usize>,

    /// Log more (repeat for debug output).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate a reply to one prompt (chat template applied), streamed to stdout.
    Run(run::RunArgs),
    /// Interactive multi-turn chat (/clear, /exit).
    Chat(chat::ChatArgs),
    /// Describe a model: architecture, parameters, tensor types, context, tokenizer, template.
    Info(info::InfoArgs),
    /// Perplexity of a text file, computed exactly as llama.cpp's llama-perplexity does.
    Perplexity(perplexity::PerplexityArgs),
    /// Raw logits of one token sequence as safetensors (to compare with other frameworks).
    Logits(logits::LogitsArgs),
    /// Serve the model over an OpenAI-compatible HTTP API to many clients at once.
    Serve(serve::ServeArgs),
    /// Download a model into the local cache.
    Pull(models::PullArgs),
    /// List cached models with their size and location.
    List(models::ListArgs),
    /// Remove a cached model.
    Rm(models::RmArgs),
    /// Train a tokenizer on a corpus.
    Tokenizer(tokenizer::TokenizerArgs),
    /// Prepare training data: tokenize, deduplicate, split, shard.
    Data(data::DataArgs),
    /// Train a Llama-architecture model from scratch on prepared data.
    Train(train::TrainArgs),
    /// Measure training throughput (tokens/s) for a model shape on random tokens.
    BenchTrain(train::BenchTrainArgs),
    /// Exact-match accuracy of greedy replies on held-out prompt/completion or chat records.
    EvalTask(eval_task::EvalTaskArgs),
    /// Fine-tune a model with LoRA adapters on chat or prompt/completion JSONL.
    Finetune(finetune::FinetuneArgs),
    /// Distil a teacher into a student that shares its tokenizer (KL on logits + cross-entropy).
    Distill(distill::DistillArgs),
    /// Sample teacher replies to prompts into chat JSONL (sequence-level distillation data).
    Synth(distill::SynthArgs),
    /// Measure distillation throughput (tokens/s) for a teacher and student shape on random tokens.
    BenchDistill(train::BenchDistillArgs),
    /// Export a training checkpoint as a Hugging Face folder or a GGUF file.
    Export(export::ExportArgs),
    /// Quantize a GGUF file or a Hugging Face folder to GGUF (q4_0 ... q8_0, q4_k_m, q5_k_m, q6_k, f16).
    Quantize(quantize::QuantizeArgs),
    /// Measure inference speed: prefill and decode tokens/s, memory, bandwidth (llama-bench-like).
    Bench(bench::BenchArgs),
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SMELT_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).without_time().try_init();
}

/// Size the thread pools before any work starts: rayon's global pool and candle's
/// matmul threads (which read RAYON_NUM_THREADS).
pub fn init_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
    Ok(())
}

/// Entry point: parse, run, print errors as one line and map them to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = init_threads(cli.threads).and_then(|_| match cli.command {
        Command::Run(a) => run::run(a, cli.verbose > 0),
        Command::Chat(a) => chat::chat(a, cli.verbose > 0),
        Command::Info(a) => info::info(a),
        Command::Perplexity(a) => perplexity::perplexity(a),
        Command::Serve(a) => serve::serve(a),
        Command::Pull(a) => models::pull(a),
        Command::List(a) => models::list(a),
        Command::Rm(a) => models::rm(a),
        Command::Tokenizer(a) => tokenizer::tokenizer(a),
        Command::Data(a) => data::data(a),
        Command::Train(a) => train::train(a),
        Command::BenchTrain(a) => train::bench(a),
        Command::Finetune(a) => finetune::finetune(a),
        Command::Distill(a) => distill::distill(a),
        Command::Synth(a) => distill::synth(a),
        Command::BenchDistill(a) => train::bench_distill(a),
        Command::EvalTask(a) => eval_task::eval_task(a),
        Command::Logits(a) => logits::logits(a),
        Command::Export(a) => export::export(a),
        Command::Quantize(a) => quantize::quantize(a),
        Command::Bench(a) => bench::bench(a, cli.threads),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<crate::train::Interrupted>().is_some() => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(e) => {
            // One line: the chain of causes joined with ": ".
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
