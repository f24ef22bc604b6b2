//! Training data: manifest rows → model inputs through THE shared preprocessing (the daemon's code
//! path), dense-tissue masks warped with the same geometry, labels with missing-label masks. Files
//! are decoded on several threads; preprocessed tensors are cached on disk so epochs after the first
//! (and later runs) never decode DICOM again.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use burn::prelude::*;
use thiserror::Error;

use super::loss::Targets;
use super::model::MtlConfig;
use crate::dataset::manifest::ManifestRow;
use crate::ingest::dicom::{read_mammogram, IngestOptions, Vendor, View};
use crate::ingest::image_file::{is_image_file, read_image_file};
use crate::ingest::preprocess::{preprocess_image, warp, PreprocessConfig, PREPROCESS_VERSION};
use crate::model::labels::Density;
use crate::synth::SplitMix64;

/// Errors of data loading that stop training (a single unreadable image is skipped, not an error).
#[derive(Debug, Error)]
pub enum DataError {
    #[error("cache folder {path}: {error}")]
    Cache { path: String, error: std::io::Error },
    #[error("no usable training sample in the manifest ({skipped} rows skipped)")]
    Empty { skipped: usize },
}

/// Labels of one image; `None` = missing (its loss term is masked).
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    pub cancer: Option<bool>,
    pub normal: Option<bool>,
    pub density: Option<Density>,
    /// 0–100 %.
    pub percent: Option<f64>,
    /// Source (the vendor head's class name): the manifest's `source`, its vendor, or the DICOM
    /// header's vendor; mapped to the model's classes in [`batch`].
    pub source: Option<String>,
    /// 0 = CC, 1 = MLO.
    pub view: Option<usize>,
}

/// One preprocessed image with its targets.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Index of the manifest row.
    pub row: usize,
    /// `[H · W]` normalised model input.
    pub input: Vec<f32>,
    /// `[h · w]` dense-tissue fraction per decoder pixel (h, w = H/4, W/4), when a mask exists.
    pub mask: Option<Vec<f32>>,
    pub labels: Labels,
    /// The DICOM vendor (for per-vendor evaluation), from the file.
    pub dicom_vendor: Vendor,
}

/// Labels of a manifest row.
pub fn labels(row: &ManifestRow) -> Labels {
    Labels {
        cancer: row.cancer,
        normal: row.normal,
        density: row.density,
        percent: row.percent_density,
        source: row.source(),
        view: match row.view {
            Some(View::CC) => Some(0),
            Some(View::MLO) => Some(1),
            _ => None,
        },
    }
}

fn cache_key(path: &Path, mask: Option<&Path>, pre: &PreprocessConfig, h: usize, w: usize) -> u64 {
    let mut s = std::collections::hash_map::DefaultHasher::new();
    for p in [Some(path), mask].into_iter().flatten() {
        p.to_string_lossy().hash(&mut s);
        if let Ok(m) = std::fs::metadata(p) {
            m.len().hash(&mut s);
            m.modified().ok().hash(&mut s);
        }
    }
    serde_json::to_string(pre).unwrap_or_default().hash(&mut s);
    (PREPROCESS_VERSION, h, w).hash(&mut s);
    s.finish()
}

fn read_cache(file: &Path, n_in: usize, n_mask: usize) -> Option<(Vec<f32>, Option<Vec<f32>>)> {
    let bytes = std::fs::read(file).ok()?;
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    match floats.len() {
        n if n == n_in => Some((floats, None)),
        n if n == n_in + n_mask => Some((floats[..n_in].to_vec(), Some(floats[n_in..].to_vec()))),
        _ => None,
    }
}

fn write_cache(file: &Path, input: &[f32], mask: Option<&[f32]>) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(4 * (input.len() + mask.map_or(0, |m| m.len())));
    for v in input.iter().chain(mask.unwrap_or(&[])) {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, file)
}

/// Average `[H, W]` over 4 × 4 blocks → `[H/4, W/4]`.
fn pool4(v: &[f32], h: usize, w: usize) -> Vec<f32> {
    let (oh, ow) = (h / 4, w / 4);
    let mut out = vec![0f32; oh * ow];
    for y in 0..oh * 4 {
        for x in 0..ow * 4 {
            out[(y / 4) * ow + x / 4] += v[y * w + x] / 16.0;
        }
    }
    out
}

