//! Kernel micro-benchmark: one quantized product, timed alone.
//! `cargo run --release --example kbench -- TYPE N K M [threads]`
use smelt::kernels::testing::{random_acts, random_blocks};
use smelt::kernels::QWeight;
use smelt::load::gguf::GgmlType;
use smelt::sample::Rng;
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
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
    println!("{t} n={n} k={k} m={m} th={th} packed={}: {:.3} ms, {:.1} GMAC/s", w.packed_view().is_some(), s * 1e3, (m * n * k) as f64 / s / 1e9);
}
