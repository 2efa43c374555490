//! Unit tests: block layouts against candle, activation quantization SIMD = scalar,
//! the scalar dot against dequantized products, every SIMD kernel against the scalar one.

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::Device;

use super::blocks::dequantize_row;
use super::matmul::quantize_acts;
use super::quant::{quantize_scalar, ActFormat, QActs};
use super::testing::*;
use super::{dot_scalar, Isa, QWeight};
use crate::load::gguf::GgmlType;
use crate::load::tensors::candle_dtype;
use crate::sample::Rng;

#[test]
fn dequantize_matches_candle_on_random_blocks() {
    let mut rng = Rng::new(1);
    for t in TYPES {
        let (rows, cols) = (5, 3 * t.block_size());
        let data = random_blocks(&mut rng, t, rows, cols, 0.5);
        let mut ours = vec![0f32; rows * cols];
        dequantize_row(t, &data, &mut ours);
        let theirs = qtensor_from_ggml(candle_dtype(t).unwrap(), &data, vec![rows, cols], &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1e-3), "{t} value {i}: smelt {a} candle {b}");
        }
    }
}

#[test]
fn activation_quantization_simd_is_bit_identical() {
    let mut rng = Rng::new(2);
    let (m, k) = (5, 768);
    let mut x = random_acts(&mut rng, m * k);
    x[256..512].fill(0.0); // an all-zero block: d = 0, quants 0
    x[300] = -0.0;
    for format in [ActFormat::B32, ActFormat::K256] {
        let mut want = QActs::default();
        quantize_scalar(&mut want, format, &x, m, k);
        for isa in Isa::available() {
            let mut got = QActs::default();
            quantize_acts(isa, &mut got, format, &x, m, k);
            assert_eq!(got.qs, want.qs, "{isa:?} {format:?} quants");
            assert_eq!(got.d, want.d, "{isa:?} {format:?} scales");
            assert_eq!(got.s, want.s, "{isa:?} {format:?} sums");
            assert_eq!(got.bsums, want.bsums, "{isa:?} {format:?} 16-sums");
        }
        // The guarantee the error bounds rest on: |x − d·q| ≤ d/2.
        let bs = format.block();
        for i in 0..m {
            let a = want.dequantize_row(i);
            for (j, (&xv, &av)) in x[i * k..(i + 1) * k].iter().zip(&a).enumerate() {
                let d = want.row(i).d[j / bs];
                assert!((xv - av).abs() <= d / 2.0 * (1.0 + 1e-6), "{format:?} row {i} value {j}: {xv} → {av}");
            }
        }
    }
}

#[test]
fn scalar_dot_equals_dequantized_product() {
    let mut rng = Rng::new(3);
    for t in TYPES {
        let format = ActFormat::for_weight(t).unwrap();
        for nb in [1, 3] {
            let k = nb * t.block_size();
            let w = random_blocks(&mut rng, t, 4, k, 0.1);
            let x = random_acts(&mut rng, 2 * k);
            let mut acts = QActs::default();
            quantize_scalar(&mut acts, format, &x, 2, k);
            let rb = w.len() / 4;
            for j in 0..4 {
                let row = &w[j * rb..(j + 1) * rb];
                let mut wf = vec![0f32; k];
                dequantize_row(t, row, &mut wf);
                let o = offsets(t, row);
                for i in 0..2 {
                    let a = acts.dequantize_row(i);
                    let got = dot_scalar::dot(t, row, acts.row(i)) as f64;
                    let want = dot_f64(&wf, &a);
                    let tol = rounding_bound(&wf, &o, &a, nb);
                    assert!((got - want).abs() <= tol, "{t} k={k} row {j} act {i}: {got} vs {want} (tol {tol:e})");
                }
            }
        }
    }
}

