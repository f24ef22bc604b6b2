//! The grey-level pipeline: stored values → Modality LUT → VOI → MONOCHROME1 inversion → f32 in [0, 1]
//! (DICOM PS3.3 C.7.6.3 Image Pixel, C.11.1 Modality LUT, C.11.2 VOI LUT, C.11.6 Presentation LUT).
//!
//! Policy (also in docs/ingest.md): the VOI LUT Sequence wins over windows when both exist (real GE
//! files carry both) and its first item is used; of several window pairs the first is used; a file
//! with neither is windowed to the full range of its modality values, or, for For Processing images,
//! to the 0.5–99.5 percentile range. The pipeline is applied through one table indexed by the stored
//! value (at most 2^16 entries), so a 26-megapixel image costs one table look-up per pixel.

use serde::Serialize;
use std::fmt;
use thiserror::Error;

/// Errors of the grey-level pipeline: the header describes pixels it cannot map.
#[derive(Debug, Error, PartialEq)]
pub enum GreyError {
    /// BitsAllocated is not 8 or 16 (the only sizes used for greyscale mammography).
    #[error("BitsAllocated {0} is not supported (8 or 16 only)")]
    UnsupportedBitsAllocated(u16),
    /// BitsStored / HighBit do not fit in BitsAllocated.
    #[error("inconsistent header: BitsStored {bits_stored}, HighBit {high_bit}, BitsAllocated {bits_allocated}")]
    BadBitLayout {
        bits_allocated: u16,
        bits_stored: u16,
        high_bit: u16,
    },
    /// A LUT Descriptor (0028,3002) that does not match its LUT Data.
    #[error("inconsistent {which} LUT: descriptor says {declared} entries, data has {actual}")]
    BadLut {
        which: &'static str,
        declared: usize,
        actual: usize,
    },
    /// Decoded buffer shorter than Rows × Columns samples.
    #[error("decoded pixel data too short: expected {expected} bytes, got {actual}")]
    PixelDataTooShort { expected: usize, actual: usize },
}

/// How stored samples are laid out (Image Pixel module, PS3.3 C.7.6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleFormat {
    /// BitsAllocated (0028,0100): 8 or 16.
    pub bits_allocated: u16,
    /// BitsStored (0028,0101): meaningful bits per sample; bits above are overlays or junk and masked off.
    pub bits_stored: u16,
    /// HighBit (0028,0102); normally BitsStored − 1.
    pub high_bit: u16,
    /// PixelRepresentation (0028,0103) = 1: two's complement, sign-extended from BitsStored.
    pub signed: bool,
}

impl SampleFormat {
    /// Check the layout; errors name the offending attribute values.
    pub fn validate(&self) -> Result<(), GreyError> {
        if self.bits_allocated != 8 && self.bits_allocated != 16 {
            return Err(GreyError::UnsupportedBitsAllocated(self.bits_allocated));
        }
        if self.bits_stored == 0
            || self.bits_stored > self.bits_allocated
            || self.high_bit >= self.bits_allocated
            || self.high_bit + 1 < self.bits_stored
        {
            return Err(GreyError::BadBitLayout {
                bits_allocated: self.bits_allocated,
                bits_stored: self.bits_stored,
                high_bit: self.high_bit,
            });
        }
        Ok(())
    }

    fn shift(&self) -> u32 {
        (self.high_bit + 1 - self.bits_stored) as u32
    }

    fn mask(&self) -> u32 {
        (1u32 << self.bits_stored) - 1
    }

    /// Number of distinct stored codes, 2^BitsStored.
    pub fn code_count(&self) -> usize {
        1usize << self.bits_stored
    }

    /// The signed stored value of a masked code (sign extension for PixelRepresentation = 1).
    pub fn code_value(&self, code: u32) -> i32 {
        if self.signed
            && (1..32).contains(&self.bits_stored)
            && code & (1 << (self.bits_stored - 1)) != 0
        {
            code as i32 - (1i32 << self.bits_stored)
        } else {
            code as i32
        }
    }
}

/// A lookup table as in LUT Descriptor (0028,3002) + LUT Data (0028,3006), PS3.3 C.11.1.1.1.
#[derive(Debug, Clone, PartialEq)]
pub struct Lut {
    /// First input value mapped (second descriptor value); inputs below map to the first entry.
    pub first: i32,
    /// Bits per entry (third descriptor value); VOI output range is 0 … 2^bits − 1.
    pub bits: u16,
    /// Table entries; inputs at or above `first + len − 1` map to the last entry.
    pub data: Vec<u16>,
    /// LUTExplanation (0028,3003), for the log.
    pub explanation: String,
}

