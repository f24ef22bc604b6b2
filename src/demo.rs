//! `mammo-edge demo`: the main job on inputs the program makes itself — generates a four-view
//! phantom exam (one woman, one study) as DICOM with the phantom generator, ingests and
//! preprocesses each file exactly as the daemon does (inspection reports, preview PNGs), scores
//! each image with the bundled demo model (or `--model`) in tract and aggregates the exam with the
//! exam rule of DESIGN.md.

use std::path::Path;

use serde::Serialize;
use thiserror::Error;

use crate::dicom::IngestOptions;
use crate::exam::{self, ExamResult, ImageScore};
use crate::infer::{self, ImageResult};
use crate::inspect::{self, Outputs, Report};
use crate::model::{bundled, ContractError, ModelRunner};
use crate::preprocess::PreprocessConfig;
use crate::synth::generator::{generate, SynthConfig};
use crate::synth::SynthError;

/// Errors of the demo.
#[derive(Debug, Error)]
pub enum DemoError {
    #[error(transparent)]
    Synth(#[from] SynthError),
    #[error(transparent)]
    Inspect(#[from] inspect::InspectError),
    #[error("model: {0}")]
    Model(#[from] ContractError),
    #[error("scoring {file}: {detail}")]
    Infer { file: String, detail: String },
    #[error(transparent)]
    Exam(#[from] exam::ExamError),
}

/// One image of the demo exam: its inspection and its model result.
#[derive(Debug, Clone, Serialize)]
pub struct DemoImage {
    pub file: String,
    pub inspection: Report,
    pub result: ImageResult,
}

/// Everything the demo produced.
#[derive(Debug, Clone, Serialize)]
pub struct DemoOutput {
    /// L-CC, L-MLO, R-CC, R-MLO.
    pub images: Vec<DemoImage>,
    pub exam: ExamResult,
    /// Which model scored it (name, version, where it came from) and its intended use.
    pub model: String,
    pub intended_use: String,
}

/// Write the exam into `out/exam/` (DICOM, masks, manifest.csv) and previews into
/// `out/preview/`, then score it with `model` (None = the bundled int8 demo model).
pub fn run(out: &Path, seed: u64, model: Option<&Path>) -> Result<DemoOutput, DemoError> {
    let runner = match model {
        Some(p) => ModelRunner::load(p)?,
        None => bundled::demo_model()?,
    };
    let source = model.map_or_else(
        || bundled::DEMO_MODEL_NAME.to_string(),
        |p| p.display().to_string(),
    );
    let exam_dir = out.join("exam");
    let cfg = SynthConfig {
        count: 4,
        seed,
        scale: 0.25,
        ..Default::default()
    };
    let rows = generate(&cfg, &exam_dir)?;
    let outputs = Outputs {
        preview_dir: Some(out.join("preview")),
        grey_dir: None,
    };
    let (pre, opts) = (PreprocessConfig::default(), IngestOptions::default());
    let mut images = Vec::new();
    for g in &rows {
        let path = exam_dir.join(&g.row.path);
        let inspection = inspect::inspect_file(&path, &opts, &pre, &outputs)?;
        let result = infer::infer_file(&runner, &path, &opts).map_err(|e| DemoError::Infer {
            file: g.row.path.clone(),
            detail: e.to_string(),
        })?;
        images.push(DemoImage {
            file: g.row.path.clone(),
            inspection,
            result,
        });
    }
    let scores: Vec<ImageScore> = images
        .iter()
        .filter_map(|i| ImageScore::from_result(&i.result))
        .collect();
    let exam = exam::aggregate(&scores, runner.meta.cancer_threshold, 1)?;
    Ok(DemoOutput {
        images,
        exam,
        model: format!(
            "{} {} ({source})",
            runner.meta.model_name, runner.meta.model_version
        ),
        intended_use: runner.meta.intended_use.clone(),
    })
}
