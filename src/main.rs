//! The `tsad` binary: boots the command line, nothing else.

/// mimalloc rather than glibc malloc: see docs/PERFORMANCE.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keep_large_blocks_in_the_heap();
    tsad::cli::main()
}

/// libtorch allocates its tensors with glibc's malloc (the Rust side uses mimalloc), which
/// serves blocks over its mmap threshold (128 KiB at first) with a fresh `mmap` and hands them
/// back with `munmap`, so every step of a large batch page-faults its buffers in again: the
/// gates of 256 LSTM-64 streams are 256 KiB. glibc raises the threshold by itself after such
/// a block is freed, but not always in time, and a benchmark that ran small batches first
/// stepped LSTM-64 at 0.75 M stream-steps/s instead of 2.1 M (docs/PERFORMANCE.md). A fixed
/// threshold of 64 MiB keeps them in the heap, and trimming waits for 256 MiB of free memory.
fn keep_large_blocks_in_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning parameters; it runs before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
