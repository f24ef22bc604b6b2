//! Synthetic mammograms written as real DICOM files: deterministic random numbers and UIDs, a
//! simple geometric phantom (tests, demo), the anatomical phantom generator with ground truth for
//! every task (`generator`, `anatomy`, `style`), and the DICOM writer (`writer`).

pub mod anatomy;
pub mod font;
pub mod generator;
pub mod noise;
pub mod sheet;
pub mod style;
pub mod writer;

use thiserror::Error;

pub use crate::dataset::rng::SplitMix64;
use crate::ingest::dicom::Laterality;
use crate::ingest::preprocess::Side;
pub use writer::{write_object, DicomSpec, LutItem};

/// Errors of the phantom generator and the DICOM writer.
#[derive(Debug, Error)]
pub enum SynthError {
    #[error("building the DICOM file meta group failed: {0}")]
    Meta(String),
    #[error("writing {path} failed: {detail}")]
    Write { path: String, detail: String },
    #[error("pixel buffer has {actual} samples, Rows x Columns is {expected}")]
    PixelCount { expected: usize, actual: usize },
    #[error("invalid synth option {key}: {detail}")]
    Config { key: &'static str, detail: String },
    #[error("--compress needs {tool} ({package}): {detail}")]
    Encoder {
        tool: &'static str,
        package: &'static str,
        detail: String,
    },
    #[error(transparent)]
    Manifest(#[from] crate::dataset::manifest::ManifestError),
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(
        "output folder {0} already holds images/ or manifest.csv; choose an empty or new folder"
    )]
    OutputNotEmpty(String),
}

/// A UID under the 2.25 root (PS3.5 B.2: UUID-derived), deterministic in `seed` and `kind`.
pub fn uid(seed: u64, kind: &str) -> String {
    let mut r = SplitMix64::new(
        seed ^ kind.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        }),
    );
    let v = ((r.next_u64() as u128) << 64 | r.next_u64() as u128) >> 2;
    format!("2.25.{v}")
}

/// A simple geometric breast phantom in display grey levels [0, 1] (0 = air): a half-ellipse
/// against the chest-wall edge with smooth texture, optional burned-in label block and implant.
#[derive(Debug, Clone, PartialEq)]
pub struct GeometricPhantom {
    pub rows: usize,
    pub columns: usize,
    /// Edge the breast is attached to.
    pub chest_wall: Side,
    /// Air level and its noise standard deviation, in grey levels.
    pub background: f32,
    pub background_noise: f32,
    /// Bright burned-in label block in the corner opposite the chest wall (top).
    pub label_block: bool,
    /// Bright implant-like ellipse inside the breast.
    pub implant: bool,
    pub seed: u64,
}

impl GeometricPhantom {
    /// A `rows × columns` phantom with the chest wall where `laterality` normally puts it.
    pub fn new(rows: usize, columns: usize, laterality: Laterality) -> Self {
        GeometricPhantom {
            rows,
            columns,
            chest_wall: crate::ingest::preprocess::expected_chest_wall(laterality),
            background: 0.0,
            background_noise: 0.0,
            label_block: false,
            implant: false,
            seed: 1,
        }
    }

    /// Breast extent as (semi-axis along x, semi-axis along y, centre y), pixels.
    pub fn ellipse(&self) -> (f64, f64, f64) {
        (
            0.62 * self.columns as f64,
            0.40 * self.rows as f64,
            0.5 * self.rows as f64,
        )
    }

    /// Label block rectangle `[x0, x1) × [y0, y1)`, pixels.
    pub fn label_rect(&self) -> (usize, usize, usize, usize) {
        let (w, h) = (self.columns / 8, self.rows / 16);
        let x0 = match self.chest_wall {
            Side::Left => self.columns - w - self.columns / 40,
            Side::Right => self.columns / 40,
        };
        (x0, x0 + w, self.rows / 40, self.rows / 40 + h)
    }

    /// Grey levels `[rows × columns]`, row-major.
    pub fn render(&self) -> Vec<f32> {
        let mut rng = SplitMix64::new(self.seed);
        let (a, b, cy) = self.ellipse();
        let (lx0, lx1, ly0, ly1) = self.label_rect();
        let mut out = Vec::with_capacity(self.rows * self.columns);
        for y in 0..self.rows {
            for x in 0..self.columns {
                let d = match self.chest_wall {
                    Side::Left => x as f64,
                    Side::Right => (self.columns - 1 - x) as f64,
                };
                let (u, v) = (d / a, (y as f64 - cy) / b);
                let r2 = u * u + v * v;
                let mut g = self.background as f64 + self.background_noise as f64 * rng.normal();
                if r2 <= 1.0 {
                    // thickness falls off towards the skin line; texture from two sinusoids
                    let thickness = (1.0 - r2).sqrt();
                    let texture = 0.05 * ((x as f64 * 0.11).sin() * (y as f64 * 0.07).cos());
                    g = 0.35 + 0.3 * thickness + texture;
                    if self.implant {
                        let (iu, iv) = ((d - 0.35 * a) / (0.18 * a), (y as f64 - cy) / (0.25 * b));
                        if iu * iu + iv * iv <= 1.0 {
                            g = 0.97;
                        }
                    }
                }
                if self.label_block && (lx0..lx1).contains(&x) && (ly0..ly1).contains(&y) {
                    g = 1.0;
                }
                out.push(g.clamp(0.0, 1.0) as f32);
            }
        }
        out
    }
}
