//! Evaluation plots (PNG, plotters): ROC curves per vendor, confusion matrices, cancer
//! calibration (reliability diagram). Text is drawn with a TrueType font read at run time
//! (`MAMMO_FONT`, else DejaVu Sans / Liberation Sans / Noto Sans at their Debian paths).

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use thiserror::Error;

/// Errors of plotting.
#[derive(Debug, Error)]
pub enum PlotError {
    #[error(
        "no TrueType font found (set MAMMO_FONT to a .ttf file, or install fonts-dejavu-core)"
    )]
    NoFont,
    #[error("{path}: {detail}")]
    Draw { path: String, detail: String },
}

const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Register the font once for the whole process; false when none is found.
pub fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let candidates = std::env::var("MAMMO_FONT")
            .ok()
            .into_iter()
            .chain(FONT_PATHS.iter().map(|s| s.to_string()));
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                // plotters keeps a &'static font: the bytes live for the whole process
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn draw_err(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |detail| PlotError::Draw {
        path: path.display().to_string(),
        detail,
    }
}

/// Points (1 − specificity, sensitivity) of the ROC curve of `scores` (0–1 probabilities)
/// against `labels`, from (0, 0) to (1, 1); ties step diagonally. Empty when a class is absent.
pub fn roc_points(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let pos = labels.iter().filter(|&&l| l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut pts = vec![(0.0, 0.0)];
    let mut k = 0;
    while k < idx.len() {
        let s = scores[idx[k]];
        while k < idx.len() && scores[idx[k]] == s {
            if labels[idx[k]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            k += 1;
        }
        pts.push((fp / neg, tp / pos));
    }
    pts
}

/// One curve: its legend name, scores (0–1) and labels.
pub type Curve = (String, Vec<f64>, Vec<bool>);

/// The chart of a unit square `[0, 1]²` plot.
type UnitChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A 640×560 PNG at `path` with a `[0, 1]²` chart: caption, axis names `axes` (x, y), the
/// diagonal y = x (chance for ROC, perfect calibration for a reliability diagram), the series
/// drawn by `series` and their legend at `legend`.
fn unit_square_plot(
    path: &Path,
    title: &str,
    axes: (&str, &str),
    legend: SeriesLabelPosition,
    series: impl FnOnce(&mut UnitChart) -> Result<(), String>,
) -> Result<(), PlotError> {
    if !font_ready() {
        return Err(PlotError::NoFont);
    }
    let e = draw_err(path);
    let root = BitMapBackend::new(path, (640, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(axes.0)
        .y_desc(axes.1)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
        .map_err(|x| e(x.to_string()))?;
    series(&mut chart).map_err(&e)?;
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// ROC curves, one per entry of `curves` (groups without both classes are left out), to `path`.
pub fn roc(path: &Path, title: &str, curves: &[Curve]) -> Result<(), PlotError> {
    let axes = ("1 - specificity", "sensitivity");
    unit_square_plot(
        path,
        title,
        axes,
        SeriesLabelPosition::LowerRight,
        |chart| {
            for (i, (name, scores, labels)) in curves.iter().enumerate() {
                let pts = roc_points(scores, labels);
                if pts.is_empty() {
                    continue;
                }
                let auc = super::metrics::auc(scores, labels).unwrap_or(f64::NAN);
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                    .map_err(|x| x.to_string())?
                    .label(format!("{name} (AUC {auc:.3}, n={})", scores.len()))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
            Ok(())
        },
    )
}

/// Confusion matrix `m[truth][prediction]` with class names, counts in the cells, shaded by row
/// fraction, to `path`.
pub fn confusion(
    path: &Path,
    title: &str,
    classes: &[String],
    m: &[Vec<usize>],
) -> Result<(), PlotError> {
    if !font_ready() {
        return Err(PlotError::NoFont);
    }
    let e = draw_err(path);
    let k = classes.len().max(1) as i32;
    let cell = (360 / k).clamp(40, 90);
    let (left, top) = (130, 60);
    let size = ((left + cell * k + 30) as u32, (top + cell * k + 60) as u32);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let text = |s: &str, pos: (i32, i32), size: i32| {
        Text::new(s.to_string(), pos, ("sans-serif", size).into_font())
    };
    root.draw(&text(title, (10, 10), 18))
        .map_err(|x| e(x.to_string()))?;
    root.draw(&text("prediction →", (left, top - 22), 13))
        .map_err(|x| e(x.to_string()))?;
    root.draw(&text("truth ↓", (10, top - 22), 13))
        .map_err(|x| e(x.to_string()))?;
    for (i, row) in m.iter().enumerate() {
        let total: usize = row.iter().sum();
        let y = top + i as i32 * cell;
        root.draw(&text(&classes[i], (10, y + cell / 2 - 7), 13))
            .map_err(|x| e(x.to_string()))?;
        for (j, &c) in row.iter().enumerate() {
            let x = left + j as i32 * cell;
            let frac = if total > 0 {
                c as f64 / total as f64
            } else {
                0.0
            };
            let shade = (255.0 * (1.0 - 0.8 * frac)) as u8;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                RGBColor(shade, shade, 255).filled(),
            ))
            .map_err(|x| e(x.to_string()))?;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                BLACK.mix(0.3),
            ))
            .map_err(|x| e(x.to_string()))?;
            root.draw(&text(
                &c.to_string(),
                (x + cell / 2 - 10, y + cell / 2 - 7),
                14,
            ))
            .map_err(|x| e(x.to_string()))?;
        }
    }
    for (j, name) in classes.iter().enumerate() {
        let x = left + j as i32 * cell;
        root.draw(&text(name, (x + 4, top + k * cell + 8), 12))
            .map_err(|x| e(x.to_string()))?;
    }
    root.present().map_err(|x| e(x.to_string()))
}

/// Reliability bins of `scores` (0–1): for each of `bins` equal-width bins with at least one
/// image, (mean predicted probability, observed positive fraction, count).
pub fn reliability(scores: &[f64], labels: &[bool], bins: usize) -> Vec<(f64, f64, usize)> {
    let mut acc = vec![(0.0, 0usize, 0usize); bins.max(1)];
    for (&s, &l) in scores.iter().zip(labels) {
        let b = ((s.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        acc[b].0 += s;
        acc[b].1 += l as usize;
        acc[b].2 += 1;
    }
    acc.into_iter()
        .filter(|a| a.2 > 0)
        .map(|(s, p, n)| (s / n as f64, p as f64 / n as f64, n))
        .collect()
}

/// Reliability diagram of the cancer probability, one line per curve (10 bins), to `path`.
pub fn calibration(path: &Path, title: &str, curves: &[Curve]) -> Result<(), PlotError> {
    let axes = (
        "mean predicted probability",
        "observed fraction with cancer",
    );
    unit_square_plot(path, title, axes, SeriesLabelPosition::UpperLeft, |chart| {
        for (i, (name, scores, labels)) in curves.iter().enumerate() {
            let bins = reliability(scores, labels, 10);
            if bins.is_empty() {
                continue;
            }
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = bins.iter().map(|b| (b.0, b.1)).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|x| x.to_string())?
                .label(format!("{name} (n={})", scores.len()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|x| x.to_string())?;
        }
        Ok(())
    })
}
