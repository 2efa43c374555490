//! Training a model from scratch on the CPU with candle's autograd, through the same
//! [`Decoder`](crate::model::Decoder) inference runs.
//!
//! * [`config`] — `train.toml`; [`params`] — the weights as variables and their init;
//! * [`batches`] — training windows; [`schedule`] — warm-up + cosine learning rate;
//! * [`loss`] — fused cross-entropy; [`kd_loss`] — fused distillation loss (KL + CE); [`optim`] — fused AdamW and the gradient norm;
//! * [`step`] — one optimizer step; [`trainer`] — the loop; [`checkpoint`], [`metrics`];
//! * [`bench`] — throughput measurement; [`simd`] — kernel dispatch helpers.

pub mod batches;
pub mod bench;
pub mod checkpoint;
pub mod kernels;
pub mod config;
pub mod kd_loss;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod params;
pub mod schedule;
pub(crate) mod simd;
pub mod step;
pub mod trainer;

pub use config::{ModelShape, TrainConfig};
pub use params::Params;
pub use trainer::{train, Interrupted, TrainOptions, TrainOutcome};

/// Keep candle's own worker pool (which runs its element-wise ops) at the calling thread
/// alone during training. That pool's threads and the caller spin while they wait for each
/// other; next to rayon's pool (which runs the matrix products and the fused kernels) they
/// oversubscribe the cores, and on a busy 2-core machine a step took twice as long with it
/// (`smelt -t 2 bench-train`: 283–190 vs 578–378 tok/s, alternating runs). The element-wise
/// ops left to candle are a few percent of a step. Call before the first tensor operation;
/// an explicit `CANDLE_NUM_THREADS` in the environment wins.
pub fn single_candle_pool() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Training frees and re-allocates the same large activation buffers every step. glibc
/// returns blocks above 128 KiB to the kernel at once, so every step would pay page faults
/// and zeroing for all of them again; raise that threshold (to glibc's maximum, 32 MiB) and
/// keep freed memory in the heap. Call once before training.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator tuning parameters.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}
