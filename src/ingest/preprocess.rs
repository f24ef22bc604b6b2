//! THE preprocessing shared by trainer, evaluator and daemon: [`Mammogram`] grey levels → model
//! input `[1, H, W]` plus the [`Geometry`] that maps model pixels back to source pixels.
//!
//! Steps (version [`PREPROCESS_VERSION`]): area-downsample to a small segmentation grid → threshold
//! a quarter of the way from the background level (histogram mode below Otsu's threshold) to Otsu's
//! threshold → clear flat bright bands along the edges (collimation borders) → 3×3 opening → largest
//! 4-connected component = breast (drops burned-in labels, lead markers and line artefacts) →
//! bounding box + margin in source pixels → chest-wall side from the image (the side the breast
//! touches; else, since version 2, the half holding more of the breast), else from laterality →
//! area resize of the crop (fast_image_resize, box filter) to fit
//! H × W keeping aspect → optionally ([`PreprocessConfig::standardize`]) the breast's grey levels
//! windowed, and gamma-corrected, to one look ([`standardize`]) → chest wall on the left,
//! vertically centred, zero padding → `(x − mean) / std`. The source image is never copied: the resize reads the crop in place.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ingest::dicom::grey::GreyImage;
use crate::ingest::dicom::{Laterality, Mammogram};

/// Version of the preprocessing contract, stored in the model metadata (`mammo.preprocess_version`);
/// bump it whenever the output for the same input changes. 2: the chest-wall side falls back to
/// the breast's centroid before the laterality (mini-MIAS films: 206 of 224 had no side from the
/// image under version 1, 15 under version 2).
pub const PREPROCESS_VERSION: u32 = 2;

/// Errors of preprocessing.
#[derive(Debug, Error)]
pub enum PreprocessError {
    /// A configuration value out of range (the message names the key).
    #[error("invalid preprocessing config: {0}")]
    Config(String),
    /// The image has no pixels.
    #[error("empty image ({width}x{height})")]
    EmptyImage { width: usize, height: usize },
    /// The resize library refused the buffers.
    #[error("resize failed: {0}")]
    Resize(String),
}

/// Preprocessing parameters. In production they come from the model's ONNX metadata, so the
/// daemon applies exactly what the trainer applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Model input height H, pixels (default 512).
    pub height: usize,
    /// Model input width W, pixels (default 320).
    pub width: usize,
    /// Normalisation mean, in grey-level units [0, 1].
    pub mean: f32,
    /// Normalisation standard deviation, in grey-level units (> 0).
    pub std: f32,
    /// Crop margin around the breast bounding box, as a fraction of the image's width/height.
    pub margin: f32,
    /// Longest side of the segmentation grid, pixels (default 256).
    pub seg_size: usize,
    /// Per-image intensity standardisation of the breast ([`standardize`]): off for models whose
    /// metadata does not ask for it (`mammo.standardize_intensity`), so older models see exactly
    /// what they were trained on.
    pub standardize: Standardize,
}

/// Which per-image intensity standardisation of the breast ([`standardize`]) the preprocessing
/// applies. Written as `mammo.standardize_intensity` = `false` / `window` / `true` (window and
/// gamma: the first kind, so models exported with `true` keep their meaning); a training config
/// takes `false`, `true`, `"off"`, `"window"` or `"window_gamma"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "StandardizeRepr", into = "StandardizeRepr")]
pub enum Standardize {
    /// Grey levels as the grey pipeline gives them.
    #[default]
    Off,
    /// Window from the breast threshold to the breast's 99th percentile → [0, 1]: removes each
    /// machine's offset and contrast, keeps how bright the breast is within it (density).
    Window,
    /// The window, then the gamma that puts the breast's median at 0.5: one look for every
    /// machine, at the cost of the brightness that carries density.
    WindowGamma,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StandardizeRepr {
    Flag(bool),
    Name(String),
}

impl Standardize {
    /// The metadata value (`false`, `window`, `true`).
    pub fn as_meta(self) -> &'static str {
        match self {
            Standardize::Off => "false",
            Standardize::Window => "window",
            Standardize::WindowGamma => "true",
        }
    }