/// Preprocess one row (or take it from the cache). `None` when the image is rejected.
pub fn load_one(
    root: &Path,
    i: usize,
    row: &ManifestRow,
    pre: &PreprocessConfig,
    cache: Option<&Path>,
) -> Option<Sample> {
    let (h, w) = (pre.height, pre.width);
    let path = root.join(&row.path);
    let mask_path: Option<PathBuf> = row.mask_path.as_ref().map(|m| root.join(m));
    let key = cache_key(&path, mask_path.as_deref(), pre, h, w);
    let cache_file = cache.map(|c| c.join(format!("{key:016x}.f32")));
    let image_file = is_image_file(&path);
    // the DICOM vendor needs the header only: a cache hit never decodes pixels
    let dicom_vendor = (!image_file)
        .then(|| crate::ingest::dicom::open_header(&path).ok())
        .flatten()
        .and_then(|h| crate::ingest::dicom::MammoMeta::from_object(&h).ok())
        .map(|m| m.vendor)
        .unwrap_or(Vendor::Other);
    let mut lab = labels(row);
    // the vendor head learns the DICOM vendor when the manifest has none (RSNA, VinDr)
    if lab.source.is_none() && dicom_vendor != Vendor::Other {
        lab.source = Some(dicom_vendor.as_str().to_string());
    }
    if let Some((input, mask)) = cache_file
        .as_ref()
        .and_then(|f| read_cache(f, h * w, (h / 4) * (w / 4)))
    {
        return Some(Sample {
            row: i,
            input,
            mask,
            labels: lab,
            dicom_vendor,
        });
    }
    // image files (research sets): the manifest's laterality; DICOM: the header's
    let read = if image_file {
        read_image_file(&path)
            .map(|f| (f.image, row.laterality))
            .map_err(|e| e.to_string())
    } else {
        read_mammogram(&path, &IngestOptions::default())
            .map(|m| (m.image, m.meta.laterality))
            .map_err(|e| e.to_string())
    };
    let (image, laterality) = match read {
        Ok(r) => r,
        Err(e) => {
            log::warn!("{}: skipped ({e})", row.path);
            return None;
        }
    };
    let p = match preprocess_image(&image, laterality, pre) {
        Ok(p) => p,
        Err(e) => {
            log::warn!("{}: skipped ({e})", row.path);
            return None;
        }
    };
    let mask = mask_path.and_then(|mp| {
        let img = image::open(&mp)
            .map_err(|e| log::warn!("{}: mask unreadable ({e}); mask task masked", mp.display()))
            .ok()?
            .into_luma8();
        if (img.width() as usize, img.height() as usize) != (image.width, image.height) {
            log::warn!(
                "{}: mask size differs from the image; mask task masked",
                mp.display()
            );
            return None;
        }
        let dense: Vec<f32> = img.pixels().map(|p| (p.0[0] == 255) as u8 as f32).collect();
        let warped = warp(&dense, image.width, image.height, &p.geometry, pre).ok()?;
        Some(pool4(&warped, h, w))
    });
    if let Some(f) = &cache_file {
        if let Err(e) = write_cache(f, &p.tensor, mask.as_deref()) {
            log::warn!("cache write {}: {e}", f.display());
        }
    }
    Some(Sample {
        row: i,
        input: p.tensor,
        mask,
        labels: lab,
        dicom_vendor,
    })
}

/// Load the rows on `threads` threads. Rejected images are skipped (logged); the result keeps the
/// manifest order.
pub fn load(
    root: &Path,
    rows: &[(usize, &ManifestRow)],
    pre: &PreprocessConfig,
    cache: Option<&Path>,
    threads: usize,
) -> Result<Vec<Sample>, DataError> {
    if let Some(c) = cache {
        std::fs::create_dir_all(c).map_err(|error| DataError::Cache {
            path: c.display().to_string(),
            error,
        })?;
    }
    let threads = threads.max(1);
    let chunk = rows.len().div_ceil(threads).max(1);
    let mut parts: Vec<Vec<Option<Sample>>> = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(i, r)| load_one(root, *i, r, pre, cache))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            parts.push(h.join().unwrap_or_default());
        }
    });
    let all: Vec<Option<Sample>> = parts.into_iter().flatten().collect();
    let skipped = all.iter().filter(|s| s.is_none()).count();
    let samples: Vec<Sample> = all.into_iter().flatten().collect();
    if samples.is_empty() {
        return Err(DataError::Empty { skipped });
    }
    Ok(samples)
}

/// A small affine map of the canonical image about the middle of the chest wall (x = 0,
/// y = H/2), so the chest wall stays on the left edge: scale `scale`, rotation `degrees`,
/// vertical shift `shift` (fraction of H).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffineParams {
    /// Overall zoom.
    pub scale: f64,
    /// Width over height stretch: x is scaled by `scale · aspect`, y by `scale / aspect` (the
    /// research crops' uncalibrated, sometimes stretched geometry).
    pub aspect: f64,
    pub degrees: f64,
    /// Vertical shift, fraction of H.
    pub shift: f64,
}

