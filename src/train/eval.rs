//! `mammo-train eval`: evaluation of the ONNX file that ships, run with tract (the daemon's runner)
//! through the daemon's ingest and preprocessing, per DICOM vendor and overall, per image and per
//! breast (max over the breast's views): cancer AUC with bootstrap 95 % CI and sensitivity /
//! specificity at the model's operating threshold, normal AUC, density macro-F1 and linearly
//! weighted Cohen's kappa, percent-density MAE (points), vendor macro-F1 (vendors seen in
//! training only), view accuracy, Dice of the mask, reconstruction-error distribution.
//! Writes `report.json` and `report.md`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use thiserror::Error;

use super::metrics;
use crate::dicom::{read_mammogram, IngestOptions, Vendor};
use crate::labels::Split;
use crate::manifest::{self, ManifestRow};
use crate::model::{ContractError, ModelRunner};
use crate::preprocess::{preprocess, warp};

/// Errors of evaluation.
#[derive(Debug, Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] ContractError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error("no image of split {0} could be scored")]
    Empty(&'static str),
    #[error("{path}: {detail}")]
    Write { path: String, detail: String },
}

/// One scored image.
#[derive(Debug, Clone)]
struct Scored {
    row: ManifestRow,
    vendor: Vendor,
    cancer: f64,
    normal: f64,
    density: usize,
    percent: f64,
    vendor_pred: String,
    view: usize,
    dice: Option<f64>,
    recon_error: f64,
}

/// Metrics of one group of images (a vendor, or all).
#[derive(Debug, Clone, Serialize, Default)]
pub struct GroupReport {
    pub images: usize,
    pub cancer_auc: Option<[f64; 3]>,
    pub cancer_auc_breast: Option<[f64; 3]>,
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
    pub normal_auc: Option<f64>,
    pub density_macro_f1: Option<f64>,
    pub density_kappa: Option<f64>,
    pub percent_density_mae: Option<f64>,
    pub vendor_macro_f1: Option<f64>,
    pub view_accuracy: Option<f64>,
    pub mask_dice: Option<f64>,
    /// Reconstruction error: median, 95th percentile, fraction above the OOD threshold.
    pub recon_error_median: f64,
    pub recon_error_p95: f64,
    pub ood_fraction: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub intended_use: String,
    pub split: String,
    pub cancer_threshold: f32,
    pub skipped: usize,
    pub overall: GroupReport,
    pub by_vendor: BTreeMap<String, GroupReport>,
    /// PNG plots written next to the report (file names); empty when no font was found.
    pub plots: Vec<String>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)]
}

