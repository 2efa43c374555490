//! smelt's weight quantizers against llama.cpp's reference ones (fixture bytes made by
//! ggml's `quantize_row_*_ref`, see scripts/fixtures/gen_quant_refs.py), and round-trip
//! error bounds on random data.

use smelt::kernels::blocks::dequantize_row;
use smelt::kernels::quantize::quantize;
use smelt::load::gguf::GgmlType;
use smelt::sample::Rng;

mod common;

const ROWS: usize = 16;
const COLS: usize = 512;

fn input() -> Vec<f32> {
    let b = std::fs::read(common::fixture("quant/input.f32")).unwrap();
    assert_eq!(b.len(), ROWS * COLS * 4);
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Compare with ggml's bytes; returns the number of blocks that differ.
fn differing_blocks(t: GgmlType, file: &str) -> usize {
    let x = input();
    let ours = quantize(t, &x).unwrap();
    let theirs = std::fs::read(common::fixture(&format!("quant/{file}.bin"))).unwrap();
    assert_eq!(ours.len(), theirs.len(), "{t}: size");
    let ts = t.type_size();
    let bad: Vec<usize> = (0..ours.len() / ts).filter(|&b| ours[b * ts..(b + 1) * ts] != theirs[b * ts..(b + 1) * ts]).collect();
    // Whatever differs must still dequantize to nearly the same values.
    let (mut a, mut r) = (vec![0f32; x.len()], vec![0f32; x.len()]);
    dequantize_row(t, &ours, &mut a);
    dequantize_row(t, &theirs, &mut r);
    for &b in &bad {
        let bs = t.block_size();
        let scale = x[b * bs..(b + 1) * bs].iter().fold(0f32, |m, v| m.max(v.abs()));
        for i in b * bs..(b + 1) * bs {
            assert!((a[i] - r[i]).abs() <= scale * 0.2, "{t} block {b} value {i}: ours {} ggml {}", a[i], r[i]);
        }
    }
    bad.len()
}

#[test]
fn legacy_types_are_bit_identical_to_ggml() {
    for (t, f) in [
        (GgmlType::Q4_0, "q4_0"),
        (GgmlType::Q4_1, "q4_1"),
        (GgmlType::Q5_0, "q5_0"),
        (GgmlType::Q5_1, "q5_1"),
        (GgmlType::Q8_0, "q8_0"),
    ] {
        assert_eq!(differing_blocks(t, f), 0, "{t}");
    }
}

#[test]
fn k_quants_match_ggml() {
    // The scale searches are sensitive to float rounding order (a compiler-fused multiply-add
    // would flip near ties); smelt follows ggml's order, and these come out bit-identical.
    for (t, f) in [(GgmlType::Q4_K, "q4_K"), (GgmlType::Q5_K, "q5_K"), (GgmlType::Q6_K, "q6_K")] {
        let n = differing_blocks(t, f);
        eprintln!("{t}: {n} of {} super-blocks differ from ggml", ROWS * COLS / 256);
        assert_eq!(n, 0, "{t}: {n} super-blocks differ from ggml's reference");
    }
}

/// Root-mean-square error of dequantize(quantize(x)) relative to the rms of x.
fn rel_rmse(t: GgmlType, x: &[f32]) -> f32 {
    let q = quantize(t, x).unwrap();
    let mut y = vec![0f32; x.len()];
    if t == GgmlType::F16 {
        for (i, c) in q.chunks_exact(2).enumerate() {
            y[i] = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
        }
    } else {
        dequantize_row(t, &q, &mut y);
    }
    let err: f64 = x.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let sig: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (err / sig).sqrt() as f32
}

#[test]
fn round_trip_error_is_within_each_types_bound() {
    let mut rng = Rng::new(7);
    let x: Vec<f32> = (0..64 * 256).map(|_| (rng.next_f64() as f32 - 0.5) * 0.1 + (rng.next_f64() as f32 - 0.5) * 0.02).collect();
    // Bounds for uniform-ish data: half a step of 2^bits levels over the range, with margin.
    let bounds = [
        (GgmlType::F16, 1e-3),
        (GgmlType::Q8_0, 0.006),
        (GgmlType::Q6_K, 0.02),
        (GgmlType::Q5_0, 0.04),
        (GgmlType::Q5_1, 0.035),
        (GgmlType::Q5_K, 0.035),
        (GgmlType::Q4_0, 0.08),
        (GgmlType::Q4_1, 0.07),
        (GgmlType::Q4_K, 0.07),
    ];
    for (t, bound) in bounds {
        let e = rel_rmse(t, &x);
        eprintln!("{t}: relative rmse {e:.5}");
        assert!(e <= bound, "{t}: relative rmse {e} above {bound}");
        assert!(e > 0.0 || t == GgmlType::F16, "{t}: no error at all is suspicious");
    }
}

#[test]
fn zero_and_constant_blocks_round_trip_exactly() {
    for t in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let x = vec![0f32; 256];
        let q = quantize(t, &x).unwrap();
        let mut y = vec![1f32; 256];
        dequantize_row(t, &q, &mut y);
        assert!(y.iter().all(|&v| v == 0.0), "{t}: zeros");
    }
}

#[test]
fn bad_lengths_are_errors() {
    assert!(quantize(GgmlType::Q4_K, &[0.0; 32]).is_err());
    assert!(quantize(GgmlType::Q4_0, &[0.0; 33]).is_err());
    assert!(quantize(GgmlType::Q2_K, &[0.0; 256]).is_err());
}
