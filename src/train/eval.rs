//! `mammo-train eval`: evaluation of the ONNX file that ships, run with tract (the daemon's runner)
//! through the one preprocessing module, on DICOM and image files alike, per source (the
//! manifest's `source`: RSNA machine, data set, phantom vendor; else the DICOM vendor), pooled per
//! data set over the sources the model was trained on and those it never saw, and overall. Per
//! group: cancer AUC per image and per breast (max over the breast's views) with a 95 % CI from
//! a bootstrap over patients, AUC among biopsied images only (the clip/marker shortcut),
//! sensitivity / specificity at the model's operating threshold, normal AUC, density macro-F1 and
//! linearly weighted Cohen's kappa, percent-density MAE (points), Spearman of the MIAS background
//! tissue (F < G < D) against predicted percent density, source macro-F1 (trained sources only),
//! view accuracy, Dice of the mask, reconstruction-error distribution and OOD rate; the spread of
//! the per-source cancer AUC. Writes `report.json` and `report.md`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use thiserror::Error;

use super::metrics;
use crate::dataset::manifest::{self, ManifestRow};
use crate::ingest::dicom::grey::GreyImage;
use crate::ingest::dicom::{read_mammogram, IngestOptions, Laterality, Vendor};
use crate::ingest::image_file::{is_image_file, read_image_file};
use crate::ingest::preprocess::{preprocess_image, warp};
use crate::model::labels::Split;
use crate::model::{ContractError, ModelRunner};

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
    /// The manifest's source, else the DICOM vendor, else `unknown`.
    source: String,
    cancer: f64,
    normal: f64,
    density: usize,
    percent: f64,
    source_pred: String,
    view: usize,
    dice: Option<f64>,
    recon_error: f64,
    /// The model's out-of-distribution flag (`ood_score`, else `recon_error`, over its threshold).
    ood: bool,
}

