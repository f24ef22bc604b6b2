//! The phantom generator behind `mammo-edge synth`: samples women and exams (breast composition,
//! findings, vendor), renders each view with [`anatomy`](super::anatomy) and a vendor
//! [`style`](super::style), writes DICOM files, dense-tissue masks (PNG) and `manifest.csv`.
//! Deterministic: every image's random stream is derived from the seed and its exam and view index,
//! so the same seed gives the same bytes whatever the thread count.

use std::path::{Path, PathBuf};
use std::process::Command;

use image::{ImageBuffer, Luma};

use super::anatomy::{self, BreastParams, Lesion, LesionKind};
use super::style::{self, Compression, VendorStyle};
use super::writer::DicomSpec;
use super::{uid, SplitMix64, SynthError};
use crate::dataset::manifest::{self, ManifestRow};
use crate::ingest::dicom::{Laterality, Vendor, View};
use crate::ingest::preprocess::{expected_chest_wall, Side};
use crate::model::labels::{Density, Split};

/// Options of a synthetic data set.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Number of images, rounded up to whole exams of `views × 2` images (L and R).
    pub count: usize,
    pub seed: u64,
    /// Vendors to sample exams from (uniformly).
    pub vendors: Vec<Vendor>,
    /// Views per breast (CC, MLO).
    pub views: Vec<View>,
    /// Matrix scale (1 = full detector size); pixel spacing scales inversely.
    pub scale: f64,
    /// Probability that an exam has a malignant finding (in one breast).
    pub prevalence: f64,
    /// Probability that a breast has a benign finding.
    pub benign_rate: f64,
    /// Weights of the BI-RADS classes A–D among exams (screening-like by default).
    pub density_weights: [f64; 4],
    /// Rate of adjacent-class flips of the density label (reader disagreement).
    pub label_noise: f64,
    /// Compress with the vendor's usual transfer syntax through dcmtk / GDCM.
    pub compress: bool,
    /// Worker threads.
    pub threads: usize,
    /// Vendor whose exams all go to the `test` split (an unseen vendor for the trainer); it
    /// must be one of `vendors`.
    pub hold_out: Option<Vendor>,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            count: 8,
            seed: 1,
            vendors: style::styled_vendors(),
            views: vec![View::CC, View::MLO],
            scale: 0.25,
            prevalence: 0.3,
            benign_rate: 0.15,
            density_weights: [0.1, 0.4, 0.4, 0.1],
            label_noise: 0.0,
            compress: false,
            threads: 2,
            hold_out: None,
        }
    }
}

impl SynthConfig {
    /// Check ranges; errors name the option.
    pub fn validate(&self) -> Result<(), SynthError> {
        let bad = |key, detail: String| Err(SynthError::Config { key, detail });
        if self.count == 0 {
            return bad("count", "must be at least 1".into());
        }
        if self.vendors.is_empty() {
            return bad("vendors", "no vendor given".into());
        }
        if let Some(v) = self.vendors.iter().find(|v| style::style(**v).is_none()) {
            return bad(
                "vendors",
                format!("no style for {v}; styled: {:?}", style::styled_vendors()),
            );
        }
        if self.views.is_empty() || self.views.iter().any(|v| !v.is_screening()) {
            return bad("views", "CC and/or MLO".into());
        }
        if !(0.01..=2.0).contains(&self.scale) {
            return bad("scale", format!("{} is outside 0.01–2", self.scale));
        }
        for (key, v) in [
            ("prevalence", self.prevalence),
            ("benign_rate", self.benign_rate),
            ("label_noise", self.label_noise),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(key, format!("{v} is outside 0–1"));
            }
        }
        if self.density_weights.iter().any(|w| *w < 0.0)
            || self.density_weights.iter().sum::<f64>() <= 0.0
        {
            return bad(
                "density_weights",
                "need non-negative weights with a positive sum".into(),
            );
        }
        Ok(())
    }
}