/// Every ISA's tiled, threaded product equals the scalar reference element by element.
#[test]
fn simd_kernels_match_scalar_reference() {
    let mut rng = Rng::new(4);
    let simd: Vec<Isa> = Isa::available().into_iter().filter(|&i| i != Isa::Scalar).collect();
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        assert!(simd.contains(&Isa::Avx2), "AVX2 kernels not available on an AVX2 machine");
    }
    #[cfg(target_arch = "aarch64")]
    {
        assert!(simd.contains(&Isa::Neon), "NEON kernels not available on aarch64");
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            assert!(simd.contains(&Isa::NeonDot), "sdot kernels not available on a dotprod CPU");
        }
    }
    for t in TYPES {
        let format = ActFormat::for_weight(t).unwrap();
        // Odd sizes, plus two large enough for the parallel path (prefill and decode).
        let mut shapes = vec![];
        for nb in [1, 3] {
            for n in [1, 7, 33] {
                for m in [1, 3, 17] {
                    shapes.push((m, n, nb));
                }
            }
        }
        // Past 8 blocks (the 32-value kernels batch 8) for every tile height and mix of them.
        let big = if t.block_size() == 32 { 17 } else { 2 };
        for m in [1, 2, 3, 4, 7, 8] {
            shapes.push((m, 5, big));
        }
        shapes.push((1, 515, 2048 / t.block_size()));
        shapes.push((9, 130, 768 / t.block_size()));
        for (m, n, nb) in shapes {
            let k = nb * t.block_size();
            let w = QWeight::from_vec(random_blocks(&mut rng, t, n, k, 0.1), t, n, k).unwrap();
            let x = random_acts(&mut rng, m * k);
            let mut want = vec![0f32; m * n];
            w.matmul_with(Isa::Scalar, &x, m, &mut want).unwrap();
            let mut acts = QActs::default();
            quantize_scalar(&mut acts, format, &x, m, k);
            let wf = w.to_f32();
            for &isa in &simd {
                let mut got = vec![f32::NAN; m * n];
                w.matmul_with(isa, &x, m, &mut got).unwrap();
                for i in 0..m {
                    let a = acts.dequantize_row(i);
                    for j in 0..n {
                        let (g, e) = (got[i * n + j] as f64, want[i * n + j] as f64);
                        let tol = rounding_bound(&wf[j * k..(j + 1) * k], &offsets(t, w.row(j)), &a, nb);
                        assert!((g - e).abs() <= tol, "{isa:?} {t} m={m} n={n} k={k} [{i},{j}]: {g} vs {e} (tol {tol:e})");
                    }
                }
            }
        }
    }
}

#[test]
fn rejects_bad_shapes_and_types() {
    assert!(QWeight::from_vec(vec![0; 18], GgmlType::Q4_0, 1, 16).is_err()); // not whole blocks
    assert!(QWeight::from_vec(vec![0; 17], GgmlType::Q4_0, 1, 32).is_err()); // data too short
    assert!(QWeight::from_vec(vec![0; 84], GgmlType::Q2_K, 1, 256).is_err()); // no kernel
    assert!(QWeight::from_vec(vec![0; 18], GgmlType::Q4_0, usize::MAX, 32).is_err()); // overflow
    let w = QWeight::from_vec(vec![0; 36], GgmlType::Q4_0, 2, 32).unwrap();
    assert!(w.matmul_into(&[0.0; 31], 1, &mut [0.0; 2]).is_err());
    assert!(w.matmul_into(&[0.0; 32], 1, &mut [0.0; 3]).is_err());
    assert!(w.gather_rows(&[2]).is_err());
    let mut y = [1.0; 2];
    w.matmul_into(&[1.0; 32], 1, &mut y).unwrap();
    assert_eq!(y, [0.0, 0.0]);
}

#[test]
fn nan_activations_give_nan_outputs() {
    let mut rng = Rng::new(5);
    for t in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let (m, n, k) = (3, 9, 512);
        let w = QWeight::from_vec(random_blocks(&mut rng, t, n, k, 0.1), t, n, k).unwrap();
        let mut x = random_acts(&mut rng, m * k);
        x[k + 300] = f32::NAN; // row 1 only
        for isa in Isa::available() {
            let mut y = vec![0f32; m * n];
            w.matmul_with(isa, &x, m, &mut y).unwrap();
            for (i, row) in y.chunks(n).enumerate() {
                assert!(row.iter().all(|v| v.is_nan() == (i == 1)), "{isa:?} {t} row {i}: {row:?}");
            }
        }
    }
}

/// A row's result does not depend on the batch it is computed in (decode vs prefill,
/// tile height, position in the group): prefix caching and batched serving rely on it.
#[test]
fn results_do_not_depend_on_the_batch() {
    let mut rng = Rng::new(6);
    for t in TYPES {
        // 74 blocks of 32 (9 chunks and 2 leftovers) or 9 super-blocks.
        let (m, n, k) = (19, 21, if t.block_size() == 32 { 2368 } else { 2304 });
        let w = QWeight::from_vec(random_blocks(&mut rng, t, n, k, 0.1), t, n, k).unwrap();
        let x = random_acts(&mut rng, m * k);
        for isa in Isa::available() {
            let mut batch = vec![0f32; m * n];
            w.matmul_with(isa, &x, m, &mut batch).unwrap();
            for i in 0..m {
                let mut one = vec![0f32; n];
                w.matmul_with(isa, &x[i * k..(i + 1) * k], 1, &mut one).unwrap();
                assert_eq!(one, batch[i * n..(i + 1) * n], "{isa:?} {t} row {i}: alone vs in a batch of {m}");
            }
            let mut three = vec![0f32; 3 * n];
            w.matmul_with(isa, &x[5 * k..8 * k], 3, &mut three).unwrap();
            assert_eq!(three, batch[5 * n..8 * n], "{isa:?} {t}: rows 5..8 as a batch of 3");
        }
    }
}

