//! `mammo-train eval --ablation`: the seed's claim, tested on our data. Trains the cancer-only
//! single-task baseline with the multi-task run's own configuration (same data, splits, network,
//! schedule and seed; only the loss weights differ), exports and evaluates it with tract exactly
//! like the multi-task model, and puts both side by side per source and per pooled set (seen /
//! unseen): cancer AUC and its spread across sources (Tardy & Mateus, MIDL 2022: multi-task
//! learning makes AUC more consistent across vendors, also unseen ones).

use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use super::eval::{self, EvalError, Report};
use super::export::{export_run, ExportError, ExportOptions};
use super::fit::{self, FitError};
use super::loss::LossWeights;
use crate::model::labels::Split;

/// Errors of the ablation.
#[derive(Debug, Error)]
pub enum AblationError {
    #[error(transparent)]
    Fit(#[from] FitError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("{path}: {detail}")]
    Io { path: String, detail: String },
}

/// Options of [`ablation`].
#[derive(Debug, Clone)]
pub struct AblationOptions {
    /// The multi-task training run (`fit --out`): its configuration defines the baseline's.
    pub run: PathBuf,
    /// The multi-task model as it ships (ONNX).
    pub model: PathBuf,
    pub manifest: PathBuf,
    pub split: Split,
    /// Output folder: `baseline-run/`, `baseline.onnx`, `mtl/`, `baseline/`, `ablation.{md,json}`.
    pub out: PathBuf,
    /// Stop the baseline's training after this epoch (time box); run again to continue.
    pub stop_after: Option<usize>,
}

/// One row of the side-by-side table.
#[derive(Debug, Clone, Serialize)]
pub struct AblationRow {
    pub group: String,
    pub images: usize,
    /// Cancer-positive and cancer-negative images of the group.
    pub positives: usize,
    pub negatives: usize,
    /// Cancer AUC per image, `[AUC, CI low, CI high]`, multi-task and single-task.
    pub mtl: Option<[f64; 3]>,
    pub single_task: Option<[f64; 3]>,
}

/// The comparison.
#[derive(Debug, Clone, Serialize)]
pub struct AblationReport {
    pub split: String,
    pub rows: Vec<AblationRow>,
    /// Spread of the per-source cancer AUC (max − min; standard deviation), multi-task and
    /// single-task; over the sources with at least [`MIN_PER_CLASS`] images of each class.
    pub mtl_spread: Option<(f64, f64)>,
    pub single_task_spread: Option<(f64, f64)>,
    /// Epochs the baseline has trained (of its configured total).
    pub baseline_epochs: usize,
    pub baseline_epochs_planned: usize,
}

/// Images of each class a source needs to count in the spread (fewer give an AUC that is mostly
/// noise).
pub const MIN_PER_CLASS: usize = 10;

fn spread(v: &[f64]) -> Option<(f64, f64)> {
    if v.len() < 2 {
        return None;
    }
    let max = v.iter().cloned().fold(f64::MIN, f64::max);
    let min = v.iter().cloned().fold(f64::MAX, f64::min);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    Some((max - min, sd))
}

/// Side-by-side comparison of two evaluation reports of the same split.
pub fn compare(mtl: &Report, single: &Report, epochs: (usize, usize)) -> AblationReport {
    let row = |k: &str, g: &eval::GroupReport, s: Option<&eval::GroupReport>| AblationRow {
        group: k.to_string(),
        images: g.images,
        positives: g.cancer_positive,
        negatives: g.cancer_labelled - g.cancer_positive,
        mtl: g.cancer_auc,
        single_task: s.and_then(|s| s.cancer_auc),
    };
    let mut rows: Vec<AblationRow> = mtl
        .by_source
        .iter()
        .map(|(k, g)| row(k, g, single.by_source.get(k)))
        .collect();
    let sources = rows.len();
    rows.extend(
        mtl.pooled
            .iter()
            .map(|(k, g)| row(k, g, single.pooled.get(k))),
    );
    rows.push(row("all", &mtl.overall, Some(&single.overall)));
    let vendors = |f: &dyn Fn(&AblationRow) -> Option<[f64; 3]>| -> Vec<f64> {
        rows[..sources]
            .iter()
            .filter(|r| r.positives >= MIN_PER_CLASS && r.negatives >= MIN_PER_CLASS)
            .filter_map(|r| f(r).map(|a| a[0]))
            .collect()
    };
    AblationReport {
        split: mtl.split.clone(),
        mtl_spread: spread(&vendors(&|r| r.mtl)),
        single_task_spread: spread(&vendors(&|r| r.single_task)),
        rows,
        baseline_epochs: epochs.0,
        baseline_epochs_planned: epochs.1,
    }
}

/// Markdown table of an ablation.
pub fn markdown(a: &AblationReport) -> String {
    let auc = |v: Option<[f64; 3]>| {
        v.map(|[a, l, h]| format!("{a:.3} ({l:.3}–{h:.3})"))
            .unwrap_or_else(|| "–".into())
    };
    let sp = |v: Option<(f64, f64)>| {
        v.map(|(r, s)| format!("{r:.3} / {s:.3}"))
            .unwrap_or_else(|| "–".into())
    };
    let mut s = format!(
        "# Ablation: multi-task vs cancer-only, split `{}`\n\n\
The baseline trained {} of {} epochs with the multi-task run's configuration (only the loss \
weights differ). Intervals: 95 %, bootstrap over patients.\n\n| group | images | cancer +/− | cancer AUC multi-task (95 % CI) | cancer AUC single-task (95 % CI) |\n|---|---|---|---|---|\n",
        a.split, a.baseline_epochs, a.baseline_epochs_planned
    );
    for r in &a.rows {
        s.push_str(&format!(
            "| {} | {} | {}/{} | {} | {} |\n",
            r.group,
            r.images,
            r.positives,
            r.negatives,
            auc(r.mtl),
            auc(r.single_task)
        ));
    }
    s.push_str(&format!(
        "\nSpread of the per-source AUC over sources with ≥ {MIN_PER_CLASS} images of each class \
(max − min / SD): multi-task {}, single-task {}.\n",
        sp(a.mtl_spread),
        sp(a.single_task_spread)
    ));
    s
}

/// Train (or continue) the baseline, export and evaluate both models, write the comparison.
pub fn ablation(o: &AblationOptions) -> Result<AblationReport, AblationError> {
    let io = |p: &Path, e: std::io::Error| AblationError::Io {
        path: p.display().to_string(),
        detail: e.to_string(),
    };
    let mut cfg = fit::read_config(&o.run)?;
    cfg.weights = LossWeights::cancer_only();
    cfg.uncertainty = false;
    cfg.stop_after = o.stop_after;
    let base_run = o.out.join("baseline-run");
    std::fs::create_dir_all(&base_run).map_err(|e| io(&base_run, e))?;
    // the preprocessed tensors are the same: share the multi-task run's cache
    let cache = base_run.join("cache");
    let src_cache = std::path::absolute(o.run.join("cache")).map_err(|e| io(&o.run, e))?;
    #[cfg(unix)]
    if !cache.exists() && src_cache.is_dir() {
        std::os::unix::fs::symlink(&src_cache, &cache).map_err(|e| io(&cache, e))?;
    }
    let resume = base_run.join("checkpoint").exists();
    let fitted = fit::fit(&o.manifest, &cfg, &base_run, resume)?;
    let done = fitted.epochs.last().map_or(0, |e| e.epoch);
    let mtl_meta = crate::model::ModelRunner::load(&o.model)
        .map_err(ExportError::from)?
        .meta;
    let base_model = o.out.join("baseline.onnx");
    export_run(
        std::slice::from_ref(&base_run),
        &o.manifest,
        &base_model,
        &ExportOptions {
            name: format!("{}-cancer-only", mtl_meta.model_name),
            version: mtl_meta.model_version.clone(),
            intended_use: mtl_meta.intended_use.clone(),
            training_data: mtl_meta.training_data.clone(),
            sensitivity: if mtl_meta.cancer_threshold_sensitivity.is_finite() {
                mtl_meta.cancer_threshold_sensitivity as f64
            } else {
                0.9
            },
        },
    )?;
    let mtl = eval::evaluate(&o.model, &o.manifest, o.split, &o.out.join("mtl"))?;
    let single = eval::evaluate(&base_model, &o.manifest, o.split, &o.out.join("baseline"))?;
    let report = compare(&mtl, &single, (done, cfg.epochs));
    let md = o.out.join("ablation.md");
    std::fs::write(&md, markdown(&report)).map_err(|e| io(&md, e))?;
    let js = o.out.join("ablation.json");
    std::fs::write(
        &js,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|e| io(&js, e))?;
    Ok(report)
}
