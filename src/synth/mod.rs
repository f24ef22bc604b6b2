//! Synthetic mammograms written as real DICOM files (explicit VR little endian) for tests and the
//! demo. This module holds the simple geometric phantom and the DICOM writer; the full anatomical
//! phantom generator with ground truth for every task builds on it.

use std::path::Path;

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject};
use thiserror::Error;

use crate::dicom::{sop, Laterality};
use crate::preprocess::Side;

/// Errors of writing synthetic DICOM.
#[derive(Debug, Error)]
pub enum SynthError {
    #[error("building the DICOM file meta group failed: {0}")]
    Meta(String),
    #[error("writing {path} failed: {detail}")]
    Write { path: String, detail: String },
    #[error("pixel buffer has {actual} samples, Rows x Columns is {expected}")]
    PixelCount { expected: usize, actual: usize },
}

/// Deterministic pseudo-random numbers (SplitMix64, Steele et al., OOPSLA 2014): same seed, same bytes.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A UID under the 2.25 root (PS3.5 B.2: UUID-derived), deterministic in `seed` and `kind`.
pub fn uid(seed: u64, kind: &str) -> String {
    let mut r = SplitMix64::new(
        seed ^ kind.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        }),
    );
    let v = ((r.next_u64() as u128) << 64 | r.next_u64() as u128) >> 2;
    format!("2.25.{v}")
}

/// A simple geometric breast phantom in display grey levels [0, 1] (0 = air): a half-ellipse
/// against the chest-wall edge with smooth texture, optional burned-in label block and implant.
#[derive(Debug, Clone, PartialEq)]
pub struct GeometricPhantom {
    pub rows: usize,
    pub columns: usize,
    /// Edge the breast is attached to.
    pub chest_wall: Side,
    /// Air level and its noise standard deviation, in grey levels.
    pub background: f32,
    pub background_noise: f32,
    /// Bright burned-in label block in the corner opposite the chest wall (top).
    pub label_block: bool,
    /// Bright implant-like ellipse inside the breast.
    pub implant: bool,
    pub seed: u64,
}

impl GeometricPhantom {
    /// A `rows × columns` phantom with the chest wall where `laterality` normally puts it.
    pub fn new(rows: usize, columns: usize, laterality: Laterality) -> Self {
        GeometricPhantom {
            rows,
            columns,
            chest_wall: crate::preprocess::expected_chest_wall(laterality),
            background: 0.0,
            background_noise: 0.0,
            label_block: false,
            implant: false,
            seed: 1,
        }
    }

    /// Breast extent as (semi-axis along x, semi-axis along y, centre y), pixels.
    pub fn ellipse(&self) -> (f64, f64, f64) {
        (
            0.62 * self.columns as f64,
            0.40 * self.rows as f64,
            0.5 * self.rows as f64,
        )
    }

    /// Label block rectangle `[x0, x1) × [y0, y1)`, pixels.
    pub fn label_rect(&self) -> (usize, usize, usize, usize) {
        let (w, h) = (self.columns / 8, self.rows / 16);
        let x0 = match self.chest_wall {
            Side::Left => self.columns - w - self.columns / 40,
            Side::Right => self.columns / 40,
        };
        (x0, x0 + w, self.rows / 40, self.rows / 40 + h)
    }

    /// Grey levels `[rows × columns]`, row-major.
    pub fn render(&self) -> Vec<f32> {
        let mut rng = SplitMix64::new(self.seed);
        let (a, b, cy) = self.ellipse();
        let (lx0, lx1, ly0, ly1) = self.label_rect();
        let mut out = Vec::with_capacity(self.rows * self.columns);
        for y in 0..self.rows {
            for x in 0..self.columns {
                let d = match self.chest_wall {
                    Side::Left => x as f64,
                    Side::Right => (self.columns - 1 - x) as f64,
                };
                let (u, v) = (d / a, (y as f64 - cy) / b);
                let r2 = u * u + v * v;
                let mut g = self.background as f64 + self.background_noise as f64 * rng.normal();
                if r2 <= 1.0 {
                    // thickness falls off towards the skin line; texture from two sinusoids
                    let thickness = (1.0 - r2).sqrt();
                    let texture = 0.05 * ((x as f64 * 0.11).sin() * (y as f64 * 0.07).cos());
                    g = 0.35 + 0.3 * thickness + texture;
                    if self.implant {
                        let (iu, iv) = ((d - 0.35 * a) / (0.18 * a), (y as f64 - cy) / (0.25 * b));
                        if iu * iu + iv * iv <= 1.0 {
                            g = 0.97;
                        }
                    }
                }
                if self.label_block && (lx0..lx1).contains(&x) && (ly0..ly1).contains(&y) {
                    g = 1.0;
                }
                out.push(g.clamp(0.0, 1.0) as f32);
            }
        }
        out
    }
}

