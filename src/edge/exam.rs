//! The exam rule of DESIGN.md ("Data flow (edge)") as pure functions: per-image scores of one
//! study → per-breast cancer scores → an `ExamResult` with the exam cancer score, density, the
//! views present and missing, `triage` and `dense_breasts` (DESIGN.md, "MQTT contract").

use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

use crate::ingest::dicom::{Laterality, View};
use crate::model::labels::Density;
use crate::model::score::ImageResult;

/// Why an exam cannot be aggregated.
#[derive(Debug, Error, PartialEq)]
pub enum ExamError {
    /// No CC or MLO image with a laterality was given.
    #[error("no scored CC/MLO image with a laterality in the exam")]
    NoScoredViews,
    /// A probability or percent density is NaN or infinite.
    #[error("{laterality}-{view}: {field} is not finite")]
    NotFinite {
        laterality: Laterality,
        view: View,
        field: &'static str,
    },
}

/// One scored image, as the rule needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageScore {
    pub laterality: Laterality,
    /// Only CC and MLO count; other views are ignored by `aggregate`.
    pub view: View,
    /// Cancer probability, 0–1.
    pub cancer_probability: f32,
    /// BI-RADS density A–D probabilities, 0–1 each.
    pub density_probabilities: [f32; 4],
    /// Percent density, 0–100 %.
    pub percent_density: f32,
    /// The image is out of the model's distribution (reconstruction error over threshold).
    pub ood: bool,
}

impl ImageScore {
    /// The fields of an image result; `None` when it has no laterality.
    pub fn from_result(r: &ImageResult) -> Option<ImageScore> {
        Some(ImageScore {
            laterality: r.laterality?,
            view: r.view,
            cancer_probability: r.cancer_probability,
            density_probabilities: r.density_probabilities,
            percent_density: r.percent_density,
            ood: r.ood,
        })
    }
}

/// The exam's answer for the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Triage {
    /// Exam cancer score at or above the model's operating threshold.
    Priority,
    /// Below the threshold, but a view is out of distribution or the exam is incomplete.
    Review,
    /// Below the threshold, complete, all views in distribution.
    Routine,
}

/// One breast.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreastResult {
    pub laterality: Laterality,
    /// Max cancer probability over this breast's CC/MLO images, 0–1.
    pub cancer_probability: f32,
    /// Views present (CC before MLO, each once).
    pub views: Vec<View>,
    /// True when any of its images is out of distribution.
    pub ood: bool,
}

/// The aggregated exam, published as `<prefix>/exam` (with UIDs and model fields added there).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExamResult {
    /// 1 for the first publication, + 1 for each re-publication (`next_revision`).
    pub revision: u32,
    /// L-CC, L-MLO, R-CC and R-MLO are all present.
    pub complete: bool,
    /// Screening views present / missing, as `L-CC`, `L-MLO`, `R-CC`, `R-MLO`.
    pub views_present: Vec<String>,
    pub views_missing: Vec<String>,
    /// Number of CC/MLO images aggregated.
    pub images: usize,
    /// Breasts with at least one image, left first.
    pub breasts: Vec<BreastResult>,
    /// Max over breasts, 0–1.
    pub cancer_probability: f32,
    /// The model's operating threshold, 0–1, and whether the exam score reaches it.
    pub cancer_threshold: f32,
    pub cancer_flag: bool,
    /// Argmax of `density_probabilities`.
    pub density: Density,
    /// Mean A–D probabilities over all aggregated images.
    pub density_probabilities: [f32; 4],
    /// Mean percent density over all aggregated images, 0–100 %.
    pub percent_density: f32,
    /// Density C or D (US MQSA density notification, 2024).
    pub dense_breasts: bool,
    /// True when any image is out of distribution.
    pub ood: bool,
    pub triage: Triage,
}

/// The four screening views in publication order.
const SCREENING: [(Laterality, View); 4] = [
    (Laterality::L, View::CC),
    (Laterality::L, View::MLO),
    (Laterality::R, View::CC),
    (Laterality::R, View::MLO),
];

fn view_name(l: Laterality, v: View) -> String {
    format!("{l}-{v}")
}

