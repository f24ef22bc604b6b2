//! Vendor styles: how each detector and its processing turn the same anatomy into different stored
//! pixels — matrix and pixel spacing, bits stored, MONOCHROME1/2, VOI (LINEAR, LINEAR_EXACT,
//! SIGMOID with several windows, VOI LUT Sequence), tone curve, unsharp masking, noise level and
//! correlation, collimation border, burned-in lead marker, Manufacturer strings as vendors write them.
//! Matrix sizes and spacings are those of common detectors (Hologic Selenia 4096 × 3328 at 0.07 mm,
//! GE Senographe 2294 × 1914 at 0.094 mm, Siemens Mammomat 4084 × 3328 at 0.085 mm, Fujifilm Amulet
//! 5928 × 4728 at 0.05 mm, IMS Giotto 3528 × 2816 at 0.085 mm, Planmed Clarity 3584 × 2816 at 0.085 mm).

use crate::ingest::dicom::{Laterality, Vendor, View};
use crate::ingest::preprocess::Side;

use super::font;
use super::writer::{DicomSpec, LutItem};
use super::SplitMix64;

/// How the VOI is written into the header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VoiStyle {
    /// One LINEAR window spanning the stored range.
    Linear,
    /// One LINEAR_EXACT window.
    LinearExact,
    /// SIGMOID with `pairs` window pairs (first used).
    Sigmoid { pairs: usize },
    /// VOI LUT Sequence with 3 items plus SIGMOID windows (the LUT wins).
    LutSequence,
}

/// Encoder `synth --compress` uses for the vendor's usual transfer syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    JpegLossless,
    Jpeg2000Lossless,
    Rle,
}

/// One vendor's detector and processing.
#[derive(Debug, Clone, PartialEq)]
pub struct VendorStyle {
    pub vendor: Vendor,
    pub manufacturer: &'static str,
    pub model: &'static str,
    /// Full-size matrix (rows × columns) and pixel spacing (mm).
    pub rows: usize,
    pub columns: usize,
    pub spacing_mm: f32,
    pub bits_stored: u16,
    /// Stored values for black (air) … white (dense) before inversion.
    pub lo: u16,
    pub hi: u16,
    pub monochrome1: bool,
    pub voi: VoiStyle,
    /// RescaleSlope / RescaleIntercept written (identity when `None`; the DX IOD enumerates 1 / 0).
    pub rescale: Option<(f64, f64)>,
    /// Tone curve exponent applied to the anatomy's grey levels.
    pub gamma: f32,
    /// Unsharp masking: amount and radius (mm).
    pub unsharp: (f32, f32),
    /// Quantum-like noise: standard deviation (grey levels) and correlation radius (pixels, 0 = white).
    pub noise: (f32, usize),
    /// Air level in grey levels (0 = black).
    pub air: f32,
    /// Collimation border: width (mm) and grey level, on the three sides away from the chest wall.
    pub border: (f32, f32),
    /// Lead marker text height (mm); placed in the top corner away from the chest wall.
    pub marker_mm: f32,
    pub compression: Compression,
}

/// The built-in styles. `vendor` in the vocabulary; `None` for a vendor without a style.
pub fn style(vendor: Vendor) -> Option<VendorStyle> {
    let s = |vendor, manufacturer, model, rows, columns, spacing_mm| VendorStyle {
        vendor,
        manufacturer,
        model,
        rows,
        columns,
        spacing_mm,
        bits_stored: 12,
        lo: 0,
        hi: 4095,
        monochrome1: false,
        voi: VoiStyle::Linear,
        rescale: None,
        gamma: 1.0,
        unsharp: (0.0, 1.0),
        noise: (0.01, 0),
        air: 0.0,
        border: (0.0, 0.0),
        marker_mm: 8.0,
        compression: Compression::None,
    };
    Some(match vendor {
        Vendor::Hologic => VendorStyle {
            bits_stored: 16,
            lo: 1400,
            hi: 3400,
            monochrome1: true,
            voi: VoiStyle::Sigmoid { pairs: 4 },
            gamma: 1.0,
            unsharp: (0.6, 2.0),
            noise: (0.012, 0),
            air: 0.02,
            compression: Compression::Jpeg2000Lossless,
            ..s(
                vendor,
                "HOLOGIC, Inc.",
                "Selenia Dimensions",
                4096,
                3328,
                0.07,
            )
        },
        Vendor::Ge => VendorStyle {
            lo: 900,
            hi: 4000,
            voi: VoiStyle::LutSequence,
            gamma: 0.8,
            unsharp: (1.2, 1.0),
            noise: (0.008, 1),
            air: 0.0,
            marker_mm: 10.0,
            compression: Compression::JpegLossless,
            ..s(
                vendor,
                "GE MEDICAL SYSTEMS",
                "Senographe Essential VERSION ADS_53.10.1.1",
                2294,
                1914,
                0.094,
            )
        },
        Vendor::Siemens => VendorStyle {
            voi: VoiStyle::Linear,
            gamma: 1.25,
            unsharp: (0.3, 3.0),
            noise: (0.02, 2),
            air: 0.05,
            border: (4.0, 0.9),
            ..s(vendor, "SIEMENS", "Mammomat Inspiration", 4084, 3328, 0.085)
        },
        Vendor::Fujifilm => VendorStyle {
            bits_stored: 10,
            hi: 1023,
            monochrome1: true,
            voi: VoiStyle::LinearExact,
            gamma: 0.6,
            unsharp: (0.8, 0.5),
            noise: (0.025, 0),
            air: 0.03,
            marker_mm: 6.0,
            compression: Compression::Rle,
            ..s(
                vendor,
                "FUJIFILM Corporation",
                "AMULET Innovality",
                5928,
                4728,
                0.05,
            )
        },
        Vendor::ImsGiotto => VendorStyle {
            bits_stored: 14,
            lo: 2000,
            hi: 14000,
            voi: VoiStyle::Linear,
            gamma: 1.45,
            unsharp: (0.0, 1.0),
            noise: (0.006, 3),
            air: 0.0,
            border: (6.0, 0.15),
            ..s(
                vendor,
                "I.M.S. GIOTTO S.p.A.",
                "GIOTTO CLASS",
                3528,
                2816,
                0.085,
            )
        },
        Vendor::Planmed => VendorStyle {
            bits_stored: 14,
            lo: 500,
            hi: 15500,
            voi: VoiStyle::Sigmoid { pairs: 1 },
            gamma: 1.05,
            unsharp: (0.5, 4.0),
            noise: (0.01, 1),
            air: 0.08,
            compression: Compression::Jpeg2000Lossless,
            ..s(vendor, "Planmed", "Planmed Clarity 2D", 3584, 2816, 0.085)
        },
        _ => return None,
    })
}