/// Mask PNG levels: dense (fibroglandular) tissue, other breast tissue; 0 = outside the breast
/// (air, pectoral muscle). Percent density = count(255) / count(≥ 128) × 100.
pub const MASK_DENSE: u8 = 255;
pub const MASK_BREAST: u8 = 128;

/// One planned exam: a woman, her breast composition and findings, the vendor.
#[derive(Debug, Clone)]
struct ExamPlan {
    index: usize,
    patient_id: String,
    study_uid: String,
    vendor: Vendor,
    density: Density,
    target_pd: f64,
    split: Split,
    /// Findings per breast (L, R).
    findings: [Vec<Lesion>; 2],
    /// Breast shape shared by both views of a breast: depth, half-height, centre y.
    shape: [(f32, f32, f32); 2],
}

fn pick_weighted(rng: &mut SplitMix64, w: &[f64]) -> usize {
    let total: f64 = w.iter().sum();
    let mut u = rng.uniform() * total;
    for (i, &x) in w.iter().enumerate() {
        if u < x {
            return i;
        }
        u -= x;
    }
    w.len() - 1
}

fn lesion(rng: &mut SplitMix64, kind: LesionKind) -> Lesion {
    let size_mm = match kind {
        LesionKind::SpiculatedMass => 4.0 + 6.0 * rng.uniform(),
        LesionKind::ArchitecturalDistortion => 4.0 + 4.0 * rng.uniform(),
        LesionKind::PleomorphicCalcifications => 3.0 + 4.0 * rng.uniform(),
        LesionKind::CircumscribedMass => 4.0 + 7.0 * rng.uniform(),
        LesionKind::ScatteredCalcifications => 12.0 + 10.0 * rng.uniform(),
    } as f32;
    Lesion {
        kind,
        u: (0.3 + 0.45 * rng.uniform()) as f32,
        v: (rng.uniform() * 1.1 - 0.55) as f32,
        size_mm,
        subtlety: rng.uniform() as f32,
        seed: rng.next_u64(),
    }
}

