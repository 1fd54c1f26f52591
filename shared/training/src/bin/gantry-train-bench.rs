//! `gantry-train-bench`: training throughput of the trainer's own code path, for
//! `bench/train_throughput.sh`.
//!
//! It generates the synthetic shape dataset (unless the work directory already has one), loads it
//! with [`Dataset::load`] (no validation split, so every image trains), writes the decoded tensor
//! for `bench/train_throughput.py` (`train_images.f32`, `train_labels.i64`, little-endian raw,
//! plus `meta.json`) so PyTorch trains on exactly the same pixels, then runs [`train()`](gantry_training::train()) and prints
//! one JSON object: per-epoch samples/s and their median over the epochs after the first (the
//! first pays for allocator warm-up and, on CUDA, cuDNN's algorithm search).

use std::fs;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use clap::Parser;
use gantry_training::synthetic::{self, SyntheticSpec};
use gantry_training::{gpu_runtime, pick_device, train, Dataset, LoadOptions, TrainConfig};

#[derive(Parser, Debug)]
#[command(about = "Measures training samples/s of gantry-training on synthetic shapes")]
struct Args {
    /// Driver to train on: cpu, cuda, rocm or any.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// libtorch intra-op threads (tch::set_num_threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Epochs; the first is reported but left out of the median.
    #[arg(long, default_value_t = 4)]
    epochs: u32,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Images per class (three classes).
    #[arg(long, default_value_t = 200)]
    per_class: usize,
    /// Side of the generated images and of the network's input.
    #[arg(long, default_value_t = 32)]
    image_size: u32,
    /// Width of the network's first stage.
    #[arg(long, default_value_t = 16)]
    base_width: i64,
    /// Train under bf16 autocast (GPUs only; ignored on the CPU).
    #[arg(long)]
    bf16: bool,
    /// Where the dataset and the exported tensors go.
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = pick_device(&args.device)?;
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

    // Raw little-endian tensors: torch.frombuffer reads them without numpy or an image library.
    let mut images = BufWriter::new(fs::File::create(args.work_dir.join("train_images.f32"))?);
    for x in &data.train.images {
        images.write_all(&x.to_le_bytes())?;
    }
    images.flush()?;
    let labels: Vec<u8> = data
        .train
        .labels
        .iter()
        .flat_map(|l| l.to_le_bytes())
        .collect();
    fs::write(args.work_dir.join("train_labels.i64"), labels)?;
    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        threads: Some(args.threads),
        base_width: args.base_width,
        // bench/train_throughput.py does not augment: the same pixels on both sides.
        augment: false,
        bf16: args.bf16,
        ..TrainConfig::default()
    };
    let meta = serde_json::json!({
        "samples": data.train.len(),
        "image_size": data.image_size,
        "classes": data.classes,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "base_width": config.base_width,
        "epochs": config.epochs,
    });
    fs::write(
        args.work_dir.join("meta.json"),
        serde_json::to_vec_pretty(&meta)?,
    )?;

    let model = train(
        &config,
        &data,
        device,
        &mut |_| ControlFlow::Continue(()),
        &mut |_, _| ControlFlow::Continue(()),
        None,
    )?;
    let per_epoch: Vec<f64> = model
        .card
        .metrics
        .iter()
        .map(|m| m.samples_per_sec)
        .collect();
    let steady = if per_epoch.len() > 1 {
        &per_epoch[1..]
    } else {
        &per_epoch[..]
    };
    let report = serde_json::json!({
        "implementation": "rust-tch",
        "device": format!("{device:?}"),
        "gpu_runtime": format!("{:?}", gpu_runtime()),
        "threads": gantry_training::tch::get_num_threads(),
        "samples": data.train.len(),
        "image_size": data.image_size,
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "samples_per_sec_per_epoch": per_epoch,
        "samples_per_sec": median(steady),
        "final_loss": model.card.metrics.last().map(|m| m.loss),
        "final_train_accuracy": model.card.metrics.last().map(|m| m.train_accuracy),
    });
    println!("{report}");
    Ok(())
}
