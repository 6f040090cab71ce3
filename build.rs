//! Gives every binary of the crate an rpath to libtorch's `lib/`, so `tsad` runs without
//! `LD_LIBRARY_PATH`. torch-sys reports the directory it linked against as
//! `DEP_TCH_LIBTORCH_LIB` (its `links` key is `tch`).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report libtorch's lib directory; no rpath set");
        return;
    };
    // The configured path goes through the `.tsad/libtorch` link; the canonical path keeps
    // working for a binary copied out of this checkout.
    let dir = PathBuf::from(&dir).canonicalize().unwrap_or_else(|_| PathBuf::from(dir));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    // libtorch_cpu.so resolves its CUDA and other dependencies through its own rpath.
}
