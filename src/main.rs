//! The `tsad` binary: boots the command line, nothing else.

/// mimalloc rather than glibc malloc: see docs/PERFORMANCE.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tsad::cli::main()
}
