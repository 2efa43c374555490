//! Memory read bandwidth: what the machine's memory delivers to `threads` threads reading
//! a buffer far larger than the caches, the ceiling for token-by-token decoding (which
//! reads every weight once per token).

use rayon::prelude::*;
use std::time::Instant;

/// Best of `passes` timed reads of a `bytes`-sized buffer split over rayon's pool, GB/s.
pub fn read_bandwidth(bytes: usize, passes: usize) -> f64 {
    let n = (bytes / 8).max(1 << 16);
    // Distinct non-zero contents, so no page is shared with the zero page.
    let buf: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(0x9E3779B97F4A7C15) | 1).collect();
    let chunk = n.div_ceil(rayon::current_num_threads()).max(1 << 12);
    let mut best = 0f64;
    for _ in 0..passes.max(1) {
        let t0 = Instant::now();
        let s: u64 = buf.par_chunks(chunk).map(sum_chunk).reduce(|| 0, u64::wrapping_add);
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((n * 8) as f64 / secs / 1e9);
    }
    best
}

/// A sum the compiler vectorizes: 8 independent lanes.
fn sum_chunk(c: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut it = c.chunks_exact(8);
    for v in &mut it {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(v[i]);
        }
    }
    let tail: u64 = it.remainder().iter().fold(0, |a, &b| a.wrapping_add(b));
    acc.iter().fold(tail, |a, &b| a.wrapping_add(b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_every_element() {
        let v: Vec<u64> = (1..=1003).collect();
        assert_eq!(super::sum_chunk(&v), 1003 * 1004 / 2);
    }
}