/// Header and pixels of one synthetic single-frame greyscale image, written as explicit VR little
/// endian. Stored samples are given as raw 16-bit words (so tests can set overlay bits or write
/// two's complement values); `bits_allocated` 8 writes the low byte.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomSpec {
    pub rows: usize,
    pub columns: usize,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    /// `MONOCHROME1` or `MONOCHROME2`.
    pub photometric: String,
    pub sop_class_uid: String,
    pub modality: Option<String>,
    pub presentation_intent: Option<String>,
    pub manufacturer: String,
    pub model_name: String,
    pub image_laterality: Option<String>,
    pub laterality: Option<String>,
    pub view_position: Option<String>,
    /// (CodeValue, CodingSchemeDesignator, CodeMeaning) of the ViewCodeSequence item.
    pub view_code: Option<(String, String, String)>,
    /// WindowCenter / WindowWidth pairs.
    pub windows: Vec<(f64, f64)>,
    pub voi_lut_function: Option<String>,
    pub rescale: Option<(f64, f64)>,
    pub pixel_spacing_mm: Option<f64>,
    pub seed: u64,
    /// Raw stored words, `rows × columns`.
    pub pixels: Vec<u16>,
}

impl DicomSpec {
    /// A For Presentation mammogram header with the given pixels (12-bit MONOCHROME2, Hologic-like
    /// names, a full-range LINEAR window).
    pub fn mammogram(rows: usize, columns: usize, pixels: Vec<u16>) -> Self {
        DicomSpec {
            rows,
            columns,
            bits_allocated: 16,
            bits_stored: 12,
            signed: false,
            photometric: "MONOCHROME2".into(),
            sop_class_uid: sop::MG_PRESENTATION.into(),
            modality: Some("MG".into()),
            presentation_intent: Some("FOR PRESENTATION".into()),
            manufacturer: "HOLOGIC, Inc.".into(),
            model_name: "Selenia Dimensions".into(),
            image_laterality: Some("L".into()),
            laterality: None,
            view_position: Some("CC".into()),
            view_code: Some(("399162004".into(), "SCT".into(), "cranio-caudal".into())),
            windows: vec![(2048.0, 4096.0)],
            voi_lut_function: None,
            rescale: None,
            pixel_spacing_mm: Some(0.07),
            seed: 1,
            pixels,
        }
    }

    /// Quantise grey levels [0, 1] to `bits_stored` codes (inverted for MONOCHROME1).
    pub fn quantise(grey: &[f32], bits_stored: u16, monochrome1: bool) -> Vec<u16> {
        let max = ((1u32 << bits_stored) - 1) as f32;
        grey.iter()
            .map(|&g| {
                let v = (g.clamp(0.0, 1.0) * max).round() as u16;
                if monochrome1 {
                    max as u16 - v
                } else {
                    v
                }
            })
            .collect()
    }

