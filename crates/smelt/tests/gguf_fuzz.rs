//! Property test for the GGUF reader: arbitrary corruption of a valid file — flipped bytes,
//! truncation, overwritten counts and lengths — must give an error or a valid parse, never
//! a panic, a hang or a huge allocation.

use proptest::prelude::*;
use smelt::load::gguf::{GgmlType, GgufFile, GgufWriter, Value};

fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::String("llama".into()))
        .kv("llama.block_count", Value::U32(1))
        .kv("llama.rope.freq_base", Value::F32(10000.0))
        .kv("tokenizer.ggml.tokens", Value::Array((0..20).map(|i| Value::String(format!("tok{i}"))).collect()))
        .kv("tokenizer.ggml.scores", Value::Array((0..20).map(|i| Value::F32(i as f32)).collect()));
    w.tensor("a", vec![32, 2], GgmlType::F32, vec![0u8; 256]);
    w.tensor("b", vec![32], GgmlType::Q8_0, vec![1u8; 34]);
    w.tensor("c", vec![256, 1], GgmlType::Q4_K, vec![2u8; 144]);
    w.to_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_byte_edits(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut b = valid_file();
        for (pos, val) in edits {
            let n = b.len();
            b[pos % n] = val;
        }
        let _ = GgufFile::from_vec(b);
    }

    #[test]
    fn random_u64_overwrites(pos in 0usize..400, val in any::<u64>()) {
        let mut b = valid_file();
        let p = pos.min(b.len() - 8);
        b[p..p + 8].copy_from_slice(&val.to_le_bytes());
        let _ = GgufFile::from_vec(b);
    }

    #[test]
    fn truncations(cut in 0usize..1000) {
        let b = valid_file();
        let n = cut % b.len();
        prop_assert!(GgufFile::from_vec(b[..n].to_vec()).is_err());
    }

    #[test]
    fn arbitrary_bytes(mut b in proptest::collection::vec(any::<u8>(), 0..512)) {
        if b.len() >= 4 {
            b[..4].copy_from_slice(b"GGUF");
        }
        let _ = GgufFile::from_vec(b);
    }
}

#[test]
fn parsed_tensors_stay_in_bounds() {
    // Whatever parses, every tensor's data must be readable without panicking.
    let base = valid_file();
    for i in 0..base.len() {
        for v in [0u8, 1, 0x7f, 0xff] {
            let mut b = base.clone();
            b[i] = v;
            if let Ok(f) = GgufFile::from_vec(b) {
                for t in &f.tensors {
                    let d = f.tensor_data(t);
                    assert_eq!(d.len(), t.size);
                }
            }
        }
    }
}
