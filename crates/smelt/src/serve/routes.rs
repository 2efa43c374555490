//! HTTP handlers: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics,
//! /tokenize, /detokenize.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::api::*;
use super::engine::{EngineHandle, Event, Request, SubmitError, TokenLogprob};
use crate::constrain::JsonConstraint;
use crate::generate::{FinishReason, GenerateParams};
use crate::load::Model;
use crate::template::{ChatTemplate, RenderOptions};

pub struct AppState {
    pub model: Arc<Model>,
    pub model_id: String,
    pub engine: EngineHandle,
    pub template: Option<ChatTemplate>,
    pub api_key: Option<String>,
    pub timeout: Duration,
    pub created: u64,
}

pub type Shared = Arc<AppState>;

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "invalid_request_error", "the request body is too large").code("request_too_large")
        } else {
            ApiError::new(status, "invalid_request_error", format!("cannot read the request body: {e}"))
        }
    })
}

fn check_model(st: &AppState, asked: &Option<String>) -> Result<(), ApiError> {
    match asked {
        Some(m) if m != &st.model_id && !m.is_empty() => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{m}` does not exist; this server serves `{}`", st.model_id),
        )
        .param("model")
        .code("model_not_found")),
        _ => Ok(()),
    }
}

/// Everything a completion needs once the request body has been understood.
struct Job {
    prompt: Vec<u32>,
    params: GenerateParams,
    logprobs: Option<usize>,
    json: Option<JsonConstraint>,
    stream: bool,
    include_usage: bool,
}

fn check_length(st: &AppState, job: &Job) -> Result<(), ApiError> {
    let ctx = st.model.decoder.n_ctx;
    let n = job.prompt.len();
    if n == 0 {
        return Err(ApiError::bad_request("the prompt is empty").param("messages"));
    }
    if n >= ctx {
        return Err(ApiError::bad_request(format!(
            "This model's context is {ctx} tokens, but the prompt is {n} tokens. Nothing is truncated: shorten the prompt."
        ))
        .code("context_length_exceeded"));
    }
    if let Some(m) = job.params.max_tokens {
        if n + m > ctx {
            return Err(ApiError::bad_request(format!(
                "This model's context is {ctx} tokens. However, you requested {} tokens ({n} in the prompt, {m} for the completion).",
                n + m
            ))
            .param("max_tokens")
            .code("context_length_exceeded"));
        }
    }
    Ok(())
}

fn response_format(v: &Option<Value>) -> Result<Option<JsonConstraint>, ApiError> {
    match v {
        None => Ok(None),
        Some(rf) => JsonConstraint::from_response_format(rf).map_err(|e| ApiError::bad_request(format!("{e:#}")).param("response_format")),
    }
}

fn submit(st: &AppState, job: &Job) -> Result<(UnboundedReceiver<Event>, Arc<AtomicBool>), ApiError> {
    let (tx, rx) = unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let req = Request {
        prompt: job.prompt.clone(),
        params: job.params.clone(),
        logprobs: job.logprobs,
        json: job.json.clone(),
        deadline: Some(Instant::now() + st.timeout),
        events: tx,
        cancel: cancel.clone(),
    };
    match st.engine.submit(req) {
        Ok(()) => Ok((rx, cancel)),
        Err(SubmitError::QueueFull) => {
            st.engine.metrics.rejected_queue_full.fetch_add(1, Ordering::Relaxed);
            Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "the server is busy: the request queue is full, retry shortly").code("queue_full"))
        }
        Err(SubmitError::ShuttingDown) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the server is shutting down")),
    }
}

/// Collected result of a non-streaming request.
struct Collected {
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish: FinishReason,
    prompt_tokens: usize,
    cached: usize,
    completion_tokens: usize,
}

async fn collect(mut rx: UnboundedReceiver<Event>) -> Result<Collected, ApiError> {
    let mut c = Collected { text: String::new(), logprobs: Vec::new(), finish: FinishReason::Stop, prompt_tokens: 0, cached: 0, completion_tokens: 0 };
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Started { prompt_tokens, cached } => {
                c.prompt_tokens = prompt_tokens;
                c.cached = cached;
            }
            Event::Token { text, logprob, .. } => {
                c.text.push_str(&text);
                c.logprobs.extend(logprob);
            }
            Event::Done { finish, completion_tokens } => {
                c.finish = finish;
                c.completion_tokens = completion_tokens;
                return Ok(c);
            }
            Event::Error(e) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e)),
        }
    }
    Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "generation ended unexpectedly"))
}

fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}

fn usage(prompt: usize, cached: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": cached}})
}

fn token_text(st: &AppState, id: u32) -> (String, Vec<u8>) {
    let b = st.model.tokenizer.token_bytes(id);
    (String::from_utf8_lossy(&b).into_owned(), b)
}

fn chat_logprobs(st: &AppState, lps: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|lp| {
            let (t, b) = token_text(st, lp.token);
            let top: Vec<Value> = lp
                .top
                .iter()
                .map(|(id, l)| {
                    let (t, b) = token_text(st, *id);
                    json!({"token": t, "logprob": l, "bytes": b})
                })
                .collect();
            json!({"token": t, "logprob": lp.logprob, "bytes": b, "top_logprobs": top})
        })
        .collect();
    json!({"content": content, "refusal": null})
}

fn completion_logprobs(st: &AppState, lps: &[TokenLogprob]) -> Value {
    let mut offset = 0;
    let (mut tokens, mut lp, mut top, mut offs) = (vec![], vec![], vec![], vec![]);
    for l in lps {
        let (t, _) = token_text(st, l.token);
        offs.push(offset);
        offset += t.len();
        tokens.push(t);
        lp.push(l.logprob);
        let m: serde_json::Map<String, Value> = l.top.iter().map(|(id, v)| (token_text(st, *id).0, json!(v))).collect();
        top.push(Value::Object(m));
    }
    json!({"tokens": tokens, "token_logprobs": lp, "top_logprobs": top, "text_offset": offs})
}

pub async fn chat_completions(State(st): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    st.engine.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let r = chat_inner(&st, body).await;
    r.unwrap_or_else(|e| {
        st.engine.metrics.requests_failed.fetch_add(1, Ordering::Relaxed);
        e.into_response()
    })
}

async fn chat_inner(st: &Shared, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: ChatRequest = parse_body(&body_bytes(body)?)?;
    check_model(st, &req.s.model)?;
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty").param("messages"));
    }
    for (i, m) in req.messages.iter().enumerate() {
        if !m.get("role").is_some_and(Value::is_string) {
            return Err(ApiError::bad_request(format!("messages[{i}] needs a string \"role\"")).param("messages"));
        }
    }
    let template = st.template.as_ref().ok_or_else(|| {
        ApiError::bad_request("this model has no chat template; use /v1/completions with a plain prompt").code("no_chat_template")
    })?;
    let opts = RenderOptions {
        add_generation_prompt: true,
        tools: req.tools.as_ref(),
        extra: req.chat_template_kwargs.clone().unwrap_or_default(),
        ..Default::default()
    };
    let text = template.render(&req.messages, &opts).map_err(|e| ApiError::bad_request(format!("the chat template cannot render these messages: {e:#}")))?;
    let prompt = st.model.tokenizer.encode(&text, false, true).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    let top = req.top_logprobs.unwrap_or(0);
    if top > MAX_TOP_LOGPROBS {
        return Err(ApiError::bad_request(format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}")).param("top_logprobs"));
    }
    let job = Job {
        prompt,
        params: req.s.to_params()?,
        logprobs: (req.logprobs || top > 0).then_some(top as usize),
        json: response_format(&req.response_format)?,
        stream: req.s.stream,
        include_usage: req.s.stream_options.as_ref().is_some_and(|o| o.include_usage),
    };
    check_length(st, &job)?;
    let (rx, _cancel) = submit(st, &job)?;
    let id = format!("chatcmpl-{:016x}", rand_id());
    if job.stream {
        return Ok(stream_response(st.clone(), rx, id, true, job.include_usage, job.logprobs.is_some()).into_response());
    }
    let c = collect(rx).await?;
    let logprobs = if job.logprobs.is_some() { chat_logprobs(st, &c.logprobs) } else { Value::Null };
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": now_secs(), "model": st.model_id,
        "system_fingerprint": format!("smelt-{}", env!("CARGO_PKG_VERSION")),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text, "refusal": null},
                     "logprobs": logprobs, "finish_reason": finish_str(c.finish)}],
        "usage": usage(c.prompt_tokens, c.cached, c.completion_tokens),
    }))
    .into_response())
}

pub async fn completions(State(st): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    st.engine.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let r = completions_inner(&st, body).await;
    r.unwrap_or_else(|e| {
        st.engine.metrics.requests_failed.fetch_add(1, Ordering::Relaxed);
        e.into_response()
    })
}

async fn completions_inner(st: &Shared, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse_body(&body_bytes(body)?)?;
    check_model(st, &req.s.model)?;
    if req.echo {
        return Err(ApiError::bad_request("echo is not supported").param("echo"));
    }
    let tok = &st.model.tokenizer;
    let prompt = match &req.prompt {
        Prompt::Text(t) => tok.encode(t, true, true).map_err(|e| ApiError::bad_request(format!("{e:#}")))?,
        Prompt::Texts(v) if v.len() == 1 => tok.encode(&v[0], true, true).map_err(|e| ApiError::bad_request(format!("{e:#}")))?,
        Prompt::Texts(_) => return Err(ApiError::bad_request("only one prompt per request is supported").param("prompt")),
        Prompt::Tokens(ids) => {
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= tok.vocab_size()) {
                return Err(ApiError::bad_request(format!("token id {bad} is outside the vocabulary")).param("prompt"));
            }
            ids.clone()
        }
    };
    let top = req.logprobs.unwrap_or(0);
    if top > MAX_TOP_LOGPROBS {
        return Err(ApiError::bad_request(format!("logprobs must be at most {MAX_TOP_LOGPROBS}")).param("logprobs"));
    }
    let job = Job {
        prompt,
        params: req.s.to_params()?,
        logprobs: req.logprobs.map(|n| n as usize),
        json: None,
        stream: req.s.stream,
        include_usage: req.s.stream_options.as_ref().is_some_and(|o| o.include_usage),
    };
    check_length(st, &job)?;
    let (rx, _cancel) = submit(st, &job)?;
    let id = format!("cmpl-{:016x}", rand_id());
    if job.stream {
        return Ok(stream_response(st.clone(), rx, id, false, job.include_usage, job.logprobs.is_some()).into_response());
    }
    let c = collect(rx).await?;
    let logprobs = if job.logprobs.is_some() { completion_logprobs(st, &c.logprobs) } else { Value::Null };
    Ok(Json(json!({
        "id": id, "object": "text_completion", "created": now_secs(), "model": st.model_id,
        "choices": [{"index": 0, "text": c.text, "logprobs": logprobs, "finish_reason": finish_str(c.finish)}],
        "usage": usage(c.prompt_tokens, c.cached, c.completion_tokens),
    }))
    .into_response())
}

/// Server-sent events: one chunk per piece of text, a final chunk with the finish reason,
/// optionally a usage chunk, then `data: [DONE]`. Dropping the stream (client gone)
/// drops the receiver, which the engine notices and frees the slot.
fn stream_response(st: Shared, rx: UnboundedReceiver<Event>, id: String, chat: bool, include_usage: bool, want_logprobs: bool) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let created = now_secs();
    let model = st.model_id.clone();
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = move |choice: Value, usage_v: Option<Value>| {
        let mut v = json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]});
        if chat {
            v["system_fingerprint"] = json!(format!("smelt-{}", env!("CARGO_PKG_VERSION")));
        }
        if let Some(u) = usage_v {
            v["choices"] = json!([]);
            v["usage"] = u;
        } else if include_usage {
            v["usage"] = Value::Null;
        }
        SseEvent::default().data(v.to_string())
    };
    struct S {
        rx: UnboundedReceiver<Event>,
        started: bool,
        done: bool,
        prompt: usize,
        cached: usize,
    }
    let init = S { rx, started: false, done: false, prompt: 0, cached: 0 };
    let stream = stream::unfold((init, st), move |(mut s, st)| {
        let chunk = chunk.clone();
        async move {
            if s.done {
                return None;
            }
            let mut out: Vec<SseEvent> = Vec::new();
            match s.rx.recv().await {
                None => {
                    s.done = true;
                    out.push(SseEvent::default().data(json!({"error": {"message": "generation ended unexpectedly", "type": "server_error"}}).to_string()));
                }
                Some(Event::Started { prompt_tokens, cached }) => {
                    s.prompt = prompt_tokens;
                    s.cached = cached;
                    if chat && !s.started {
                        s.started = true;
                        out.push(chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}), None));
                    }
                }
                Some(Event::Token { text, logprob, .. }) => {
                    if !text.is_empty() || logprob.is_some() {
                        let lp = match (&logprob, want_logprobs) {
                            (Some(l), true) if chat => chat_logprobs(&st, std::slice::from_ref(l)),
                            (Some(l), true) => completion_logprobs(&st, std::slice::from_ref(l)),
                            _ => Value::Null,
                        };
                        let choice = if chat {
                            json!({"index": 0, "delta": {"content": text}, "logprobs": lp, "finish_reason": null})
                        } else {
                            json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": null})
                        };
                        out.push(chunk(choice, None));
                    }
                }
                Some(Event::Done { finish, completion_tokens }) => {
                    s.done = true;
                    let choice = if chat {
                        json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_str(finish)})
                    } else {
                        json!({"index": 0, "text": "", "logprobs": null, "finish_reason": finish_str(finish)})
                    };
                    out.push(chunk(choice, None));
                    if include_usage {
                        out.push(chunk(Value::Null, Some(usage(s.prompt, s.cached, completion_tokens))));
                    }
                    out.push(SseEvent::default().data("[DONE]"));
                }
                Some(Event::Error(e)) => {
                    s.done = true;
                    out.push(SseEvent::default().data(json!({"error": {"message": e, "type": "server_error"}}).to_string()));
                }
            }
            Some((stream::iter(out.into_iter().map(Ok)), (s, st)))
        }
    })
    .flatten();
    Sse::new(stream).keep_alive(KeepAlive::default())
}

pub async fn models(State(st): State<Shared>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": st.model_id, "object": "model", "created": st.created, "owned_by": "smelt",
        "meta": {"context_length": st.model.decoder.n_ctx, "n_params": st.model.config().n_params(),
                 "architecture": st.model.config().arch.name()}
    }]}))
}

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn metrics(State(st): State<Shared>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], st.engine.metrics.render(&st.model_id)).into_response()
}

pub async fn tokenize(State(st): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    let r = (|| -> Result<Value, ApiError> {
        let v: Value = parse_body(&body_bytes(body)?)?;
        let content = v.get("content").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("\"content\" must be a string").param("content"))?;
        let add_special = v.get("add_special").and_then(Value::as_bool).unwrap_or(false);
        let parse_special = v.get("parse_special").and_then(Value::as_bool).unwrap_or(true);
        let ids = st.model.tokenizer.encode(content, add_special, parse_special).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
        Ok(json!({"tokens": ids}))
    })();
    r.map(|v| Json(v).into_response()).unwrap_or_else(IntoResponse::into_response)
}

pub async fn detokenize(State(st): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    let r = (|| -> Result<Value, ApiError> {
        let v: Value = parse_body(&body_bytes(body)?)?;
        let ids: Vec<u32> = v
            .get("tokens")
            .and_then(Value::as_array)
            .ok_or_else(|| ApiError::bad_request("\"tokens\" must be a list of token ids").param("tokens"))?
            .iter()
            .map(|t| t.as_u64().filter(|&t| (t as usize) < st.model.tokenizer.vocab_size()).map(|t| t as u32))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::bad_request("\"tokens\" holds an id outside the vocabulary").param("tokens"))?;
        Ok(json!({"content": st.model.tokenizer.decode(&ids, false)}))
    })();
    r.map(|v| Json(v).into_response()).unwrap_or_else(IntoResponse::into_response)
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "no such endpoint").code("not_found")
}

/// `Authorization: Bearer KEY` check; `/health` stays open.
pub fn authorized(st: &AppState, headers: &HeaderMap) -> bool {
    let Some(key) = &st.api_key else { return true };
    let got = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    // Constant-time comparison: no early exit on the first differing byte.
    got.is_some_and(|g| g.len() == key.len() && g.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}
