//! Links libtorch's GPU library with `--no-as-needed`: into this crate's own executables (the
//! benchmark binary and the tests) directly, and into the binaries of crates that depend on it
//! (the trainer) through the `links` metadata below. This is the one place Gantry locates
//! libtorch for that.
//!
//! Nothing in Rust calls into `libtorch_cuda.so` (or `libtorch_hip.so` on ROCm builds) directly:
//! libtorch registers its CUDA backend from static initialisers in that library. With the
//! default `--as-needed` the linker drops it, and `tch::Cuda::is_available()` answers false on a
//! GPU machine. Linker arguments never propagate from a library to the binaries that use it (and
//! the `-as-needed` link modifier is nightly-only), so this script publishes the arguments as
//! `DEP_GANTRY_TRAINING_GPU_LINK_ARGS` (`links = "gantry_training"`), and a binary crate's
//! `build.rs` prints each as `cargo:rustc-link-arg=...`; see LINKING.md.
//!
//! torch-sys (`links = "tch"`) publishes its libtorch lib directory as `DEP_TCH_LIBTORCH_LIB` to
//! crates that depend on it directly, which is why this crate names torch-sys as a dependency. CPU
//! wheels have no `libtorch_cuda.so`, so an argument is only emitted when the file exists.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // Only with the `torch` feature does torch-sys build and publish its directory.
    let Some(lib_dir) = env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        return;
    };
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let mut args = Vec::new();
    // ROCm builds of libtorch ship libtorch_hip.so instead of libtorch_cuda.so.
    for lib in ["torch_cuda", "torch_hip"] {
        if lib_dir.join(format!("lib{lib}.so")).exists() {
            let arg = format!("-Wl,--no-as-needed,-l{lib},--as-needed");
            println!("cargo:rustc-link-arg-bins={arg}");
            println!("cargo:rustc-link-arg-tests={arg}");
            args.push(arg);
        }
    }
    // Space-separated: no argument holds a space.
    println!("cargo:gpu_link_args={}", args.join(" "));
}