/// Identity of a data set: seed and vendor list. UIDs, patient IDs and file names derive from it, so
/// two sets made with other seeds or vendors never share a UID or an ID.
fn set_id(cfg: &SynthConfig) -> u64 {
    let vendors = cfg
        .vendors
        .iter()
        .fold(0u64, |h, v| h.rotate_left(7) ^ (*v as u64 + 1));
    SplitMix64::new(cfg.seed ^ vendors.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
}

/// Number of images actually generated: `count` rounded up to whole exams.
pub fn image_count(cfg: &SynthConfig) -> usize {
    let per_exam = 2 * cfg.views.len();
    cfg.count.div_ceil(per_exam) * per_exam
}

fn plan(cfg: &SynthConfig) -> Vec<ExamPlan> {
    let per_exam = 2 * cfg.views.len();
    let exams = cfg.count.div_ceil(per_exam);
    let mut rng = SplitMix64::new(cfg.seed ^ 0x005e_ed0f_e8a5);
    // Vendors cycle from a seeded offset, so every style appears as evenly as the count allows.
    let offset = rng.next_u64() as usize % cfg.vendors.len();
    let set = set_id(cfg);
    (0..exams)
        .map(|i| {
            let vendor = cfg.vendors[(offset + i) % cfg.vendors.len()];
            let density = Density::ALL[pick_weighted(&mut rng, &cfg.density_weights)];
            let (lo, hi) = density.range();
            // keep 3 points away from class boundaries; D capped at 90 % (skin and nipple stay fatty)
            let (lo, hi) = (lo + 3.0, (hi - 3.0).min(90.0));
            let target_pd = lo + (hi - lo) * rng.uniform();
            let u = rng.uniform();
            let split = if cfg.hold_out == Some(vendor) {
                Split::Test
            } else if u < 0.7 {
                Split::Train
            } else if u < 0.85 {
                Split::Val
            } else {
                Split::Test
            };
            let mut findings: [Vec<Lesion>; 2] = [Vec::new(), Vec::new()];
            if rng.uniform() < cfg.prevalence {
                let side = (rng.uniform() < 0.5) as usize;
                let kind = [
                    LesionKind::SpiculatedMass,
                    LesionKind::ArchitecturalDistortion,
                    LesionKind::PleomorphicCalcifications,
                ][(rng.uniform() * 3.0) as usize % 3];
                findings[side].push(lesion(&mut rng, kind));
            }
            for f in findings.iter_mut() {
                if rng.uniform() < cfg.benign_rate {
                    let kind = if rng.uniform() < 0.5 {
                        LesionKind::CircumscribedMass
                    } else {
                        LesionKind::ScatteredCalcifications
                    };
                    f.push(lesion(&mut rng, kind));
                }
            }
            let mut shape = || {
                (
                    (0.45 + 0.25 * rng.uniform()) as f32,
                    (0.33 + 0.1 * rng.uniform()) as f32,
                    (0.47 + 0.06 * rng.uniform()) as f32,
                )
            };
            let shape = [shape(), shape()];
            ExamPlan {
                index: i,
                patient_id: format!("SYNTH-{:08X}-{i:04}", set as u32),
                study_uid: uid(set.wrapping_add(i as u64), "study"),
                vendor,
                density,
                target_pd,
                split,
                findings,
                shape,
            }
        })
        .collect()
}

/// One generated image and its ground truth (what the manifest row holds).
#[derive(Debug, Clone)]
pub struct Generated {
    pub row: ManifestRow,
    /// Density class before label noise.
    pub density_true: Density,
    pub findings: Vec<LesionKind>,
}

/// Generate the data set into `out` (`images/`, `masks/`, `manifest.csv`); returns the rows.
pub fn generate(cfg: &SynthConfig, out: &Path) -> Result<Vec<Generated>, SynthError> {
    cfg.validate()?;
    if cfg.compress {
        check_encoders(cfg)?;
    }
    let images = out.join("images");
    let busy = out.join("manifest.csv").exists()
        || std::fs::read_dir(&images)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
    if busy {
        return Err(SynthError::OutputNotEmpty(out.display().to_string()));
    }
    for d in ["images", "masks"] {
        let p = out.join(d);
        std::fs::create_dir_all(&p).map_err(|error| SynthError::Io {
            path: p.display().to_string(),
            error,
        })?;
    }
    let exams = plan(cfg);
    let mut jobs = Vec::new();
    for e in &exams {
        for lat in [Laterality::L, Laterality::R] {
            for &view in &cfg.views {
                jobs.push((e, lat, view));
            }
        }
    }
    let threads = cfg.threads.clamp(1, 64);
    let mut results: Vec<Option<Result<Generated, SynthError>>> =
        (0..jobs.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let chunks: Vec<_> = results
            .chunks_mut(jobs.len().div_ceil(threads))
            .zip(jobs.chunks(jobs.len().div_ceil(threads)))
            .collect();
        for (res, job) in chunks {
            s.spawn(move || {
                for (r, (e, lat, view)) in res.iter_mut().zip(job) {
                    *r = Some(render_one(cfg, e, *lat, *view, out));
                }
            });
        }
    });
    let generated: Vec<Generated> = results
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect::<Result<_, _>>()?;
    let rows: Vec<ManifestRow> = generated.iter().map(|g| g.row.clone()).collect();
    manifest::write(&out.join("manifest.csv"), &rows)?;
    Ok(generated)
}

