//! `mammo-train quantize`: int8 version of an exported model that tract runs with integer
//! kernels. Calibration inputs come from the manifest's training rows through THE preprocessing;
//! onnxruntime's quantizer (a documented Python step, `scripts/quantize_onnx.py`, embedded here)
//! writes a QOperator graph (QLinearConv, standard ONNX domain); the thresholds are then set again
//! from tract on the int8 file, and tract's optimised plan is read back to prove integer kernels.

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use super::data::{self, DataError};
use super::export::{calibrate_thresholds, ExportError};
use crate::dataset::manifest::{self, ManifestError};
use crate::model::labels::Split;
use crate::model::{ContractError, ModelRunner, PlanOp};

/// The quantisation script, embedded so the binary works from any folder.
pub const SCRIPT: &str = include_str!("../../scripts/quantize_onnx.py");

/// Errors of quantisation.
#[derive(Debug, Error)]
pub enum QuantizeError {
    #[error(transparent)]
    Model(#[from] ContractError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("the quantizer ({python} {script}) failed: {detail}; it needs `pip install onnx onnxruntime numpy`")]
    Script {
        python: String,
        script: String,
        detail: String,
    },
    #[error("tract runs no integer kernel in {0}: quantisation had no effect")]
    NoInt8(String),
}

/// Options of [`quantize`].
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// The float32 model (`mammo-train export`).
    pub model: PathBuf,
    /// The manifest it was trained on: `train` rows calibrate, `val` rows set the thresholds.
    pub manifest: PathBuf,
    /// Output int8 ONNX file.
    pub out: PathBuf,
    /// Number of calibration images (evenly spaced over the training rows).
    pub samples: usize,
    /// Python interpreter with onnx and onnxruntime.
    pub python: String,
    /// Preprocessed-tensor cache (the training run's `cache/`), if any.
    pub cache: Option<PathBuf>,
    pub threads: usize,
}

/// What [`quantize`] did.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    pub calibration_images: usize,
    pub validation_images: usize,
    /// New thresholds of the int8 model (probability; recon_error).
    pub cancer_threshold: f32,
    pub recon_error_threshold: f32,
    /// `ood_score` threshold set again on the int8 file (models with that output).
    pub ood_threshold: Option<f32>,
    /// Nodes of tract's optimised plan that take 8-bit integer inputs (the int8 kernels).
    pub int8_nodes: Vec<PlanOp>,
    /// The whole plan.
    pub plan: Vec<PlanOp>,
    /// The quantizer's summary line (JSON).
    pub script_summary: String,
}

/// True when `op` is a matrix product of tract's plan (the kernel a convolution becomes) fed with
/// 8-bit integers: an int8 GEMM kernel.
pub fn is_int8(op: &PlanOp) -> bool {
    op.op.contains("MatMul")
        && op
            .inputs
            .first()
            .is_some_and(|t| matches!(t.as_str(), "I8" | "U8"))
}

pub use crate::model::runner::kernels;

/// A private scratch folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, QuantizeError> {
        let p = std::env::temp_dir().join(format!("mammo-quantize-{}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(io(&p))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> QuantizeError + '_ {
    move |error| QuantizeError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// Quantise `opts.model` into `opts.out`. Errors: unreadable model or manifest, no usable image,
/// the Python step failing (its stderr is in the message), or a result tract would run in float.
pub fn quantize(opts: &QuantizeOptions) -> Result<QuantizeReport, QuantizeError> {
    let f32_model = ModelRunner::load(&opts.model)?;
    let meta = f32_model.meta.clone();
    let pre = meta.preprocess();
    let rows = manifest::read(&opts.manifest)?;
    let root = opts.manifest.parent().unwrap_or(Path::new("."));
    let pick = |split: Split| -> Vec<(usize, &manifest::ManifestRow)> {
        rows.iter()
            .enumerate()
            .filter(|(_, r)| r.split == split)
            .collect()
    };
    let train = pick(Split::Train);
    let step = (train.len() / opts.samples.max(1)).max(1);
    let calib_rows: Vec<_> = train
        .iter()
        .step_by(step)
        .take(opts.samples.max(1))
        .copied()
        .collect();
    let calib = data::load(root, &calib_rows, &pre, opts.cache.as_deref(), opts.threads)?;
    let tmp = TempDir::new()?;
    let calib_file = tmp.0.join("calib.f32");
    let mut bytes = Vec::with_capacity(calib.len() * pre.height * pre.width * 4);
    for s in &calib {
        for v in &s.input {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(&calib_file, bytes).map_err(io(&calib_file))?;
    let script = tmp.0.join("quantize_onnx.py");
    std::fs::write(&script, SCRIPT).map_err(io(&script))?;
    let out = Command::new(&opts.python)
        .arg(&script)
        .arg("--model")
        .arg(&opts.model)
        .arg("--calib")
        .arg(&calib_file)
        .arg("--count")
        .arg(calib.len().to_string())
        .arg("--out")
        .arg(&opts.out)
        .output()
        .map_err(|e| QuantizeError::Script {
            python: opts.python.clone(),
            script: "scripts/quantize_onnx.py".into(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(QuantizeError::Script {
            python: opts.python.clone(),
            script: "scripts/quantize_onnx.py".into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let summary = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut val = pick(Split::Val);
    if val.is_empty() {
        log::warn!("no validation rows: int8 thresholds set on the training rows");
        val = train.clone();
    }
    let val_samples = data::load(root, &val, &pre, opts.cache.as_deref(), opts.threads)?;
    let sensitivity = if meta.cancer_threshold_sensitivity.is_finite() {
        meta.cancer_threshold_sensitivity as f64
    } else {
        0.9
    };
    let t = calibrate_thresholds(&opts.out, &val_samples, sensitivity)?;
    let int8 = ModelRunner::load(&opts.out)?;
    let plan = int8.plan_ops();
    let int8_nodes: Vec<PlanOp> = plan.iter().filter(|o| is_int8(o)).cloned().collect();
    if int8_nodes.is_empty() {
        return Err(QuantizeError::NoInt8(opts.out.display().to_string()));
    }
    Ok(QuantizeReport {
        calibration_images: calib.len(),
        validation_images: val_samples.len(),
        cancer_threshold: t.cancer,
        recon_error_threshold: t.recon_error,
        ood_threshold: t.ood,
        int8_nodes,
        plan,
        script_summary: summary,
    })
}
