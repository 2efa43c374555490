//! GGUF v2/v3 reader: metadata, tensor directory, memory-mapped tensor data.
//!
//! The parser trusts nothing in the header: every count, length and offset is checked
//! against the bytes actually present before anything is allocated, so a truncated or
//! hostile file gives a one-line error instead of a panic, a hang or a huge allocation.
//!
//! Layout (little endian):
//! ```text
//! magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
//! n_kv × (key: string, type: u32, value)
//! n_tensors × (name: string, n_dims: u32, dims: u64 × n_dims, ggml_type: u32, offset: u64)
//! padding to `general.alignment` (default 32) | tensor data
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

/// Hard caps that no real model comes near; they bound work on hostile headers.
const MAX_TENSORS: u64 = 1 << 20;
const MAX_KV: u64 = 1 << 20;
const MAX_DIMS: u32 = 4;
const MAX_ARRAY_DEPTH: usize = 2;

/// The bytes of a model file: memory-mapped from disk, or owned (tests, in-memory models).
#[derive(Clone)]
pub enum Bytes {
    Mapped(Arc<memmap2::Mmap>),
    Owned(Arc<Vec<u8>>),
}

impl Bytes {
    /// Tell the kernel we are done with `len` bytes at `offset` for now (a mapped file's
    /// pages leave this process's resident set; reading them again faults them back in
    /// from the page cache). No effect on owned bytes.
    pub fn release(&self, offset: usize, len: usize) {
        if let Bytes::Mapped(m) = self {
            // SAFETY: the map is read-only, so its pages are clean copies of the file:
            // dropped ones are read back unchanged and no reference can see a difference.
            let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
        }
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// ggml tensor element types that GGUF files carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    BF16,
}

impl GgmlType {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            15 => Self::Q8_K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    pub fn to_u32(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::Q8_K => 15,
            Self::BF16 => 30,
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 | Self::Q8_1 => 32,
            Self::Q2_K | Self::Q3_K | Self::Q4_K | Self::Q5_K | Self::Q6_K | Self::Q8_K => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q8_1 => 36,
            Self::Q2_K => 84,
            Self::Q3_K => 110,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
            Self::Q8_K => 292,
        }
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q8_1 => "Q8_1",
            Self::Q2_K => "Q2_K",
            Self::Q3_K => "Q3_K",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
            Self::Q8_K => "Q8_K",
            Self::BF16 => "BF16",
        }
    }

    /// Bytes needed for `n` elements (n must be a multiple of the block size).
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if n % self.block_size() != 0 {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// Any integer type as i64 (GGUF writers disagree on which integer type they use).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::U8(v) => v as i64,
            Value::I8(v) => v as i64,
            Value::U16(v) => v as i64,
            Value::I16(v) => v as i64,
            Value::U32(v) => v as i64,
            Value::I32(v) => v as i64,
            Value::U64(v) => i64::try_from(v).ok()?,
            Value::I64(v) => v,
            Value::Bool(v) => v as i64,
            _ => return None,
        })
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => self.as_i64().map(|v| v != 0),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short rendering for `smelt info` (arrays are summarised).
    pub fn summary(&self) -> String {
        match self {
            Value::String(s) if s.len() > 80 => format!("{:?}… ({} bytes)", &s[..s.floor_char_boundary(60)], s.len()),
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) if a.len() > 8 => format!("[{} items]", a.len()),
            Value::Array(a) => format!("[{}]", a.iter().map(|v| v.summary()).collect::<Vec<_>>().join(", ")),
            Value::F32(v) => format!("{v}"),
            Value::F64(v) => format!("{v}"),
            Value::Bool(v) => format!("{v}"),
            other => format!("{}", other.as_i64().unwrap_or_default()),
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the innermost (row length).
    pub dims: Vec<usize>,
    pub dtype: GgmlType,
    /// Offset from the start of the data section.
    pub offset: usize,
    /// Size of the data in bytes.
    pub size: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// Shape in row-major (PyTorch) order: outermost first.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file.
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: usize,
    /// Absolute offset of the data section.
    pub data_offset: usize,
    bytes: Bytes,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            bail!(
                "truncated GGUF: need {n} bytes for {what} at offset {}, only {} left",
                self.pos,
                self.remaining()
            );
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    /// A length-prefixed string; the length is checked against the bytes left.
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            bail!(
                "corrupt GGUF: {what} claims {len} bytes at offset {}, only {} left",
                self.pos,
                self.remaining()
            );
        }
        let raw = self.take(len as usize, what)?;
        Ok(String::from_utf8_lossy(raw).into_owned())
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8(key)?),
            1 => Value::I8(self.u8(key)? as i8),
            2 => Value::U16(self.u16(key)?),
            3 => Value::I16(self.u16(key)? as i16),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(self.u32(key)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(key)?)),
            7 => {
                let b = self.u8(key)?;
                if b > 1 {
                    bail!("corrupt GGUF: bool value {b} for key {key:?}");
                }
                Value::Bool(b == 1)
            }
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    bail!("corrupt GGUF: arrays nested too deep in key {key:?}");
                }
                let item_ty = self.u32(key)?;
                let len = self.u64(key)?;
                let min_item = match item_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => bail!("corrupt GGUF: unknown array item type {t} in key {key:?}"),
                };
                // Each item needs at least `min_item` bytes: a header that claims more
                // items than the file can hold is rejected before anything is allocated.
                if len.saturating_mul(min_item) > self.remaining() as u64 {
                    bail!(
                        "corrupt GGUF: array {key:?} claims {len} items but only {} bytes are left",
                        self.remaining()
                    );
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(key)?)),
            t => bail!("corrupt GGUF: unknown value type {t} for key {key:?}"),
        })
    }
}

