//! Kernel micro-benchmark: one quantized product, timed alone.
//! `cargo run --release --example kbench -- TYPE N K M [threads]`
//! `cargo run --release --example kbench -- peak`: this core's `vpdpbusd` rate (the int8
//! kernels' ceiling; `gbench` prints the f32 FMA one).
use smelt::kernels::testing::{random_acts, random_blocks};
use smelt::kernels::QWeight;
use smelt::load::gguf::GgmlType;
use smelt::sample::Rng;
use std::time::Instant;

/// Multiply-adds per second of 12 independent `vpdpbusd zmm` chains, best of three.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_peak() -> f64 {
    use std::arch::x86_64::*;
    let iters = 2_000_000;
    let mut best = 0f64;
    for _ in 0..3 {
        let (a, b) = (std::hint::black_box(_mm512_set1_epi8(3)), std::hint::black_box(_mm512_set1_epi8(5)));
        let mut acc = [_mm512_setzero_si512(); 12];
        let t = Instant::now();
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_dpbusd_epi32(*x, a, b);
            }
        }
        std::hint::black_box(acc);
        best = best.max((iters * 12 * 64) as f64 / t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a[1] == "peak" {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512vnni") {
            // SAFETY: the CPU has AVX-512 VNNI (and so F and BW).
            println!("one core's peak: vpdpbusd {:.1} GMAC/s", unsafe { vnni_peak() } / 1e9);
            return;
        }
        println!("no AVX-512 VNNI on this CPU");
        return;
    }
    let t = match a[1].as_str() { "q4_0" => GgmlType::Q4_0, "q4_1" => GgmlType::Q4_1, "q8_0" => GgmlType::Q8_0, "q4_k" => GgmlType::Q4_K, "q6_k" => GgmlType::Q6_K, x => panic!("{x}") };
    let (n, k, m): (usize, usize, usize) = (a[2].parse().unwrap(), a[3].parse().unwrap(), a[4].parse().unwrap());
    let th: usize = a.get(5).map_or(1, |v| v.parse().unwrap());
    rayon::ThreadPoolBuilder::new().num_threads(th).build_global().unwrap();
    let mut rng = Rng::new(1);
    let w = QWeight::from_vec(random_blocks(&mut rng, t, n, k, 0.1), t, n, k).unwrap().packed();
    let x = random_acts(&mut rng, m * k);
    let mut y = vec![0f32; m * n];
    for _ in 0..3 { w.matmul_into(&x, m, &mut y).unwrap(); }
    let reps = (2e10 / (m * n * k) as f64).max(3.0) as usize;
    let t0 = Instant::now();
    for _ in 0..reps { w.matmul_into(&x, m, &mut y).unwrap(); }
    let s = t0.elapsed().as_secs_f64() / reps as f64;
    let bytes = (n * k / t.block_size() * t.type_size()) as f64;
    println!(
        "{t} n={n} k={k} m={m} th={th} packed={}: {:.3} ms, {:.1} GMAC/s, weights {:.1} GB/s",
        w.packed_view().is_some(),
        s * 1e3,
        (m * n * k) as f64 / s / 1e9,
        bytes / s / 1e9
    );
}