impl AffineParams {
    /// The identity.
    pub const IDENTITY: AffineParams = AffineParams {
        scale: 1.0,
        aspect: 1.0,
        degrees: 0.0,
        shift: 0.0,
    };

    /// Random draw: scale 0.9–1.1, aspect 0.87–1.15 (log-uniform), rotation ±5°, vertical shift
    /// ±3 % of H.
    pub fn random(rng: &mut SplitMix64) -> AffineParams {
        AffineParams {
            scale: 1.0 + 0.1 * (2.0 * rng.uniform() - 1.0),
            aspect: (0.14 * (2.0 * rng.uniform() - 1.0)).exp(),
            degrees: 5.0 * (2.0 * rng.uniform() - 1.0),
            shift: 0.03 * (2.0 * rng.uniform() - 1.0),
        }
    }
}

/// Resample a `[h, w]` image under `a` (bilinear, inverse mapping); `fill` outside the source,
/// except left of it, where the chest-wall column is replicated.
fn warp_affine(v: &[f32], h: usize, w: usize, a: &AffineParams, fill: f32) -> Vec<f32> {
    let (cx, cy) = (0.0, h as f64 / 2.0);
    let th = a.degrees.to_radians();
    let (sin, cos) = (th.sin(), th.cos());
    let ty = a.shift * h as f64;
    let mut out = vec![fill; h * w];
    for oy in 0..h {
        for ox in 0..w {
            // output point relative to the anchor, minus the shift, through the inverse of s·R(θ)
            let (dx, dy) = (ox as f64 + 0.5 - cx, oy as f64 + 0.5 - cy - ty);
            let sx = (cos * dx + sin * dy) / (a.scale * a.aspect) + cx - 0.5;
            let sy = (-sin * dx + cos * dy) / (a.scale / a.aspect) + cy - 0.5;
            // the chest wall continues beyond the left edge: replicate it rather than pad
            let sx = sx.max(0.0);
            if sx < -0.5 || sy < -0.5 || sx > w as f64 - 0.5 || sy > h as f64 - 0.5 {
                continue;
            }
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = ((sx - x0) as f32, (sy - y0) as f32);
            let at = |x: f64, y: f64| {
                let (x, y) = (x.clamp(0.0, w as f64 - 1.0), y.clamp(0.0, h as f64 - 1.0));
                v[y as usize * w + x as usize]
            };
            out[oy * w + ox] = (1.0 - fy) * ((1.0 - fx) * at(x0, y0) + fx * at(x0 + 1.0, y0))
                + fy * ((1.0 - fx) * at(x0, y0 + 1.0) + fx * at(x0 + 1.0, y0 + 1.0));
        }
    }
    out
}

/// Apply `a` to a model input `[H · W]` (padding value outside) and to its decoder-resolution
/// mask `[H/4 · W/4]` (0 outside), with the same geometry.
pub fn affine(
    input: &[f32],
    mask: Option<&[f32]>,
    pre: &PreprocessConfig,
    a: &AffineParams,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (h, w) = (pre.height, pre.width);
    let pad = (0.0 - pre.mean) / pre.std;
    let x = warp_affine(input, h, w, a, pad);
    let m = mask.map(|m| warp_affine(m, h / 4, w / 4, a, 0.0));
    (x, m)
}