fn render_one(
    cfg: &SynthConfig,
    e: &ExamPlan,
    lat: Laterality,
    view: View,
    out: &Path,
) -> Result<Generated, SynthError> {
    let st: VendorStyle = style::style(e.vendor).expect("validated vendor");
    let (rows, cols, spacing) = st.scaled(cfg.scale);
    let side = (lat == Laterality::R) as usize;
    let view_index = (view == View::MLO) as u64;
    let image_seed = cfg.seed
        ^ ((e.index as u64) << 8 | (side as u64) << 1 | view_index)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = SplitMix64::new(image_seed);
    let (depth, half_height, center_y) = e.shape[side];
    let params = BreastParams {
        view,
        percent_density: e.target_pd,
        depth: if view == View::MLO {
            depth * 1.05
        } else {
            depth
        },
        half_height: if view == View::MLO {
            half_height * 1.1
        } else {
            half_height
        },
        center_y: if view == View::MLO {
            center_y + 0.06
        } else {
            center_y
        },
        pectoral: (
            (0.25 + 0.15 * rng.uniform()) as f32,
            (0.35 + 0.2 * rng.uniform()) as f32,
        ),
        beta: 3.0,
        findings: e.findings[side].clone(),
        seed: rng.next_u64(),
    };
    let mut a = anatomy::render(&params, cols, rows, spacing);
    let chest_wall = expected_chest_wall(lat);
    if chest_wall == Side::Right {
        mirror(&mut a.grey, cols);
        mirror(&mut a.dense, cols);
        mirror(&mut a.breast, cols);
        for b in &mut a.finding_boxes {
            b.0 = cols as f32 - b.0;
        }
    }
    let marker = format!("{}{}", lat, view);
    let pixels = st.process(
        &a.grey, &a.breast, rows, cols, spacing, chest_wall, &marker, &mut rng,
    );

    // file names carry the exam, not the (synthetic) patient ID: names must never hold identifiers
    let set = set_id(cfg);
    let name = format!("{:08x}-{:04}_{}_{}", set as u32, e.index, lat, view);
    let mut spec = DicomSpec::mammogram(rows, cols, pixels);
    st.apply_header(&mut spec, spacing);
    spec.seed = image_seed;
    spec.image_laterality = Some(lat.to_string());
    spec.view_position = Some(view.to_string());
    spec.view_code = Some(match view {
        View::MLO => (
            "399368009".into(),
            "SCT".into(),
            "medio-lateral oblique".into(),
        ),
        _ => ("399162004".into(), "SCT".into(), "cranio-caudal".into()),
    });
    spec.patient_orientation = Some(style::patient_orientation(lat, view).into());
    spec.patient_name = format!("SYNTH^PATIENT-{:08X}-{:04}", set as u32, e.index);
    spec.patient_id = e.patient_id.clone();
    spec.accession_number = format!("S{:08X}{:04}", set as u32, e.index % 10_000);
    spec.study_uid = Some(e.study_uid.clone());
    spec.series_uid = Some(uid(set.wrapping_add(e.index as u64), "series"));
    spec.sop_uid = Some(uid(set ^ image_seed, "sop"));
    spec.instance_number = (1 + side * cfg.views.len() + view_index as usize) as u32;
    let rel = format!("images/{name}.dcm");
    let path = out.join(&rel);
    spec.write(&path)?;
    if cfg.compress {
        compress(st.compression, &path)?;
    }
    let mask_rel = format!("masks/{name}.png");
    let mask: ImageBuffer<Luma<u8>, Vec<u8>> = ImageBuffer::from_raw(
        cols as u32,
        rows as u32,
        a.dense
            .iter()
            .zip(&a.breast)
            .map(|(&d, &b)| match (d, b) {
                (1, _) => MASK_DENSE,
                (_, 1) => MASK_BREAST,
                _ => 0,
            })
            .collect(),
    )
    .expect("mask size");
    let mask_path = out.join(&mask_rel);
    mask.save(&mask_path).map_err(|e| SynthError::Write {
        path: mask_path.display().to_string(),
        detail: e.to_string(),
    })?;

    let malignant = e.findings[side].iter().any(|l| l.kind.is_malignant());
    let density_label = noisy_density(
        e.density,
        cfg.label_noise,
        &mut SplitMix64::new(image_seed ^ 0x0d15_a9ee),
    );
    let f0 = e.findings[side].first();
    let bbox = a.finding_boxes.first();
    let extra = vec![
        ("density_true".to_string(), e.density.to_string()),
        (
            "finding".to_string(),
            f0.map(|l| l.kind.as_str()).unwrap_or("none").to_string(),
        ),
        (
            "finding_x".to_string(),
            bbox.map(|b| format!("{:.1}", b.0)).unwrap_or_default(),
        ),
        (
            "finding_y".to_string(),
            bbox.map(|b| format!("{:.1}", b.1)).unwrap_or_default(),
        ),
        (
            "finding_radius_px".to_string(),
            bbox.map(|b| format!("{:.1}", b.2)).unwrap_or_default(),
        ),
        (
            "subtlety".to_string(),
            f0.map(|l| format!("{:.2}", l.subtlety)).unwrap_or_default(),
        ),
        ("sop_instance_uid".to_string(), spec.sop_instance_uid()),
        ("pixel_spacing_mm".to_string(), format!("{spacing:.4}")),
    ];
    Ok(Generated {
        row: ManifestRow {
            path: rel,
            patient_id: e.patient_id.clone(),
            study_uid: e.study_uid.clone(),
            laterality: Some(lat),
            view: Some(view),
            vendor: Some(e.vendor),
            density: Some(density_label),
            percent_density: Some(a.percent_density),
            cancer: Some(malignant),
            normal: Some(e.findings[side].is_empty()),
            mask_path: Some(mask_rel),
            split: e.split,
            extra,
        },
        density_true: e.density,
        findings: e.findings[side].iter().map(|l| l.kind).collect(),
    })
}