    /// From a metadata or config value; `None` for anything else.
    pub fn from_meta(v: &str) -> Option<Standardize> {
        match v {
            "false" | "off" => Some(Standardize::Off),
            "window" => Some(Standardize::Window),
            "true" | "window_gamma" => Some(Standardize::WindowGamma),
            _ => None,
        }
    }
}

impl TryFrom<StandardizeRepr> for Standardize {
    type Error = String;
    fn try_from(r: StandardizeRepr) -> Result<Self, String> {
        match r {
            StandardizeRepr::Flag(false) => Ok(Standardize::Off),
            StandardizeRepr::Flag(true) => Ok(Standardize::WindowGamma),
            StandardizeRepr::Name(n) => Standardize::from_meta(&n).ok_or_else(|| {
                format!(
                    "standardize {n:?}: use false, true, \"off\", \"window\" or \"window_gamma\""
                )
            }),
        }
    }
}

impl From<Standardize> for StandardizeRepr {
    fn from(s: Standardize) -> Self {
        match s {
            Standardize::Off => StandardizeRepr::Flag(false),
            Standardize::WindowGamma => StandardizeRepr::Flag(true),
            Standardize::Window => StandardizeRepr::Name("window".into()),
        }
    }
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            height: 512,
            width: 320,
            mean: 0.2,
            std: 0.25,
            margin: 0.01,
            seg_size: 256,
            standardize: Standardize::Off,
        }
    }
}

impl PreprocessConfig {
    /// Check ranges; the error names the key.
    /// The decoded size this preprocessing needs, (rows, columns): four times the model input
    /// per side, so that the breast crop (at least half the image) is still reduced at least 2×
    /// by the area filter of the resize, as it is from a full decode. A JPEG 2000 image is
    /// decoded at the coarsest wavelet level that keeps it (`ingest::dicom::Resolution`).
    /// Measured: at twice the input (one level more) the shipped model's density probabilities
    /// moved by up to 0.11 on phantoms; at four times by ≤ 0.03 (tests/it/codecs.rs and
    /// real_data.rs bound the change against a full decode).
    pub fn decode_at_least(&self) -> (usize, usize) {
        (4 * self.height, 4 * self.width)
    }

    pub fn validate(&self) -> Result<(), PreprocessError> {
        let bad = |k: &str, v: String| Err(PreprocessError::Config(format!("{k} = {v}")));
        if self.height < 8 || self.height > 8192 {
            return bad("height", self.height.to_string());
        }
        if self.width < 8 || self.width > 8192 {
            return bad("width", self.width.to_string());
        }
        if self.std.is_nan() || self.std <= 0.0 || !self.std.is_finite() {
            return bad("std", self.std.to_string());
        }
        if !self.mean.is_finite() {
            return bad("mean", self.mean.to_string());
        }
        if !(0.0..=0.25).contains(&self.margin) {
            return bad("margin", self.margin.to_string());
        }
        if self.seg_size < 32 || self.seg_size > 2048 {
            return bad("seg_size", self.seg_size.to_string());
        }
        Ok(())
    }
}

/// A rectangle in source pixels, `[x0, x1) × [y0, y1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropBox {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl CropBox {
    pub fn width(&self) -> usize {
        self.x1 - self.x0
    }
    pub fn height(&self) -> usize {
        self.y1 - self.y0
    }
}

/// Image side, in the source image's own coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Left,
    Right,
}

/// How model pixels relate to source pixels. Source `(x, y)` inside the crop maps to model
/// `(offset_x + (x − x0)·scale, offset_y + (y − y0)·scale)`; when `flipped`, the x coordinate is then
/// mirrored within the resized crop: `x ↦ offset_x + resized_width − 1 − (x − offset_x)` (the crop
/// stays at the left edge, so the chest wall is at model x = 0 either way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Geometry {
    /// Breast crop in source pixels.
    pub crop: CropBox,
    /// Whether the image was mirrored left-right so the chest wall is on the left.
    pub flipped: bool,
    /// Model pixels per source pixel.
    pub scale: f32,
    /// Placement of the resized crop in the `W × H` model input, pixels (before mirroring).
    pub offset_x: usize,
    pub offset_y: usize,
    /// Size of the resized crop in model pixels.
    pub resized_width: usize,
    pub resized_height: usize,
    /// The chest-wall side in the source image and how it was decided (`image` or `laterality`).
    pub chest_wall: Side,
    pub chest_wall_source: &'static str,
    /// Laterality used: the header's, or inferred from the chest-wall side when the header has none.
    pub laterality: Laterality,
    /// The header's laterality disagrees with the side the breast is on (the header is kept).
    pub orientation_mismatch: bool,
    /// Fraction of the segmentation grid classified as breast.
    pub breast_fraction: f32,
}

