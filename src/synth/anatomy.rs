//! Anatomy of a synthetic breast image in canonical orientation (chest wall on the left, x = 0):
//! outline of a compressed breast (CC) or an oblique view with pectoral muscle and inframammary fold
//! (MLO), skin line, nipple, fibroglandular tissue from a 1/f^β field thresholded to an exact
//! percent density, fat lobules, Cooper's-ligament-like strands, vessels, and findings. Output is an
//! attenuation-like grey image in [0, 1] (0 = air) plus the dense-tissue mask: the ground truth.

use serde::Serialize;

use super::noise::{power_law_field, sample};
use super::SplitMix64;
use crate::ingest::dicom::View;

/// Kinds of finding. The first three are malignant (`cancer = 1`), the last two benign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LesionKind {
    SpiculatedMass,
    ArchitecturalDistortion,
    PleomorphicCalcifications,
    CircumscribedMass,
    ScatteredCalcifications,
}

impl LesionKind {
    pub fn is_malignant(self) -> bool {
        matches!(
            self,
            LesionKind::SpiculatedMass
                | LesionKind::ArchitecturalDistortion
                | LesionKind::PleomorphicCalcifications
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LesionKind::SpiculatedMass => "spiculated_mass",
            LesionKind::ArchitecturalDistortion => "architectural_distortion",
            LesionKind::PleomorphicCalcifications => "pleomorphic_calcifications",
            LesionKind::CircumscribedMass => "circumscribed_mass",
            LesionKind::ScatteredCalcifications => "scattered_calcifications",
        }
    }
}

/// A finding, placed in breast coordinates so that it appears in both views of its breast.
#[derive(Debug, Clone, PartialEq)]
pub struct Lesion {
    pub kind: LesionKind,
    /// Depth from the chest wall as a fraction of the local breast depth (0.2–0.8).
    pub u: f32,
    /// Vertical position relative to the breast's half-height (−0.6–0.6).
    pub v: f32,
    /// Size (radius of the mass, cluster or scatter), mm.
    pub size_mm: f32,
    /// 0 = obvious, 1 = very subtle; scales contrast by (1 − 0.6 · subtlety).
    pub subtlety: f32,
    /// Seed of the finding's shape (same in both views).
    pub seed: u64,
}

/// Everything that shapes one view of one breast.
#[derive(Debug, Clone, PartialEq)]
pub struct BreastParams {
    pub view: View,
    /// Target percent density, 0–100 %.
    pub percent_density: f64,
    /// Breast depth (chest wall to nipple) as a fraction of the image width.
    pub depth: f32,
    /// Half-height of the breast as a fraction of the image height.
    pub half_height: f32,
    /// Vertical centre as a fraction of the image height.
    pub center_y: f32,
    /// MLO pectoral muscle: width at the top and height at the chest wall, fractions of W and H.
    pub pectoral: (f32, f32),
    /// Power-law exponent of the tissue texture (≈ 3).
    pub beta: f32,
    pub findings: Vec<Lesion>,
    /// Texture seed (differs per view).
    pub seed: u64,
}

