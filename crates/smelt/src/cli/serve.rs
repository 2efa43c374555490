//! `smelt serve [MODEL]`: the OpenAI-compatible server.

use std::time::Duration;

use anyhow::Result;
use clap::Args;

use super::args::{load_model, ModelArgs};
use crate::hub::DEFAULT_MODEL;
use crate::serve::{serve as run_server, ServeConfig};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The model: path, alias or hub repo (default: smollm2-135m).
    pub model: Option<String>,
    /// Address to bind. The default only accepts connections from this machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, short = 'p', default_value_t = 8080)]
    pub port: u16,
    /// Sequences decoded together in one batch.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Requests that may wait for a free slot; more get HTTP 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long, env = "SMELT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body: usize,
    /// Per-request time limit in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// The model name clients send (default: the MODEL argument).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub model_args: ModelArgs,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    if a.parallel == 0 {
        anyhow::bail!("--parallel must be at least 1");
    }
    let model = load_model(a.model.as_deref(), &a.model_args)?;
    let spec = a.model.clone().unwrap_or_else(|| DEFAULT_MODEL.to_string());
    let model_id = a.name.clone().unwrap_or_else(|| {
        std::path::Path::new(&spec).file_stem().map(|s| s.to_string_lossy().into_owned()).filter(|_| std::path::Path::new(&spec).exists()).unwrap_or(spec)
    });
    run_server(
        model,
        ServeConfig {
            host: a.host,
            port: a.port,
            parallel: a.parallel,
            queue: a.queue,
            api_key: a.api_key.filter(|k| !k.is_empty()),
            max_body_bytes: a.max_body,
            timeout: Duration::from_secs(a.timeout.max(1)),
            model_id,
        },
    )
}
