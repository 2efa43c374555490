//! Training-kernel micro-benchmark: the f32 AVX-512 GEMM and the bf16 GEMM on one shape,
//! and this core's peak bf16 / f32 multiply-add rates (what `bf16::preferred` decides on).
//! `cargo run --release --example gbench -- M K N`   (threads: RAYON_NUM_THREADS)
use smelt::train::kernels::gemm::Mat;
use smelt::train::kernels::{bf16, f32x512};
use std::time::Instant;

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|v| v.parse().expect("M K N")).collect();
    let [m, k, n] = a[..] else { panic!("usage: gbench M K N") };
    let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut y = vec![0f32; m * n];
    let gmacs = |s: f64| (m * n * k) as f64 / s / 1e9;
    if f32x512::available() {
        let s = time(20, || f32x512::matmul(&mut y, Mat::rows(&x, m, k), Mat::rows(&w, k, n), 1.0, false, true));
        println!("f32 AVX-512 (packing B included) m={m} k={k} n={n}: {:.3} ms, {:.1} GMAC/s", s * 1e3, gmacs(s));
    }
    {
        let s = time(20, || smelt::train::kernels::gemm::matmul_par(&mut y, Mat::rows(&x, m, k), Mat::rows(&w, k, n), 1.0, false));
        println!("matmul_par m={m} k={k} n={n}: {:.3} ms, {:.1} GMAC/s", s * 1e3, gmacs(s));
        let s = time(20, || smelt::train::kernels::gemm::matmul_par(&mut y, Mat::rows(&x, k, m).t(), Mat::rows(&w, k, n), 1.0, false));
        println!("matmul_par Aᵀ m={m} k={k} n={n}: {:.3} ms, {:.1} GMAC/s", s * 1e3, gmacs(s));
    }
    if bf16::available() {
        let (pa, pb) = (bf16::pack_a(Mat::rows(&x, m, k)), bf16::pack_b(Mat::rows(&w, k, n)));
        let s = time(20, || bf16::matmul_packed(&mut y, &pa, &pb, 1.0, false));
        println!("bf16 (packed operands)          m={m} k={k} n={n}: {:.3} ms, {:.1} GMAC/s", s * 1e3, gmacs(s));
    }
    if let Some((bf, f)) = bf16::peak_rates() {
        println!("one core's peak: vdpbf16ps {:.1} GMAC/s, f32 FMA {:.1} GMAC/s; bf16 preferred: {}", bf / 1e9, f / 1e9, bf16::preferred());
    }
}