/// The model input for one image: `tensor` is `[1, H, W]` row-major, normalised with mean/std.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessed {
    pub height: usize,
    pub width: usize,
    pub tensor: Vec<f32>,
    pub geometry: Geometry,
}

impl Preprocessed {
    /// The tensor mapped back to grey levels [0, 1] (`x·std + mean`), e.g. for a preview PNG.
    pub fn grey_levels(&self, cfg: &PreprocessConfig) -> Vec<f32> {
        self.tensor
            .iter()
            .map(|v| (v * cfg.std + cfg.mean).clamp(0.0, 1.0))
            .collect()
    }
}

/// In the usual display orientation, where the chest wall of each breast lies in its own image:
/// a right breast's on the right edge, a left breast's on the left (hanging "back to back").
pub fn expected_chest_wall(laterality: Laterality) -> Side {
    match laterality {
        Laterality::R => Side::Right,
        Laterality::L => Side::Left,
    }
}

/// Preprocess a decoded mammogram (see the module docs for the steps).
pub fn preprocess(m: &Mammogram, cfg: &PreprocessConfig) -> Result<Preprocessed, PreprocessError> {
    preprocess_image(&m.image, m.meta.laterality, cfg)
}

/// Preprocess grey levels in [0, 1] with the header's laterality (if any).
pub fn preprocess_image(
    img: &GreyImage,
    laterality: Option<Laterality>,
    cfg: &PreprocessConfig,
) -> Result<Preprocessed, PreprocessError> {
    cfg.validate()?;
    if img.width == 0 || img.height == 0 || img.data.len() < img.width * img.height {
        return Err(PreprocessError::EmptyImage {
            width: img.width,
            height: img.height,
        });
    }
    let mut resizer = Resizer::new();
    let src = ImageRef::new(
        img.width as u32,
        img.height as u32,
        bytemuck::cast_slice(&img.data[..img.width * img.height]),
        PixelType::F32,
    )
    .map_err(|e| PreprocessError::Resize(e.to_string()))?;
    let area = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Box));

    // 1. segmentation grid
    let f = cfg.seg_size as f64 / img.width.max(img.height) as f64;
    let f = f.min(1.0);
    let sw = ((img.width as f64 * f).round() as usize).max(1);
    let sh = ((img.height as f64 * f).round() as usize).max(1);
    let mut small = Image::new(sw as u32, sh as u32, PixelType::F32);
    resizer
        .resize(&src, &mut small, &area)
        .map_err(|e| PreprocessError::Resize(e.to_string()))?;
    let small: Vec<f32> = bytemuck::cast_slice::<u8, f32>(small.buffer()).to_vec();
    let seg = segment(&small, sw, sh);

    // 2. crop box in source pixels
    let sx = img.width as f64 / sw as f64;
    let sy = img.height as f64 / sh as f64;
    let (bx0, by0, bx1, by1) = seg.bbox;
    let mx = (cfg.margin as f64 * img.width as f64).ceil() + sx;
    let my = (cfg.margin as f64 * img.height as f64).ceil() + sy;
    let clamp = |v: f64, hi: usize| (v.max(0.0).round() as usize).min(hi);
    let crop = CropBox {
        x0: clamp(bx0 as f64 * sx - mx, img.width - 1),
        y0: clamp(by0 as f64 * sy - my, img.height - 1),
        x1: clamp(bx1 as f64 * sx + mx, img.width),
        y1: clamp(by1 as f64 * sy + my, img.height),
    };
    let crop = CropBox {
        x1: crop.x1.max(crop.x0 + 1),
        y1: crop.y1.max(crop.y0 + 1),
        ..crop
    };

    // 3. chest-wall side
    let (chest_wall, chest_wall_source) = match seg.side {
        Some(side) => (side, "image"),
        None => (
            laterality.map(expected_chest_wall).unwrap_or(Side::Left),
            "laterality",
        ),
    };
    let inferred = match chest_wall {
        Side::Right => Laterality::R,
        Side::Left => Laterality::L,
    };
    let orientation_mismatch = matches!(laterality, Some(l) if seg.side.is_some() && l != inferred);
    let flipped = chest_wall == Side::Right;

    // 4. resize the crop keeping aspect, place with the chest wall on the left
    let (h, w) = (cfg.height, cfg.width);
    let scale = (w as f64 / crop.width() as f64).min(h as f64 / crop.height() as f64);
    let rw = ((crop.width() as f64 * scale).round() as usize).clamp(1, w);
    let rh = ((crop.height() as f64 * scale).round() as usize).clamp(1, h);
    let mut resized = Image::new(rw as u32, rh as u32, PixelType::F32);
    let opts = area.crop(
        crop.x0 as f64,
        crop.y0 as f64,
        crop.width() as f64,
        crop.height() as f64,
    );
    resizer
        .resize(&src, &mut resized, &opts)
        .map_err(|e| PreprocessError::Resize(e.to_string()))?;
    let mut resized: Vec<f32> = bytemuck::cast_slice::<u8, f32>(resized.buffer()).to_vec();
    if cfg.standardize != Standardize::Off {
        standardize(
            &mut resized,
            seg.threshold,
            cfg.standardize == Standardize::WindowGamma,
        );
    }
    let oy = (h - rh) / 2;
    let pad = (0.0 - cfg.mean) / cfg.std;
    let mut tensor = vec![pad; h * w];
    for y in 0..rh {
        let row = &resized[y * rw..(y + 1) * rw];
        let out = &mut tensor[(oy + y) * w..(oy + y) * w + rw];
        for (x, o) in out.iter_mut().enumerate() {
            let v = if flipped { row[rw - 1 - x] } else { row[x] };
            *o = (v.clamp(0.0, 1.0) - cfg.mean) / cfg.std;
        }
    }
    Ok(Preprocessed {
        height: h,
        width: w,
        tensor,
        geometry: Geometry {
            crop,
            flipped,
            scale: scale as f32,
            offset_x: 0,
            offset_y: oy,
            resized_width: rw,
            resized_height: rh,
            chest_wall,
            chest_wall_source,
            laterality: laterality.unwrap_or(inferred),
            orientation_mismatch,
            breast_fraction: seg.fraction,
        },
    })
}