impl Lut {
    /// Look up one input value.
    pub fn lookup(&self, x: f64) -> f64 {
        if self.data.is_empty() {
            return 0.0;
        }
        let i = (x.floor() as i64 - self.first as i64).clamp(0, self.data.len() as i64 - 1);
        self.data[i as usize] as f64
    }

    /// The output's full scale, 2^n − 1. n is the declared bits per entry, except that a
    /// table declared 16 bits whose entries use fewer (real GE files: 16 declared, entries 0 …
    /// 4095) is scaled by the bits its largest entry needs, at least 8, as DCMTK checks a table
    /// (dcmimgle `DiLookupTable::checkBits`; PS3.3 C.11.2.1.1 notes 8-bit entries stored in 16
    /// bits). The largest entry itself when the data exceed the declared bits (a broken
    /// descriptor).
    pub fn full_scale(&self) -> f64 {
        let declared = ((1u64 << self.bits.min(16)) - 1) as f64;
        let max = self.data.iter().copied().max().unwrap_or(0);
        let used = (u16::BITS - max.leading_zeros()).max(8) as u16;
        if f64::from(max) > declared {
            f64::from(max)
        } else if self.bits == 16 && used < 16 {
            ((1u64 << used) - 1) as f64
        } else {
            declared
        }
    }
}

/// Modality LUT (PS3.3 C.11.1): stored value → modality value (rescale, or a table).
#[derive(Debug, Clone, PartialEq)]
pub enum ModalityLut {
    /// RescaleSlope / RescaleIntercept (identity when both absent).
    Rescale { slope: f64, intercept: f64 },
    /// Modality LUT Sequence (0028,3000), first item. dicom-rs does not apply it, we do.
    Table(Lut),
}

impl ModalityLut {
    /// Map a stored value to its modality value.
    pub fn apply(&self, stored: i32) -> f64 {
        match self {
            ModalityLut::Rescale { slope, intercept } => stored as f64 * slope + intercept,
            ModalityLut::Table(lut) => lut.lookup(stored as f64),
        }
    }
}

/// VOILUTFunction (0028,1056), PS3.3 C.11.2.1.2-3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VoiLutFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

impl VoiLutFunction {
    /// Parse the attribute as one trimmed, upper-cased string; absent or empty means LINEAR.
    /// Unknown values give `None` (the caller logs and uses LINEAR).
    pub fn parse(s: Option<&str>) -> Option<VoiLutFunction> {
        match s.map(|s| s.trim().to_ascii_uppercase()).as_deref() {
            None | Some("") | Some("LINEAR") => Some(VoiLutFunction::Linear),
            Some("LINEAR_EXACT") => Some(VoiLutFunction::LinearExact),
            Some("SIGMOID") => Some(VoiLutFunction::Sigmoid),
            Some(_) => None,
        }
    }
}

/// The VOI transform actually applied (what `inspect` reports as `voi`).
#[derive(Debug, Clone, PartialEq)]
pub enum Voi {
    /// VOI LUT Sequence (0028,3010): `index` of `count` items used.
    /// VOI LUT Sequence (0028,3010): `index` of `count` items used; `scale` = the LUT's
    /// [`Lut::full_scale`], computed once.
    Table {
        lut: Lut,
        index: usize,
        count: usize,
        scale: f64,
    },
    /// WindowCenter / WindowWidth pair `index` of `count`, with its VOILUTFunction.
    Window {
        center: f64,
        width: f64,
        function: VoiLutFunction,
        index: usize,
        count: usize,
    },
    /// No usable VOI in the file: linear over [lo, hi] of modality values (full range or percentiles).
    Range {
        lo: f64,
        hi: f64,
        source: RangeSource,
    },
}

/// Where a fallback [`Voi::Range`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSource {
    /// Minimum and maximum modality value present in the image.
    MinMax,
    /// 0.5 and 99.5 percentiles of the modality values (For Processing images).
    Percentile,
}

impl Voi {
    /// Map a modality value to [0, 1].
    pub fn apply(&self, x: f64) -> f64 {
        match self {
            Voi::Table { lut, scale, .. } => lut.lookup(x) / scale.max(1.0),
            Voi::Window {
                center,
                width,
                function,
                ..
            } => window(x, *center, *width, *function),
            Voi::Range { lo, hi, .. } => {
                if hi > lo {
                    ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
                } else {
                    0.0
                }
            }
        }
    }
}

impl fmt::Display for Voi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Voi::Table {
                lut, index, count, ..
            } => write!(
                f,
                "VOI LUT Sequence item {} of {count} ({:?}, {} entries from {}, {} bit)",
                index + 1,
                lut.explanation,
                lut.data.len(),
                lut.first,
                lut.bits
            ),
            Voi::Window {
                center,
                width,
                function,
                index,
                count,
            } => write!(
                f,
                "window {} of {count}: {function:?} center {center} width {width}",
                index + 1
            ),
            Voi::Range { lo, hi, source } => match source {
                RangeSource::MinMax => write!(f, "no VOI in file: min-max {lo}..{hi}"),
                RangeSource::Percentile => {
                    write!(f, "no VOI in file: percentiles 0.5-99.5 {lo}..{hi}")
                }
            },
        }
    }
}