fn group(s: &[&Scored], runner: &ModelRunner, trained_vendors: &[String]) -> GroupReport {
    let thr = runner.meta.cancer_threshold as f64;
    let labelled: Vec<(f64, bool)> = s
        .iter()
        .filter_map(|x| x.row.cancer.map(|c| (x.cancer, c)))
        .collect();
    let (sc, lb): (Vec<f64>, Vec<bool>) = labelled.iter().copied().unzip();
    // per breast: max over the breast's views
    let mut breasts: BTreeMap<(String, String), (f64, bool)> = BTreeMap::new();
    for x in s {
        if let (Some(c), Some(l)) = (x.row.cancer, x.row.laterality) {
            let e = breasts
                .entry((x.row.study_uid.clone(), l.to_string()))
                .or_insert((0.0, false));
            e.0 = e.0.max(x.cancer);
            e.1 |= c;
        }
    }
    let (bs, bl): (Vec<f64>, Vec<bool>) = breasts.values().copied().unzip();
    let pos = lb.iter().filter(|&&l| l).count();
    let neg = lb.len() - pos;
    let tp = labelled.iter().filter(|(p, l)| *l && *p >= thr).count();
    let tn = labelled.iter().filter(|(p, l)| !*l && *p < thr).count();
    let normal: Vec<(f64, bool)> = s
        .iter()
        .filter_map(|x| x.row.normal.map(|n| (x.normal, n)))
        .collect();
    let (ns, nl): (Vec<f64>, Vec<bool>) = normal.into_iter().unzip();
    let dens: Vec<(usize, usize)> = s
        .iter()
        .filter_map(|x| x.row.density.map(|d| (d.index(), x.density)))
        .collect();
    let (dt, dp): (Vec<usize>, Vec<usize>) = dens.iter().copied().unzip();
    let pd: Vec<(f64, f64)> = s
        .iter()
        .filter_map(|x| x.row.percent_density.map(|p| (p, x.percent)))
        .collect();
    let (pt, pp): (Vec<f64>, Vec<f64>) = pd.into_iter().unzip();
    let vend: Vec<(usize, usize)> = s
        .iter()
        .filter(|x| trained_vendors.iter().any(|v| v == x.vendor.as_str()))
        .map(|x| {
            let idx = |n: &str| {
                runner
                    .meta
                    .vendor_classes
                    .iter()
                    .position(|c| c == n)
                    .unwrap_or(usize::MAX)
            };
            (idx(x.vendor.as_str()), idx(&x.vendor_pred))
        })
        .collect();
    let (vt, vp): (Vec<usize>, Vec<usize>) = vend.into_iter().unzip();
    let views: Vec<bool> = s
        .iter()
        .filter_map(|x| match x.row.view {
            Some(crate::dicom::View::CC) => Some(x.view == 0),
            Some(crate::dicom::View::MLO) => Some(x.view == 1),
            _ => None,
        })
        .collect();
    let dice: Vec<f64> = s.iter().filter_map(|x| x.dice).collect();
    let mut re: Vec<f64> = s.iter().map(|x| x.recon_error).collect();
    let ood = re
        .iter()
        .filter(|&&e| e > runner.meta.recon_error_threshold as f64)
        .count();
    GroupReport {
        images: s.len(),
        cancer_auc: metrics::auc_ci(&sc, &lb, 1000, 7).map(|(a, l, h)| [a, l, h]),
        cancer_auc_breast: metrics::auc_ci(&bs, &bl, 1000, 7).map(|(a, l, h)| [a, l, h]),
        sensitivity: (pos > 0).then(|| tp as f64 / pos as f64),
        specificity: (neg > 0).then(|| tn as f64 / neg as f64),
        normal_auc: metrics::auc(&ns, &nl),
        density_macro_f1: (!dt.is_empty()).then(|| metrics::macro_f1(&dt, &dp, 4)),
        density_kappa: (!dt.is_empty()).then(|| metrics::weighted_kappa(&dt, &dp, 4)),
        percent_density_mae: (!pt.is_empty()).then(|| metrics::mae(&pt, &pp)),
        vendor_macro_f1: (!vt.is_empty())
            .then(|| metrics::macro_f1(&vt, &vp, runner.meta.vendor_classes.len())),
        view_accuracy: (!views.is_empty())
            .then(|| views.iter().filter(|&&v| v).count() as f64 / views.len() as f64),
        mask_dice: (!dice.is_empty()).then(|| dice.iter().sum::<f64>() / dice.len() as f64),
        recon_error_median: pct(&mut re, 0.5),
        recon_error_p95: pct(&mut re, 0.95),
        ood_fraction: ood as f64 / s.len().max(1) as f64,
    }
}