/// Metrics of one group of images (a source, a pooled set, or all).
#[derive(Debug, Clone, Serialize, Default)]
pub struct GroupReport {
    pub images: usize,
    /// Patients (manifest `patient_id`) the images come from.
    pub patients: usize,
    /// Images with a cancer label, and how many of them are positive.
    pub cancer_labelled: usize,
    pub cancer_positive: usize,
    /// AUC, lower and upper 95 % bound (bootstrap over patients, 1000 rounds).
    pub cancer_auc: Option<[f64; 3]>,
    pub cancer_auc_breast: Option<[f64; 3]>,
    /// Cancer AUC among images whose breast was biopsied (manifest `biopsy` = 1): cancers
    /// against benign biopsies, both with clips and markers.
    pub cancer_auc_biopsied: Option<[f64; 3]>,
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
    pub normal_auc: Option<f64>,
    pub density_macro_f1: Option<f64>,
    pub density_kappa: Option<f64>,
    pub percent_density_mae: Option<f64>,
    /// Spearman of the background tissue (manifest `tissue`: F, G, D) against the predicted
    /// percent density.
    pub tissue_spearman: Option<f64>,
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
    /// Per source; a source the source head has no class for is marked `(unseen)`.
    pub by_source: BTreeMap<String, GroupReport>,
    /// Per data set (the source up to its first `-`), the trained sources pooled (`rsna seen`)
    /// and the unseen ones pooled (`rsna unseen`); only sets with both.
    pub pooled: BTreeMap<String, GroupReport>,
    /// Cancer AUC per source where both classes have at least 10 images: max − min.
    pub cancer_auc_spread: Option<f64>,
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

/// Cancer AUC with a patient-bootstrap CI over `(score, label, patient)`.
fn auc_by_patient(v: &[(f64, bool, &str)]) -> Option<[f64; 3]> {
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    let cluster: Vec<usize> = v
        .iter()
        .map(|x| {
            let n = ids.len();
            *ids.entry(x.2).or_insert(n)
        })
        .collect();
    let (s, l): (Vec<f64>, Vec<bool>) = v.iter().map(|x| (x.0, x.1)).unzip();
    metrics::auc_ci_clustered(&s, &l, &cluster, 1000, 7).map(|(a, lo, hi)| [a, lo, hi])
}

fn group(s: &[&Scored], runner: &ModelRunner, seen: &[String]) -> GroupReport {
    let thr = runner.meta.cancer_threshold as f64;
    let classes = &runner.meta.vendor_classes;
    let labelled: Vec<(f64, bool, &str)> = s
        .iter()
        .filter_map(|x| {
            x.row
                .cancer
                .map(|c| (x.cancer, c, x.row.patient_id.as_str()))
        })
        .collect();
    let biopsied: Vec<(f64, bool, &str)> = s
        .iter()
        .filter(|x| x.row.extra("biopsy") == Some("1"))
        .filter_map(|x| {
            x.row
                .cancer
                .map(|c| (x.cancer, c, x.row.patient_id.as_str()))
        })
        .collect();
    // per breast: max over the breast's views
    let mut breasts: BTreeMap<(String, String), (f64, bool, &str)> = BTreeMap::new();
    for x in s {
        if let (Some(c), Some(l)) = (x.row.cancer, x.row.laterality) {
            let e = breasts
                .entry((x.row.study_uid.clone(), l.to_string()))
                .or_insert((0.0, false, x.row.patient_id.as_str()));
            e.0 = e.0.max(x.cancer);
            e.1 |= c;
        }
    }
    let per_breast: Vec<(f64, bool, &str)> = breasts.into_values().collect();
    let pos = labelled.iter().filter(|x| x.1).count();
    let neg = labelled.len() - pos;
    let tp = labelled.iter().filter(|x| x.1 && x.0 >= thr).count();
    let tn = labelled.iter().filter(|x| !x.1 && x.0 < thr).count();
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
    let tissue: Vec<(f64, f64)> = s
        .iter()
        .filter_map(|x| {
            let t = match x.row.extra("tissue")? {
                "F" => 0.0,
                "G" => 1.0,
                "D" => 2.0,
                _ => return None,
            };
            Some((t, x.percent))
        })
        .collect();
    let (tt, tp_): (Vec<f64>, Vec<f64>) = tissue.into_iter().unzip();
    let src: Vec<(usize, usize)> = s
        .iter()
        .filter(|x| seen.contains(&x.source))
        .filter_map(|x| {
            let t = classes.iter().position(|c| *c == x.source)?;
            let p = classes.iter().position(|c| *c == x.source_pred)?;
            Some((t, p))
        })
        .collect();
    let (vt, vp): (Vec<usize>, Vec<usize>) = src.into_iter().unzip();
    let views: Vec<bool> = s
        .iter()
        .filter_map(|x| match x.row.view {
            Some(crate::ingest::dicom::View::CC) => Some(x.view == 0),
            Some(crate::ingest::dicom::View::MLO) => Some(x.view == 1),
            _ => None,
        })
        .collect();
    let dice: Vec<f64> = s.iter().filter_map(|x| x.dice).collect();
    let mut re: Vec<f64> = s.iter().map(|x| x.recon_error).collect();
    let ood = s.iter().filter(|x| x.ood).count();
    let mut patients: Vec<&str> = s.iter().map(|x| x.row.patient_id.as_str()).collect();
    patients.sort_unstable();
    patients.dedup();
    GroupReport {
        images: s.len(),
        patients: patients.len(),
        cancer_labelled: labelled.len(),
        cancer_positive: pos,
        cancer_auc: auc_by_patient(&labelled),
        cancer_auc_breast: auc_by_patient(&per_breast),
        cancer_auc_biopsied: auc_by_patient(&biopsied),
        sensitivity: (pos > 0).then(|| tp as f64 / pos as f64),
        specificity: (neg > 0).then(|| tn as f64 / neg as f64),
        normal_auc: metrics::auc(&ns, &nl),
        density_macro_f1: (!dt.is_empty()).then(|| metrics::macro_f1(&dt, &dp, 4)),
        density_kappa: (!dt.is_empty()).then(|| metrics::weighted_kappa(&dt, &dp, 4)),
        percent_density_mae: (!pt.is_empty()).then(|| metrics::mae(&pt, &pp)),
        tissue_spearman: metrics::spearman(&tt, &tp_),
        vendor_macro_f1: (!vt.is_empty()).then(|| metrics::macro_f1(&vt, &vp, classes.len())),
        view_accuracy: (!views.is_empty())
            .then(|| views.iter().filter(|&&v| v).count() as f64 / views.len() as f64),
        mask_dice: (!dice.is_empty()).then(|| dice.iter().sum::<f64>() / dice.len() as f64),
        recon_error_median: pct(&mut re, 0.5),
        recon_error_p95: pct(&mut re, 0.95),
        ood_fraction: ood as f64 / s.len().max(1) as f64,
    }
}

/// Read an input as the appliance would: a DICOM through the ingest (its laterality from the
/// header), an image file through the image-file reader (laterality inferred from the image, as
/// `mammo-edge infer` does). Returns the grey image, the laterality to preprocess with and the
/// DICOM vendor (none for an image file).
type Input = (GreyImage, Option<Laterality>, Option<Vendor>);
fn read_input(path: &Path, opts: &IngestOptions) -> Result<Input, String> {
    if is_image_file(path) {
        read_image_file(path)
            .map(|f| (f.image, None, None))
            .map_err(|e| e.to_string())
    } else {
        read_mammogram(path, opts)
            .map(|m| (m.image, m.meta.laterality, Some(m.meta.vendor)))
            .map_err(|e| e.to_string())
    }
}

/// The label of a source in the report: its name, `(unseen)` when it is not among the `seen`
/// ones.
fn label(source: &str, seen: &[String]) -> String {
    if seen.iter().any(|c| c == source) {
        source.to_string()
    } else {
        format!("{source} (unseen)")
    }
}

/// Evaluate `model` on the `split` rows of `manifest`. Writes `report.json`, `report.md` and the
/// plots into `out`.
pub fn evaluate(
    model: &Path,
    manifest_path: &Path,
    split: Split,
    out: &Path,
) -> Result<Report, EvalError> {
    let runner = ModelRunner::load(model)?;
    let rows = manifest::read(manifest_path)?;
    let root = manifest_path.parent().unwrap_or(Path::new("."));
    let classes = runner.meta.vendor_classes.clone();
    // seen in training: a class of the source head and, when this manifest has training rows,
    // a source of those rows (a DICOM-only model names every vendor, trained on or not)
    let mut trained: Vec<String> = rows
        .iter()
        .filter(|r| r.split == Split::Train)
        .filter_map(|r| r.source())
        .collect();
    trained.sort();
    trained.dedup();
    let seen: Vec<String> = classes
        .iter()
        .filter(|c| trained.is_empty() || trained.contains(c))
        .cloned()
        .collect();
    let pre = runner.meta.preprocess();
    // JPEG 2000 at the resolution the appliance decodes it at (ingest.reduced_decode)
    let opts = crate::model::score::for_model(&runner, &IngestOptions::default()).into_owned();
    let mut scored = Vec::new();
    let mut skipped = 0;
    for r in rows.iter().filter(|r| r.split == split) {
        let path = root.join(&r.path);
        let (image, laterality, vendor) = match read_input(&path, &opts) {
            Ok(x) => x,
            Err(e) => {
                log::warn!("{}: skipped ({e})", r.path);
                skipped += 1;
                continue;
            }
        };
        let p = match preprocess_image(&image, laterality, &pre) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("{}: skipped ({e})", r.path);
                skipped += 1;
                continue;
            }
        };
        let o = runner.run(&p.tensor)?;
        let dice = r.mask_path.as_ref().and_then(|mp| {
            let img = image::open(root.join(mp)).ok()?.into_luma8();
            if (img.width() as usize, img.height() as usize) != (image.width, image.height) {
                log::warn!("{mp}: mask size differs from the image; Dice not computed");
                return None;
            }
            let dense: Vec<f32> = img
                .pixels()
                .map(|px| (px.0[0] == 255) as u8 as f32)
                .collect();
            let warped = warp(&dense, image.width, image.height, &p.geometry, &pre).ok()?;
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
            // the manifest's source, else the DICOM header's vendor
            source: r
                .source()
                .or_else(|| vendor.map(|v| v.as_str().to_string()))
                .unwrap_or_else(|| "unknown".into()),
            row: r.clone(),
            cancer: o.cancer as f64,
            normal: o.normal as f64,
            density: argmax(&o.density),
            percent: o.percent_density as f64,
            source_pred: classes.get(argmax(&o.vendor)).cloned().unwrap_or_default(),
            view: argmax(&o.view),
            dice,
            recon_error: o.recon_error as f64,
            ood: {
                let (score, thr) = o.ood(&runner.meta);
                score > thr
            },
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
    let mut sources: Vec<&str> = scored.iter().map(|s| s.source.as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    let mut by_source = BTreeMap::new();
    let mut aucs = Vec::new();
    for src in &sources {
        let g: Vec<&Scored> = scored.iter().filter(|s| s.source == *src).collect();
        let rep = group(&g, &runner, &seen);
        if rep.cancer_positive >= 10 && rep.cancer_labelled - rep.cancer_positive >= 10 {
            aucs.extend(rep.cancer_auc.map(|a| a[0]));
        }
        by_source.insert(label(src, &seen), rep);
    }
    let set_of = |s: &str| s.split('-').next().unwrap_or(s).to_string();
    let mut sets: Vec<String> = sources.iter().map(|s| set_of(s)).collect();
    sets.dedup();
    let mut pooled = BTreeMap::new();
    for set in sets {
        let is_seen = |s: &&Scored| seen.contains(&s.source);
        let of_set: Vec<&Scored> = scored.iter().filter(|s| set_of(&s.source) == set).collect();
        let (a, b): (Vec<&Scored>, Vec<&Scored>) = of_set.into_iter().partition(is_seen);
        if !a.is_empty() && !b.is_empty() {
            pooled.insert(format!("{set} seen"), group(&a, &runner, &seen));
            pooled.insert(format!("{set} unseen"), group(&b, &runner, &seen));
        }
    }
    let spread = (aucs.len() >= 2).then(|| {
        aucs.iter().cloned().fold(f64::MIN, f64::max)
            - aucs.iter().cloned().fold(f64::MAX, f64::min)
    });
    let plots = write_plots(&scored, &runner, &seen, out);
    let report = Report {
        plots,
        model: format!("{} {}", runner.meta.model_name, runner.meta.model_version),
        intended_use: runner.meta.intended_use.clone(),
        split: split_name.into(),
        cancer_threshold: runner.meta.cancer_threshold,
        skipped,
        overall: group(&all, &runner, &seen),
        by_source,
        pooled,
        cancer_auc_spread: spread,
    };
    write(&report, out)?;
    Ok(report)
}

/// ROC per source, cancer calibration, density and source confusion matrices into `out`;
/// returns the file names written (a plot that fails is logged and left out).
fn write_plots(
    scored: &[Scored],
    runner: &ModelRunner,
    seen: &[String],
    out: &Path,
) -> Vec<String> {
    use super::plots;
    if std::fs::create_dir_all(out).is_err() {
        return Vec::new();
    }
    let classes = &runner.meta.vendor_classes;
    let curve = |label: String, s: &[&Scored]| -> plots::Curve {
        let (sc, lb) = s
            .iter()
            .filter_map(|x| x.row.cancer.map(|c| (x.cancer, c)))
            .unzip();
        (label, sc, lb)
    };
    let mut sources: Vec<&str> = scored.iter().map(|s| s.source.as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    let mut curves: Vec<plots::Curve> = sources
        .iter()
        .map(|&v| {
            curve(
                label(v, seen),
                &scored.iter().filter(|s| s.source == v).collect::<Vec<_>>(),
            )
        })
        .filter(|c| c.2.iter().any(|&l| l) && c.2.iter().any(|&l| !l))
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
    let mut vend = vec![vec![0usize; classes.len()]; classes.len()];
    for s in scored.iter().filter(|s| seen.contains(&s.source)) {
        let t = classes.iter().position(|c| *c == s.source);
        let p = classes.iter().position(|c| *c == s.source_pred);
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
                "source (trained sources)",
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
Cancer AUC intervals: 95 %, bootstrap over patients. `(unseen)`: a source the model never \
trained on.\n\n\
| group | images | patients | cancer +/labelled | cancer AUC (95 % CI) | per breast | biopsied only | sens | spec | normal AUC | density F1 | density κ | PD MAE | tissue ρ | source F1 | view acc | mask Dice | recon err median / p95 | OOD |\n\
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        r.model, r.intended_use, r.split, r.cancer_threshold, r.skipped
    );
    let groups = r
        .by_source
        .iter()
        .chain(r.pooled.iter())
        .map(|(k, v)| (k.as_str(), v))
        .chain([("all", &r.overall)]);
    for (name, g) in groups {
        s.push_str(&format!(
            "| {name} | {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.4} / {:.4} | {:.2} |\n",
            g.images,
            g.patients,
            g.cancer_positive,
            g.cancer_labelled,
            ci(g.cancer_auc),
            ci(g.cancer_auc_breast),
            ci(g.cancer_auc_biopsied),
            f(g.sensitivity),
            f(g.specificity),
            f(g.normal_auc),
            f(g.density_macro_f1),
            f(g.density_kappa),
            f(g.percent_density_mae),
            f(g.tissue_spearman),
            f(g.vendor_macro_f1),
            f(g.view_accuracy),
            f(g.mask_dice),
            g.recon_error_median,
            g.recon_error_p95,
            g.ood_fraction
        ));
    }
    if let Some(d) = r.cancer_auc_spread {
        s.push_str(&format!(
            "\nSpread of the per-source cancer AUC (sources with ≥ 10 of each class): {d:.3}.\n"
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
