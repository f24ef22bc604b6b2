//! One image through the whole scoring path: DICOM → ingest (or an image file → the image-file
//! reader) → THE preprocessing (with the model's parameters) → tract → an [`ImageResult`] with
//! class names, flags and the model's intended use. Used by the daemon (DICOM only) and by
//! `mammo-edge infer` (src/cli/infer.rs).

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use crate::ingest::dicom::{
    read_mammogram_detailed, Category, IngestError, IngestOptions, Laterality, MammoMeta,
    Resolution, Vendor, View,
};
use crate::ingest::files::sha256_hex;
use crate::ingest::image_file::{read_bounded, read_image_bytes, ImageFileError, ImageFileReport};
use crate::ingest::preprocess::{preprocess, preprocess_image, PreprocessError};
use crate::model::precision::{faster, sibling, Candidate};
use crate::model::{bundled, ContractError, ModelOutputs, ModelRunner};

/// Why an image has no result.
#[derive(Debug, Error)]
pub enum InferError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    ImageFile(#[from] ImageFileError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Model(#[from] ContractError),
}

impl InferError {
    /// `skipped` for valid input the model does not score, `error` otherwise.
    pub fn category(&self) -> Category {
        match self {
            InferError::Ingest(e) => e.category(),
            // a colour picture is valid input the model does not score
            InferError::ImageFile(ImageFileError::NotGrey { .. }) => Category::Skipped,
            _ => Category::Error,
        }
    }

    /// Stable machine code of the reason: the ingest codes (`truncated`, `not_mammogram` …),
    /// the image-file codes (`undecodable`, `not_grey` …), `preprocess`, `non_finite_output` (a
    /// model output NaN or infinite) or `model`.
    pub fn code(&self) -> &'static str {
        match self {
            InferError::Ingest(e) => e.code(),
            InferError::ImageFile(e) => e.code(),
            InferError::Preprocess(_) => "preprocess",
            InferError::Model(ContractError::NonFinite { .. }) => "non_finite_output",
            InferError::Model(_) => "model",
        }
    }
}

/// Result for one image. No patient attribute appears here.
#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    pub model_name: String,
    pub model_version: String,
    pub intended_use: String,
    pub laterality: Option<Laterality>,
    pub view: View,
    /// Vendor from the DICOM header.
    pub vendor: Vendor,
    /// Vendor predicted by the model (class name) and its probability.
    pub vendor_predicted: String,
    pub vendor_probability: f32,
    /// Cancer probability (0–1) and whether it reaches the model's operating threshold.
    pub cancer_probability: f32,
    pub cancer_flag: bool,
    pub normal_probability: f32,
    /// BI-RADS density class (argmax) and the A–D probabilities.
    pub density: String,
    pub density_probabilities: [f32; 4],
    /// Percent density, 0–100 %.
    pub percent_density: f32,
    /// Predicted view (CC / MLO) and its probability.
    pub view_predicted: String,
    pub view_probability: f32,
    /// Reconstruction error and whether it exceeds the model's out-of-distribution threshold.
    pub ood_score: f32,
    pub ood: bool,
    /// The header's laterality disagrees with the side found in the image (the header is trusted).
    pub orientation_mismatch: bool,
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    pub inference_ms: f64,
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]))
        .unwrap_or(0)
}

