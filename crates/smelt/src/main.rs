fn main() -> std::process::ExitCode {
    one_malloc_arena();
    smelt::cli::main()
}

/// glibc gives each thread that allocates its own heap ("arena"), and memory freed in one
/// arena cannot serve another thread's allocation. Training allocates large activation and
/// gradient buffers from whichever pool thread runs the op (work stealing decides), so with
/// per-thread arenas each one grows to the step's peak: the LoRA worked example
/// (docs/FINETUNE.md) peaked at 3.4–3.6 GB against 1.98 GB with one arena, at the same speed
/// (`/usr/bin/time -v smelt -t 2 finetune … --steps 5 --eval …`, three runs each; the
/// compute threads allocate a few large buffers per op, not many small ones, so one arena's
/// lock is not contended). `MALLOC_ARENA_MAX`, when set, still wins.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
