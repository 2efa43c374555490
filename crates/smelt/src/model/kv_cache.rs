//! Per-sequence key/value cache: one growable buffer per layer.
//!
//! Buffers are `(1, n_kv_heads, capacity, head_dim)` and grow by doubling up to the
//! context limit, so a short chat does not pay for an 8K context up front and appending
//! a token never copies the whole history.
//!
//! Entries are stored in f16 by default, as llama.cpp stores them: half the memory and half
//! the bytes a decode step reads at depth, for a rounding error (2⁻¹¹ relative) far below
//! a 4-bit weight's. `--kv-type f32` keeps them exact (the parity tests use it).

use anyhow::{bail, Result};
use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Storage, Tensor};

pub use crate::train::kernels::attention::KvRows;

/// How cache entries are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    #[default]
    F16,
    F32,
}

impl KvType {
    pub fn dtype(self) -> DType {
        match self {
            KvType::F16 => DType::F16,
            KvType::F32 => DType::F32,
        }
    }

    pub fn bytes(self) -> usize {
        self.dtype().size_in_bytes()
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<KvType, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(KvType::F16),
            "f32" => Ok(KvType::F32),
            _ => Err(format!("unknown KV-cache type {s:?} (expected f16 or f32)")),
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
        })
    }
}

#[derive(Debug, Clone)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
    /// One-element views of `k` and `v`'s storage, the handles [`KvCache::append_row`]
    /// writes through: candle gives an in-place op the whole storage, and the op's
    /// overlap check allocates nothing for a layout without dimensions above 1.
    k_handle: Tensor,
    v_handle: Tensor,
}

impl LayerKv {
    fn new(k: Tensor, v: Tensor) -> Result<LayerKv> {
        let handle = |t: &Tensor| -> Result<Tensor> { Ok(t.flatten_all()?.narrow(0, 0, 1)?) };
        Ok(LayerKv { k_handle: handle(&k)?, v_handle: handle(&v)?, k, v })
    }
}

#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    /// Tokens stored (identical for every layer once a forward pass completes).
    len: usize,
    /// Hard limit: the context size this cache was created for.
    max_len: usize,
    kv_type: KvType,
}

const MIN_CAPACITY: usize = 64;

impl KvCache {
    pub fn new(n_layers: usize, max_len: usize, kv_type: KvType) -> KvCache {
        KvCache { layers: vec![None; n_layers], len: 0, max_len, kv_type }
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Tokens already in the cache; the next token goes at this position.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Forget everything (keeps the buffers for reuse).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drop tokens from position `len` on (prefix reuse, rejected speculative tokens).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes held by the buffers.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| 2 * l.k.elem_count() * l.k.dtype().size_in_bytes())
            .sum()
    }

    /// Check that `n` more tokens fit before any layer is touched.
    pub fn reserve(&self, n: usize) -> Result<()> {
        if self.len + n > self.max_len {
            bail!(
                "context is full: {} cached + {n} new tokens exceed the context size of {} (raise --ctx)",
                self.len,
                self.max_len
            );
        }
        Ok(())
    }

    /// Append `k, v: (1, n_kv, s, hd)` for `layer` at position `len()` and return the
    /// whole history `(1, n_kv, len + s, hd)`, in the cache's type (f16 views go straight
    /// to the fused attention op, which reads them in place). Call for every layer, then
    /// [`commit`].
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, n_kv, s, hd) = k.dims4()?;
        let len = self.len;
        let need = len + s;
        if need > self.max_len {
            bail!("context is full ({need} > {})", self.max_len);
        }
        let dtype = self.kv_type.dtype();
        let l = self.room(layer, n_kv, hd, need)?;
        l.k.slice_set(&k.to_dtype(dtype)?.contiguous()?, 2, len)?;
        l.v.slice_set(&v.to_dtype(dtype)?.contiguous()?, 2, len)?;
        Ok((l.k.narrow(2, 0, need)?, l.v.narrow(2, 0, need)?))
    }

    /// Mark `s` appended tokens as stored (after every layer appended them).
    pub fn commit(&mut self, s: usize) {
        self.len += s;
    }

    /// `layer`'s buffers with room for `need` tokens of `n_kv` heads × `hd`: grown by
    /// doubling (the history copied over) when they are too small.
    fn room(&mut self, layer: usize, n_kv: usize, hd: usize, need: usize) -> Result<&LayerKv> {
        let (len, dtype) = (self.len, self.kv_type.dtype());
        let entry = &mut self.layers[layer];
        if let Some(l) = entry.as_ref() {
            let (_, h, _, d) = l.k.dims4()?;
            if (h, d) != (n_kv, hd) {
                bail!("KV cache layer {layer} holds {h} heads of {d}, not {n_kv} of {hd}");
            }
        }
        let cap = entry.as_ref().map_or(0, |l| l.k.dims()[2]);
        if need > cap {
            let new_cap = need.max(cap * 2).max(MIN_CAPACITY).min(self.max_len);
            let grow = |old: Option<&Tensor>| -> Result<Tensor> {
                let t = Tensor::zeros((1, n_kv, new_cap, hd), dtype, &Device::Cpu)?;
                if let Some(old) = old {
                    if len > 0 {
                        t.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                    }
                }
                Ok(t)
            };
            let nk = grow(entry.as_ref().map(|l| &l.k))?;
            let nv = grow(entry.as_ref().map(|l| &l.v))?;
            *entry = Some(LayerKv::new(nk, nv)?);
        }
        Ok(entry.as_ref().expect("allocated above"))
    }

    /// The allocation-free decode step's append: one token's keys and values for `layer`
    /// (`k`, `v`: `n_kv × hd` values, heads in order) written in place at position
    /// `len()`, rounded to the cache's type as [`append`](Self::append) rounds them, then
    /// `f` runs over the layer's whole buffers `(n_kv, capacity, hd)`, whose first
    /// `len() + 1` rows per head are filled, and gets the capacity. Nothing is allocated
    /// unless the buffers must grow. Call [`commit`](Self::commit) after the last layer.
    pub fn append_row<R>(&mut self, layer: usize, n_kv: usize, hd: usize, k: &[f32], v: &[f32], f: impl FnOnce(KvRows<'_>, KvRows<'_>, usize) -> R) -> Result<R> {
        if k.len() != n_kv * hd || v.len() != n_kv * hd {
            bail!("KV row of {} and {} values for {n_kv} heads of {hd}", k.len(), v.len());
        }
        let pos = self.len;
        if pos + 1 > self.max_len {
            bail!("context is full ({} > {})", pos + 1, self.max_len);
        }
        let l = self.room(layer, n_kv, hd, pos + 1)?;
        let cap = l.k.dims()[2];
        l.k_handle.inplace_op1(&WriteRow { row: k, pos, cap, hd })?;
        l.v_handle.inplace_op1(&WriteRow { row: v, pos, cap, hd })?;
        let (ks, kl) = l.k.storage_and_layout();
        let (vs, vl) = l.v.storage_and_layout();
        fn rows<'s>(s: &'s Storage, l: &Layout) -> Result<KvRows<'s>> {
            let n = l.shape().elem_count();
            match (s, l.contiguous_offsets()) {
                (Storage::Cpu(CpuStorage::F32(d)), Some((a, _))) => Ok(KvRows::F32(&d[a..a + n])),
                (Storage::Cpu(CpuStorage::F16(d)), Some((a, _))) => Ok(KvRows::F16(&d[a..a + n])),
                _ => bail!("KV cache buffers must be contiguous f32 or f16 on the CPU"),
            }
        }
        Ok(f(rows(&ks, kl)?, rows(&vs, vl)?, cap))
    }
}