/// Map a per-pixel map of the source image (e.g. a dense-tissue mask, values in [0, 1],
/// `[height, width]` row-major like the image) into model space with the same crop, resize, flip
/// and placement as [`preprocess`] gave the image: output `[cfg.height, cfg.width]`, 0 outside the
/// resized crop, not normalised. This is how ground-truth masks follow their image.
pub fn warp(
    values: &[f32],
    width: usize,
    height: usize,
    g: &Geometry,
    cfg: &PreprocessConfig,
) -> Result<Vec<f32>, PreprocessError> {
    if values.len() < width * height || g.crop.x1 > width || g.crop.y1 > height {
        return Err(PreprocessError::EmptyImage { width, height });
    }
    let src = ImageRef::new(
        width as u32,
        height as u32,
        bytemuck::cast_slice(&values[..width * height]),
        PixelType::F32,
    )
    .map_err(|e| PreprocessError::Resize(e.to_string()))?;
    let (rw, rh) = (g.resized_width, g.resized_height);
    let mut resized = Image::new(rw as u32, rh as u32, PixelType::F32);
    let opts = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Box))
        .crop(
            g.crop.x0 as f64,
            g.crop.y0 as f64,
            g.crop.width() as f64,
            g.crop.height() as f64,
        );
    Resizer::new()
        .resize(&src, &mut resized, &opts)
        .map_err(|e| PreprocessError::Resize(e.to_string()))?;
    let resized: &[f32] = bytemuck::cast_slice(resized.buffer());
    let (h, w) = (cfg.height, cfg.width);
    let mut out = vec![0f32; h * w];
    for y in 0..rh.min(h - g.offset_y) {
        let row = &resized[y * rw..(y + 1) * rw];
        for x in 0..rw.min(w) {
            let v = if g.flipped { row[rw - 1 - x] } else { row[x] };
            out[(g.offset_y + y) * w + g.offset_x + x] = v;
        }
    }
    Ok(out)
}

