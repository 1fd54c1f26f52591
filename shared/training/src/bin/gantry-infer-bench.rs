//! `gantry-infer-bench`: analysis throughput of the node's own code path, for
//! `bench/analysis_throughput.sh`.
//!
//! It generates the synthetic shape dataset (unless the work directory has one), trains the
//! network one epoch (so the weights and card are a real model version's), loads it back with
//! [`load_model`] from its card and safetensors bytes as an analysis worker does, and times, per
//! pass over every image:
//! - `end_to_end`: read each PNG, [`preprocess_for`] (the card's checks, decode, resize,
//!   normalisation) and [`top_k`] (softmax, top 5, 64 images per forward pass): what a node does
//!   for an analysis request once the model is cached;
//! - `inference`: [`top_k`] alone on the already preprocessed tensor, which it also writes
//!   (`images.f32`, raw little-endian, with `meta.json`) so `bench/analysis_throughput.py` runs
//!   PyTorch on exactly the same pixels.
//!
//! Prints one JSON object: images/s of each pass and their medians over the passes after the
//! first (the first pays for allocator warm-up and, on CUDA, cuDNN's algorithm search).

use std::fs;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use gantry_training::infer::INFER_BATCH;
use gantry_training::synthetic::{self, SyntheticSpec};
use gantry_training::{
    load_model, pick_device, preprocess_for, top_k, train, Dataset, DatasetLimits, Listing,
    LoadOptions, TrainConfig,
};

#[derive(Parser, Debug)]
#[command(about = "Measures analysis images/s of gantry-training on synthetic shapes")]
struct Args {
    /// Driver to classify on: cpu, cuda, rocm or any.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// libtorch intra-op threads (tch::set_num_threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Passes over every image; the first is reported but left out of the median.
    #[arg(long, default_value_t = 5)]
    passes: usize,
    /// Images per class (three classes).
    #[arg(long, default_value_t = 200)]
    per_class: usize,
    /// Side of the generated images and of the network's input.
    #[arg(long, default_value_t = 32)]
    image_size: u32,
    /// Width of the network's first stage.
    #[arg(long, default_value_t = 16)]
    base_width: i64,
    /// Labels per image.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Where the dataset and the exported tensor go.
    #[arg(long)]
    work_dir: PathBuf,
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn steady(per_pass: &[f64]) -> f64 {
    median(if per_pass.len() > 1 {
        &per_pass[1..]
    } else {
        per_pass
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = pick_device(&args.device)?;
    gantry_training::tch::set_num_threads(args.threads as i32);
    let data_dir = args.work_dir.join("data");
    if !data_dir.exists() {
        let spec = SyntheticSpec {
            per_class: args.per_class,
            image_size: args.image_size,
            seed: 42,
            ..SyntheticSpec::default()
        };
        synthetic::generate(&data_dir, &spec)?;
    }
    let options = LoadOptions {
        image_size: args.image_size,
        validation_split: 0.0,
        ..LoadOptions::default()
    };
    let data = Dataset::load(&data_dir, &options)?;
    let config = TrainConfig {
        epochs: 1,
        threads: Some(args.threads),
        base_width: args.base_width,
        ..TrainConfig::default()
    };
    let trained = train(
        &config,
        &data,
        device,
        &mut |_| ControlFlow::Continue(()),
        &mut |_, _| ControlFlow::Continue(()),
        None,
    )?;
    let model = load_model(&trained.card, &trained.weights, device)?;
    let card = &model.card;
    // At most the classes, as top_k itself clamps.
    let k = args.top_k.clamp(1, card.classes.len());

    let limits = DatasetLimits::default();
    let listing = Listing::scan(&data_dir, &limits)?;
    let files: Vec<PathBuf> = listing
        .files
        .iter()
        .map(|f| data_dir.join(&f.relative_path))
        .collect();
    let n = files.len();

    let read_all = || -> std::io::Result<Vec<Vec<u8>>> { files.iter().map(fs::read).collect() };
    let bytes = read_all()?;
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let pixels =
        preprocess_for(card, &refs, &limits).map_err(|(i, e)| format!("image {i}: {e}"))?;

    // The same pixels for PyTorch.
    let flat = Vec::<f32>::try_from(&pixels.flatten(0, -1))?;
    let mut out = BufWriter::new(fs::File::create(args.work_dir.join("images.f32"))?);
    for x in &flat {
        out.write_all(&x.to_le_bytes())?;
    }
    out.flush()?;
    let meta = serde_json::json!({
        "samples": n,
        "image_size": card.image_size,
        "classes": card.classes,
        "base_width": card.base_width,
        "batch": INFER_BATCH,
        "top_k": k,
    });
    fs::write(
        args.work_dir.join("meta.json"),
        serde_json::to_vec_pretty(&meta)?,
    )?;

    let mut end_to_end = Vec::with_capacity(args.passes);
    let mut inference = Vec::with_capacity(args.passes);
    let mut agree = 0usize;
    for _ in 0..args.passes {
        let start = Instant::now();
        let bytes = read_all()?;
        let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        let x = preprocess_for(card, &refs, &limits).map_err(|(i, e)| format!("image {i}: {e}"))?;
        let top = top_k(&model, &x, k)?;
        end_to_end.push(n as f64 / start.elapsed().as_secs_f64());

        let start = Instant::now();
        let again = top_k(&model, &pixels, k)?;
        inference.push(n as f64 / start.elapsed().as_secs_f64());
        agree = top
            .iter()
            .zip(&again)
            .filter(|(a, b)| a.first().map(|p| p.0) == b.first().map(|p| p.0))
            .count();
    }
    let report = serde_json::json!({
        "implementation": "rust-tch",
        "device": format!("{device:?}"),
        "threads": gantry_training::tch::get_num_threads(),
        "samples": n,
        "image_size": card.image_size,
        "batch": INFER_BATCH,
        "top_k": k,
        "passes": args.passes,
        "end_to_end_images_per_sec_per_pass": end_to_end,
        "end_to_end_images_per_sec": steady(&end_to_end),
        "inference_images_per_sec_per_pass": inference,
        "inference_images_per_sec": steady(&inference),
        "same_top_label_both_ways": agree == n,
    });
    println!("{report}");
    Ok(())
}
