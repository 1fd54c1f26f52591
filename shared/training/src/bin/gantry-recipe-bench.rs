//! `gantry-recipe-bench`: how close the service's default recipe comes to the best of a small
//! grid of tuned settings, for `bench/recipe.sh`.
//!
//! For each dataset (synthetic shapes at a given image side, generated with
//! [`synthetic::generate`], and, given `--digits-csv`, the 8x8 handwritten digits of the UCI
//! collection that scikit-learn ships, written out as an ImageFolder of PNGs) it trains the defaults a job gets when the caller names none
//! (`gantry_contracts::jobs::TrainParams`: 10 epochs, batches of 32, Adam at 3e-3 with the
//! cosine schedule, image size chosen from the data, shifts on, the best epoch kept), then the
//! grid: image size {chosen, 32, 64} x learning rate {1e-3, 3e-3, 1e-2} x shifts {on, off}, at the
//! same epochs. Each result is the validation accuracy of the weights a job would store (the
//! best epoch's). It prints one JSON line per run and a table: dataset, default accuracy, best
//! tuned accuracy and settings, gap in points.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use clap::Parser;
use gantry_training::synthetic::{self, SyntheticSpec};
use gantry_training::tch::Device;
use gantry_training::{choose_image_size, train, Dataset, Listing, LoadOptions, TrainConfig};

#[derive(Parser, Debug)]
#[command(about = "Trains the default recipe and a small tuned grid on shapes and digits")]
struct Args {
    /// libtorch intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Epochs of every run (the api's default is 10).
    #[arg(long, default_value_t = 10)]
    epochs: u32,
    /// Images per class (three classes; a fifth of each is validation).
    #[arg(long, default_value_t = 100)]
    per_class: usize,
    /// Sides of the generated datasets, one dataset each.
    #[arg(long, value_delimiter = ',', default_value = "28,44")]
    sides: Vec<u32>,
    /// The handwritten digits as CSV lines of 64 pixel values (0 to 16, row by row) and the
    /// label: scikit-learn's `datasets/data/digits.csv` (bench/recipe.sh fetches it).
    #[arg(long)]
    digits_csv: Option<PathBuf>,
    /// Where the datasets go.
    #[arg(long)]
    work_dir: PathBuf,
}

/// Writes the digits CSV as an ImageFolder: one folder per label, one 8x8 grayscale PNG per line.
fn write_digits(csv: &Path, dir: &Path) -> Result<usize, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(csv)?;
    let mut written = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || format!("line {}: not 64 pixels and a digit", n + 1);
        let values: Vec<f64> = line
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        let [pixels @ .., label] = values.as_slice() else {
            unreachable!("split yields at least one field")
        };
        if pixels.len() != 64 || !(0.0..=9.0).contains(label) || label.fract() != 0.0 {
            return Err(bad().into());
        }
        let bytes: Vec<u8> = pixels
            .iter()
            .map(|v| (v.clamp(0.0, 16.0) * 255.0 / 16.0).round() as u8)
            .collect();
        let img = image::GrayImage::from_raw(8, 8, bytes).expect("64 bytes");
        let class = dir.join(format!("{}", *label as u32));
        std::fs::create_dir_all(&class)?;
        img.save(class.join(format!("{written:05}.png")))?;
        written += 1;
    }
    Ok(written)
}

#[derive(Clone, Debug)]
struct Setting {
    image_size: u32,
    learning_rate: f64,
    augment: bool,
}