/// Vendors that have a style, in vocabulary order.
pub fn styled_vendors() -> Vec<Vendor> {
    Vendor::ALL
        .into_iter()
        .filter(|v| style(*v).is_some())
        .collect()
}

impl VendorStyle {
    /// Matrix (rows, columns) and spacing (mm) at `scale` (the physical field of view is kept).
    pub fn scaled(&self, scale: f64) -> (usize, usize, f32) {
        let r = ((self.rows as f64 * scale).round() as usize).max(32);
        let c = ((self.columns as f64 * scale).round() as usize).max(32);
        (r, c, (self.spacing_mm as f64 / scale) as f32)
    }

    /// Apply the detector and processing to anatomy grey levels (already in stored orientation,
    /// `rows × columns`), burn in the marker and border, and quantise to stored words.
    #[allow(clippy::too_many_arguments)]
    pub fn process(
        &self,
        anatomy: &[f32],
        breast: &[u8],
        rows: usize,
        columns: usize,
        spacing_mm: f32,
        chest_wall: Side,
        marker: &str,
        rng: &mut SplitMix64,
    ) -> Vec<u16> {
        let n = rows * columns;
        let mut g: Vec<f32> = anatomy
            .iter()
            .map(|&a| a.max(0.0).powf(self.gamma))
            .collect();
        for (v, &b) in g.iter_mut().zip(breast) {
            if b == 0 && *v == 0.0 {
                *v = self.air;
            }
        }
        let (amount, radius_mm) = self.unsharp;
        if amount > 0.0 {
            let r = ((radius_mm / spacing_mm).round() as usize).max(1);
            let blur = box_blur(&g, columns, rows, r);
            for (v, b) in g.iter_mut().zip(&blur) {
                *v += amount * (*v - b);
            }
        }
        let (sigma, corr) = self.noise;
        let mut noise: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        if corr > 0 {
            noise = box_blur(&noise, columns, rows, corr);
            let k = (2 * corr + 1) as f32; // restore unit variance after averaging
            noise.iter_mut().for_each(|v| *v *= k);
        }
        for (v, z) in g.iter_mut().zip(&noise) {
            *v += sigma * z;
        }
        // collimation border on the three sides away from the chest wall
        let (bmm, blevel) = self.border;
        if bmm > 0.0 {
            let bp = ((bmm / spacing_mm).round() as usize)
                .min(rows / 4)
                .min(columns / 4);
            for y in 0..rows {
                for x in 0..columns {
                    let far = match chest_wall {
                        Side::Left => x >= columns - bp,
                        Side::Right => x < bp,
                    };
                    if y < bp || y >= rows - bp || far {
                        g[y * columns + x] = blevel;
                    }
                }
            }
        }
        // burned-in lead marker (unexposed → white), top corner away from the chest wall
        let scale = ((self.marker_mm / spacing_mm) / 7.0).round().max(1.0) as usize;
        let tw = font::text_width(marker, scale);
        let margin = columns / 20 + ((self.border.0 / spacing_mm) as usize);
        let x0 = match chest_wall {
            Side::Left => columns.saturating_sub(tw + margin),
            Side::Right => margin,
        };
        let y0 = rows / 25 + ((self.border.0 / spacing_mm) as usize);
        font::draw(marker, x0, y0, scale, |x, y| {
            if x < columns && y < rows {
                g[y * columns + x] = 1.0;
            }
        });
        let (lo, hi) = (self.lo as f32, self.hi as f32);
        g.iter()
            .map(|&v| {
                let v = v.clamp(0.0, 1.0);
                let s = if self.monochrome1 {
                    hi - (hi - lo) * v
                } else {
                    lo + (hi - lo) * v
                };
                s.round() as u16
            })
            .collect()
    }

