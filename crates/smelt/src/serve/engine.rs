//! The batching engine: one thread owns the model and runs every active sequence
//! together, one batched forward pass per step. Requests join and leave between steps
//! (continuous batching); finished sequences keep their KV cache in their slot so a
//! later request sharing a prefix (a system prompt, a growing conversation) reuses it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;
use crate::constrain::{JsonConstraint, TokenFilter, TokenTable};
use crate::generate::{FinishReason, GenerateParams, StopMatcher};
use crate::load::Model;
use crate::model::{KvCache, Logits, SeqInput};
use crate::sample::{log_softmax, Sampler};
use crate::tokenize::StreamDecoder;

/// Longest prompt piece computed in one step, so a long prompt does not stall the
/// sequences already decoding for seconds at a time.
const PREFILL_CHUNK: usize = 256;

/// A token's log-probability and the best alternatives, for `logprobs`.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug)]
pub enum Event {
    /// The prompt has been admitted; `cached` of its tokens came from the prefix cache.
    Started { prompt_tokens: usize, cached: usize },
    /// New text (may be empty when a token only completes later, e.g. half a UTF-8 char).
    Token { text: String, token: Option<u32>, logprob: Option<TokenLogprob> },
    Done { finish: FinishReason, completion_tokens: usize },
    Error(String),
}

pub struct Request {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    /// Some(n): report each chosen token's log-probability and the n best alternatives.
    pub logprobs: Option<usize>,
    pub json: Option<JsonConstraint>,
    pub deadline: Option<Instant>,
    pub events: UnboundedSender<Event>,
    pub cancel: Arc<AtomicBool>,
}

/// Why a request could not be queued.
#[derive(Debug)]
pub enum SubmitError {
    QueueFull,
    ShuttingDown,
}

#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<Request>,
    pub metrics: Arc<Metrics>,
}

impl EngineHandle {
    pub fn submit(&self, r: Request) -> Result<(), SubmitError> {
        match self.tx.try_send(r) {
            Ok(()) => {
                self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(SubmitError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::ShuttingDown),
        }
    }
}

/// One active or idle sequence slot.
struct Slot<'m> {
    cache: KvCache,
    /// Tokens whose keys/values are in `cache`.
    cached: Vec<u32>,
    active: Option<Active<'m>>,
}

struct Active<'m> {
    req: Request,
    /// Prompt tokens still to compute.
    pending: Vec<u32>,
    history: Vec<u32>,
    sampler: Sampler,
    stream: StreamDecoder<'m>,
    stops: StopMatcher,
    generated: usize,
    /// Logits for the next token once the prompt is in.
    logits: Option<Vec<f32>>,
}

pub fn spawn(model: Arc<Model>, parallel: usize, queue: usize, metrics: Arc<Metrics>) -> EngineHandle {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Request>(queue.max(1));
    let m = metrics.clone();
    std::thread::Builder::new()
        .name("smelt-engine".into())
        .spawn(move || run(&model, parallel.max(1), rx, &m))
        .expect("cannot start the engine thread");
    EngineHandle { tx, metrics }
}

fn run(model: &Model, parallel: usize, rx: Receiver<Request>, metrics: &Metrics) {
    let dec = &model.decoder;
    let tok = &model.tokenizer;
    let table = TokenTable::new(tok);
    let mut slots: Vec<Slot> = (0..parallel).map(|_| Slot { cache: dec.new_cache(), cached: Vec::new(), active: None }).collect();
    loop {
        // Admit new requests into free slots; block only when nothing is running.
        loop {
            let idle = slots.iter().all(|s| s.active.is_none());
            if !slots.iter().any(|s| s.active.is_none()) {
                break;
            }
            let req = if idle {
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => return, // all handles dropped: shut down
                }
            } else {
                match rx.try_recv() {
                    Ok(r) => r,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break,
                }
            };
            metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            admit(&mut slots, req, model, metrics);
        }
        update_gauges(&slots, metrics);
        step(&mut slots, model, &table, metrics);
        update_gauges(&slots, metrics);
    }
}

/// A slot was just freed: count it out before its client hears the last event, so that
/// `/metrics` read after a reply never still counts it (the soak test once saw
/// `active_sequences 1` after every client had its answer). [`update_gauges`] sets the
/// exact count again after the step.
fn freed(metrics: &Metrics) {
    let _ = metrics.active.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
}