    /// Build the DICOM object (file meta + data set). Synthetic patient attributes use the
    /// searchable markers `SYNTH^PATIENT` / `SYNTH-<seed>` so tests can prove they never leak.
    pub fn to_object(&self) -> Result<DefaultDicomObject, SynthError> {
        let n = self.rows * self.columns;
        if self.pixels.len() != n {
            return Err(SynthError::PixelCount {
                expected: n,
                actual: self.pixels.len(),
            });
        }
        let sop_uid = uid(self.seed, "sop");
        let mut o = InMemDicomObject::new_empty();
        let s = |o: &mut InMemDicomObject, tag: Tag, vr: VR, v: &str| {
            o.put(InMemElement::new(tag, vr, PrimitiveValue::from(v)));
        };
        s(&mut o, tags::SOP_CLASS_UID, VR::UI, &self.sop_class_uid);
        s(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
        s(
            &mut o,
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            &uid(self.seed, "study"),
        );
        s(
            &mut o,
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            &uid(self.seed, "series"),
        );
        s(&mut o, tags::PATIENT_NAME, VR::PN, "SYNTH^PATIENT");
        s(
            &mut o,
            tags::PATIENT_ID,
            VR::LO,
            &format!("SYNTH-{}", self.seed),
        );
        s(&mut o, tags::PATIENT_BIRTH_DATE, VR::DA, "19700101");
        s(
            &mut o,
            tags::ACCESSION_NUMBER,
            VR::SH,
            &format!("ACC{}", self.seed),
        );
        s(&mut o, tags::MANUFACTURER, VR::LO, &self.manufacturer);
        s(
            &mut o,
            tags::MANUFACTURER_MODEL_NAME,
            VR::LO,
            &self.model_name,
        );
        if let Some(m) = &self.modality {
            s(&mut o, tags::MODALITY, VR::CS, m);
        }
        if let Some(p) = &self.presentation_intent {
            s(&mut o, tags::PRESENTATION_INTENT_TYPE, VR::CS, p);
        }
        if let Some(l) = &self.image_laterality {
            s(&mut o, tags::IMAGE_LATERALITY, VR::CS, l);
        }
        if let Some(l) = &self.laterality {
            s(&mut o, tags::LATERALITY, VR::CS, l);
        }
        if let Some(v) = &self.view_position {
            s(&mut o, tags::VIEW_POSITION, VR::CS, v);
        }
        if let Some((code, scheme, meaning)) = &self.view_code {
            let mut item = InMemDicomObject::new_empty();
            s(&mut item, tags::CODE_VALUE, VR::SH, code);
            s(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
            s(&mut item, tags::CODE_MEANING, VR::LO, meaning);
            o.put(InMemElement::new(
                tags::VIEW_CODE_SEQUENCE,
                VR::SQ,
                DataSetSequence::new(vec![item], Length::UNDEFINED),
            ));
        }
        if let Some(ps) = self.pixel_spacing_mm {
            s(
                &mut o,
                tags::IMAGER_PIXEL_SPACING,
                VR::DS,
                &format!("{ps}\\{ps}"),
            );
        }
        if !self.windows.is_empty() {
            let join = |f: fn(&(f64, f64)) -> f64| {
                self.windows
                    .iter()
                    .map(|w| f(w).to_string())
                    .collect::<Vec<_>>()
                    .join("\\")
            };
            s(&mut o, tags::WINDOW_CENTER, VR::DS, &join(|w| w.0));
            s(&mut o, tags::WINDOW_WIDTH, VR::DS, &join(|w| w.1));
        }
        if let Some(f) = &self.voi_lut_function {
            s(&mut o, tags::VOILUT_FUNCTION, VR::CS, f);
        }
        if let Some((slope, intercept)) = self.rescale {
            s(&mut o, tags::RESCALE_SLOPE, VR::DS, &slope.to_string());
            s(
                &mut o,
                tags::RESCALE_INTERCEPT,
                VR::DS,
                &intercept.to_string(),
            );
            s(&mut o, tags::RESCALE_TYPE, VR::LO, "US");
        }
        let us = |o: &mut InMemDicomObject, tag: Tag, v: u16| {
            o.put(InMemElement::new(tag, VR::US, PrimitiveValue::from(v)));
        };
        us(&mut o, tags::SAMPLES_PER_PIXEL, 1);
        s(
            &mut o,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            &self.photometric,
        );
        us(&mut o, tags::ROWS, self.rows as u16);
        us(&mut o, tags::COLUMNS, self.columns as u16);
        us(&mut o, tags::BITS_ALLOCATED, self.bits_allocated);
        us(&mut o, tags::BITS_STORED, self.bits_stored);
        us(&mut o, tags::HIGH_BIT, self.bits_stored - 1);
        us(&mut o, tags::PIXEL_REPRESENTATION, self.signed as u16);
        if self.bits_allocated == 8 {
            let bytes: Vec<u8> = self.pixels.iter().map(|&v| v as u8).collect();
            o.put(InMemElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PrimitiveValue::from(bytes),
            ));
        } else {
            o.put(InMemElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(self.pixels.iter().copied().collect()),
            ));
        }
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(self.sop_class_uid.as_str())
            .media_storage_sop_instance_uid(sop_uid.as_str())
            .transfer_syntax("1.2.840.10008.1.2.1")
            .implementation_class_uid("2.25.301213448370356316114342377634530425817")
            .implementation_version_name("MAMMO_EDGE_01")
            .build()
            .map_err(|e| SynthError::Meta(e.to_string()))?;
        Ok(o.with_exact_meta(meta))
    }

    /// Write the file (explicit VR little endian, with preamble and file meta).
    pub fn write(&self, path: &Path) -> Result<(), SynthError> {
        write_object(&self.to_object()?, path)
    }
}

/// Write a DICOM object to `path`.
pub fn write_object(obj: &DefaultDicomObject, path: &Path) -> Result<(), SynthError> {
    obj.write_to_file(path).map_err(|e| SynthError::Write {
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}
