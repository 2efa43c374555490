//! A small safetensors writer (f32 / f16 / bf16 / i64 tensors → bytes), so files are written
//! through `util::write_atomic` or into a checkpoint folder with explicit error handling.
//! Format: 8-byte little-endian header length, a JSON header
//! `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}` padded with
//! spaces to 8 bytes, then the raw little-endian data.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// Serialise `(name, tensor)` pairs in the given order (names must be unique).
pub fn to_bytes(tensors: &[(String, Tensor)], metadata: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> =
            metadata.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in tensors {
        let (dtype, bytes) = match t.dtype() {
            DType::F32 => ("F32", t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()),
            DType::F16 => ("F16", t.flatten_all()?.to_vec1::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
            DType::BF16 => ("BF16", t.flatten_all()?.to_vec1::<half::bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
            DType::I64 => ("I64", t.flatten_all()?.to_vec1::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
            other => bail!("safetensors writer: unsupported dtype {other:?} for {name}"),
        };
        let begin = data.len();
        data.extend_from_slice(&bytes);
        if header.contains_key(name) {
            bail!("safetensors writer: duplicate tensor {name}");
        }
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype, "shape": t.dims(), "data_offsets": [begin, data.len()] }),
        );
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn candle_reads_what_we_write() {
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap().reshape((2, 3)).unwrap();
        let b = Tensor::new(&[1.5f32, -2.0], &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap();
        let bytes = to_bytes(&[("a".into(), a.clone()), ("b".into(), b)], &[("format", "pt")]).unwrap();
        let p = std::env::temp_dir().join(format!("smelt-st-{}.safetensors", std::process::id()));
        std::fs::write(&p, &bytes).unwrap();
        let m = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
        assert_eq!(m["a"].to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        assert_eq!(m["b"].to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), [1.5, -2.0]);
        std::fs::remove_file(p).unwrap();
    }
}
