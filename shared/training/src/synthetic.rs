//! Synthetic ImageFolder datasets whose classes differ only by shape.
//!
//! Each image is one filled shape (circle, square or upright triangle) on a plain background, at a
//! random colour, position and size, with a little pixel noise. The three shapes of one size have
//! the same area, and colours, positions and sizes are drawn from the same distributions for every
//! class, so the only thing that tells the classes apart is the outline: a classifier that reaches
//! high validation accuracy has learnt shape. With [`SyntheticSpec::shuffle_labels`] the images are
//! dealt into folders by a random permutation instead, so nothing can be learnt and validation
//! accuracy stays near chance (1/3).
//!
//! Files are written in a mix of formats (RGB PNG, grayscale PNG, JPEG) so the loader's decoding
//! paths all get exercised. Everything is deterministic given the seed.

use std::fs;
use std::io;
use std::path::Path;

use image::{GrayImage, ImageBuffer, Rgb, RgbImage};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The shapes, in class order; the folder names of a generated dataset.
pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];

/// One of the [`SHAPES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A filled disc.
    Circle,
    /// A filled axis-aligned square.
    Square,
    /// A filled equilateral triangle pointing up.
    Triangle,
}

impl Shape {
    /// All shapes, in class order.
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// The folder name of the shape's class.
    pub fn name(self) -> &'static str {
        SHAPES[self as usize]
    }
}

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticSpec {
    /// Images per class.
    pub per_class: usize,
    /// Side of the square images, in pixels (at least 16).
    pub image_size: u32,
    /// Seed of everything random.
    pub seed: u64,
    /// Deal images into class folders by a random permutation of their true labels (class sizes
    /// stay the same), so the folder says nothing about the picture.
    pub shuffle_labels: bool,
    /// Write a mix of RGB PNG, grayscale PNG and JPEG files; otherwise only RGB PNG.
    pub mixed_formats: bool,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self {
            per_class: 100,
            image_size: 32,
            seed: 1,
            shuffle_labels: false,
            mixed_formats: true,
        }
    }
}

/// Draws one shape on a random background.
pub fn draw(shape: Shape, size: u32, rng: &mut impl Rng) -> RgbImage {
    let s = size as f32;
    // Every shape gets the same area as a disc of radius r, and the same margin from the edges
    // (large enough for the widest, the triangle), so size and position carry no class signal.
    let r = rng.gen_range(s * 0.16..=s * 0.28);
    let margin = 1.6 * r;
    let cx = rng.gen_range(margin..=(s - margin).max(margin));
    let cy = rng.gen_range(margin..=(s - margin).max(margin));
    let (bg, fg) = contrasting_colours(rng);

    let half_side = r * std::f32::consts::PI.sqrt() / 2.0; // square of area pi r^2
    let side = r * (4.0 * std::f32::consts::PI / 3f32.sqrt()).sqrt(); // equilateral, same area
    let height = side * 3f32.sqrt() / 2.0;
    let (top, base) = (cy - 2.0 * height / 3.0, cy + height / 3.0);

    let inside = |x: f32, y: f32| -> bool {
        match shape {
            Shape::Circle => (x - cx).powi(2) + (y - cy).powi(2) <= r * r,
            Shape::Square => (x - cx).abs() <= half_side && (y - cy).abs() <= half_side,
            Shape::Triangle => {
                if y < top || y > base {
                    return false;
                }
                let half_width = (y - top) / height * side / 2.0;
                (x - cx).abs() <= half_width
            }
        }
    };
    let mut img: RgbImage = ImageBuffer::new(size, size);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let colour = if inside(x as f32 + 0.5, y as f32 + 0.5) {
            fg
        } else {
            bg
        };
        let mut out = [0u8; 3];
        for c in 0..3 {
            let noise: i16 = rng.gen_range(-8..=8);
            out[c] = (i16::from(colour[c]) + noise).clamp(0, 255) as u8;
        }
        *px = Rgb(out);
    }
    img
}

/// A background and a foreground colour whose luminances differ enough that the shape stays
/// visible in grayscale too.
fn contrasting_colours(rng: &mut impl Rng) -> ([u8; 3], [u8; 3]) {
    let luma =
        |c: [u8; 3]| 0.299 * f32::from(c[0]) + 0.587 * f32::from(c[1]) + 0.114 * f32::from(c[2]);
    loop {
        let bg: [u8; 3] = rng.gen();
        let fg: [u8; 3] = rng.gen();
        if (luma(bg) - luma(fg)).abs() >= 80.0 {
            return (bg, fg);
        }
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticReport {
    /// The class folder names ([`SHAPES`]).
    pub classes: Vec<String>,
    /// Files written.
    pub files: usize,
    /// For each file (relative path), the shape actually drawn; differs from its folder when the
    /// labels are shuffled.
    pub drawn: Vec<(String, Shape)>,
}

/// Writes a synthetic ImageFolder dataset into `dir` (created if missing): one folder per shape,
/// `per_class` images in each.
pub fn generate(dir: &Path, spec: &SyntheticSpec) -> io::Result<SyntheticReport> {
    if spec.image_size < 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "image_size must be at least 16",
        ));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let truth: Vec<Shape> = Shape::ALL
        .iter()
        .flat_map(|&s| std::iter::repeat_n(s, spec.per_class))
        .collect();
    let mut folders = truth.clone();
    if spec.shuffle_labels {
        folders.shuffle(&mut rng);
    }
    for shape in Shape::ALL {
        fs::create_dir_all(dir.join(shape.name()))?;
    }
    let mut drawn = Vec::with_capacity(truth.len());
    for (i, (&shape, &folder)) in truth.iter().zip(&folders).enumerate() {
        let img = draw(shape, spec.image_size, &mut rng);
        let format = if spec.mixed_formats { i % 5 } else { 0 };
        let (ext, bytes) = match format {
            1 => ("jpg", encode_jpeg(&img)?),
            3 => ("png", encode_png_gray(&image::imageops::grayscale(&img))?),
            _ => ("png", encode_png_rgb(&img)?),
        };
        let rel = format!("{}/{i:05}.{ext}", folder.name());
        fs::write(dir.join(&rel), bytes)?;
        drawn.push((rel, shape));
    }
    Ok(SyntheticReport {
        classes: SHAPES.iter().map(|s| s.to_string()).collect(),
        files: truth.len(),
        drawn,
    })
}

fn to_io(e: image::ImageError) -> io::Error {
    io::Error::other(e)
}

fn encode_png_rgb(img: &RgbImage) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    img.write_to(&mut io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(to_io)?;
    Ok(out)
}

fn encode_png_gray(img: &GrayImage) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    img.write_to(&mut io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(to_io)?;
    Ok(out)
}

fn encode_jpeg(img: &RgbImage) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
        .encode_image(img)
        .map_err(to_io)?;
    Ok(out)
}
