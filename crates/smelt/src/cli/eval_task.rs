//! `smelt eval-task MODEL --data test.jsonl [--lora DIR] [--json]`: exact-match accuracy of
//! greedy replies on held-out records.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::args::{load_model, ModelArgs};
use crate::eval::task::eval_task as run_eval;
use crate::finetune::data::read_records;

#[derive(Args, Debug)]
pub struct EvalTaskArgs {
    /// The model: path, alias or hub repo.
    pub model: String,
    /// Records (prompt/completion, or chat ending with the reference assistant reply).
    #[arg(long)]
    pub data: PathBuf,
    /// Compare replies as JSON values (key order and spacing do not matter).
    #[arg(long)]
    pub json: bool,
    /// Longest reply in tokens.
    #[arg(long, default_value_t = 96)]
    pub max_tokens: usize,
    /// No chat template (plain prompt, as `smelt finetune --raw`).
    #[arg(long)]
    pub raw: bool,
    /// Score only the first N records.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write every prediction (JSONL) here.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long = "report-json")]
    pub report_json: bool,
    #[command(flatten)]
    pub model_args: ModelArgs,
}

pub fn eval_task(a: EvalTaskArgs) -> Result<()> {
    let (mut records, _) = read_records(&a.data, false)?;
    if let Some(n) = a.limit {
        records.truncate(n);
    }
    let model = load_model(Some(&a.model), &a.model_args)?;
    let show = std::io::stderr().is_terminal();
    let pb = ProgressBar::with_draw_target(Some(records.len() as u64), if show { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
    pb.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} ETA {eta}").expect("valid template"));
    let r = run_eval(&model, &records, a.json, a.max_tokens, a.raw, |i, _| pb.set_position(i as u64))?;
    pb.finish_and_clear();
    if let Some(p) = &a.predictions {
        let lines: Vec<String> = r.predictions.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
        crate::util::write_atomic(p, (lines.join("\n") + "\n").as_bytes())?;
    }
    if a.report_json {
        let mut v = serde_json::to_value(&r)?;
        v.as_object_mut().map(|o| o.remove("predictions"));
        println!("{v}");
    } else {
        let valid = r.valid_json.map(|v| format!(", {v} valid JSON")).unwrap_or_default();
        println!("exact match {}/{} = {:.1}%{valid}", r.correct, r.records, 100.0 * r.accuracy);
    }
    Ok(())
}