/// Result of segmenting the small grid.
struct Segmentation {
    /// Bounding box `[x0, x1) × [y0, y1)` of the breast on the grid (whole grid when nothing found).
    bbox: (usize, usize, usize, usize),
    /// Grey level above which a pixel is breast (background mode + ¼ of the way to Otsu's).
    threshold: f32,
    /// Chest-wall side when the breast clearly touches one vertical edge more than the other.
    side: Option<Side>,
    fraction: f32,
}

/// Per-image intensity standardisation, in place on grey levels [0, 1]: the window from the
/// breast threshold `t` (background → 0) to the 99th percentile of the breast pixels (→ 1), then,
/// with `gamma`, the gamma that puts the breast's median at 0.5. Both steps are monotonic, so
/// tissue contrast is kept while each machine's windowing (and with `gamma` its tone curve: the
/// research crops' means range from 0.30 to 0.65 by machine) are brought to one look. Left
/// unchanged when fewer than 64 pixels are above `t` or their 1st to 99th percentiles span under
/// 0.02 (no tissue contrast to stretch).
pub fn standardize(v: &mut [f32], t: f32, gamma: bool) {
    let mut breast: Vec<f32> = v.iter().copied().filter(|&x| x > t).collect();
    if breast.len() < 64 {
        return;
    }
    let k = ((breast.len() - 1) as f64 * 0.99).round() as usize;
    let hi = *breast.select_nth_unstable_by(k, f32::total_cmp).1;
    let k1 = ((breast.len() - 1) as f64 * 0.01).round() as usize;
    let lo = *breast.select_nth_unstable_by(k1, f32::total_cmp).1;
    if hi - lo < 0.02 {
        return;
    }
    let window = |x: f32| ((x - t) / (hi - t)).clamp(0.0, 1.0);
    let mid = breast.len() / 2;
    let median = window(*breast.select_nth_unstable_by(mid, f32::total_cmp).1);
    let gamma = if gamma && (0.02..0.98).contains(&median) {
        0.5f32.ln() / median.ln()
    } else {
        1.0
    };
    for x in v.iter_mut() {
        *x = window(*x).powf(gamma);
    }
}

/// Otsu's threshold (Otsu 1979, IEEE Trans. SMC 9(1)) over 256 bins of [0, 1].
fn otsu(values: &[f32]) -> f32 {
    let mut hist = [0u64; 256];
    for &v in values {
        hist[((v.clamp(0.0, 1.0) * 255.0).round()) as usize] += 1;
    }
    let total = values.len() as f64;
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &c)| i as f64 * c as f64)
        .sum();
    let (mut w0, mut sum0, mut best, mut best_t) = (0f64, 0f64, -1f64, 0usize);
    for (t, &c) in hist.iter().enumerate() {
        w0 += c as f64;
        sum0 += t as f64 * c as f64;
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let m0 = sum0 / w0;
        let m1 = (sum_all - sum0) / w1;
        let between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if between > best {
            best = between;
            best_t = t;
        }
    }
    (best_t as f32 + 0.5) / 255.0
}

