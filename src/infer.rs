//! One image through the whole edge path: DICOM → ingest (or an image file → the image-file
//! reader) → THE preprocessing (with the model's parameters) → tract → a result with class names,
//! flags and the model's intended use. Used by the daemon (DICOM only) and by `mammo-edge infer`,
//! whose output ([`Batch`]) is the payloads the daemon would publish for the same files: one per
//! file, then one exam per DICOM study.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use crate::dicom::{
    read_mammogram_detailed, Category, IngestError, IngestOptions, Laterality, MammoMeta, Vendor,
    View,
};
use crate::exam::{aggregate, ExamError};
use crate::image_file::{
    is_image_file, read_bounded, read_image_bytes, ImageFileError, ImageFileReport,
};
use crate::message::{sha256_hex, Messages, ModelInfo, Privacy, StoredScore};
use crate::model::{bundled, ContractError, ModelOutputs, ModelRunner};
use crate::preprocess::{preprocess, preprocess_image, PreprocessError};
use crate::publish::Topics;

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
    /// the image-file codes (`undecodable`, `not_grey` …), `preprocess` or `model`.
    pub fn code(&self) -> &'static str {
        match self {
            InferError::Ingest(e) => e.code(),
            InferError::ImageFile(e) => e.code(),
            InferError::Preprocess(_) => "preprocess",
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
    let m = read_mammogram_detailed(path, opts).map_err(|(meta, e)| (meta, e.into()))?;
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

/// What [`Batch::file`] made of one file.
#[derive(Debug, Clone)]
pub struct FilePayload {
    /// The `mammo-edge.image/1`, `.skipped/1` or `.error/1` payload, `file` = the path as given.
    pub payload: serde_json::Value,
    /// True for an image payload.
    pub scored: bool,
}

/// `mammo-edge infer` over several files: each file gives the payload the daemon would publish
/// for it (built by the same [`Messages`] code, so values and rounding are the daemon's; UIDs
/// plain, the file named by its path, timings and `produced_at` of this run), and [`Batch::exams`]
/// gives the exam payload of each study, the exam rule applied as the daemon applies it: to the
/// image payloads' values (read back like the daemon reads its stored results), revision 1, a
/// SOPInstanceUID counted once.
pub struct Batch<'a> {
    runner: &'a ModelRunner,
    msgs: Messages,
    opts: IngestOptions,
    /// Studies in first-seen order with their scores and image result ids.
    studies: Vec<(String, Vec<StoredScore>)>,
}

impl<'a> Batch<'a> {
    /// A batch scored by `model` with the ingest rules `opts`.
    pub fn new(model: &'a Model, opts: IngestOptions) -> Batch<'a> {
        Batch {
            runner: &model.runner,
            msgs: Messages {
                topics: Topics::new("mammo-edge/infer"),
                model: ModelInfo::new(&model.runner.meta, &model.sha256),
                privacy: Privacy::local(),
            },
            opts,
            studies: Vec::new(),
        }
    }

    /// Score one file, DICOM or image file by its extension (a rejection is a payload too,
    /// never an `Err`). Image files belong to no study: they give no exam.
    pub fn file(&mut self, path: &Path) -> FilePayload {
        let label = serde_json::Value::String(path.display().to_string());
        if is_image_file(path) {
            return match infer_image_file(self.runner, path) {
                Ok(s) => {
                    let mut payload = self
                        .msgs
                        .image_file(path, &s.sha256, &s.report, &s.result)
                        .payload;
                    payload["file"] = label;
                    FilePayload {
                        payload,
                        scored: true,
                    }
                }
                Err(e) => self.rejected(path, label, None, e),
            };
        }
        match infer_file_detailed(self.runner, path, &self.opts) {
            Ok(s) => {
                let mut payload = self.msgs.image(path, &s.meta, &s.result).payload;
                payload["file"] = label;
                match serde_json::from_value::<StoredScore>(payload.clone()) {
                    Ok(score) => {
                        let study = s.meta.study_instance_uid.clone();
                        let i = match self.studies.iter().position(|(u, _)| *u == study) {
                            Some(i) => i,
                            None => {
                                self.studies.push((study, Vec::new()));
                                self.studies.len() - 1
                            }
                        };
                        let scores = &mut self.studies[i].1;
                        if !scores.iter().any(|o| o.result_id == score.result_id) {
                            scores.push(score);
                        }
                    }
                    Err(e) => log::warn!("{}: not counted in its exam: {e}", path.display()),
                }
                FilePayload {
                    payload,
                    scored: true,
                }
            }
            Err((meta, e)) => self.rejected(path, label, meta, e),
        }
    }

    /// The `skipped` / `error` payload of a file that was not scored.
    fn rejected(
        &self,
        path: &Path,
        label: serde_json::Value,
        meta: Option<Box<MammoMeta>>,
        e: InferError,
    ) -> FilePayload {
        let (size, mtime) = std::fs::metadata(path)
            .map(|m| {
                let t = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                (m.len(), t)
            })
            .unwrap_or((0, 0));
        let key = format!("{}|{size}|{mtime}", path.display());
        let skipped = e.category() == Category::Skipped;
        let mut payload = self
            .msgs
            .rejected(
                skipped,
                path,
                &key,
                meta.as_deref(),
                e.code(),
                &e.to_string(),
            )
            .payload;
        payload["file"] = label;
        FilePayload {
            payload,
            scored: false,
        }
    }

    /// The `mammo-edge.exam/1` payload of each study with scored images, in the order the
    /// studies were first seen; a study whose images the exam rule refuses gives its error.
    pub fn exams(&self) -> Vec<Result<serde_json::Value, ExamError>> {
        self.studies
            .iter()
            .map(|(study, scores)| {
                let s: Vec<_> = scores.iter().map(StoredScore::score).collect();
                let exam = aggregate(&s, self.msgs.model.cancer_threshold, 1)?;
                let ids: Vec<String> = scores.iter().map(|s| s.result_id.clone()).collect();
                Ok(self.msgs.exam(study, &exam, &ids).payload)
            })
            .collect()
    }
}
