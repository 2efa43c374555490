//! Server counters, exported in the Prometheus text format at `/metrics`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub requests_failed: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub queue_depth: AtomicUsize,
    pub active: AtomicUsize,
    pub kv_bytes: AtomicUsize,
    pub steps: AtomicU64,
    pub step_tokens: AtomicU64,
    pub step_micros: AtomicU64,
    /// Exponentially smoothed tokens/s of forward passes.
    tps: Mutex<f64>,
}

impl Metrics {
    pub fn record_step(&self, tokens: usize, took: Duration) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.step_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        self.step_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let rate = tokens as f64 / took.as_secs_f64().max(1e-9);
        if let Ok(mut t) = self.tps.lock() {
            *t = if *t == 0.0 { rate } else { 0.9 * *t + 0.1 * rate };
        }
    }

    pub fn render(&self, model: &str) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let u = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        let tps = self.tps.lock().map(|t| *t).unwrap_or(0.0);
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, v: String| {
            out.push_str(&format!("# HELP smelt_{name} {help}\n# TYPE smelt_{name} {kind}\nsmelt_{name}{{model=\"{model}\"}} {v}\n"));
        };
        put("requests_total", "counter", "Requests received by the completion endpoints.", g(&self.requests).to_string());
        put("requests_failed_total", "counter", "Requests answered with an error.", g(&self.requests_failed).to_string());
        put("requests_rejected_total", "counter", "Requests refused because the queue was full.", g(&self.rejected_queue_full).to_string());
        put("requests_cancelled_total", "counter", "Sequences stopped because the client went away or timed out.", g(&self.cancelled).to_string());
        put("prompt_tokens_total", "counter", "Prompt tokens received.", g(&self.prompt_tokens).to_string());
        put("prompt_tokens_cached_total", "counter", "Prompt tokens served from the prefix cache.", g(&self.cached_tokens).to_string());
        put("completion_tokens_total", "counter", "Tokens generated.", g(&self.completion_tokens).to_string());
        put("queue_depth", "gauge", "Requests waiting for a slot.", u(&self.queue_depth).to_string());
        put("active_sequences", "gauge", "Sequences being processed.", u(&self.active).to_string());
        put("kv_cache_bytes", "gauge", "Bytes held by KV caches.", u(&self.kv_bytes).to_string());
        put("forward_steps_total", "counter", "Batched forward passes.", g(&self.steps).to_string());
        put("forward_tokens_total", "counter", "Tokens processed by forward passes.", g(&self.step_tokens).to_string());
        put("forward_seconds_total", "counter", "Time spent in forward passes.", format!("{:.6}", g(&self.step_micros) as f64 / 1e6));
        put("tokens_per_second", "gauge", "Recent forward-pass throughput (tokens/s, smoothed).", format!("{tps:.2}"));
        out
    }
}