fn segment(small: &[f32], w: usize, h: usize) -> Segmentation {
    // Background = the histogram mode below Otsu's threshold (air is a narrow, tall peak; fat is
    // broad); the breast is everything clearly above it. Otsu alone can split fat from dense
    // tissue when the air is not black.
    let t_otsu = otsu(small);
    let mut hist = [0usize; 256];
    for &v in small {
        hist[((v.clamp(0.0, 1.0) * 255.0).round()) as usize] += 1;
    }
    let top = ((t_otsu * 255.0) as usize).clamp(1, 255);
    let mode = (0..top)
        .max_by_key(|&b| (hist[b], std::cmp::Reverse(b)))
        .unwrap_or(0);
    let bg = mode as f32 / 255.0;
    let t = bg + (0.25 * (t_otsu - bg)).max(0.02);
    let mut mask: Vec<bool> = small.iter().map(|&v| v > t).collect();
    // Collimation borders: flat bright bands along the image edges spanning (almost) a whole row or
    // column. Tissue is never flat, so a line is cleared only when it is over 90 % foreground and
    // its values vary little; clearing proceeds inwards from each edge and stops at the first line
    // that is not such a band.
    let flat_band = |vals: &mut dyn Iterator<Item = f32>, len: usize| {
        let v: Vec<f32> = vals.collect();
        let fg = v.iter().filter(|&&x| x > t).count();
        let mean = v.iter().sum::<f32>() / len as f32;
        let sd = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / len as f32).sqrt();
        fg * 10 > 9 * len && sd < 0.03
    };
    let row_is_band = |y: usize| flat_band(&mut small[y * w..(y + 1) * w].iter().copied(), w);
    let col_is_band = |x: usize| flat_band(&mut (0..h).map(|y| small[y * w + x]), h);
    let mut clear_rows = Vec::new();
    let mut clear_cols = Vec::new();
    for ys in [
        Box::new(0..h) as Box<dyn Iterator<Item = usize>>,
        Box::new((0..h).rev()),
    ] {
        clear_rows.extend(ys.take(h / 8).take_while(|&y| row_is_band(y)));
    }
    for xs in [
        Box::new(0..w) as Box<dyn Iterator<Item = usize>>,
        Box::new((0..w).rev()),
    ] {
        clear_cols.extend(xs.take(w / 8).take_while(|&x| col_is_band(x)));
    }
    for y in clear_rows {
        mask[y * w..(y + 1) * w].iter_mut().for_each(|m| *m = false);
    }
    for x in clear_cols {
        (0..h).for_each(|y| mask[y * w + x] = false);
    }
    let mask = dilate(&erode(&mask, w, h), w, h);
    let (label, count) = largest_component(&mask, w, h);
    if count == 0 {
        return Segmentation {
            bbox: (0, 0, w, h),
            threshold: t,
            side: None,
            fraction: 0.0,
        };
    }
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for y in 0..h {
        for x in 0..w {
            if label[y * w + x] {
                x0 = x0.min(x);
                x1 = x1.max(x + 1);
                y0 = y0.min(y);
                y1 = y1.max(y + 1);
            }
        }
    }
    // Chest wall: the vertical edge the breast touches along more rows (edge band of 2 % width).
    let band = (w / 50).max(1);
    let rows_touching = |cols: std::ops::Range<usize>| {
        (0..h)
            .filter(|&y| cols.clone().any(|x| label[y * w + x]))
            .count()
    };
    let left = rows_touching(0..band);
    let right = rows_touching(w - band..w);
    // Else the half holding more of the breast: it is widest at the chest wall (scanned films,
    // e.g. mini-MIAS, whose noisy film background touches both edges).
    let cx = label
        .iter()
        .enumerate()
        .filter(|(_, &b)| b)
        .map(|(i, _)| (i % w) as f64 + 0.5)
        .sum::<f64>()
        / count as f64;
    let side = if left > 2 * right && left >= h / 10 {
        Some(Side::Left)
    } else if right > 2 * left && right >= h / 10 {
        Some(Side::Right)
    } else if cx < 0.45 * w as f64 {
        Some(Side::Left)
    } else if cx > 0.55 * w as f64 {
        Some(Side::Right)
    } else {
        None
    };
    Segmentation {
        bbox: (x0, y0, x1, y1),
        threshold: t,
        side,
        fraction: count as f32 / (w * h) as f32,
    }
}

fn erode(m: &[bool], w: usize, h: usize) -> Vec<bool> {
    morph(m, w, h, true)
}

fn dilate(m: &[bool], w: usize, h: usize) -> Vec<bool> {
    morph(m, w, h, false)
}

/// 3×3 erosion (`all`) or dilation (any); pixels outside the image count as background for
/// dilation and as foreground for erosion (so a breast touching the edge is not eaten).
fn morph(m: &[bool], w: usize, h: usize, all: bool) -> Vec<bool> {
    let mut out = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut acc = all;
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    let v = if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        all
                    } else {
                        m[ny as usize * w + nx as usize]
                    };
                    if all {
                        acc &= v;
                    } else {
                        acc |= v;
                    }
                }
            }
            out[y * w + x] = acc;
        }
    }
    out
}