/// Turn raw outputs into a result with the model's class names and thresholds.
pub fn interpret(runner: &ModelRunner, o: &ModelOutputs) -> ImageResult {
    let m = &runner.meta;
    let d = argmax(&o.density);
    let v = argmax(&o.vendor);
    let w = argmax(&o.view);
    ImageResult {
        model_name: m.model_name.clone(),
        model_version: m.model_version.clone(),
        intended_use: m.intended_use.clone(),
        laterality: None,
        view: View::Other,
        vendor: Vendor::Other,
        vendor_predicted: m.vendor_classes.get(v).cloned().unwrap_or_default(),
        vendor_probability: o.vendor.get(v).copied().unwrap_or(0.0),
        cancer_probability: o.cancer,
        cancer_flag: o.cancer >= m.cancer_threshold,
        normal_probability: o.normal,
        density: m.density_classes.get(d).cloned().unwrap_or_default(),
        density_probabilities: o.density,
        percent_density: o.percent_density,
        view_predicted: m.view_classes.get(w).cloned().unwrap_or_default(),
        view_probability: o.view[w],
        ood_score: o.ood(m).0,
        ood: o.ood(m).0 > o.ood(m).1,
        orientation_mismatch: false,
        decode_ms: 0.0,
        preprocess_ms: 0.0,
        inference_ms: 0.0,
    }
}

/// A scored image with the header it came from (UIDs, AccessionNumber, Manufacturer: the caller
/// decides what of it may be published).
#[derive(Debug, Clone)]
pub struct Scored {
    pub meta: MammoMeta,
    pub result: ImageResult,
}

/// Score one DICOM file.
pub fn infer_file(
    runner: &ModelRunner,
    path: &Path,
    opts: &IngestOptions,
) -> Result<ImageResult, InferError> {
    infer_file_detailed(runner, path, opts)
        .map(|s| s.result)
        .map_err(|(_, e)| e)
}

/// As [`infer_file`], also returning the header; a rejection carries the header when it could be
/// read (so a skipped or failed file can be reported with its UIDs, view and vendor).
pub fn infer_file_detailed(
    runner: &ModelRunner,
    path: &Path,
    opts: &IngestOptions,
) -> Result<Scored, (Option<Box<MammoMeta>>, InferError)> {
    let t0 = Instant::now();
    let opts = for_model(runner, opts);
    let m = read_mammogram_detailed(path, &opts).map_err(|(meta, e)| (meta, e.into()))?;
    let t1 = Instant::now();
    let with_meta = |e: InferError| (Some(Box::new(m.meta.clone())), e);
    let p = preprocess(&m, &runner.meta.preprocess()).map_err(|e| with_meta(e.into()))?;
    let t2 = Instant::now();
    let o = runner.run(&p.tensor).map_err(|e| with_meta(e.into()))?;
    let t3 = Instant::now();
    let mut r = interpret(runner, &o);
    r.laterality = Some(p.geometry.laterality);
    r.orientation_mismatch = p.geometry.orientation_mismatch;
    r.view = m.meta.view;
    r.vendor = m.meta.vendor;
    r.decode_ms = (t1 - t0).as_secs_f64() * 1e3;
    r.preprocess_ms = (t2 - t1).as_secs_f64() * 1e3;
    r.inference_ms = (t3 - t2).as_secs_f64() * 1e3;
    Ok(Scored {
        meta: m.meta,
        result: r,
    })
}

/// `opts` with [`Resolution::ForModel`] made concrete for `runner`'s input size (a copy only
/// then: callers that hold options for one model resolve them once, at start-up).
pub fn for_model<'a>(
    runner: &ModelRunner,
    opts: &'a IngestOptions,
) -> std::borrow::Cow<'a, IngestOptions> {
    if opts.resolution != Resolution::ForModel {
        return std::borrow::Cow::Borrowed(opts);
    }
    let (rows, columns) = runner.meta.preprocess().decode_at_least();
    std::borrow::Cow::Owned(IngestOptions {
        resolution: Resolution::AtLeast { rows, columns },
        ..opts.clone()
    })
}

/// A scored image file with what the reader found (format, bits, polarity).
#[derive(Debug, Clone)]
pub struct ScoredImageFile {
    pub result: ImageResult,
    pub report: ImageFileReport,
    /// SHA-256 of the file's bytes, lower-case hex (the result's identity).
    pub sha256: String,
}