/// The window functions of PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT) and C.11.2.1.3.1 (SIGMOID),
/// with output range [0, 1]. A LINEAR width below 1 and a non-positive width are degenerate:
/// the result is a step at the centre.
pub fn window(x: f64, c: f64, w: f64, function: VoiLutFunction) -> f64 {
    match function {
        VoiLutFunction::Linear => {
            if w <= 1.0 {
                return if x <= c - 0.5 { 0.0 } else { 1.0 };
            }
            let lo = c - 0.5 - (w - 1.0) / 2.0;
            let hi = c - 0.5 + (w - 1.0) / 2.0;
            if x <= lo {
                0.0
            } else if x > hi {
                1.0
            } else {
                (x - (c - 0.5)) / (w - 1.0) + 0.5
            }
        }
        VoiLutFunction::LinearExact => {
            if w <= 0.0 {
                return if x <= c { 0.0 } else { 1.0 };
            }
            if x <= c - w / 2.0 {
                0.0
            } else if x > c + w / 2.0 {
                1.0
            } else {
                (x - c) / w + 0.5
            }
        }
        VoiLutFunction::Sigmoid => {
            if w <= 0.0 {
                return if x < c { 0.0 } else { 1.0 };
            }
            1.0 / (1.0 + (-4.0 * (x - c) / w).exp())
        }
    }
}

/// Everything that maps stored samples to display grey levels for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct GreyPipeline {
    pub format: SampleFormat,
    pub modality: ModalityLut,
    /// `None` until [`GreyPipeline::resolve_voi`] chose one.
    pub voi: Voi,
    /// MONOCHROME1 or PresentationLUTShape INVERSE: invert within the VOI output range.
    pub invert: bool,
}

/// A greyscale image in [0, 1], row-major, `width × height` (Columns × Rows) samples.
#[derive(Debug, Clone, PartialEq)]
pub struct GreyImage {
    pub width: usize,
    pub height: usize,
    /// `height × width` values in [0, 1]; 0 = black (no tissue, after inversion).
    pub data: Vec<f32>,
}

/// Summary statistics of a [`GreyImage`] (all in [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub min: f32,
    pub max: f32,
    pub mean: f32,
}

impl GreyImage {
    /// Min, max and mean of the pixel values.
    pub fn stats(&self) -> Stats {
        let mut min = f32::INFINITY;
        let mut max = f32::NEG_INFINITY;
        let mut sum = 0f64;
        for &v in &self.data {
            min = min.min(v);
            max = max.max(v);
            sum += v as f64;
        }
        Stats {
            min,
            max,
            mean: (sum / self.data.len().max(1) as f64) as f32,
        }
    }
}

/// Histogram of masked stored codes of one frame: `counts[code]` for code in 0 … 2^BitsStored − 1.
pub fn histogram(format: &SampleFormat, bytes: &[u8], n: usize) -> Result<Vec<u64>, GreyError> {
    format.validate()?;
    let bps = (format.bits_allocated / 8) as usize;
    check_len(bytes, n * bps)?;
    let (shift, mask) = (format.shift(), format.mask());
    let mut counts = vec![0u64; format.code_count()];
    if bps == 1 {
        for &b in &bytes[..n] {
            counts[((b as u32) >> shift & mask) as usize] += 1;
        }
    } else {
        for c in bytes[..2 * n].chunks_exact(2) {
            let raw = u16::from_le_bytes([c[0], c[1]]) as u32;
            counts[(raw >> shift & mask) as usize] += 1;
        }
    }
    Ok(counts)
}

fn check_len(bytes: &[u8], expected: usize) -> Result<(), GreyError> {
    if bytes.len() < expected {
        return Err(GreyError::PixelDataTooShort {
            expected,
            actual: bytes.len(),
        });
    }
    Ok(())
}

/// Range of modality values over the codes present in `counts` (min, max).
pub fn modality_range(format: &SampleFormat, modality: &ModalityLut, counts: &[u64]) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for (code, &n) in counts.iter().enumerate() {
        if n > 0 {
            let v = modality.apply(format.code_value(code as u32));
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if lo > hi {
        (0.0, 0.0)
    } else {
        (lo, hi)
    }
}

/// Percentiles `p_lo`, `p_hi` (0–100) of modality values, from the code histogram.
pub fn modality_percentiles(
    format: &SampleFormat,
    modality: &ModalityLut,
    counts: &[u64],
    p_lo: f64,
    p_hi: f64,
) -> (f64, f64) {
    let mut values: Vec<(f64, u64)> = counts
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(code, &n)| (modality.apply(format.code_value(code as u32)), n))
        .collect();
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: u64 = values.iter().map(|v| v.1).sum();
    let at = |p: f64| {
        let target = (p / 100.0 * total as f64).ceil().max(1.0) as u64;
        let mut acc = 0;
        for &(v, n) in &values {
            acc += n;
            if acc >= target {
                return v;
            }
        }
        values.last().map(|v| v.0).unwrap_or(0.0)
    };
    (at(p_lo), at(p_hi))
}