/// Packed weights ([`super::packed`]): the layout loses nothing, and both its scalar
/// reference and the AVX-512 kernels (every tile height, partial block groups, several
/// k-slices, threads) equal the exact product of the file's dequantized weights with the
/// quantized activations, within the rounding bound.
#[test]
fn packed_kernels_match_scalar_reference() {
    use super::packed::{self, Packed};
    let mut rng = Rng::new(7);
    for t in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        // nb (blocks of 32): one block, odd counts, SmolLM2's 576 (18), 70, 176; K-quants in
        // whole super-blocks. Rows: part of a group of 16, one group and one row, 37.
        let sizes: &[usize] = if t.block_size() == 256 { &[8, 16, 24, 72, 176] } else { &[1, 7, 16, 17, 18, 20, 28, 70, 176] };
        for &nb in sizes {
            let k = nb * 32;
            let n = [9, 17, 37][nb % 3];
            let data = random_blocks(&mut rng, t, n, k, 0.1);
            let p = Packed::new(t, &data, n, nb);
            let rb = k / t.block_size() * t.type_size();
            for j in 0..n {
                assert_eq!(p.unpack_row(j), data[j * rb..(j + 1) * rb], "{t} nb={nb} row {j} round trip");
            }
            let w = QWeight::from_vec(data, t, n, k).unwrap();
            let wf = w.to_f32();
            // Tiles of 12, 8, 4, 2 and 1 rows, partial panels, several panels.
            for m in [1, 2, 3, 4, 7, 8, 9, 12, 13, 17, 27] {
                let x = random_acts(&mut rng, m * k);
                // The packed kernels quantize activations in blocks of 32 (K-quants too).
                let mut acts = QActs::default();
                quantize_scalar(&mut acts, ActFormat::B32, &x, m, k);
                let mut pacts = packed::PActs::default();
                pacts.quantize(&x, m, k, super::quant::quantize_row_b32);
                let mut got = vec![f32::NAN; m * n];
                let simd = Isa::Avx512Vnni.is_available() && w.packs();
                if simd {
                    let wp = w.clone().packed();
                    assert!(wp.packed_view().is_some());
                    wp.matmul_with(Isa::Avx512Vnni, &x, m, &mut got).unwrap();
                }
                for i in 0..m {
                    let a = acts.dequantize_row(i);
                    for j in 0..n {
                        let e = dot_f64(&wf[j * k..(j + 1) * k], &a);
                        let tol = rounding_bound(&wf[j * k..(j + 1) * k], &offsets(t, w.row(j)), &a, nb);
                        let r = packed::dot_ref(&p, j, &pacts, i) as f64;
                        assert!((r - e).abs() <= tol, "packed reference {t} m={m} nb={nb} [{i},{j}]: {r} vs {e} (tol {tol:e})");
                        if simd {
                            let g = got[i * n + j] as f64;
                            assert!((g - e).abs() <= tol, "packed AVX-512 {t} m={m} nb={nb} [{i},{j}]: {g} vs {e} (tol {tol:e})");
                        }
                    }
                }
            }
        }
    }
}

/// Packed products are batch-invariant too, and a NaN in one activation row stays there.
#[test]
fn packed_results_do_not_depend_on_the_batch() {
    if !Isa::Avx512Vnni.is_available() {
        return; // nothing is packed on this CPU (the scalar oracle is tested above)
    }
    let mut rng = Rng::new(8);
    for t in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let (m, n, k) = (19, 21, if t.block_size() == 256 { 2304 } else { 74 * 32 });
        let w = QWeight::from_vec(random_blocks(&mut rng, t, n, k, 0.1), t, n, k).unwrap().packed();
        let mut x = random_acts(&mut rng, m * k);
        let mut batch = vec![0f32; m * n];
        w.matmul_into(&x, m, &mut batch).unwrap();
        for i in 0..m {
            let mut one = vec![0f32; n];
            w.matmul_into(&x[i * k..(i + 1) * k], 1, &mut one).unwrap();
            assert_eq!(one, batch[i * n..(i + 1) * n], "{t} row {i}: alone vs in a batch of {m}");
        }
        x[3 * k + 100] = f32::NAN;
        w.matmul_into(&x, m, &mut batch).unwrap();
        for (i, row) in batch.chunks(n).enumerate() {
            assert!(row.iter().all(|v| v.is_nan() == (i == 3)), "{t} row {i}: {row:?}");
        }
    }
}

