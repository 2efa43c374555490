//! The allocation-free decode step: one new token of one sequence through the decoder, on
//! buffers that are allocated once and then reused.
//!
//! A decode step through candle's ops ([`Decoder::forward`]) builds some sixty small
//! tensors per layer (views, shapes, outputs): about two thousand heap allocations per
//! token for SmolLM2's 30 layers. Here the same operations run on raw buffers:
//! - the step's activations live in per-thread [`StepBufs`], sized on first use;
//! - keys and values go straight into the cache ([`KvCache::append_row`]);
//! - attention reads the cache in place ([`decode_rows`], the fused op's own decode code);
//! - every product is smelt's quantized kernel writing into a given output.
//!
//! Each operation is the one the candle path runs, in the same order with the same
//! arithmetic, so the logits are the same bits: the candle path is this one's oracle in
//! the tests. Models this step does not cover take the candle path: dense or
//! candle-quantized weights, LoRA adapters at inference, GeGLU, soft-capping, sliding
//! windows and an embedding scale (Gemma).

use anyhow::{bail, Result};
use candle_core::{CpuStorage, Storage, Tensor};

use super::attention::QkvProj;
use super::config::Activation;
use super::decoder::Decoder;
use super::kv_cache::KvCache;
use super::linear::{Linear, Weight};
use super::mlp::GateUp;
use crate::train::kernels::attention::decode_rows;

/// Whether [`step_into`] can run this model (see the module docs for what it covers).
pub fn supported(dec: &Decoder) -> bool {
    let cfg = &dec.cfg;
    let quant = |l: &Linear| l.quant_parts().is_some();
    cfg.activation == Activation::Silu
        && cfg.embed_scale.is_none()
        && cfg.final_softcap.is_none()
        && matches!(dec.embed.weight(), Weight::Quant(_))
        && quant(&dec.lm_head)
        && dec.device.is_cpu()
        && dec.blocks.iter().all(|b| {
            let a = &b.attn;
            a.softcap.is_none()
                && a.sliding_window.is_none()
                && quant(&a.o)
                && quant(&b.mlp.down)
                && match &a.qkv {
                    QkvProj::Separate { q, k, v } => quant(q) && quant(k) && quant(v),
                    QkvProj::Fused(w) => quant(w),
                }
                && match &b.mlp.gate_up {
                    GateUp::Separate { gate, up } => quant(gate) && quant(up),
                    GateUp::Fused(w) => quant(w),
                }
        })
}

/// One step's activations. Sizes (`h` hidden, `nq = heads·hd`, `nkv = kv_heads·hd`,
/// `ff` feed-forward):
#[derive(Default)]
struct StepBufs {
    /// The residual stream, `(h)`.
    x: Vec<f32>,
    /// A normed copy of `x`, or a sublayer's output before its post-norm, `(h)`.
    hn: Vec<f32>,
    /// A sublayer's output, `(h)`.
    out: Vec<f32>,
    /// q, k, v one after the other, `(nq + 2·nkv)`.
    qkv: Vec<f32>,
    /// Attention output before its projection, `(nq)`.
    att: Vec<f32>,
    /// Gate then up, `(2·ff)`; the activation is written over the gate half.
    gu: Vec<f32>,
}

impl StepBufs {
    fn fit(&mut self, h: usize, nq: usize, nkv: usize, ff: usize) {
        let fit = |v: &mut Vec<f32>, n: usize| {
            if v.len() != n {
                v.resize(n, 0.0);
            }
        };
        fit(&mut self.x, h);
        fit(&mut self.hn, h);
        fit(&mut self.out, h);
        fit(&mut self.qkv, nq + 2 * nkv);
        fit(&mut self.att, nq);
        fit(&mut self.gu, 2 * ff);
    }
}

thread_local! {
    static BUFS: std::cell::RefCell<StepBufs> = std::cell::RefCell::default();
}

/// `y = x · Wᵀ (+ b)` for one row, into `y`, on smelt's quantized kernels.
fn product(l: &Linear, x: &[f32], y: &mut [f32]) -> Result<()> {
    let Some((w, bias)) = l.quant_parts() else {
        bail!("decode step: a projection is not a plain quantized product");
    };
    w.matmul_into(x, 1, y)?;
    if let Some(b) = bias {
        with_f32(b, |b| {
            for (y, &b) in y.iter_mut().zip(b) {
                *y += b;
            }
        })?;
    }
    Ok(())
}

/// Run `f` over a contiguous f32 CPU tensor's values, in place.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (st, l) = t.storage_and_layout();
    match (&*st, l.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(d)), Some((a, b))) => Ok(f(&d[a..b])),
        _ => bail!("decode step: expected a contiguous f32 tensor on the CPU"),
    }
}