/// Evaluate `model` on the `split` rows of `manifest`; `trained_vendors`: vendors of the training
/// rows (the vendor head is scored only on those). Writes `report.json` and `report.md` into `out`.
pub fn evaluate(
    model: &Path,
    manifest_path: &Path,
    split: Split,
    out: &Path,
) -> Result<Report, EvalError> {
    let runner = ModelRunner::load(model)?;
    let rows = manifest::read(manifest_path)?;
    let root = manifest_path.parent().unwrap_or(Path::new("."));
    let trained: Vec<String> = {
        let mut v: Vec<String> = rows
            .iter()
            .filter(|r| r.split == Split::Train)
            .filter_map(|r| r.vendor.map(|v| v.as_str().to_string()))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let pre = runner.meta.preprocess();
    let mut scored = Vec::new();
    let mut skipped = 0;
    for r in rows.iter().filter(|r| r.split == split) {
        let m = match read_mammogram(&root.join(&r.path), &IngestOptions::default()) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("{}: skipped ({e})", r.path);
                skipped += 1;
                continue;
            }
        };
        let Ok(p) = preprocess(&m, &pre) else {
            skipped += 1;
            continue;
        };
        let o = runner.run(&p.tensor)?;
        let dice = r.mask_path.as_ref().and_then(|mp| {
            let img = image::open(root.join(mp)).ok()?.into_luma8();
            if (img.width() as usize, img.height() as usize) != (m.image.width, m.image.height) {
                log::warn!("{mp}: mask size differs from the image; Dice not computed");
                return None;
            }
            let dense: Vec<f32> = img
                .pixels()
                .map(|px| (px.0[0] == 255) as u8 as f32)
                .collect();
            let warped = warp(&dense, m.image.width, m.image.height, &p.geometry, &pre).ok()?;
            let (h, w) = o.mask_size;
            if h == 0 || w == 0 || pre.height % h != 0 || pre.width % w != 0 {
                return None;
            }
            let (fy, fx) = (pre.height / h, pre.width / w);
            let target: Vec<f32> = (0..h * w)
                .map(|i| {
                    let (y, x) = (i / w, i % w);
                    let mut s = 0.0;
                    for dy in 0..fy {
                        for dx in 0..fx {
                            s += warped[(y * fy + dy) * pre.width + x * fx + dx];
                        }
                    }
                    s / (fy * fx) as f32
                })
                .collect();
            Some(metrics::dice(&o.dense_mask, &target))
        });
        let argmax = |v: &[f32]| {
            (0..v.len())
                .max_by(|&a, &b| v[a].total_cmp(&v[b]))
                .unwrap_or(0)
        };
        scored.push(Scored {
            row: r.clone(),
            vendor: m.meta.vendor,
            cancer: o.cancer as f64,
            normal: o.normal as f64,
            density: argmax(&o.density),
            percent: o.percent_density as f64,
            vendor_pred: runner
                .meta
                .vendor_classes
                .get(argmax(&o.vendor))
                .cloned()
                .unwrap_or_default(),
            view: argmax(&o.view),
            dice,
            recon_error: o.recon_error as f64,
        });
    }
    let split_name = match split {
        Split::Train => "train",
        Split::Val => "val",
        Split::Test => "test",
    };
    if scored.is_empty() {
        return Err(EvalError::Empty(split_name));
    }
    let all: Vec<&Scored> = scored.iter().collect();
    let mut by_vendor = BTreeMap::new();
    for v in Vendor::ALL {
        let g: Vec<&Scored> = scored.iter().filter(|s| s.vendor == v).collect();
        if !g.is_empty() {
            let name = if trained.iter().any(|t| t == v.as_str()) {
                v.as_str().to_string()
            } else {
                format!("{} (unseen)", v.as_str())
            };
            by_vendor.insert(name, group(&g, &runner, &trained));
        }
    }
    let plots = write_plots(&scored, &runner, &trained, out);
    let report = Report {
        plots,
        model: format!("{} {}", runner.meta.model_name, runner.meta.model_version),
        intended_use: runner.meta.intended_use.clone(),
        split: split_name.into(),
        cancer_threshold: runner.meta.cancer_threshold,
        skipped,
        overall: group(&all, &runner, &trained),
        by_vendor,
    };
    write(&report, out)?;
    Ok(report)
}

