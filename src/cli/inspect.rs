//! `mammo-edge inspect`: one report per file (what was read, which VOI path was taken, pixel
//! statistics, crop and flip) plus optional preview and grey-level PNGs. JSON keys: docs/inspect.md.

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::{ImageBuffer, Luma};
use serde::Serialize;
use thiserror::Error;

use crate::ingest::dicom::grey::{GreyImage, Stats};
use crate::ingest::dicom::{
    self, Category, IngestError, IngestOptions, Laterality, MammoMeta, Vendor, View,
};
use crate::ingest::preprocess::{self, CropBox, PreprocessConfig, Preprocessed, Side};

/// Errors of writing inspection artefacts (PNG files).
#[derive(Debug, Error)]
pub enum InspectError {
    #[error("cannot write {path}: {detail}")]
    Write { path: PathBuf, detail: String },
    #[error(transparent)]
    Preprocess(#[from] preprocess::PreprocessError),
}

/// One file's report. `status` is `accepted` or `rejected`; rejected files carry `reason`,
/// `code` and `category` (`error` | `skipped`) and whatever metadata could be read.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub file: String,
    pub status: &'static str,
    pub reason: Option<String>,
    pub code: Option<&'static str>,
    pub category: Option<Category>,
    pub vendor: Option<Vendor>,
    pub manufacturer: Option<String>,
    pub model_name: Option<String>,
    pub modality: Option<String>,
    pub sop_class: Option<String>,
    pub laterality: Option<Laterality>,
    pub laterality_source: Option<&'static str>,
    pub view: Option<View>,
    pub view_source: Option<&'static str>,
    pub presentation_intent: Option<String>,
    pub transfer_syntax: Option<String>,
    pub transfer_syntax_name: Option<String>,
    pub rows: Option<u32>,
    pub columns: Option<u32>,
    pub bits_stored: Option<u16>,
    pub photometric: Option<String>,
    /// Pixel spacing in mm (row, column), when present and non-zero.
    pub pixel_spacing_mm: Option<[f64; 2]>,
    /// VOI path taken by the grey-level pipeline.
    pub voi: Option<String>,
    pub inverted: Option<bool>,
    /// Grey levels after the pipeline, in [0, 1].
    pub stats: Option<Stats>,
    /// Range of modality values (after the Modality LUT).
    pub modality_range: Option<[f64; 2]>,
    pub crop: Option<CropBox>,
    pub flipped: Option<bool>,
    pub chest_wall: Option<Side>,
    pub orientation_mismatch: Option<bool>,
    /// Milliseconds spent: decompression, grey pipeline, preprocessing, whole file.
    pub decode_ms: Option<f64>,
    pub grey_ms: Option<f64>,
    pub preprocess_ms: Option<f64>,
    pub total_ms: f64,
}

impl Report {
    fn empty(file: &Path) -> Report {
        Report {
            file: file.display().to_string(),
            status: "rejected",
            reason: None,
            code: None,
            category: None,
            vendor: None,
            manufacturer: None,
            model_name: None,
            modality: None,
            sop_class: None,
            laterality: None,
            laterality_source: None,
            view: None,
            view_source: None,
            presentation_intent: None,
            transfer_syntax: None,
            transfer_syntax_name: None,
            rows: None,
            columns: None,
            bits_stored: None,
            photometric: None,
            pixel_spacing_mm: None,
            voi: None,
            inverted: None,
            stats: None,
            modality_range: None,
            crop: None,
            flipped: None,
            chest_wall: None,
            orientation_mismatch: None,
            decode_ms: None,
            grey_ms: None,
            preprocess_ms: None,
            total_ms: 0.0,
        }
    }

    fn fill_meta(&mut self, m: &MammoMeta) {
        self.vendor = Some(m.vendor);
        self.manufacturer = Some(m.manufacturer.clone());
        self.model_name = Some(m.model_name.clone());
        self.modality = m.modality.clone();
        self.sop_class = Some(m.sop_class_uid.clone());
        self.laterality = m.laterality;
        self.laterality_source = Some(m.laterality_source);
        self.view = Some(m.view);
        self.view_source = Some(m.view_source);
        self.presentation_intent = m.presentation_intent.clone();
        self.transfer_syntax = Some(m.transfer_syntax.clone());
        self.transfer_syntax_name = Some(m.transfer_syntax_name.clone());
        self.rows = Some(m.rows);
        self.columns = Some(m.columns);
        self.bits_stored = Some(m.bits_stored);
        self.photometric = Some(m.photometric.clone());
        self.pixel_spacing_mm = m.pixel_spacing.as_ref().map(|p| [p.row_mm, p.column_mm]);
    }

    fn reject(&mut self, e: &IngestError) {
        self.status = "rejected";
        self.reason = Some(e.to_string());
        self.code = Some(e.code());
        self.category = Some(e.category());
    }