/// Logits of `token` appended to `cache` (at position `cache.len()`) into `logits`
/// (`vocab` values), and the cache committed. The caller checks [`supported`].
pub fn step_into(dec: &Decoder, token: u32, cache: &mut KvCache, logits: &mut [f32]) -> Result<()> {
    let cfg = &dec.cfg;
    if logits.len() != cfg.vocab_size {
        bail!("decode step: {} logits for a vocabulary of {}", logits.len(), cfg.vocab_size);
    }
    if token as usize >= cfg.vocab_size {
        bail!("token id {token} is outside the vocabulary of {}", cfg.vocab_size);
    }
    let pos = cache.len();
    if pos + 1 > dec.n_ctx {
        bail!("1 tokens at position {pos} exceed the context size of {} (raise --ctx, up to the model's {})", dec.n_ctx, cfg.max_position);
    }
    cache.reserve(1)?;
    BUFS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut b) => run(dec, token, cache, logits, &mut b),
        // Re-entered on this thread (a step stolen while another waits): fresh buffers.
        Err(_) => run(dec, token, cache, logits, &mut StepBufs::default()),
    })
}

fn run(dec: &Decoder, token: u32, cache: &mut KvCache, logits: &mut [f32], b: &mut StepBufs) -> Result<()> {
    let cfg = &dec.cfg;
    let (h, hd, nh, nkv) = (cfg.hidden, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
    let (nq, nk) = (nh * hd, nkv * hd);
    b.fit(h, nq, nk, cfg.intermediate);
    let Weight::Quant(table) = dec.embed.weight() else {
        bail!("decode step: the embedding table is not quantized");
    };
    table.gather_row_into(token, &mut b.x)?;
    let pos = cache.len();
    for (li, blk) in dec.blocks.iter().enumerate() {
        let a = &blk.attn;
        // Attention: norm → q, k, v → q/k norms per head → rope → cache → attention → o.
        blk.attn_norm.forward_row(&b.x, &mut b.hn)?;
        match &a.qkv {
            QkvProj::Separate { q, k, v } => {
                let (qb, rest) = b.qkv.split_at_mut(nq);
                let (kb, vb) = rest.split_at_mut(nk);
                product(q, &b.hn, qb)?;
                product(k, &b.hn, kb)?;
                product(v, &b.hn, vb)?;
            }
            QkvProj::Fused(w) => product(w, &b.hn, &mut b.qkv)?,
        }
        let (qb, rest) = b.qkv.split_at_mut(nq);
        let (kb, vb) = rest.split_at_mut(nk);
        let rope = &dec.ropes[blk.rope];
        for (heads, norm) in [(&mut *qb, &a.q_norm), (&mut *kb, &a.k_norm)] {
            for head in heads.chunks_exact_mut(hd) {
                if let Some(n) = norm {
                    b.out[..hd].copy_from_slice(head);
                    n.forward_row(&b.out[..hd], head)?;
                }
                rope.rotate_row(head, pos)?;
            }
        }
        let att = &mut b.att;
        let scale = a.scale as f32;
        cache.append_row(li, nkv, hd, kb, vb, |k, v, cap| decode_rows(qb, k, v, nh, nkv, cap, pos + 1, hd, scale, att))??;
        product(&a.o, &b.att, &mut b.hn)?;
        add_sublayer(&mut b.x, &mut b.hn, &mut b.out, blk.post_attn_norm.as_ref())?;

        // Feed-forward: norm → gate, up → silu(gate)·up → down.
        blk.ffn_norm.forward_row(&b.x, &mut b.hn)?;
        let ff = cfg.intermediate;
        match &blk.mlp.gate_up {
            GateUp::Separate { gate, up } => {
                let (g, u) = b.gu.split_at_mut(ff);
                product(gate, &b.hn, g)?;
                product(up, &b.hn, u)?;
            }
            GateUp::Fused(w) => product(w, &b.hn, &mut b.gu)?,
        }
        let (g, u) = b.gu.split_at_mut(ff);
        for (g, &u) in g.iter_mut().zip(u.iter()) {
            // candle's f32 SiLU, then the product (as `SwiGluQuant` and `silu(g) * u`).
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
        product(&blk.mlp.down, &b.gu[..ff], &mut b.hn)?;
        add_sublayer(&mut b.x, &mut b.hn, &mut b.out, blk.post_ffn_norm.as_ref())?;
    }
    cache.commit(1);
    dec.norm.forward_row(&b.x, &mut b.hn)?;
    product(&dec.lm_head, &b.hn, logits)
}

/// `x += y`, or `x += norm(y)` with a post-norm (Gemma's sandwich); `tmp` is scratch.
fn add_sublayer(x: &mut [f32], y: &mut [f32], tmp: &mut [f32], post: Option<&super::norm::RmsNorm>) -> Result<()> {
    let y: &[f32] = match post {
        Some(n) => {
            n.forward_row(y, tmp)?;
            tmp
        }
        None => y,
    };
    for (x, &y) in x.iter_mut().zip(y) {
        *x += y;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::shapes::{random_gguf, Shape};
    use crate::load::gguf::GgufFile;
    use crate::model::{KvType, Logits, SeqInput};
    use crate::quantize::FileType;
    use std::sync::Arc;

    fn tiny(ftype: FileType, tied: bool) -> Decoder {
        let shape = Shape { name: "tiny", hidden: 256, layers: 2, heads: 4, kv_heads: 2, head_dim: 64, ffn: 512, vocab: 300, ctx: 256, tied };
        let f = GgufFile::from_vec(random_gguf(&shape, ftype, 3).unwrap().to_bytes()).unwrap();
        crate::bench::decoder_from_gguf(Arc::new(f), 256).unwrap()
    }

    /// The step gives candle's logits bit for bit, writes the same cache (a prefill on top of
    /// either cache agrees too), and keeps doing so across the cache's growth (64 → 128).
    #[test]
    fn matches_the_candle_path_bit_for_bit() {
        for (ftype, tied, kv_type) in [(FileType::Q4_K_M, true, KvType::F16), (FileType::Q4_0, false, KvType::F32), (FileType::Q8_0, true, KvType::F16)] {
            let mut dec = tiny(ftype, tied);
            dec.kv_type = kv_type;
            assert!(supported(&dec), "{ftype:?}");
            let (mut fast, mut slow) = (dec.new_cache(), dec.new_cache());
            let prompt = [5u32, 17, 250, 3, 99];
            for c in [&mut fast, &mut slow] {
                dec.forward_candle(&mut [SeqInput { tokens: &prompt, cache: Some(c) }], Logits::Last).unwrap();
            }
            let mut logits = vec![0f32; 300];
            for i in 0..70u32 {
                let tok = (i * 37 + 11) % 300;
                step_into(&dec, tok, &mut fast, &mut logits).unwrap();
                let want: Vec<f32> = dec
                    .forward_candle(&mut [SeqInput { tokens: &[tok], cache: Some(&mut slow) }], Logits::Last)
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert_eq!(logits, want, "{ftype:?} {kv_type} step {i}");
                assert_eq!(fast.len(), slow.len());
            }
            let more = [7u32, 8, 9];
            let a = dec.forward_candle(&mut [SeqInput { tokens: &more, cache: Some(&mut fast) }], Logits::All).unwrap();
            let b = dec.forward_candle(&mut [SeqInput { tokens: &more, cache: Some(&mut slow) }], Logits::All).unwrap();
            assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap(), "{ftype:?}: prefill over the step's cache");
            // The public entry points take this path.
            assert!(dec.decode_step_runs());
            assert_eq!(dec.step(&[42], &mut fast).unwrap(), dec.step(&[42], &mut slow).unwrap());
        }
    }

    /// Bad input: clear errors, the cache untouched.
    #[test]
    fn rejects_bad_tokens_and_full_caches() {
        let dec = tiny(FileType::Q4_0, true);
        let mut cache = dec.new_cache();
        let mut logits = vec![0f32; 300];
        let e = step_into(&dec, 300, &mut cache, &mut logits).unwrap_err();
        assert!(e.to_string().contains("outside the vocabulary"), "{e}");
        assert!(step_into(&dec, 1, &mut cache, &mut logits[..10]).is_err());
        assert_eq!(cache.len(), 0);
        let mut short = crate::model::KvCache::new(2, 1, KvType::F16);
        step_into(&dec, 1, &mut short, &mut logits).unwrap();
        let e = step_into(&dec, 1, &mut short, &mut logits).unwrap_err();
        assert!(e.to_string().contains("context is full"), "{e}");
        assert_eq!(short.len(), 1);
    }

    /// What the step does not cover goes to candle: soft-capping, GeGLU, dense weights.
    #[test]
    fn uncovered_models_take_the_candle_path() {
        let dec = tiny(FileType::Q4_0, true);
        let mut capped = dec.clone();
        capped.cfg.final_softcap = Some(30.0);
        assert!(!supported(&capped) && !capped.decode_step_runs());
        let mut gelu = dec.clone();
        gelu.cfg.activation = Activation::GeluTanh;
        assert!(!supported(&gelu));
        let dense = tiny(FileType::F32, true);
        assert!(!supported(&dense));
        let mut c = dense.new_cache();
        assert_eq!(dense.step(&[1], &mut c).unwrap().len(), 300);
    }
}