impl GgufFile {
    /// Memory-map and parse a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata()?.len();
        if len < 24 {
            bail!("{}: not a GGUF file (only {len} bytes)", path.display());
        }
        // SAFETY: the map is read-only; a file truncated underneath us by another process
        // is outside what any mmap-based loader (llama.cpp included) can guard against.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        Self::from_bytes(Bytes::Mapped(Arc::new(mmap))).with_context(|| format!("{}", path.display()))
    }

    pub fn from_vec(v: Vec<u8>) -> Result<Self> {
        Self::from_bytes(Bytes::Owned(Arc::new(v)))
    }

    pub fn from_bytes(bytes: Bytes) -> Result<Self> {
        let mut r = Reader { buf: &bytes, pos: 0 };
        let magic = r.take(4, "magic")?;
        if magic != b"GGUF" {
            bail!("not a GGUF file (magic {:?})", String::from_utf8_lossy(magic));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            bail!("unsupported GGUF version {version} (smelt reads versions 2 and 3)");
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        if n_tensors > MAX_TENSORS {
            bail!("corrupt GGUF: header claims {n_tensors} tensors");
        }
        if n_kv > MAX_KV {
            bail!("corrupt GGUF: header claims {n_kv} metadata entries");
        }
        // Every kv needs at least 8 (key len) + 4 (type) + 1 bytes; every tensor 8+4+8+4+8.
        if n_kv.saturating_mul(13).saturating_add(n_tensors.saturating_mul(32)) > r.remaining() as u64 {
            bail!(
                "corrupt GGUF: header claims {n_kv} metadata entries and {n_tensors} tensors, more than the file can hold"
            );
        }

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let ty = r.u32(&key)?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_i64() {
                Some(a) if a > 0 && a <= 1 << 16 && (a as u64).is_power_of_two() => a as usize,
                _ => bail!("corrupt GGUF: bad general.alignment {v:?}"),
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor name #{i}"))?;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                bail!("corrupt GGUF: tensor {name:?} has {n_dims} dimensions");
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            let mut n_el: u64 = 1;
            for _ in 0..n_dims {
                let d = r.u64(&name)?;
                if d == 0 || d > 1 << 40 {
                    bail!("corrupt GGUF: tensor {name:?} has dimension {d}");
                }
                n_el = n_el
                    .checked_mul(d)
                    .filter(|&n| n <= 1 << 40)
                    .with_context(|| format!("corrupt GGUF: tensor {name:?} is absurdly large"))?;
                dims.push(d as usize);
            }
            let ty = r.u32(&name)?;
            let dtype = GgmlType::from_u32(ty)
                .with_context(|| format!("tensor {name:?} has unsupported ggml type {ty}"))?;
            if dims[0] % dtype.block_size() != 0 {
                bail!(
                    "corrupt GGUF: tensor {name:?} row length {} is not a multiple of the {dtype} block size {}",
                    dims[0],
                    dtype.block_size()
                );
            }
            let size = dtype
                .bytes_for(n_el as usize)
                .with_context(|| format!("corrupt GGUF: tensor {name:?} size overflows"))?;
            let offset = r.u64(&name)?;
            if offset % alignment as u64 != 0 {
                bail!("corrupt GGUF: tensor {name:?} offset {offset} is not aligned to {alignment}");
            }
            tensors.push(TensorInfo { name, dims, dtype, offset: offset as usize, size });
        }

        let data_offset = r.pos.div_ceil(alignment) * alignment;
        let data_len = bytes.len().saturating_sub(data_offset);
        let mut seen = std::collections::HashSet::new();
        for t in &tensors {
            if !seen.insert(t.name.as_str()) {
                bail!("corrupt GGUF: tensor {:?} appears twice", t.name);
            }
            let end = t.offset.checked_add(t.size);
            if end.is_none_or(|e| e > data_len) {
                bail!(
                    "truncated GGUF: tensor {:?} needs bytes {}..{} of the data section, which has {data_len}",
                    t.name,
                    t.offset,
                    t.offset.saturating_add(t.size)
                );
            }
        }

        Ok(GgufFile { version, metadata, tensors, alignment, data_offset, bytes })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(Value::as_i64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    /// `general.architecture`, required by every model file.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture").context("GGUF has no general.architecture")
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of one tensor (bounds were checked at parse time).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = self.data_offset + t.offset;
        &self.bytes[start..start + t.size]
    }

    pub fn file_size(&self) -> usize {
        self.bytes.len()
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// Builds GGUF files: used by `smelt quantize` / `export` and by tests that need
/// small or deliberately broken files.
#[derive(Default)]
pub struct GgufWriter {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<(String, Vec<usize>, GgmlType, Vec<u8>)>,
    pub alignment: usize,
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter { alignment: 32, ..Default::default() }
    }

    pub fn kv(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Add a tensor; `dims` in ggml order (innermost first), `data` already encoded.
    pub fn tensor(&mut self, name: &str, dims: Vec<usize>, dtype: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.to_string(), dims, dtype, data));
        self
    }

    fn put_string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => Self::put_string(out, s),
            Value::Array(items) => {
                let item_ty = items.first().map(Value::type_id).unwrap_or(4);
                out.extend_from_slice(&item_ty.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for it in items {
                    Self::put_value(out, it);
                }
            }
        }
    }

    /// Serialise the whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self.alignment.max(1);
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        let has_align = self.metadata.iter().any(|(k, _)| k == "general.alignment");
        let n_kv = self.metadata.len() + usize::from(!has_align && align != 32);
        out.extend_from_slice(&(n_kv as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            Self::put_string(&mut out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            Self::put_value(&mut out, v);
        }
        if !has_align && align != 32 {
            Self::put_string(&mut out, "general.alignment");
            out.extend_from_slice(&4u32.to_le_bytes());
            out.extend_from_slice(&(align as u32).to_le_bytes());
        }
        let mut offset = 0usize;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for (name, dims, dtype, data) in &self.tensors {
            Self::put_string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            out.extend_from_slice(&dtype.to_u32().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len()).div_ceil(align) * align;
        }
        let data_start = out.len().div_ceil(align) * align;
        out.resize(data_start, 0);
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(data);
        }
        out
    }

    /// Write atomically: a temporary file in the same folder, then a rename.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::util::write_atomic(path, &self.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.kv("general.architecture", Value::String("llama".into()))
            .kv("llama.block_count", Value::U32(2))
            .kv("tokenizer.ggml.tokens", Value::Array(vec![Value::String("a".into()), Value::String("b".into())]));
        let data: Vec<u8> = (0..8u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        w.tensor("t", vec![4, 2], GgmlType::F32, data);
        w
    }

    #[test]
    fn roundtrip() {
        let f = GgufFile::from_vec(small().to_bytes()).unwrap();
        assert_eq!(f.architecture().unwrap(), "llama");
        assert_eq!(f.get_i64("llama.block_count"), Some(2));
        let t = f.tensor_info("t").unwrap();
        assert_eq!(t.shape(), vec![2, 4]);
        let d = f.tensor_data(t);
        assert_eq!(f32::from_le_bytes(d[28..32].try_into().unwrap()), 7.0);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = small().to_bytes();
        for n in 0..bytes.len() - 1 {
            // Cutting into the data section must be caught by the tensor bounds check.
            let r = GgufFile::from_vec(bytes[..n].to_vec());
            assert!(r.is_err(), "truncation at {n} parsed");
        }
    }

    #[test]
    fn absurd_counts_rejected_without_allocating() {
        let mut b = small().to_bytes();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = GgufFile::from_vec(b).unwrap_err().to_string();
        assert!(e.contains("tensors"), "{e}");
        let mut b = small().to_bytes();
        b[16..24].copy_from_slice(&(1u64 << 19).to_le_bytes());
        assert!(GgufFile::from_vec(b).is_err());
    }

    #[test]
    fn unknown_tensor_type_named() {
        let mut w = small();
        w.tensors[0].2 = GgmlType::F32;
        let mut b = w.to_bytes();
        // patch the type field: find it right after the dims of tensor "t"
        let pos = b.windows(9).position(|x| x == b"\x01\x00\x00\x00\x00\x00\x00\x00t").unwrap() + 9;
        let ty_pos = pos + 4 + 16;
        b[ty_pos..ty_pos + 4].copy_from_slice(&99u32.to_le_bytes());
        let e = GgufFile::from_vec(b).unwrap_err().to_string();
        assert!(e.contains("unsupported ggml type 99"), "{e}");
    }
}
