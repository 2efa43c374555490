fn main() -> std::process::ExitCode {
    keep_freed_memory();
    smelt::cli::main()
}

/// glibc's malloc returns every block above its mmap threshold to the kernel on free, so a
/// training step that allocates and frees the same few-MB activations hundreds of times
/// pays a page fault and a kernel page-clear per 4 KiB each time (a tenth of a LoRA step).
/// Serve blocks up to 32 MiB from the heap and keep up to 256 MiB of freed heap mapped.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 256 << 20);
        }
    }
}
