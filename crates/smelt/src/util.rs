//! Small shared helpers: atomic file writes, human-readable sizes, running work on the
//! compute pool.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Hand the C heap's free pages back to the system (glibc's `malloc_trim`; nothing
/// elsewhere). A load frees the parsed GGUF metadata, and Gemma 3's 262k-token lists alone
/// are ~40 MB of small blocks; freed, they stayed resident until something reused them.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The temporary sibling used while writing `path` atomically.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Write a file so that readers see either the old contents or the new, never a torn
/// file: write a temporary sibling, fsync it, rename it over the target.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = temp_sibling(path);
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(data).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot rename onto {}", path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// "1.2 GB"-style sizes (decimal units, as file managers and `ls -h --si` show).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces() {
        let dir = std::env::temp_dir().join(format!("smelt-util-{}", std::process::id()));
        let p = dir.join("a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!temp_sibling(&p).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(98_362_432), "98.4 MB");
    }
}

/// Run `f` on one of rayon's pool threads (directly when already on one, or when the pool
/// has a single thread) and return its result.
///
/// A compute-heavy sequence of small parallel products — a decode step, a training step —
/// should run *inside* the pool: its products then share work with the other workers by
/// work stealing. Called from outside, every product is injected into the pool while the
/// calling thread sleeps on a lock until it is done: a futex wake-up each way per product,
/// which was a quarter of a small model's decode time.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() || rayon::current_num_threads() <= 1 {
        return f();
    }
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.expect("rayon::scope runs its closure before returning")
}

/// Test data: a tensor of normal values (`mean`, `std`) drawn from a generator seeded with
/// `seed`, so a unit test sees the same numbers on every run (candle's `Tensor::randn`
/// draws from an unseeded one, which made a failure impossible to replay).
#[cfg(test)]
pub(crate) fn randn(seed: u64, mean: f32, std: f32, shape: impl Into<candle_core::Shape>, dev: &candle_core::Device) -> candle_core::Result<candle_core::Tensor> {
    let shape = shape.into();
    let mut rng = crate::sample::Rng::new(seed);
    let v: Vec<f32> = (0..shape.elem_count()).map(|_| mean + std * rng.next_normal() as f32).collect();
    candle_core::Tensor::from_vec(v, shape, dev)
}