/// Writes one token's `n_kv × hd` values at row `pos` of each head of a `(1, n_kv, cap, hd)`
/// cache buffer, in place (applied through the buffer's one-element handle).
struct WriteRow<'a> {
    row: &'a [f32],
    pos: usize,
    cap: usize,
    hd: usize,
}

impl InplaceOp1 for WriteRow<'_> {
    fn name(&self) -> &'static str {
        "smelt-kv-write-row"
    }

    /// `storage` is the whole buffer (contiguous from offset 0, as [`KvCache::room`] makes
    /// it); `layout` is the one-element handle's, which says nothing more.
    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (start, hd) = (layout.start_offset(), self.hd);
        for (h, src) in self.row.chunks_exact(hd).enumerate() {
            let at = start + (h * self.cap + self.pos) * hd;
            match storage {
                CpuStorage::F32(d) => d[at..at + hd].copy_from_slice(src),
                // As candle's `to_dtype(F16)` rounds (to nearest, ties to even).
                CpuStorage::F16(d) => d[at..at + hd].iter_mut().zip(src).for_each(|(o, &x)| *o = half::f16::from_f32(x)),
                _ => candle_core::bail!("KV cache buffers are f32 or f16"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_keeps_history() {
        for kv_type in [KvType::F32, KvType::F16] {
            let mut c = KvCache::new(1, 200, kv_type);
            let mut all = Vec::new();
            for step in 0..100 {
                let k = Tensor::full(step as f32, (1, 2, 1, 4), &Device::Cpu).unwrap();
                let (kk, _) = c.append(0, &k, &k).unwrap();
                assert_eq!(kk.dtype(), kv_type.dtype());
                c.commit(1);
                all.push(step as f32); // small integers: exact in f16 too
                let got: Vec<f32> =
                    kk.narrow(1, 0, 1).unwrap().narrow(3, 0, 1).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(got, all);
            }
            // Capacity 128 (64, doubled) × 2 heads × 4 values, K and V.
            assert_eq!(c.bytes(), 2 * 128 * 2 * 4 * kv_type.bytes());
            assert!(c.reserve(101).is_err());
            c.truncate(10);
            assert_eq!(c.len(), 10);
        }
    }

    #[test]
    fn kv_type_parses() {
        assert_eq!("F16".parse::<KvType>().unwrap(), KvType::F16);
        assert_eq!("f32".parse::<KvType>().unwrap(), KvType::F32);
        assert!("q8_0".parse::<KvType>().unwrap_err().contains("f16 or f32"));
    }
}