    /// One human-readable line.
    pub fn to_line(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        if self.status == "accepted" {
            format!(
                "{}: accepted | {} {} {} | {} | {} rows x {} cols, {} bit {} | voi: {} | grey min {:.3} max {:.3} mean {:.3} | crop {} flip {}{} | {:.0} ms",
                self.file,
                opt(self.vendor.map(|v| v.to_string())),
                opt(self.laterality.map(|l| l.to_string())),
                opt(self.view.map(|v| v.to_string())),
                opt(self.transfer_syntax_name.clone()),
                self.rows.unwrap_or(0),
                self.columns.unwrap_or(0),
                self.bits_stored.unwrap_or(0),
                opt(self.photometric.clone()),
                opt(self.voi.clone()),
                self.stats.map(|s| s.min).unwrap_or(0.0),
                self.stats.map(|s| s.max).unwrap_or(0.0),
                self.stats.map(|s| s.mean).unwrap_or(0.0),
                opt(self.crop.map(|c| format!("x {}..{} y {}..{}", c.x0, c.x1, c.y0, c.y1))),
                self.flipped.unwrap_or(false),
                if self.orientation_mismatch == Some(true) { " ORIENTATION MISMATCH" } else { "" },
                self.total_ms
            )
        } else {
            format!(
                "{}: rejected ({}) {} | vendor {}, modality {}, {}",
                self.file,
                match self.category {
                    Some(Category::Skipped) => "skipped",
                    _ => "error",
                },
                opt(self.reason.clone()),
                opt(self.vendor.map(|v| v.to_string())),
                opt(self.modality.clone()),
                opt(self.transfer_syntax_name.clone()),
            )
        }
    }
}

/// Where to write optional images.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// Preprocessed model input as an 8-bit PNG (`<stem>.png`).
    pub preview_dir: Option<PathBuf>,
    /// Grey-level pipeline output at source resolution, before crop and flip, as a 16-bit PNG
    /// (0..65535 for 0..1), named `<stem>.png`.
    pub grey_dir: Option<PathBuf>,
}

/// Inspect one file. Image-writing failures are errors; rejected inputs are reports, not errors.
pub fn inspect_file(
    path: &Path,
    opts: &IngestOptions,
    cfg: &PreprocessConfig,
    out: &Outputs,
) -> Result<Report, InspectError> {
    let t0 = Instant::now();
    let mut r = Report::empty(path);
    match dicom::read_mammogram_detailed(path, opts) {
        Err((meta, e)) => {
            if let Some(m) = meta {
                r.fill_meta(&m);
            }
            r.reject(&e);
        }
        Ok(m) => {
            r.fill_meta(&m.meta);
            r.status = "accepted";
            r.voi = Some(m.grey.voi.clone());
            r.inverted = Some(m.grey.inverted);
            r.stats = Some(m.image.stats());
            r.modality_range = Some([m.grey.modality_min, m.grey.modality_max]);
            r.decode_ms = Some(round2(m.grey.decode_ms));
            r.grey_ms = Some(round2(m.grey.grey_ms));
            let t1 = Instant::now();
            let p = preprocess::preprocess(&m, cfg)?;
            r.preprocess_ms = Some(round2(t1.elapsed().as_secs_f64() * 1e3));
            r.crop = Some(p.geometry.crop);
            r.flipped = Some(p.geometry.flipped);
            r.chest_wall = Some(p.geometry.chest_wall);
            r.orientation_mismatch = Some(p.geometry.orientation_mismatch);
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            if let Some(dir) = &out.grey_dir {
                write_grey16(&m.image, &dir.join(format!("{stem}.png")))?;
            }
            if let Some(dir) = &out.preview_dir {
                write_preview(&p, cfg, &dir.join(format!("{stem}.png")))?;
            }
        }
    }
    r.total_ms = round2(t0.elapsed().as_secs_f64() * 1e3);
    Ok(r)
}

/// Milliseconds to two decimals (no float noise in JSON).
fn round2(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

fn write_err(path: &Path, e: impl ToString) -> InspectError {
    InspectError::Write {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Write grey levels [0, 1] as a 16-bit greyscale PNG (v · 65535, rounded).
pub fn write_grey16(img: &GreyImage, path: &Path) -> Result<(), InspectError> {
    let data: Vec<u16> = img
        .data
        .iter()
        .map(|&v| (v.clamp(0.0, 1.0) * 65535.0).round() as u16)
        .collect();
    let buf: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_raw(img.width as u32, img.height as u32, data)
            .ok_or_else(|| write_err(path, "buffer size mismatch"))?;
    ensure_dir(path)?;
    buf.save(path).map_err(|e| write_err(path, e))
}

/// Write the preprocessed model input (de-normalised to [0, 1]) as an 8-bit PNG.
pub fn write_preview(
    p: &Preprocessed,
    cfg: &PreprocessConfig,
    path: &Path,
) -> Result<(), InspectError> {
    let data: Vec<u8> = p
        .grey_levels(cfg)
        .iter()
        .map(|&v| (v * 255.0).round() as u8)
        .collect();
    let buf: ImageBuffer<Luma<u8>, Vec<u8>> =
        ImageBuffer::from_raw(p.width as u32, p.height as u32, data)
            .ok_or_else(|| write_err(path, "buffer size mismatch"))?;
    ensure_dir(path)?;
    buf.save(path).map_err(|e| write_err(path, e))
}

fn ensure_dir(path: &Path) -> Result<(), InspectError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| write_err(d, e))?;
    }
    Ok(())
}
