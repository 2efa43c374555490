//! `smelt serve`: an OpenAI-compatible HTTP server over the batching engine.

pub mod api;
pub mod engine;
pub mod metrics;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::{DefaultBodyLimit, Request as HttpRequest, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::load::Model;
use crate::template::ChatTemplate;
use api::ApiError;
use routes::{AppState, Shared};

pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// Sequences decoded together.
    pub parallel: usize,
    /// Requests allowed to wait for a slot; beyond that the server answers 429.
    pub queue: usize,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub timeout: Duration,
    /// The name clients use in `model` (and `/v1/models` lists).
    pub model_id: String,
}

async fn auth(State(st): State<Shared>, req: HttpRequest, next: Next) -> Response {
    if req.uri().path() == "/health" || routes::authorized(&st, req.headers()) {
        return next.run(req).await;
    }
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", "missing or incorrect API key (send Authorization: Bearer KEY)")
        .code("invalid_api_key")
        .into_response()
}

pub fn router(state: Shared, max_body: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .fallback(routes::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Serve until SIGTERM or Ctrl-C; in-flight requests are allowed to finish.
pub fn serve(model: Model, cfg: ServeConfig) -> Result<()> {
    let template = match &model.chat_template {
        Some(src) => Some(ChatTemplate::new(src, model.special_tokens()).context("the model's chat template")?),
        None => {
            tracing::warn!("the model has no chat template: /v1/chat/completions will refuse requests; /v1/completions works");
            None
        }
    };
    let model = Arc::new(model);
    let metrics = Arc::new(metrics::Metrics::default());
    let engine = engine::spawn(model.clone(), cfg.parallel, cfg.queue, metrics);
    let state = Arc::new(AppState {
        model: model.clone(),
        model_id: cfg.model_id.clone(),
        engine,
        template,
        api_key: cfg.api_key.clone(),
        timeout: cfg.timeout,
        created: api::now_secs(),
    });
    let addr: SocketAddr = format!("{}:{}", cfg.host, cfg.port)
        .parse()
        .or_else(|_| std::net::ToSocketAddrs::to_socket_addrs(&(cfg.host.as_str(), cfg.port)).map_err(anyhow::Error::from).and_then(|mut a| a.next().context("no address")))
        .with_context(|| format!("bad --host {:?}", cfg.host))?;
    if !addr.ip().is_loopback() && cfg.api_key.is_none() {
        tracing::warn!("listening on {addr} without --api-key: anyone who can reach this address can use the model");
    }
    // One worker: the HTTP side is async I/O, the model runs on the engine thread and its
    // compute pool; a second worker competed with that pool for the cores and delayed the
    // admission of new requests (the 4-stream throughput swung by a third run to run).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => bail!("cannot listen on {addr}: {e}"),
        };
        let local = listener.local_addr()?;
        eprintln!(
            "smelt: serving {} on http://{local} ({} parallel, context {}, OpenAI API at /v1)",
            cfg.model_id, cfg.parallel, model.decoder.n_ctx
        );
        axum::serve(listener, router(state, cfg.max_body_bytes)).with_graceful_shutdown(shutdown_signal()).await?;
        eprintln!("smelt: shut down");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("smelt: shutting down, letting in-flight requests finish");
}