/// Score one image file (PNG 8/16-bit, JPEG, PGM/PNM; grey stored as RGB accepted) through the
/// same preprocessing as DICOM: the breast found in the image, the chest-wall side (hence the
/// laterality and a mirrored image's flip) inferred from the pixels, an inverted image turned
/// back to display polarity (`report.inverted`). No header: `vendor` is `other`, `view` is the
/// predicted view. Errors: the reader's ([`ImageFileError`]), preprocessing, the model.
pub fn infer_image_file(runner: &ModelRunner, path: &Path) -> Result<ScoredImageFile, InferError> {
    let t0 = Instant::now();
    let bytes = read_bounded(path)?;
    let f = read_image_bytes(&bytes)?;
    let t1 = Instant::now();
    let p = preprocess_image(&f.image, None, &runner.meta.preprocess())?;
    let t2 = Instant::now();
    let o = runner.run(&p.tensor)?;
    let t3 = Instant::now();
    let mut r = interpret(runner, &o);
    r.laterality = Some(p.geometry.laterality);
    r.view = if argmax(&o.view) == 0 {
        View::CC
    } else {
        View::MLO
    };
    r.decode_ms = (t1 - t0).as_secs_f64() * 1e3;
    r.preprocess_ms = (t2 - t1).as_secs_f64() * 1e3;
    r.inference_ms = (t3 - t2).as_secs_f64() * 1e3;
    Ok(ScoredImageFile {
        result: r,
        report: f.report,
        sha256: sha256_hex(&bytes),
    })
}

/// A model with the SHA-256 of its file and where it came from.
pub struct Model {
    pub runner: ModelRunner,
    /// SHA-256 of the model file (or of the bundled bytes), lower-case hex.
    pub sha256: String,
    /// The path, or the bundled model's name.
    pub source: String,
}

/// As [`load_model`], then the faster precision on this CPU (`model::precision`): with `None`
/// the bundled float32 and int8 demo models are timed, with a path `X.onnx` / `X.int8.onnx` its
/// other precision beside it when that is the same model. What `infer` scores with, as the
/// daemon does with `model.precision = "auto"`. Errors: [`load_model`]'s; the other file's are
/// logged and it is ignored.
pub fn load_model_for_cpu(path: Option<&Path>) -> Result<Model, ContractError> {
    let configured = load_model(path)?;
    let other = match path {
        None => Some(
            ModelRunner::from_bytes(bundled::DEMO_MODEL_F32, bundled::DEMO_MODEL_F32_NAME)
                .map(|runner| Candidate {
                    runner,
                    label: bundled::DEMO_MODEL_F32_NAME.into(),
                    sha256: sha256_hex(bundled::DEMO_MODEL_F32),
                })
                .map_err(|e| e.to_string()),
        ),
        Some(p) => sibling(p).filter(|s| s.is_file()).map(|s| {
            load_model(Some(&s))
                .map(|m| Candidate {
                    runner: m.runner,
                    label: m.source,
                    sha256: m.sha256,
                })
                .map_err(|e| e.to_string())
        }),
    };
    let configured = Candidate {
        runner: configured.runner,
        label: configured.source,
        sha256: configured.sha256,
    };
    let (kept, _) = faster(configured, other)?;
    Ok(Model {
        runner: kept.runner,
        sha256: kept.sha256,
        source: kept.label,
    })
}

/// Load `path` (contract checked), or the bundled int8 demo model when `None`.
/// Errors: `ContractError::Read` (unreadable file) and the contract errors of [`ModelRunner`].
pub fn load_model(path: Option<&Path>) -> Result<Model, ContractError> {
    let (bytes, source) = match path {
        Some(p) => (
            std::fs::read(p).map_err(|e| ContractError::Read {
                path: p.display().to_string(),
                detail: e.to_string(),
            })?,
            p.display().to_string(),
        ),
        None => (
            bundled::DEMO_MODEL_INT8.to_vec(),
            bundled::DEMO_MODEL_NAME.to_string(),
        ),
    };
    Ok(Model {
        runner: ModelRunner::from_bytes(&bytes, &source)?,
        sha256: sha256_hex(&bytes),
        source,
    })
}