/// ROC per vendor, cancer calibration, density and vendor confusion matrices into `out`; returns
/// the file names written (a plot that fails is logged and left out).
fn write_plots(
    scored: &[Scored],
    runner: &ModelRunner,
    trained: &[String],
    out: &Path,
) -> Vec<String> {
    use super::plots;
    if std::fs::create_dir_all(out).is_err() {
        return Vec::new();
    }
    let name = |v: Vendor| {
        if trained.iter().any(|t| t == v.as_str()) {
            v.as_str().to_string()
        } else {
            format!("{} (unseen)", v.as_str())
        }
    };
    let curve = |label: String, s: &[&Scored]| -> plots::Curve {
        let (sc, lb) = s
            .iter()
            .filter_map(|x| x.row.cancer.map(|c| (x.cancer, c)))
            .unzip();
        (label, sc, lb)
    };
    let mut curves: Vec<plots::Curve> = Vendor::ALL
        .iter()
        .map(|&v| {
            curve(
                name(v),
                &scored.iter().filter(|s| s.vendor == v).collect::<Vec<_>>(),
            )
        })
        .filter(|c| !c.1.is_empty())
        .collect();
    curves.push(curve("all".into(), &scored.iter().collect::<Vec<_>>()));
    let model = &runner.meta.model_name;
    let mut written = Vec::new();
    let mut keep = |file: &str, r: Result<(), plots::PlotError>| match r {
        Ok(()) => written.push(file.to_string()),
        Err(e) => log::warn!("plot {file} not written: {e}"),
    };
    keep(
        "roc.png",
        plots::roc(
            &out.join("roc.png"),
            &format!("{model}: cancer ROC per image"),
            &curves,
        ),
    );
    keep(
        "calibration.png",
        plots::calibration(
            &out.join("calibration.png"),
            &format!("{model}: cancer calibration"),
            &curves,
        ),
    );
    let mut dens = vec![vec![0usize; 4]; 4];
    for s in scored {
        if let Some(d) = s.row.density {
            dens[d.index()][s.density.min(3)] += 1;
        }
    }
    keep(
        "confusion_density.png",
        plots::confusion(
            &out.join("confusion_density.png"),
            "BI-RADS density",
            &runner.meta.density_classes,
            &dens,
        ),
    );
    let classes = &runner.meta.vendor_classes;
    let mut vend = vec![vec![0usize; classes.len()]; classes.len()];
    for s in scored
        .iter()
        .filter(|s| trained.iter().any(|t| t == s.vendor.as_str()))
    {
        let t = classes.iter().position(|c| c == s.vendor.as_str());
        let p = classes.iter().position(|c| *c == s.vendor_pred);
        if let (Some(t), Some(p)) = (t, p) {
            vend[t][p] += 1;
        }
    }
    // only the vendors that occur, as rows and columns
    let used: Vec<usize> = (0..classes.len())
        .filter(|&i| vend[i].iter().sum::<usize>() > 0 || vend.iter().any(|r| r[i] > 0))
        .collect();
    if !used.is_empty() {
        let names: Vec<String> = used.iter().map(|&i| classes[i].clone()).collect();
        let m: Vec<Vec<usize>> = used
            .iter()
            .map(|&i| used.iter().map(|&j| vend[i][j]).collect())
            .collect();
        keep(
            "confusion_vendor.png",
            plots::confusion(
                &out.join("confusion_vendor.png"),
                "vendor (trained vendors)",
                &names,
                &m,
            ),
        );
    }
    written
}

fn f(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into())
}

fn ci(v: Option<[f64; 3]>) -> String {
    v.map(|[a, l, h]| format!("{a:.3} ({l:.3}–{h:.3})"))
        .unwrap_or_else(|| "–".into())
}

/// Markdown table of a report.
pub fn markdown(r: &Report) -> String {
    let mut s = format!(
        "# Evaluation of {}\n\nIntended use: {}. Split `{}`; cancer threshold {:.4}; {} images skipped.\n\n\
| group | images | cancer AUC (95 % CI) | per breast | sens | spec | normal AUC | density F1 | density κ | PD MAE | vendor F1 | view acc | mask Dice | recon err median / p95 | OOD |\n\
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        r.model, r.intended_use, r.split, r.cancer_threshold, r.skipped
    );
    let groups = r
        .by_vendor
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain([("all", &r.overall)]);
    for (name, g) in groups {
        s.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.4} / {:.4} | {:.2} |\n",
            g.images,
            ci(g.cancer_auc),
            ci(g.cancer_auc_breast),
            f(g.sensitivity),
            f(g.specificity),
            f(g.normal_auc),
            f(g.density_macro_f1),
            f(g.density_kappa),
            f(g.percent_density_mae),
            f(g.vendor_macro_f1),
            f(g.view_accuracy),
            f(g.mask_dice),
            g.recon_error_median,
            g.recon_error_p95,
            g.ood_fraction
        ));
    }
    if !r.plots.is_empty() {
        s.push('\n');
        for p in &r.plots {
            s.push_str(&format!("![{p}]({p})\n"));
        }
    }
    s
}

fn write(r: &Report, out: &Path) -> Result<(), EvalError> {
    let err = |e: std::io::Error| EvalError::Write {
        path: out.display().to_string(),
        detail: e.to_string(),
    };
    std::fs::create_dir_all(out).map_err(err)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(r).unwrap_or_default(),
    )
    .map_err(err)?;
    std::fs::write(out.join("report.md"), markdown(r)).map_err(err)
}