/// Pages of `[ptr, ptr + len)` mapped into this process (`/proc/self/pagemap`'s present bit).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn mapped_pages(ptr: *const u8, len: usize) -> usize {
    use std::os::unix::fs::FileExt;
    let (first, last) = (ptr as usize / 4096, (ptr as usize + len).div_ceil(4096));
    let mut buf = vec![0u8; (last - first) * 8];
    std::fs::File::open("/proc/self/pagemap").unwrap().read_exact_at(&mut buf, first as u64 * 8).unwrap();
    buf.chunks_exact(8).filter(|e| e[7] >> 7 == 1).count()
}

/// An embedding lookup in a mapped file leaves none of the table mapped: the kernel maps a
/// whole 64 KiB window around each faulted page, which would otherwise stay resident.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn gathered_rows_leave_no_pages_mapped() {
    use crate::load::gguf::Bytes;
    let mut rng = Rng::new(12);
    let (t, rows, cols) = (GgmlType::Q8_0, 2000, 1024);
    let data = random_blocks(&mut rng, t, rows, cols, 0.5);
    let path = std::env::temp_dir().join(format!("smelt-gather-{}.bin", std::process::id()));
    std::fs::write(&path, &data).unwrap();
    let map = unsafe { memmap2::Mmap::map(&std::fs::File::open(&path).unwrap()) }.unwrap();
    std::fs::remove_file(&path).unwrap();
    let (ptr, len) = (map.as_ptr(), map.len());
    let w = QWeight::new(Bytes::Mapped(std::sync::Arc::new(map)), 0, t, rows, cols).unwrap();
    let want = QWeight::from_vec(data, t, rows, cols).unwrap().gather_rows(&[3, 1000, 1999, 1000]).unwrap();
    // Reading a row maps pages (more than the row's own, when the file is in the page cache) ...
    w.dequantize_row(1000, &mut vec![0f32; cols]);
    assert!(mapped_pages(ptr, len) >= 1, "reading a row mapped no page");
    // ... and a lookup releases them again, with the same values as from owned bytes.
    assert_eq!(w.gather_rows(&[3, 1000, 1999, 1000]).unwrap(), want);
    assert_eq!(mapped_pages(ptr, len), 0, "pages left mapped after the lookup");
}

#[test]
fn budget_claims_are_given_back() {
    let b = super::Budget::new();
    let first = b.claim(600, 1000).expect("within the limit");
    assert!(b.claim(500, 1000).is_none(), "600 + 500 passes 1000");
    assert_eq!(b.held(), 600, "a refused claim takes nothing");
    let second = b.claim(400, 1000).expect("600 + 400 is the limit exactly");
    drop(first);
    assert_eq!(b.held(), 400);
    let third = b.claim(600, 1000).expect("room again once the first is dropped");
    drop((second, third));
    assert_eq!(b.held(), 0);
    let all = b.claim(usize::MAX, usize::MAX).expect("the whole budget");
    assert!(b.claim(1, usize::MAX).is_none(), "held + 1 overflows: refused, not a panic");
    drop(all);
    assert_eq!(b.held(), 0);
}

#[test]
fn packing_in_steps_reports_every_source_byte_once() {
    // `Packed::new_releasing` hands back the source in order, without gaps or overlaps, after
    // packing it, and packs the same bytes as one pass would: 0.8 MB in one step, 19.6 MB
    // in two.
    use super::packed::Packed;
    let mut rng = Rng::new(11);
    for (n, nb) in [(3000, 8), (9000, 64)] {
        let t = GgmlType::Q8_0;
        let data = random_blocks(&mut rng, t, n, nb * 32, 0.1);
        let seen = std::sync::Mutex::new(Vec::new());
        let p = Packed::new_releasing(t, &data, n, nb, |a, len| seen.lock().unwrap().push((a, len)));
        let seen = seen.into_inner().unwrap();
        let mut at = 0;
        for &(a, len) in &seen {
            assert_eq!(a, at, "ranges in order, no gap: {seen:?}");
            at += len;
        }
        assert_eq!(at, data.len());
        let (rb, groups) = (nb * t.type_size(), n.div_ceil(16));
        assert_eq!(seen.len(), groups.div_ceil((16 << 20) / (16 * rb)), "steps of 16 MiB for {} bytes", data.len());
        assert_eq!(p.bytes(), Packed::new(t, &data, n, nb).bytes());
    }
}
