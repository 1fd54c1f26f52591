//! Links libtorch's GPU library into the trainer with `--no-as-needed`, as gantry-training's build
//! script found it (it locates libtorch; this only forwards). Without it the linker drops
//! `libtorch_cuda.so`, which nothing calls directly, and `tch::Cuda` then reports no device on a
//! GPU machine. See shared/training/LINKING.md.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_GANTRY_TRAINING_GPU_LINK_ARGS");
    let args = std::env::var("DEP_GANTRY_TRAINING_GPU_LINK_ARGS").unwrap_or_default();
    for arg in args.split_whitespace() {
        println!("cargo:rustc-link-arg={arg}");
    }
}
