//! Strided matrix products for the training kernels: smelt's AVX-512 kernel
//! ([`super::f32x512`]) where the CPU has AVX-512 and the product is not tiny, else the `gemm`
//! crate candle uses for its own matmuls (whose stable-Rust kernels stop at AVX2).

/// A matrix view: `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct Mat {
    pub ptr: *const f32,
    pub rows: usize,
    pub cols: usize,
    pub rs: isize,
    pub cs: isize,
}

impl Mat {
    /// Row-major `rows × cols` starting at `data[0]`.
    pub fn rows(data: &[f32], rows: usize, cols: usize) -> Mat {
        assert!(data.len() >= rows * cols);
        Mat { ptr: data.as_ptr(), rows, cols, rs: cols as isize, cs: 1 }
    }

    pub fn t(self) -> Mat {
        Mat { ptr: self.ptr, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
}

/// A view handed to worker threads; the packers and kernels only read through it.
#[derive(Clone, Copy)]
pub(crate) struct SendMat(pub Mat);
// SAFETY: the memory behind the view outlives the parallel call that reads it.
unsafe impl Send for SendMat {}
unsafe impl Sync for SendMat {}

/// `dst (m × n, row-major) = scale · a (m × k) · b (k × n)`, added to `dst` when `accumulate`.
pub fn matmul(dst: &mut [f32], a: Mat, b: Mat, scale: f32, accumulate: bool) {
    matmul_with(dst, a, b, scale, accumulate, gemm::Parallelism::None)
}

/// [`matmul`] spread over rayon's threads (for one large product).
pub fn matmul_par(dst: &mut [f32], a: Mat, b: Mat, scale: f32, accumulate: bool) {
    let n = rayon::current_num_threads();
    let par = if n > 1 { gemm::Parallelism::Rayon(n) } else { gemm::Parallelism::None };
    matmul_with(dst, a, b, scale, accumulate, par)
}

fn matmul_with(dst: &mut [f32], a: Mat, b: Mat, scale: f32, accumulate: bool, par: gemm::Parallelism) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions differ");
    assert!(dst.len() >= m * n);
    // An output under 16 rows or columns (a rank-r LoRA product: `x · Aᵀ`, `dhᵀ · x`,
    // `dyᵀ · h`) goes to the gemm crate: the AVX-512 kernel would pack (copy) the large
    // operand whole for a product that reads it once, and the pack cost more than the
    // product (`gbench`, 2 threads: (8, 1024, 1536) 1.10 → 0.64 ms, (1536, 1024, 8) 1.23 →
    // 0.40 ms, (1024, 576, 8) 0.52 → 0.17 ms).
    let narrow = m < 16 || n < 16;
    // A product of 16–31 columns would leave most of each tile's lanes idle: compute
    // `Cᵀ = Bᵀ · Aᵀ` instead, whose n rows fill the kernel's 8-row tiles and whose m columns
    // its lanes.
    if !narrow && n < 32 && m >= 64 && m * n * k >= 1 << 15 && super::f32x512::available() {
        let mut ct = vec![0f32; n * m];
        super::f32x512::matmul(&mut ct, b.t(), a.t(), scale, false, !matches!(par, gemm::Parallelism::None));
        for (i, row) in dst[..m * n].chunks_exact_mut(n).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                let t = ct[j * m + i];
                *v = if accumulate { *v + t } else { t };
            }
        }
        return;
    }
    // Packing B costs about 1/m of the product: worth it from 16 rows on.
    if !narrow && m * n * k >= 1 << 15 && super::f32x512::available() {
        return super::f32x512::matmul(dst, a, b, scale, accumulate, !matches!(par, gemm::Parallelism::None));
    }
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: the views were built from slices large enough for their shapes and strides
    // (checked by `Mat::rows`), and dst holds m × n values.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_matches_a_plain_product() {
        // The AVX-512 kernel, the transposed narrow product (16–31 columns) and the
        // narrow outputs handed to the gemm crate (rank-8 shapes).
        for (m, k, n) in [(37, 150, 70), (300, 64, 20), (300, 64, 8), (8, 300, 70)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5).collect();
            let mut ours = vec![0f32; m * n];
            matmul_par(&mut ours, Mat::rows(&a, m, k), Mat::rows(&b, n, k).t(), 1.5, false);
            // A plain loop: the gemm crate is itself one of the routes under test.
            let oracle: Vec<f32> = (0..m * n).map(|i| 1.5 * (0..k).map(|p| a[i / n * k + p] * b[i % n * k + p]).sum::<f32>()).collect();
            for (x, y) in ours.iter().zip(&oracle) {
                assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "({m}, {k}, {n}): {x} vs {y}");
            }
        }
    }


    /// Narrow products (n < 32, a LoRA rank) run transposed; same values, accumulation kept.
    #[test]
    fn narrow_products_match_the_gemm_crate() {
        let (m, k, n) = (300, 200, 8);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5).collect();
        let init: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32 - 2.0).collect();
        for acc in [false, true] {
            let mut ours = init.clone();
            let mut oracle = init.clone();
            matmul_par(&mut ours, Mat::rows(&a, m, k), Mat::rows(&b, n, k).t(), 1.5, acc);
            // SAFETY: both views and dst are inside their slices.
            unsafe {
                gemm::gemm(m, n, k, oracle.as_mut_ptr(), 1, n as isize, acc, a.as_ptr(), 1, k as isize, b.as_ptr(), k as isize, 1, 1.0, 1.5, false, false, false, gemm::Parallelism::None);
            }
            for (x, y) in ours.iter().zip(&oracle) {
                assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "accumulate {acc}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn transposed_views_and_accumulation() {
        let a: Vec<f32> = (0..6).map(|x| x as f32).collect(); // 2×3
        let b: Vec<f32> = (0..12).map(|x| x as f32 * 0.5).collect(); // 4×3, used transposed
        let mut c = vec![1.0f32; 8];
        matmul(&mut c, Mat::rows(&a, 2, 3), Mat::rows(&b, 4, 3).t(), 2.0, true);
        for i in 0..2 {
            for j in 0..4 {
                let want: f32 = 1.0 + 2.0 * (0..3).map(|k| a[i * 3 + k] * b[j * 3 + k]).sum::<f32>();
                assert_eq!(c[i * 4 + j], want);
            }
        }
    }
}