    /// Header fields of the style: vendor strings, bits, photometric, VOI, rescale, spacing.
    pub fn apply_header(&self, spec: &mut DicomSpec, spacing_mm: f32) {
        spec.manufacturer = self.manufacturer.into();
        spec.model_name = self.model.into();
        spec.bits_stored = self.bits_stored;
        spec.photometric = if self.monochrome1 {
            "MONOCHROME1"
        } else {
            "MONOCHROME2"
        }
        .into();
        spec.pixel_spacing_mm = Some(spacing_mm as f64);
        spec.rescale = self.rescale;
        let (slope, intercept) = self.rescale.unwrap_or((1.0, 0.0));
        let (lo, hi) = (
            self.lo as f64 * slope + intercept,
            self.hi as f64 * slope + intercept,
        );
        let (c, w) = ((lo + hi) / 2.0, hi - lo);
        spec.voi_luts.clear();
        match self.voi {
            VoiStyle::Linear => {
                spec.windows = vec![(c.round(), w.round())];
                spec.voi_lut_function = None;
            }
            VoiStyle::LinearExact => {
                spec.windows = vec![(c, w)];
                spec.voi_lut_function = Some("LINEAR_EXACT".into());
            }
            VoiStyle::Sigmoid { pairs } => {
                // Centre on the tissue range (more of the range white in MONOCHROME1 stored order).
                let tissue = if self.monochrome1 {
                    hi - 0.4 * w
                } else {
                    lo + 0.4 * w
                };
                spec.windows = (0..pairs)
                    .map(|k| {
                        (
                            tissue + k as f64 * 0.1 * w * if k % 2 == 0 { 1.0 } else { -1.0 },
                            0.55 * w,
                        )
                    })
                    .map(|(c, w)| ((c * 100.0).round() / 100.0, (w * 100.0).round() / 100.0))
                    .collect();
                spec.voi_lut_function = Some("SIGMOID".into());
            }
            VoiStyle::LutSequence => {
                spec.windows = vec![
                    (c.round(), (0.5 * w).round()),
                    ((c + 0.05 * w).round(), (0.4 * w).round()),
                    ((c - 0.05 * w).round(), (0.6 * w).round()),
                ];
                spec.voi_lut_function = Some("SIGMOID".into());
                let n = (self.hi - self.lo) as usize + 1;
                spec.voi_luts = [("NORMAL", 1.0f64), ("HARDER", 1.4), ("SOFTER", 0.7)]
                    .iter()
                    .map(|&(name, k)| LutItem {
                        first: self.lo,
                        bits: 12,
                        explanation: name.into(),
                        data: (0..n)
                            .map(|i| {
                                let t = i as f64 / (n - 1) as f64;
                                // S-shaped tone curve, steeper for HARDER
                                let y = 1.0 / (1.0 + (-k * 8.0 * (t - 0.45)).exp());
                                let (y0, y1) = (
                                    1.0 / (1.0 + (k * 3.6).exp()),
                                    1.0 / (1.0 + (-k * 4.4).exp()),
                                );
                                (((y - y0) / (y1 - y0)).clamp(0.0, 1.0) * 4095.0).round() as u16
                            })
                            .collect(),
                    })
                    .collect();
            }
        }
    }
}

/// PatientOrientation of the usual hanging (PS3.3 C.7.6.1.1.1): row direction \ column direction.
pub fn patient_orientation(lat: Laterality, view: View) -> &'static str {
    match (lat, view) {
        (Laterality::L, View::MLO) => "A\\F",
        (Laterality::R, View::MLO) => "P\\F",
        (Laterality::L, _) => "A\\R",
        (Laterality::R, _) => "P\\L",
    }
}

/// Separable box blur of radius `r` (window 2r + 1) with clamped borders, via running sums.
pub fn box_blur(src: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    let k = (2 * r + 1) as f32;
    let mut tmp = vec![0f32; w * h];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        let at = |i: isize| row[i.clamp(0, w as isize - 1) as usize];
        let mut acc: f32 = (-(r as isize)..=r as isize).map(at).sum();
        for x in 0..w {
            tmp[y * w + x] = acc / k;
            acc += at(x as isize + r as isize + 1) - at(x as isize - r as isize);
        }
    }
    let mut out = vec![0f32; w * h];
    for x in 0..w {
        let at = |i: isize| tmp[i.clamp(0, h as isize - 1) as usize * w + x];
        let mut acc: f32 = (-(r as isize)..=r as isize).map(at).sum();
        for y in 0..h {
            out[y * w + x] = acc / k;
            acc += at(y as isize + r as isize + 1) - at(y as isize - r as isize);
        }
    }
    out
}