fn run(
    dir: &Path,
    setting: &Setting,
    epochs: u32,
    threads: usize,
) -> Result<(f64, u32), Box<dyn std::error::Error>> {
    let options = LoadOptions {
        image_size: setting.image_size,
        validation_split: 0.2,
        ..LoadOptions::default()
    };
    let data = Dataset::load(dir, &options)?;
    // What services/trainer/src/training.rs::train_config makes of TrainParams::default().
    let config = TrainConfig {
        epochs,
        batch_size: 32,
        learning_rate: setting.learning_rate,
        augment: setting.augment,
        threads: Some(threads),
        ..TrainConfig::default()
    };
    let model = train(
        &config,
        &data,
        Device::Cpu,
        &mut |_| ControlFlow::Continue(()),
        &mut |_, _| ControlFlow::Continue(()),
        None,
    )?;
    let acc = model.card.final_val_accuracy().unwrap_or(0.0);
    Ok((acc, model.card.training.best_epoch.unwrap_or(epochs)))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut datasets = Vec::new();
    for &side in &args.sides {
        let name = format!("shapes-{side}");
        let dir = args.work_dir.join(&name);
        if !dir.exists() {
            let spec = SyntheticSpec {
                per_class: args.per_class,
                image_size: side,
                seed: 11,
                mixed_formats: true,
                ..SyntheticSpec::default()
            };
            synthetic::generate(&dir, &spec)?;
        }
        datasets.push((name, dir));
    }
    if let Some(csv) = &args.digits_csv {
        let dir = args.work_dir.join("digits-8");
        if !dir.exists() {
            write_digits(csv, &dir)?;
        }
        datasets.push(("digits-8".to_string(), dir));
    }
    let mut table = Vec::new();
    for (name, dir) in &datasets {
        let dir = dir.as_path();
        let limits = LoadOptions::default().limits;
        let chosen = choose_image_size(&Listing::scan(dir, &limits)?, &limits)?;
        let default = Setting {
            image_size: chosen,
            learning_rate: 3e-3,
            augment: true,
        };
        let mut sizes = vec![chosen, 32, 64];
        sizes.dedup();
        sizes.sort_unstable();
        sizes.dedup();
        let mut results = Vec::new();
        for &image_size in &sizes {
            for learning_rate in [1e-3, 3e-3, 1e-2] {
                for augment in [true, false] {
                    let s = Setting {
                        image_size,
                        learning_rate,
                        augment,
                    };
                    let (acc, best_epoch) = run(dir, &s, args.epochs, args.threads)?;
                    println!(
                        "{}",
                        serde_json::json!({
                            "dataset": name, "image_size": image_size,
                            "learning_rate": learning_rate, "augment": augment,
                            "epochs": args.epochs, "val_accuracy": acc, "best_epoch": best_epoch,
                        })
                    );
                    results.push((s, acc));
                }
            }
        }
        let default_acc = results
            .iter()
            .find(|(s, _)| {
                s.image_size == default.image_size
                    && s.learning_rate == default.learning_rate
                    && s.augment == default.augment
            })
            .map(|r| r.1)
            .expect("the default is in the grid");
        let (best, best_acc) = results
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .cloned()
            .expect("a grid");
        table.push((name, chosen, default_acc, best, best_acc));
    }
    println!();
    println!(
        "dataset     chosen size  default acc  best tuned acc (size, lr, shifts)  gap (points)"
    );
    for (name, chosen, default_acc, best, best_acc) in &table {
        println!(
            "{name:<11} {chosen:>11}  {default_acc:>11.3}  {best_acc:>7.3} ({}, {}, {})  {:>16.1}",
            best.image_size,
            best.learning_rate,
            if best.augment { "on" } else { "off" },
            (best_acc - default_acc) * 100.0
        );
    }
    // The rows bench/run.sh tabulates: the default's accuracy, the best tuned one's, the ratio.
    for (name, _, default_acc, _, best_acc) in &table {
        println!(
            "ROW\tvalidation accuracy, default recipe vs best tuned ({name}, {} epochs; gap {:.1} points)\t{default_acc:.3}\t{best_acc:.3}\t{:.3}",
            args.epochs,
            (best_acc - default_acc) * 100.0,
            default_acc / best_acc.max(f64::EPSILON)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_written_one_folder_per_label_at_full_contrast() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("digits.csv");
        let row = |label: u32, value: u32| {
            let mut fields = vec![value.to_string(); 64];
            fields.push(label.to_string());
            fields.join(",")
        };
        std::fs::write(&csv, format!("{}\n{}\n\n", row(7, 16), row(0, 8))).unwrap();
        let out = dir.path().join("digits");
        assert_eq!(write_digits(&csv, &out).unwrap(), 2);
        let seven = image::open(out.join("7/00000.png")).unwrap().to_luma8();
        assert_eq!(seven.dimensions(), (8, 8));
        assert!(seven.pixels().all(|p| p.0 == [255]));
        let zero = image::open(out.join("0/00001.png")).unwrap().to_luma8();
        assert!(zero.pixels().all(|p| p.0 == [128]));

        std::fs::write(&csv, "1,2,3,4\n").unwrap();
        let err = write_digits(&csv, &dir.path().join("short")).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        std::fs::write(&csv, row(12, 0)).unwrap();
        assert!(write_digits(&csv, &dir.path().join("label")).is_err());
        std::fs::write(&csv, format!("{}\n\n{}", row(1, 0), row(3, 0) + ".5")).unwrap();
        let err = write_digits(&csv, &dir.path().join("half")).unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
    }
}