/// Apply the exam rule to the images of one study. Images whose view is not CC or MLO are
/// ignored. `cancer_threshold` is the model's `mammo.cancer_threshold` (0–1); `revision` is the
/// revision this publication will carry (`next_revision`). Density ties go to the lower class.
///
/// Errors: `NoScoredViews`, `NotFinite`.
pub fn aggregate(
    images: &[ImageScore],
    cancer_threshold: f32,
    revision: u32,
) -> Result<ExamResult, ExamError> {
    let scored: Vec<&ImageScore> = images.iter().filter(|i| i.view.is_screening()).collect();
    if scored.is_empty() {
        return Err(ExamError::NoScoredViews);
    }
    for i in &scored {
        let bad = |field| ExamError::NotFinite {
            laterality: i.laterality,
            view: i.view,
            field,
        };
        if !i.cancer_probability.is_finite() {
            return Err(bad("cancer_probability"));
        }
        if !i.density_probabilities.iter().all(|p| p.is_finite()) {
            return Err(bad("density_probabilities"));
        }
        if !i.percent_density.is_finite() {
            return Err(bad("percent_density"));
        }
    }

    let mut breasts = Vec::new();
    for lat in [Laterality::L, Laterality::R] {
        let mine: Vec<&&ImageScore> = scored.iter().filter(|i| i.laterality == lat).collect();
        if mine.is_empty() {
            continue;
        }
        breasts.push(BreastResult {
            laterality: lat,
            cancer_probability: mine
                .iter()
                .map(|i| i.cancer_probability)
                .fold(f32::NEG_INFINITY, f32::max),
            views: [View::CC, View::MLO]
                .into_iter()
                .filter(|v| mine.iter().any(|i| i.view == *v))
                .collect(),
            ood: mine.iter().any(|i| i.ood),
        });
    }

    let present = |l: Laterality, v: View| scored.iter().any(|i| i.laterality == l && i.view == v);
    let views_present: Vec<String> = SCREENING
        .iter()
        .filter(|(l, v)| present(*l, *v))
        .map(|(l, v)| view_name(*l, *v))
        .collect();
    let views_missing: Vec<String> = SCREENING
        .iter()
        .filter(|(l, v)| !present(*l, *v))
        .map(|(l, v)| view_name(*l, *v))
        .collect();
    let complete = views_missing.is_empty();

    let n = scored.len() as f32;
    let mut density_probabilities = [0f32; 4];
    for i in &scored {
        for (m, p) in density_probabilities
            .iter_mut()
            .zip(i.density_probabilities)
        {
            *m += p / n;
        }
    }
    let mut best = 0;
    for k in 1..4 {
        if density_probabilities[k] > density_probabilities[best] {
            best = k;
        }
    }
    let density = Density::from_index(best).unwrap_or(Density::A);
    let percent_density = scored.iter().map(|i| i.percent_density).sum::<f32>() / n;

    let cancer_probability = breasts
        .iter()
        .map(|b| b.cancer_probability)
        .fold(f32::NEG_INFINITY, f32::max);
    let cancer_flag = cancer_probability >= cancer_threshold;
    let ood = scored.iter().any(|i| i.ood);
    let triage = if cancer_flag {
        Triage::Priority
    } else if ood || !complete {
        Triage::Review
    } else {
        Triage::Routine
    };

    Ok(ExamResult {
        revision,
        complete,
        views_present,
        views_missing,
        images: scored.len(),
        breasts,
        cancer_probability,
        cancer_threshold,
        cancer_flag,
        density,
        density_probabilities,
        percent_density,
        dense_breasts: density.is_dense(),
        ood,
        triage,
    })
}

/// Revision of the next publication given the last published one (`None` or 0: never
/// published → 1).
pub fn next_revision(published: Option<u32>) -> u32 {
    published.unwrap_or(0) + 1
}

/// Whether an exam with unpublished images is due: at once when complete, else once the study
/// has been quiet (no new image) for `quiet` (`exam.quiet_secs`).
pub fn publish_due(complete: bool, quiet_for: Duration, quiet: Duration) -> bool {
    complete || quiet_for >= quiet
}