/// Reader disagreement: with probability `rate`, move to an adjacent class.
fn noisy_density(d: Density, rate: f64, rng: &mut SplitMix64) -> Density {
    if rng.uniform() >= rate {
        return d;
    }
    let i = d.index() as i64 + if rng.uniform() < 0.5 { -1 } else { 1 };
    let i = if i < 0 {
        1
    } else if i > 3 {
        2
    } else {
        i
    };
    Density::from_index(i as usize).unwrap_or(d)
}

fn mirror<T: Copy>(v: &mut [T], w: usize) {
    for row in v.chunks_exact_mut(w) {
        row.reverse();
    }
}

fn encoder(c: Compression) -> Option<(&'static str, &'static str, Vec<&'static str>)> {
    match c {
        Compression::None => None,
        Compression::JpegLossless => Some(("dcmcjpeg", "dcmtk", vec!["+e1"])),
        Compression::Rle => Some(("dcmcrle", "dcmtk", vec![])),
        Compression::Jpeg2000Lossless => Some(("gdcmconv", "libgdcm-tools", vec!["--j2k"])),
    }
}

fn check_encoders(cfg: &SynthConfig) -> Result<(), SynthError> {
    for v in &cfg.vendors {
        if let Some((tool, package, _)) = style::style(*v).and_then(|s| encoder(s.compression)) {
            let ok = Command::new(tool)
                .arg("--version")
                .output()
                .map(|o| o.status.success() || !o.stdout.is_empty())
                .unwrap_or(false);
            if !ok {
                return Err(SynthError::Encoder {
                    tool,
                    package,
                    detail: format!("{tool} not found on PATH (apt-get install {package})"),
                });
            }
        }
    }
    Ok(())
}

/// Re-encode `path` in place with the vendor's usual transfer syntax (dicom-rs 0.10 cannot encode
/// JPEG lossless / JPEG 2000 / RLE, so Debian's dcmtk and GDCM do it).
fn compress(c: Compression, path: &Path) -> Result<(), SynthError> {
    let Some((tool, package, args)) = encoder(c) else {
        return Ok(());
    };
    let tmp: PathBuf = path.with_extension("tmp.dcm");
    let out = Command::new(tool)
        .args(&args)
        .arg(path)
        .arg(&tmp)
        .output()
        .map_err(|e| SynthError::Encoder {
            tool,
            package,
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(SynthError::Encoder {
            tool,
            package,
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    std::fs::rename(&tmp, path).map_err(|error| SynthError::Io {
        path: path.display().to_string(),
        error,
    })
}
