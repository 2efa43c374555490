//! A decode step allocates nothing once its buffers have their size (issue 6: "no
//! allocation per token in the decode loop"). This binary counts every heap allocation
//! of the process, so it holds this one test only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use smelt::bench::shapes::{random_gguf, Shape};
use smelt::load::gguf::GgufFile;
use smelt::model::{KvType, Logits, SeqInput};
use smelt::quantize::FileType;

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        System.realloc(p, l, n)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_steps_allocate_nothing() {
    let shape = Shape { name: "small", hidden: 512, layers: 3, heads: 8, kv_heads: 2, head_dim: 64, ffn: 1024, vocab: 2000, ctx: 512, tied: true };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for (ftype, kv_type) in [(FileType::Q4_K_M, KvType::F16), (FileType::Q4_0, KvType::F32)] {
        let f = GgufFile::from_vec(random_gguf(&shape, ftype, 5).unwrap().to_bytes()).unwrap();
        let mut dec = smelt::bench::decoder_from_gguf(Arc::new(f), 512).unwrap();
        dec.kv_type = kv_type;
        assert!(dec.decode_step_runs());
        pool.install(|| {
            let mut cache = dec.new_cache();
            let prompt: Vec<u32> = (0..20).collect();
            dec.forward(&mut [SeqInput { tokens: &prompt, cache: Some(&mut cache) }], Logits::Last).unwrap();
            let mut logits = Vec::new();
            // Warm-up: the step's buffers and the scores scratch take their size.
            for t in 0..4 {
                dec.step_into(&[t], &mut cache, &mut logits).unwrap();
            }
            // 40 more tokens stay within the cache's capacity of 64 (growing it allocates).
            let before = ALLOCS.load(Relaxed);
            for t in 0..40 {
                dec.step_into(&[t * 7 % 2000], &mut cache, &mut logits).unwrap();
            }
            let n = ALLOCS.load(Relaxed) - before;
            assert_eq!(n, 0, "{ftype:?}: {n} allocations in 40 decode steps");
            assert!(logits.iter().all(|v| v.is_finite()));
            // The counter counts: the same step through candle's ops allocates per op.
            let before = ALLOCS.load(Relaxed);
            dec.forward_candle(&mut [SeqInput { tokens: &[1], cache: Some(&mut cache) }], Logits::Last).unwrap();
            let n = ALLOCS.load(Relaxed) - before;
            assert!(n > 100, "{ftype:?}: candle's step made only {n} allocations");
        });
    }
}
