//! ImageFolder loading: layout errors, limits (decompression bombs included), bad files, symlinks,
//! the content hash and the split.

use std::fs;
use std::path::Path;

use gantry_training::synthetic::{self, SyntheticSpec};
use gantry_training::{content_hash, Dataset, DatasetError, DatasetLimits, Listing, LoadOptions};

fn generate(dir: &Path, per_class: usize) {
    let spec = SyntheticSpec {
        per_class,
        image_size: 32,
        seed: 11,
        ..SyntheticSpec::default()
    };
    synthetic::generate(dir, &spec).unwrap();
}

fn options() -> LoadOptions {
    LoadOptions {
        image_size: 32,
        ..LoadOptions::default()
    }
}

fn load_err(dir: &Path, options: &LoadOptions) -> DatasetError {
    let err = Dataset::load(dir, options).expect_err("the dataset should be refused");
    assert!(err.is_data_error(), "{err:?} should count as a data error");
    err
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(width, height, image::Rgb([200, 10, 10]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A PNG whose header claims `width` x `height` but which holds almost no data: decoding it
/// would try to allocate gigabytes.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn a_single_class_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("cats")).unwrap();
    fs::write(dir.path().join("cats/a.png"), png(20, 20)).unwrap();
    fs::write(dir.path().join("stray.png"), png(20, 20)).unwrap();
    let err = load_err(dir.path(), &options());
    assert!(
        matches!(err, DatasetError::TooFewClasses { found: 1 }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("at least two class folders"),
        "{err}"
    );
}

#[test]
fn a_class_without_images_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 3);
    fs::create_dir(dir.path().join("hexagon")).unwrap();
    fs::write(dir.path().join("hexagon/README.txt"), "no images here").unwrap();
    let err = load_err(dir.path(), &options());
    assert!(
        matches!(&err, DatasetError::EmptyClass { class } if class == "hexagon"),
        "{err:?}"
    );
}

#[test]
fn a_missing_root_is_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_err(&dir.path().join("nope"), &options());
    assert!(matches!(err, DatasetError::NotADirectory), "{err:?}");
}

#[test]
fn a_decompression_bomb_is_refused_from_its_header() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 3);
    fs::write(dir.path().join("circle/bomb.png"), png_bomb(60_000, 60_000)).unwrap();
    let err = load_err(dir.path(), &options());
    assert!(
        matches!(&err, DatasetError::ImageTooLarge { path, width: 60_000, height: 60_000, .. } if path == "circle/bomb.png"),
        "{err:?}"
    );
}

#[test]
fn images_over_the_pixel_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 3);
    fs::write(dir.path().join("square/big.png"), png(300, 200)).unwrap();
    let limits = DatasetLimits {
        max_image_pixels: 50_000,
        ..DatasetLimits::default()
    };
    let err = load_err(
        dir.path(),
        &LoadOptions {
            limits,
            ..options()
        },
    );
    assert!(
        matches!(
            err,
            DatasetError::ImageTooLarge {
                width: 300,
                height: 200,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn files_over_the_size_limit_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 3);
    let limits = DatasetLimits {
        max_file_bytes: 100,
        ..DatasetLimits::default()
    };
    let err = Listing::scan(dir.path(), &limits).unwrap_err();
    assert!(
        matches!(err, DatasetError::FileTooLarge { max: 100, .. }),
        "{err:?}"
    );
    let limits = DatasetLimits {
        max_files: 5,
        ..DatasetLimits::default()
    };
    let err = Listing::scan(dir.path(), &limits).unwrap_err();
    assert!(
        matches!(err, DatasetError::TooManyFiles { max: 5 }),
        "{err:?}"
    );
}

#[test]
fn a_file_that_is_not_an_image_is_named() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 3);
    fs::write(
        dir.path().join("triangle/broken.jpg"),
        b"this is not a jpeg",
    )
    .unwrap();
    let err = load_err(dir.path(), &options());
    assert!(
        matches!(&err, DatasetError::BadImage { path, .. } if path == "triangle/broken.jpg"),
        "{err:?}"
    );
    // The message names the path inside the dataset, never the real filesystem.
    assert!(
        !err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn symlinks_inside_a_dataset_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    generate(dir.path(), 3);
    fs::write(outside.path().join("secret.png"), png(20, 20)).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.png"),
        dir.path().join("circle/link.png"),
    )
    .unwrap();
    let err = load_err(dir.path(), &options());
    assert!(
        matches!(&err, DatasetError::Symlink { path } if path == "circle/link.png"),
        "{err:?}"
    );
}

#[test]
fn the_hash_covers_exactly_the_images_read() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 4);
    let limits = DatasetLimits::default();
    let listing = Listing::scan(dir.path(), &limits).unwrap();
    assert_eq!(listing.class_counts(), [4, 4, 4]);
    let hash = content_hash(&listing, &limits).unwrap();
    assert_eq!(hash.as_str().len(), 64);
    let data = Dataset::load(dir.path(), &options()).unwrap();
    assert_eq!(data.content_hash, hash, "loading computes the same hash");

    fs::write(dir.path().join("circle/notes.txt"), "ignored").unwrap();
    let listing = Listing::scan(dir.path(), &limits).unwrap();
    assert_eq!(
        content_hash(&listing, &limits).unwrap(),
        hash,
        "non-image files do not count"
    );

    let first = dir.path().join(&listing.files[0].relative_path);
    let mut bytes = fs::read(&first).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    fs::write(&first, bytes).unwrap();
    assert_ne!(
        content_hash(&listing, &limits).unwrap(),
        hash,
        "a changed byte changes the hash"
    );
}

#[test]
fn the_split_is_stratified_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 10);
    let a = Dataset::load(dir.path(), &options()).unwrap();
    let b = Dataset::load(
        dir.path(),
        &LoadOptions {
            decode_threads: 1,
            ..options()
        },
    )
    .unwrap();
    assert_eq!(a.validation.paths, b.validation.paths);
    assert_eq!(
        a.train.images, b.train.images,
        "thread count does not change the pixels"
    );
    for class in 0..3 {
        assert_eq!(
            a.validation.labels.iter().filter(|l| **l == class).count(),
            2
        );
        assert_eq!(a.train.labels.iter().filter(|l| **l == class).count(), 8);
    }
    let c = Dataset::load(
        dir.path(),
        &LoadOptions {
            split_seed: 99,
            ..options()
        },
    )
    .unwrap();
    assert_ne!(
        a.validation.paths, c.validation.paths,
        "another seed, another split"
    );

    // Grayscale PNGs and JPEGs come out as 3-channel, normalised, resized images.
    let d = Dataset::load(
        dir.path(),
        &LoadOptions {
            image_size: 20,
            ..options()
        },
    )
    .unwrap();
    assert_eq!(d.train.images.len(), d.train.len() * 3 * 20 * 20);
    assert!(d
        .train
        .images
        .iter()
        .all(|x| x.is_finite() && x.abs() < 3.0));
}

#[test]
fn options_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 2);
    for options in [
        LoadOptions {
            image_size: 8,
            ..options()
        },
        LoadOptions {
            validation_split: 0.95,
            ..options()
        },
    ] {
        let err = load_err(dir.path(), &options);
        assert!(matches!(err, DatasetError::InvalidOptions(_)), "{err:?}");
    }
    let limits = DatasetLimits {
        max_decoded_bytes: 1000,
        ..DatasetLimits::default()
    };
    let err = load_err(
        dir.path(),
        &LoadOptions {
            limits,
            ..options()
        },
    );
    assert!(
        matches!(err, DatasetError::DecodedTooLarge { .. }),
        "{err:?}"
    );
}