/// Rendered anatomy, `width × height`, canonical orientation.
pub struct Anatomy {
    pub width: usize,
    pub height: usize,
    /// Attenuation-like grey levels in [0, 1], 0 = air.
    pub grey: Vec<f32>,
    /// 1 where fibroglandular (dense) tissue is, else 0.
    pub dense: Vec<u8>,
    /// 1 inside the breast (skin, fat, dense tissue; not the pectoral muscle).
    pub breast: Vec<u8>,
    /// Measured percent density: dense area / breast area × 100.
    pub percent_density: f64,
    /// Findings' centres and radii in pixels (x, y, r), in the order of `BreastParams::findings`.
    pub finding_boxes: Vec<(f32, f32, f32)>,
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Breast outline: per row, the x of the skin edge (0 = no breast in that row).
fn outline(p: &BreastParams, w: usize, h: usize) -> Vec<f32> {
    let d = p.depth * w as f32;
    let cy = p.center_y * h as f32;
    let b = p.half_height * h as f32;
    (0..h)
        .map(|y| {
            let y = y as f32 + 0.5;
            let r = match p.view {
                View::MLO => {
                    if y < cy {
                        (y - cy) / (cy + 0.06 * h as f32)
                    } else {
                        (y - cy) / b
                    }
                }
                _ => (y - cy) / b,
            };
            if r.abs() >= 1.0 {
                0.0
            } else {
                d * (1.0 - r * r).powf(0.42)
            }
        })
        .collect()
}

/// Render the anatomy at `width × height` with pixel spacing `spacing_mm`.
pub fn render(p: &BreastParams, width: usize, height: usize, spacing_mm: f32) -> Anatomy {
    let (w, h) = (width, height);
    let mut rng = SplitMix64::new(p.seed);
    let edge = outline(p, w, h);
    let cy = p.center_y * h as f32;
    let b = p.half_height * h as f32;
    let d = p.depth * w as f32;
    let px = |mm: f32| mm / spacing_mm;
    let nipple = (d, cy + 0.02 * b, px(4.0));
    let (pw, ph) = (p.pectoral.0 * w as f32, p.pectoral.1 * h as f32);
    let is_pect = |x: f32, y: f32| p.view == View::MLO && (x / pw) + (y / ph).powf(1.15) < 1.0;

    // Low-frequency field for the fibroglandular distribution and a finer one for texture.
    let gw = 128usize;
    let gh = ((gw as f32 * h as f32 / w as f32).round() as usize).max(16);
    let low = power_law_field(gw, gh, p.beta, &mut rng);
    let fw = w.clamp(64, 512);
    let fh = ((fw as f32 * h as f32 / w as f32).round() as usize).max(16);
    let fine = power_law_field(fw, fh, p.beta - 0.6, &mut rng);
    let (sxl, syl) = (gw as f32 / w as f32, gh as f32 / h as f32);
    let (sxf, syf) = (fw as f32 / w as f32, fh as f32 / h as f32);

    // Pass 1: breast region, relative depth ρ, and the density score F'.
    let n = w * h;
    let mut breast = vec![0u8; n];
    let mut score = vec![f32::NEG_INFINITY; n];
    let mut rho = vec![0f32; n];
    let skin_px = px(1.5).max(1.0);
    for (y, &ex) in edge.iter().enumerate() {
        let fy = y as f32 + 0.5;
        let rv = (fy - cy) / b;
        for x in 0..w {
            let fx = x as f32 + 0.5;
            let in_nipple = {
                let (dx, dy) = (fx - nipple.0, fy - nipple.1);
                dx * dx + dy * dy < nipple.2 * nipple.2 && fx >= d - nipple.2
            };
            if !(fx < ex || in_nipple) || is_pect(fx, fy) {
                continue;
            }
            let i = y * w + x;
            breast[i] = 1;
            let r = if ex > 0.0 { (fx / ex).min(1.0) } else { 1.0 };
            rho[i] = r;
            if ex - fx > skin_px * 2.0 {
                let bias = 1.3 * (-((r - 0.42) / 0.38).powi(2)).exp() * (-(rv / 0.9).powi(2)).exp();
                score[i] = sample(&low, gw, gh, fx * sxl, fy * syl)
                    + 0.45 * sample(&fine, fw, fh, fx * sxf, fy * syf)
                    + bias;
            }
        }
    }
    let breast_area = breast.iter().filter(|&&v| v == 1).count().max(1);
    let want = ((p.percent_density / 100.0) * breast_area as f64).round() as usize;
    let thr = quantile_from_top(&score, want);
    let dense: Vec<u8> = score
        .iter()
        .map(|&s| (s > thr && s.is_finite()) as u8)
        .collect();
    let dense_area = dense.iter().filter(|&&v| v == 1).count();

    // Pass 2: grey levels.
    let mut grey = vec![0f32; n];
    for (y, &ex) in edge.iter().enumerate() {
        let fy = y as f32 + 0.5;
        for x in 0..w {
            let fx = x as f32 + 0.5;
            let i = y * w + x;
            let t = sample(&fine, fw, fh, fx * sxf, fy * syf);
            if breast[i] == 1 {
                let r = rho[i];
                let thickness = smoothstep(1.0, 0.72, r).sqrt();
                let (ds, core) = if score[i].is_finite() {
                    (
                        smoothstep(thr - 0.35, thr + 0.25, score[i]),
                        (score[i] - thr).clamp(0.0, 1.5),
                    )
                } else {
                    (0.0, 0.0)
                };
                let mut g = (0.30 + 0.05 * t) * (0.45 + 0.55 * thickness);
                g += ds * (0.2 + 0.06 * core + 0.06 * t) * (0.6 + 0.4 * thickness);
                if ex - fx < skin_px {
                    g += 0.05;
                }
                grey[i] = g;
            } else if is_pect(fx, fy) {
                grey[i] = 0.60 + 0.03 * t;
            }
        }
    }

    // Structures in their own layer (max-blended), then added inside the breast.
    let mut layer = vec![0f32; n];
    let breast_at = |x: f32, y: f32| {
        let (xi, yi) = (x as isize, y as isize);
        xi >= 0
            && yi >= 0
            && (xi as usize) < w
            && (yi as usize) < h
            && breast[yi as usize * w + xi as usize] == 1
    };
    // Cooper's-ligament-like strands: thin arcs sweeping from the chest wall towards the nipple.
    for _ in 0..28 {
        let y0 = cy + (rng.uniform() as f32 * 2.0 - 1.0) * b * 0.9;
        let ex = edge[(y0.max(0.0) as usize).min(h - 1)];
        if ex <= 0.0 {
            continue;
        }
        let x0 = ex * (0.1 + 0.5 * rng.uniform() as f32);
        let len = d * (0.15 + 0.3 * rng.uniform() as f32);
        let ang = ((nipple.1 - y0).atan2(nipple.0 - x0)) + (rng.uniform() as f32 - 0.5) * 0.8;
        let bend = (rng.uniform() as f32 - 0.5) * 0.6;
        let width = px(0.2 + 0.2 * rng.uniform() as f32).max(0.8);
        polyline(&mut layer, w, h, x0, y0, ang, bend, len, width, 0.045);
    }
    // Vessels: longer, wider, sinuous.
    for _ in 0..4 {
        let y0 = cy + (rng.uniform() as f32 * 2.0 - 1.0) * b * 0.7;
        let len = d * (0.5 + 0.3 * rng.uniform() as f32);
        let ang = (rng.uniform() as f32 - 0.5) * 0.5;
        let bend = (rng.uniform() as f32 - 0.5) * 1.0;
        polyline(
            &mut layer,
            w,
            h,
            0.0,
            y0,
            ang,
            bend,
            len,
            px(1.0).max(1.2),
            0.05,
        );
    }
    for i in 0..n {
        if breast[i] == 1 {
            grey[i] += layer[i];
        }
        layer[i] = 0.0;
    }
    // Fat lobules: darker round areas where the tissue is fatty.
    for _ in 0..60 {
        let y = cy + (rng.uniform() as f32 * 2.0 - 1.0) * b;
        let ex = edge[(y.max(0.0) as usize).min(h - 1)];
        let x = ex * rng.uniform() as f32;
        let r = px(2.0 + 4.0 * rng.uniform() as f32);
        disc(&mut layer, w, h, x, y, r, r * 0.6, 0.035, false);
    }
    for i in 0..n {
        if breast[i] == 1 && dense[i] == 0 {
            grey[i] -= layer[i];
        }
        layer[i] = 0.0;
    }

    // Findings: contrast lowered by subtlety and masked by dense tissue.
    let masking = 1.0 - 0.4 * (p.percent_density as f32 / 100.0);
    let mut finding_boxes = Vec::new();
    for f in &p.findings {
        let y = (cy + f.v * b).clamp(0.0, h as f32 - 1.0);
        let ex = edge[y as usize].max(1.0);
        let x = f.u * ex;
        let c = (1.0 - 0.6 * f.subtlety) * masking;
        let r = px(f.size_mm);
        let mut lr = SplitMix64::new(f.seed);
        draw_finding(&mut layer, w, h, f.kind, x, y, r, c, spacing_mm, &mut lr);
        finding_boxes.push((
            x,
            y,
            r * if f.kind == LesionKind::ArchitecturalDistortion {
                3.0
            } else {
                1.0
            },
        ));
    }
    for i in 0..n {
        if breast[i] == 1 {
            grey[i] += layer[i];
        }
        grey[i] = grey[i].clamp(0.0, 1.0);
    }
    let _ = breast_at; // region test kept for future structure placement checks
    Anatomy {
        width: w,
        height: h,
        grey,
        dense,
        breast,
        percent_density: dense_area as f64 / breast_area as f64 * 100.0,
        finding_boxes,
    }
}

/// The threshold above which exactly `count` finite values of `v` lie (within histogram precision).
fn quantile_from_top(v: &[f32], count: usize) -> f32 {
    let finite: Vec<f32> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if finite.is_empty() || count == 0 {
        return f32::INFINITY;
    }
    if count >= finite.len() {
        return f32::NEG_INFINITY;
    }
    let (lo, hi) = finite
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let bins = 1 << 16;
    let scale = (bins - 1) as f32 / (hi - lo).max(1e-6);
    let mut hist = vec![0usize; bins];
    for &x in &finite {
        hist[((x - lo) * scale) as usize] += 1;
    }
    let mut acc = 0;
    for b in (0..bins).rev() {
        acc += hist[b];
        if acc >= count {
            // values in bins > b are above; the threshold is this bin's lower edge
            return lo + b as f32 / scale - 1e-7;
        }
    }
    f32::NEG_INFINITY
}

/// Anti-aliased filled disc (or dome when `dome`), max-blended with weight `value`.
#[allow(clippy::too_many_arguments)]
fn disc(
    layer: &mut [f32],
    w: usize,
    h: usize,
    cx: f32,
    cy: f32,
    r: f32,
    soft: f32,
    value: f32,
    dome: bool,
) {
    let (x0, x1) = (
        (cx - r - soft).floor().max(0.0) as usize,
        ((cx + r + soft).ceil().max(0.0) as usize).min(w),
    );
    let (y0, y1) = (
        (cy - r - soft).floor().max(0.0) as usize,
        ((cy + r + soft).ceil().max(0.0) as usize).min(h),
    );
    for y in y0..y1 {
        for x in x0..x1 {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let dist = (dx * dx + dy * dy).sqrt();
            let mut a = ((r - dist) / soft.max(0.5) + 0.5).clamp(0.0, 1.0);
            if dome && r > 0.0 {
                a *= (1.0 - (dist / r).min(1.0).powi(2)).sqrt().max(0.35);
            }
            let v = &mut layer[y * w + x];
            *v = v.max(a * value);
        }
    }
}

/// Thick anti-aliased segment, max-blended.
#[allow(clippy::too_many_arguments)]
fn segment(
    layer: &mut [f32],
    w: usize,
    h: usize,
    ax: f32,
    ay: f32,
    bx: f32,
    by: f32,
    width: f32,
    value: f32,
) {
    let pad = width + 1.0;
    let (x0, x1) = (
        (ax.min(bx) - pad).floor().max(0.0) as usize,
        ((ax.max(bx) + pad).ceil().max(0.0) as usize).min(w),
    );
    let (y0, y1) = (
        (ay.min(by) - pad).floor().max(0.0) as usize,
        ((ay.max(by) + pad).ceil().max(0.0) as usize).min(h),
    );
    let (vx, vy) = (bx - ax, by - ay);
    let len2 = (vx * vx + vy * vy).max(1e-6);
    for y in y0..y1 {
        for x in x0..x1 {
            let (px, py) = (x as f32 + 0.5 - ax, y as f32 + 0.5 - ay);
            let t = ((px * vx + py * vy) / len2).clamp(0.0, 1.0);
            let (dx, dy) = (px - t * vx, py - t * vy);
            let dist = (dx * dx + dy * dy).sqrt();
            let a = ((width / 2.0 - dist) + 0.5).clamp(0.0, 1.0);
            let v = &mut layer[y * w + x];
            *v = v.max(a * value);
        }
    }
}

/// A gently curving line of `len` pixels from (x0, y0), heading `ang` and turning by `bend` rad
/// over its length, drawn as short segments.
#[allow(clippy::too_many_arguments)]
fn polyline(
    layer: &mut [f32],
    w: usize,
    h: usize,
    x0: f32,
    y0: f32,
    ang: f32,
    bend: f32,
    len: f32,
    width: f32,
    value: f32,
) {
    let steps = ((len / 8.0).ceil() as usize).clamp(2, 400);
    let (mut x, mut y, mut a) = (x0, y0, ang);
    let step = len / steps as f32;
    for _ in 0..steps {
        let (nx, ny) = (x + step * a.cos(), y + step * a.sin());
        segment(layer, w, h, x, y, nx, ny, width, value);
        x = nx;
        y = ny;
        a += bend / steps as f32;
    }
}

/// Draw one finding centred at (x, y) with radius `r` pixels and contrast scale `c`.
#[allow(clippy::too_many_arguments)]
fn draw_finding(
    layer: &mut [f32],
    w: usize,
    h: usize,
    kind: LesionKind,
    x: f32,
    y: f32,
    r: f32,
    c: f32,
    spacing_mm: f32,
    rng: &mut SplitMix64,
) {
    let px = |mm: f32| (mm / spacing_mm).max(0.7);
    match kind {
        LesionKind::SpiculatedMass => {
            disc(layer, w, h, x, y, r, r * 0.25, 0.16 * c, true);
            let n = 10 + (rng.uniform() * 8.0) as usize;
            for k in 0..n {
                let a = k as f32 / n as f32 * std::f32::consts::TAU + rng.uniform() as f32 * 0.3;
                let len = r * (1.6 + 1.4 * rng.uniform() as f32);
                segment(
                    layer,
                    w,
                    h,
                    x,
                    y,
                    x + len * a.cos(),
                    y + len * a.sin(),
                    px(0.35),
                    0.11 * c,
                );
            }
        }
        LesionKind::ArchitecturalDistortion => {
            let n = 14 + (rng.uniform() * 8.0) as usize;
            for k in 0..n {
                let a = k as f32 / n as f32 * std::f32::consts::TAU + rng.uniform() as f32 * 0.25;
                let (r0, r1) = (r * 0.4, r * (2.0 + 1.5 * rng.uniform() as f32));
                segment(
                    layer,
                    w,
                    h,
                    x + r0 * a.cos(),
                    y + r0 * a.sin(),
                    x + r1 * a.cos(),
                    y + r1 * a.sin(),
                    px(0.3),
                    0.10 * c,
                );
            }
        }
        LesionKind::PleomorphicCalcifications => {
            let n = 8 + (rng.uniform() * 14.0) as usize;
            for _ in 0..n {
                let (dx, dy) = (
                    rng.normal() as f32 * r * 0.45,
                    rng.normal() as f32 * r * 0.45,
                );
                // irregular: one to three overlapping specks of 0.1–0.35 mm radius
                for _ in 0..1 + (rng.uniform() * 3.0) as usize {
                    let s = px(0.1 + 0.25 * rng.uniform() as f32);
                    let (ox, oy) = (rng.normal() as f32 * s, rng.normal() as f32 * s);
                    disc(
                        layer,
                        w,
                        h,
                        x + dx + ox,
                        y + dy + oy,
                        s,
                        0.6,
                        0.45 * c,
                        false,
                    );
                }
            }
        }
        LesionKind::CircumscribedMass => {
            disc(layer, w, h, x, y, r, px(0.2), 0.13 * c, true);
        }
        LesionKind::ScatteredCalcifications => {
            let n = 4 + (rng.uniform() * 8.0) as usize;
            for _ in 0..n {
                let (dx, dy) = (rng.normal() as f32 * r, rng.normal() as f32 * r);
                disc(
                    layer,
                    w,
                    h,
                    x + dx,
                    y + dy,
                    px(0.3 + 0.3 * rng.uniform() as f32),
                    0.7,
                    0.4 * c,
                    false,
                );
            }
        }
    }
}