fn update_gauges(slots: &[Slot], metrics: &Metrics) {
    metrics.active.store(slots.iter().filter(|s| s.active.is_some()).count(), Ordering::Relaxed);
    metrics.kv_bytes.store(slots.iter().map(|s| s.cache.bytes()).sum(), Ordering::Relaxed);
}

/// Put a request in the free slot whose cached tokens share the longest prefix with it.
fn admit<'m>(slots: &mut [Slot<'m>], req: Request, model: &'m Model, metrics: &Metrics) {
    let common = |s: &Slot| s.cached.iter().zip(&req.prompt).take_while(|(a, b)| a == b).count();
    let Some(i) = (0..slots.len()).filter(|&i| slots[i].active.is_none()).max_by_key(|&i| common(&slots[i])) else {
        return;
    };
    let slot = &mut slots[i];
    // Keep at least one prompt token to compute: its logits start generation.
    let keep = common(slot).min(req.prompt.len().saturating_sub(1));
    slot.cache.truncate(keep);
    slot.cached.truncate(keep);
    let sampler = match Sampler::new(req.params.sampling.clone()) {
        Ok(s) => s,
        Err(e) => {
            let _ = req.events.send(Event::Error(format!("{e:#}")));
            return;
        }
    };
    metrics.prompt_tokens.fetch_add(req.prompt.len() as u64, Ordering::Relaxed);
    metrics.cached_tokens.fetch_add(keep as u64, Ordering::Relaxed);
    let _ = req.events.send(Event::Started { prompt_tokens: req.prompt.len(), cached: keep });
    slot.active = Some(Active {
        pending: req.prompt[keep..].to_vec(),
        history: req.prompt.clone(),
        sampler,
        stream: StreamDecoder::new(&model.tokenizer, true),
        stops: StopMatcher::new(&req.params.stop),
        generated: 0,
        logits: None,
        req,
    });
}

/// What sampling decided for a sequence.
enum Outcome {
    Feed(u32),
    /// Finished; `true` when a stop string ended it (then nothing held back is released).
    Finish(FinishReason, bool),
}

