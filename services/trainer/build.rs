//! Link libtorch's GPU library with `--no-as-needed`.
//!
//! Nothing in the trainer calls into `libtorch_cuda.so` (or `libtorch_hip.so` on ROCm builds)
//! directly, so the linker's default `--as-needed` drops it, and at run time `tch::Cuda` then
//! reports no device even on a GPU machine: the CUDA backend registers itself from that
//! library's static initialisers. Linking it unconditionally makes CUDA (or HIP) visible at run
//! time. On a CPU-only libtorch the library does not exist and nothing is added.
//!
//! The library directory is found the way `torch-sys` finds it: `$LIBTORCH/lib`, else (with
//! `LIBTORCH_USE_PYTORCH`) the `lib` directory of the `torch` package of `$PYTHON_SYS_EXECUTABLE`.

use std::path::PathBuf;
use std::process::Command;

fn torch_lib_dir() -> Option<PathBuf> {
    if let Ok(root) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(root).join("lib"));
    }
    if std::env::var("LIBTORCH_USE_PYTORCH").is_err() {
        return None;
    }
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(dir.trim()).join("lib"))
}

fn main() {
    for var in ["LIBTORCH", "LIBTORCH_USE_PYTORCH", "PYTHON_SYS_EXECUTABLE"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let Some(lib) = torch_lib_dir() else {
        println!("cargo:warning=libtorch not located; GPU libraries are not force-linked");
        return;
    };
    let mut linked = false;
    for name in ["torch_cuda", "torch_hip"] {
        if lib.join(format!("lib{name}.so")).is_file() {
            println!("cargo:rustc-link-search=native={}", lib.display());
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-l{name},--as-needed");
            linked = true;
        }
    }
    if !linked {
        // A CPU-only libtorch: nothing to force; tch reports no CUDA device, which is right.
        println!("cargo:rerun-if-changed={}", lib.display());
    }
}