/// Intensity augmentation for the machines' different looks (windowing, contrast, detector
/// sharpness), keeping the canonical orientation, on the grey levels of the breast (padding
/// untouched): with probability ½ a 3×3 blur or an unsharp mask (amount 0.5), then gamma
/// 0.67–1.5 (log-uniform), contrast ×0.85–1.15 about the breast's mean, brightness ±0.05, and
/// Gaussian noise of σ 0–0.02.
pub fn augment(input: &[f32], pre: &PreprocessConfig, rng: &mut SplitMix64) -> Vec<f32> {
    let (h, w) = (pre.height, pre.width);
    let pad = (0.0 - pre.mean) / pre.std;
    let grey: Vec<f32> = input
        .iter()
        .map(|&x| (x * pre.std + pre.mean).clamp(0.0, 1.0))
        .collect();
    let sharpness = rng.uniform();
    let grey = if sharpness < 0.5 && input.len() == h * w {
        // 3×3 mean over the breast pixels around each pixel
        let blur: Vec<f32> = (0..h * w)
            .map(|i| {
                let (y, x) = (i / w, i % w);
                let (mut s, mut n) = (0.0, 0.0);
                for yy in y.saturating_sub(1)..(y + 2).min(h) {
                    for xx in x.saturating_sub(1)..(x + 2).min(w) {
                        if input[yy * w + xx] != pad {
                            s += grey[yy * w + xx];
                            n += 1.0;
                        }
                    }
                }
                if n > 0.0 {
                    s / n
                } else {
                    grey[i]
                }
            })
            .collect();
        if sharpness < 0.25 {
            blur
        } else {
            grey.iter()
                .zip(&blur)
                .map(|(&g, &b)| (g + 0.5 * (g - b)).clamp(0.0, 1.0))
                .collect()
        }
    } else {
        grey
    };
    let gamma = (0.405 * (2.0 * rng.uniform() - 1.0)).exp() as f32;
    let contrast = (0.85 + 0.3 * rng.uniform()) as f32;
    let brightness = (0.05 * (2.0 * rng.uniform() - 1.0)) as f32;
    let sigma = (0.02 * rng.uniform()) as f32;
    let (mut sum, mut n) = (0.0f32, 0usize);
    for (&x, &g) in input.iter().zip(&grey) {
        if x != pad {
            sum += g.powf(gamma);
            n += 1;
        }
    }
    let mean = if n > 0 { sum / n as f32 } else { 0.5 };
    input
        .iter()
        .zip(&grey)
        .map(|(&x, &g)| {
            if x == pad {
                return x;
            }
            let g = mean + contrast * (g.powf(gamma) - mean) + brightness;
            let g = (g + sigma * rng.normal() as f32).clamp(0.0, 1.0);
            (g - pre.mean) / pre.std
        })
        .collect()
}

/// Stack samples into a batch: input `[N, 1, H, W]` and the targets.
pub fn batch<B: Backend>(
    samples: &[(&Sample, Vec<f32>)],
    model: &MtlConfig,
    device: &B::Device,
) -> (Tensor<B, 4>, Targets<B>) {
    let n = samples.len();
    let (hh, ww) = (model.height, model.width);
    let (h, w) = model.decoder_size();
    let mut input = Vec::with_capacity(n * hh * ww);
    let mut mask = Vec::with_capacity(n * h * w);
    let (mut cancer, mut cancer_p, mut normal, mut normal_p) = (vec![], vec![], vec![], vec![]);
    let (mut density, mut density_p, mut percent, mut percent_p) = (vec![], vec![], vec![], vec![]);
    let (mut vendor, mut vendor_p, mut view, mut view_p, mut mask_p) =
        (vec![], vec![], vec![], vec![], vec![]);
    let bit = |b: Option<bool>| (b.unwrap_or(false) as u8 as f32, b.is_some() as u8 as f32);
    let classes = model.source_classes();
    for (s, x) in samples {
        input.extend_from_slice(x);
        match &s.mask {
            Some(m) => {
                mask.extend_from_slice(m);
                mask_p.push(1.0f32);
            }
            None => {
                mask.extend(std::iter::repeat_n(0.0, h * w));
                mask_p.push(0.0);
            }
        }
        let l = &s.labels;
        let (c, cp) = bit(l.cancer);
        cancer.push(c);
        cancer_p.push(cp);
        let (v, vp) = bit(l.normal);
        normal.push(v);
        normal_p.push(vp);
        density.push(l.density.map(|d| d.index() as i64).unwrap_or(0));
        density_p.push(l.density.is_some() as u8 as f32);
        percent.push((l.percent.unwrap_or(0.0) / 100.0) as f32);
        percent_p.push(l.percent.is_some() as u8 as f32);
        // a source the head has no class for (a held-out machine) is a missing label
        let v = l
            .source
            .as_deref()
            .and_then(|s| classes.iter().position(|c| c == s));
        vendor.push(v.unwrap_or(0) as i64);
        vendor_p.push(v.is_some() as u8 as f32);
        view.push(l.view.unwrap_or(0) as i64);
        view_p.push(l.view.is_some() as u8 as f32);
    }
    let f2 = |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [n, 1]), device);
    let f1 = |v: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v, [n]), device);
    let i1 = |v: Vec<i64>| Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), device);
    let x = Tensor::<B, 4>::from_data(TensorData::new(input, [n, 1, hh, ww]), device);
    let targets = Targets {
        cancer: f2(cancer),
        cancer_present: f2(cancer_p),
        normal: f2(normal),
        normal_present: f2(normal_p),
        density: i1(density),
        density_present: f1(density_p),
        percent: f2(percent),
        percent_present: f2(percent_p),
        vendor: i1(vendor),
        vendor_present: f1(vendor_p),
        view: i1(view),
        view_present: f1(view_p),
        mask: Tensor::<B, 4>::from_data(TensorData::new(mask, [n, 1, h, w]), device),
        mask_present: f1(mask_p),
    };
    (x, targets)
}