/// One batched forward pass over every active sequence, then sampling for those whose
/// prompt is complete.
fn step(slots: &mut [Slot], model: &Model, table: &TokenTable, metrics: &Metrics) {
    let dec = &model.decoder;
    let now = Instant::now();
    let mut feeds: Vec<(usize, Vec<u32>)> = Vec::new();
    for (i, slot) in slots.iter_mut().enumerate() {
        let Some(a) = slot.active.as_mut() else { continue };
        // A client that went away, or ran out of time, frees its slot at once.
        let expired = a.req.deadline.is_some_and(|d| now > d);
        if a.req.cancel.load(Ordering::Relaxed) || a.req.events.is_closed() || expired {
            let a = slot.active.take().unwrap();
            freed(metrics);
            if expired {
                let _ = a.req.events.send(Event::Error("the request timed out".into()));
            }
            metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if !a.pending.is_empty() {
            let n = a.pending.len().min(PREFILL_CHUNK);
            feeds.push((i, a.pending.drain(..n).collect()));
            continue;
        }
        let Some(mut logits) = a.logits.take() else { continue };
        let outcome = match sample_one(a, &mut logits, model, table, metrics) {
            Outcome::Feed(_) if slot.cache.len() + 1 > dec.n_ctx => Outcome::Finish(FinishReason::Length, false),
            o => o,
        };
        match outcome {
            Outcome::Feed(next) => feeds.push((i, vec![next])),
            Outcome::Finish(reason, stop_hit) => {
                freed(metrics);
                end(slot.active.take().unwrap(), reason, stop_hit)
            }
        }
    }
    if feeds.is_empty() {
        return;
    }
    let t0 = Instant::now();
    // One forward pass for everyone: prompt chunks and single decode tokens together.
    let mut caches: Vec<KvCache> = feeds.iter().map(|(i, _)| std::mem::replace(&mut slots[*i].cache, KvCache::new(0, 0, Default::default()))).collect();
    let result = {
        let mut inputs: Vec<SeqInput> =
            feeds.iter().zip(caches.iter_mut()).map(|((_, toks), c)| SeqInput { tokens: toks, cache: Some(c) }).collect();
        dec.forward(&mut inputs, Logits::Last).and_then(|l| Ok(l.to_vec2::<f32>()?))
    };
    for ((i, _), c) in feeds.iter().zip(caches) {
        slots[*i].cache = c;
    }
    let n_tokens: usize = feeds.iter().map(|(_, t)| t.len()).sum();
    metrics.record_step(n_tokens, t0.elapsed());
    match result {
        Ok(rows) => {
            for ((i, toks), row) in feeds.into_iter().zip(rows) {
                let slot = &mut slots[i];
                slot.cached.extend_from_slice(&toks);
                if let Some(a) = slot.active.as_mut() {
                    if a.pending.is_empty() {
                        a.logits = Some(row);
                    }
                }
            }
        }
        Err(e) => {
            // A failed step fails the sequences in it; their caches stay consistent.
            for (i, _) in feeds {
                if let Some(a) = slots[i].active.take() {
                    freed(metrics);
                    let _ = a.req.events.send(Event::Error(format!("{e:#}")));
                }
                let n = slots[i].cache.len();
                slots[i].cached.truncate(n);
            }
        }
    }
}

/// Sample the next token of `a` and emit its text.
fn sample_one(a: &mut Active, logits: &mut [f32], model: &Model, table: &TokenTable, metrics: &Metrics) -> Outcome {
    let tok = &model.tokenizer;
    let eog = tok.eog_ids();
    let logprob_row = a.req.logprobs.map(|_| log_softmax(logits));
    let next = match &a.req.json {
        Some(c) => {
            let mut filter = TokenFilter::new(table, c);
            match a.sampler.sample_with(logits, &a.history, &mut |t| filter.allows(t)) {
                Some(t) => t,
                // Nothing can continue the document (cannot happen with a well-formed
                // constraint; guard anyway rather than emit invalid JSON).
                None => return Outcome::Finish(FinishReason::Stop, false),
            }
        }
        None => a.sampler.sample(logits, &a.history),
    };
    let params: &GenerateParams = &a.req.params;
    if eog.contains(&next) && !params.ignore_eos {
        return Outcome::Finish(FinishReason::Stop, false);
    }
    if let Some(c) = a.req.json.as_mut() {
        if table.advance(c, next).is_err() {
            return Outcome::Finish(FinishReason::Stop, false);
        }
    }
    a.history.push(next);
    a.generated += 1;
    metrics.completion_tokens.fetch_add(1, Ordering::Relaxed);
    let logprob = logprob_row.map(|row| top_logprobs(&row, next, a.req.logprobs.unwrap_or(0)));
    let piece = a.stream.push(next);
    let (text, hit) = a.stops.push(&piece);
    let _ = a.req.events.send(Event::Token { text, token: Some(next), logprob });
    if hit {
        return Outcome::Finish(FinishReason::Stop, true);
    }
    if a.req.json.as_ref().is_some_and(|c| c.is_complete()) {
        return Outcome::Finish(FinishReason::Stop, false);
    }
    if params.max_tokens.is_some_and(|m| a.generated >= m) {
        return Outcome::Finish(FinishReason::Length, false);
    }
    Outcome::Feed(next)
}

fn top_logprobs(row: &[f32], chosen: u32, n: usize) -> TokenLogprob {
    let mut top: Vec<(u32, f32)> = Vec::new();
    if n > 0 {
        let mut idx: Vec<u32> = (0..row.len() as u32).collect();
        let k = n.min(idx.len());
        idx.select_nth_unstable_by(k - 1, |a, b| row[*b as usize].total_cmp(&row[*a as usize]));
        idx.truncate(k);
        idx.sort_by(|a, b| row[*b as usize].total_cmp(&row[*a as usize]));
        top = idx.into_iter().map(|i| (i, row[i as usize])).collect();
    }
    TokenLogprob { token: chosen, logprob: row[chosen as usize], top }
}

/// Release held-back text (unless a stop string ended generation) and send Done.
fn end(a: Active, finish: FinishReason, stop_hit: bool) {
    let Active { req, stream, mut stops, generated, .. } = a;
    if !stop_hit {
        let (mut text, hit) = stops.push(&stream.finish());
        if !hit {
            text.push_str(&stops.flush());
        }
        // A JSON-constrained reply cut short by the token limit is closed with the shortest
        // valid ending, so it always parses (finish_reason still says "length").
        if finish == FinishReason::Length {
            if let Some(tail) = req.json.as_ref().filter(|c| !c.can_finish()).and_then(|c| c.completion()) {
                text.push_str(&String::from_utf8_lossy(&tail));
            }
        }
        if !text.is_empty() {
            let _ = req.events.send(Event::Token { text, token: None, logprob: None });
        }
    }
    let _ = req.events.send(Event::Done { finish, completion_tokens: generated });
}