/// Mask of the largest 4-connected foreground component and its pixel count.
fn largest_component(m: &[bool], w: usize, h: usize) -> (Vec<bool>, usize) {
    let mut labels = vec![0u32; w * h];
    let (mut best, mut best_n, mut next) = (0u32, 0usize, 0u32);
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !m[start] || labels[start] != 0 {
            continue;
        }
        next += 1;
        let mut n = 0;
        labels[start] = next;
        stack.push(start);
        while let Some(i) = stack.pop() {
            n += 1;
            let (x, y) = (i % w, i / w);
            let mut visit = |j: usize| {
                if m[j] && labels[j] == 0 {
                    labels[j] = next;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
        if n > best_n {
            best_n = n;
            best = next;
        }
    }
    (
        labels.iter().map(|&l| l == best && best != 0).collect(),
        best_n,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otsu_splits_two_levels() {
        let mut v = vec![0.1f32; 100];
        v.extend(vec![0.7f32; 50]);
        let t = otsu(&v);
        assert!(t > 0.1 && t < 0.7, "{t}");
    }

    #[test]
    fn largest_component_ignores_small_blobs() {
        let (w, h) = (10, 5);
        let mut m = vec![false; w * h];
        for y in 0..5 {
            for x in 0..4 {
                m[y * w + x] = true;
            }
        }
        m[2 * w + 8] = true;
        let (lab, n) = largest_component(&m, w, h);
        assert_eq!(n, 20);
        assert!(!lab[2 * w + 8]);
    }

    /// A 300×200 image: black air, and on the left a half-disc of breast whose grey levels run
    /// 0.25–0.65 with a texture; `tone` maps each breast grey level (a machine's look).
    fn breast(tone: impl Fn(f32) -> f32) -> GreyImage {
        let (w, h) = (200usize, 300usize);
        let mut data = vec![0.0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = (x as f32 / 150.0, (y as f32 - 150.0) / 140.0);
                if dx * dx + dy * dy < 1.0 {
                    let tex = 0.5 + 0.5 * ((x as f32 * 0.3).sin() * (y as f32 * 0.2).cos());
                    data[y * w + x] = tone(0.25 + 0.4 * tex);
                }
            }
        }
        GreyImage {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn standardisation_brings_two_machines_looks_to_one() {
        // the same breast under two tone curves (gamma 0.6 and 1.6: means about 0.6 and 0.3)
        let bright = breast(|g| g.powf(0.6));
        let dark = breast(|g| g.powf(1.6));
        let input = |img: &GreyImage, standardize: Standardize| {
            let cfg = PreprocessConfig {
                height: 64,
                width: 48,
                standardize,
                ..Default::default()
            };
            let p = preprocess_image(img, None, &cfg).unwrap();
            p.grey_levels(&cfg)
        };
        let mean_diff = |a: &[f32], b: &[f32]| {
            a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
        };
        let before = mean_diff(
            &input(&bright, Standardize::Off),
            &input(&dark, Standardize::Off),
        );
        let after = mean_diff(
            &input(&bright, Standardize::WindowGamma),
            &input(&dark, Standardize::WindowGamma),
        );
        let window = mean_diff(
            &input(&bright, Standardize::Window),
            &input(&dark, Standardize::Window),
        );
        assert!(before > 0.15, "the looks differ by {before} without it");
        assert!(after < 0.03, "and by {after} with it");
        // the window alone removes offset and contrast, not the tone curve: in between
        assert!(window < before && window > after, "window only: {window}");
        // the breast's median lands at 0.5, the background stays black
        let g = input(&dark, Standardize::WindowGamma);
        let mut breast: Vec<f32> = g.iter().copied().filter(|&v| v > 0.02).collect();
        breast.sort_by(f32::total_cmp);
        let median = breast[breast.len() / 2];
        assert!((median - 0.5).abs() < 0.05, "median {median}");
        assert_eq!(g[g.len() - 1], 0.0);
    }

    #[test]
    fn standardisation_leaves_a_flat_or_empty_image_alone() {
        let mut flat = vec![0.3f32; 1000];
        standardize(&mut flat, 0.1, true);
        assert!(flat.iter().all(|&v| v == 0.3));
        let mut few = vec![0.0f32; 1000];
        few[..10].iter_mut().for_each(|v| *v = 0.9);
        let copy = few.clone();
        standardize(&mut few, 0.1, true);
        assert_eq!(few, copy);
    }

    #[test]
    fn config_errors_name_the_key() {
        let cfg = PreprocessConfig {
            std: 0.0,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("std"));
    }
}