impl GreyPipeline {
    /// Grey level in [0, 1] for one masked stored code.
    pub fn map_code(&self, code: u32) -> f32 {
        let m = self.modality.apply(self.format.code_value(code));
        let y = self.voi.apply(m).clamp(0.0, 1.0);
        (if self.invert { 1.0 - y } else { y }) as f32
    }

    /// Apply the pipeline to one frame of native little-endian samples (`rows × columns`).
    /// Errors when the buffer is shorter than the frame.
    pub fn render(
        &self,
        bytes: &[u8],
        columns: usize,
        rows: usize,
    ) -> Result<GreyImage, GreyError> {
        self.format.validate()?;
        let n = rows * columns;
        let bps = (self.format.bits_allocated / 8) as usize;
        check_len(bytes, n * bps)?;
        let table: Vec<f32> = (0..self.format.code_count() as u32)
            .map(|c| self.map_code(c))
            .collect();
        let (shift, mask) = (self.format.shift(), self.format.mask());
        let data: Vec<f32> = if bps == 1 {
            bytes[..n]
                .iter()
                .map(|&b| table[((b as u32) >> shift & mask) as usize])
                .collect()
        } else {
            bytes[..2 * n]
                .chunks_exact(2)
                .map(|c| {
                    table[((u16::from_le_bytes([c[0], c[1]]) as u32) >> shift & mask) as usize]
                })
                .collect()
        };
        Ok(GreyImage {
            width: columns,
            height: rows,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_window_follows_ps3_3_formula() {
        // c = 2048, w = 4096 maps 0 → ~0 and 4095 → ~1, centre − 0.5 → 0.5.
        let f = VoiLutFunction::Linear;
        assert!((window(2047.5, 2048.0, 4096.0, f) - 0.5).abs() < 1e-12);
        assert_eq!(window(-1.0, 2048.0, 4096.0, f), 0.0);
        assert_eq!(window(5000.0, 2048.0, 4096.0, f), 1.0);
        let e = VoiLutFunction::LinearExact;
        assert!((window(1000.0, 1000.0, 500.0, e) - 0.5).abs() < 1e-12);
        assert_eq!(window(750.0, 1000.0, 500.0, e), 0.0);
        let s = VoiLutFunction::Sigmoid;
        assert!((window(1000.0, 1000.0, 500.0, s) - 0.5).abs() < 1e-12);
        // 4(x−c)/w = 4 at x = c + w → 1/(1+e^−4) ≈ 0.982
        assert!((window(1500.0, 1000.0, 500.0, s) - 0.98201).abs() < 1e-4);
    }

    #[test]
    fn voi_function_parsing_is_trimmed_and_case_insensitive() {
        assert_eq!(
            VoiLutFunction::parse(Some("SIGMOID ")),
            Some(VoiLutFunction::Sigmoid)
        );
        assert_eq!(
            VoiLutFunction::parse(Some("sigmoid")),
            Some(VoiLutFunction::Sigmoid)
        );
        assert_eq!(VoiLutFunction::parse(None), Some(VoiLutFunction::Linear));
        assert_eq!(VoiLutFunction::parse(Some("FANCY")), None);
    }

    #[test]
    fn sign_extension_and_masking() {
        let f = SampleFormat {
            bits_allocated: 16,
            bits_stored: 14,
            high_bit: 13,
            signed: true,
        };
        // −2000 in 14-bit two's complement, with junk in bits 14 and 15.
        let code = ((-2000i32) as u32) & 0x3fff;
        assert_eq!(f.code_value(code), -2000);
        let raw = (code | 0xc000) as u16;
        let counts = histogram(&f, &raw.to_le_bytes(), 1).unwrap();
        assert_eq!(counts[code as usize], 1);
    }

    #[test]
    fn lut_clamps_outside_its_domain() {
        let lut = Lut {
            first: 10,
            bits: 8,
            data: vec![0, 100, 255],
            explanation: String::new(),
        };
        assert_eq!(lut.lookup(0.0), 0.0);
        assert_eq!(lut.lookup(11.0), 100.0);
        assert_eq!(lut.lookup(99.0), 255.0);
        assert_eq!(lut.full_scale(), 255.0);
    }
}
