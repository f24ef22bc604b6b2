//! DICOM writer for synthetic images: a Digital Mammography X-Ray Image – For Presentation
//! (PS3.3 A.26.2) with the Patient, General Study, General Series, Mammography Series, General
//! Equipment, General Image, Image Pixel, DX Anatomy Imaged, DX Image, DX Detector, Mammography
//! Image, VOI LUT and SOP Common modules, written as explicit VR little endian.

use std::path::Path;

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject};

use super::{uid, SynthError};
use crate::ingest::dicom::sop;

/// One VOI LUT Sequence item: LUTDescriptor `[data.len(), first, bits]`, LUTData, LUTExplanation.
#[derive(Debug, Clone, PartialEq)]
pub struct LutItem {
    pub first: u16,
    pub bits: u16,
    pub data: Vec<u16>,
    pub explanation: String,
}

/// Header and pixels of one synthetic single-frame greyscale image. Stored samples are given as raw
/// 16-bit words (so tests can set overlay bits or write two's complement values); `bits_allocated`
/// 8 writes the low byte. Synthetic patient attributes use searchable markers (`SYNTH^…`, `SYNTH-…`)
/// so tests can prove they never leak into messages or logs.
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
    /// PatientOrientation, e.g. `A\R` for a left CC.
    pub patient_orientation: Option<String>,
    /// WindowCenter / WindowWidth pairs.
    pub windows: Vec<(f64, f64)>,
    pub voi_lut_function: Option<String>,
    /// VOI LUT Sequence items.
    pub voi_luts: Vec<LutItem>,
    /// (RescaleSlope, RescaleIntercept); identity when `None`.
    pub rescale: Option<(f64, f64)>,
    /// ImagerPixelSpacing, mm.
    pub pixel_spacing_mm: Option<f64>,
    pub breast_implant_present: bool,
    pub patient_name: String,
    pub patient_id: String,
    pub accession_number: String,
    /// UIDs; derived from `seed` when `None`.
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
    pub sop_uid: Option<String>,
    pub instance_number: u32,
    /// StudyDate / ContentDate (YYYYMMDD), fixed so that the same seed gives the same bytes.
    pub study_date: String,
    pub seed: u64,
    /// Raw stored words, `rows × columns`.
    pub pixels: Vec<u16>,
}

impl DicomSpec {
    /// A For Presentation mammogram header with the given pixels (12-bit MONOCHROME2, Hologic-like
    /// names, a full-range LINEAR window, left CC).
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
            patient_orientation: None,
            windows: vec![(2048.0, 4096.0)],
            voi_lut_function: None,
            voi_luts: Vec::new(),
            rescale: None,
            pixel_spacing_mm: Some(0.07),
            breast_implant_present: false,
            patient_name: "SYNTH^PATIENT".into(),
            patient_id: "SYNTH-1".into(),
            accession_number: "ACC1".into(),
            study_uid: None,
            series_uid: None,
            sop_uid: None,
            instance_number: 1,
            study_date: "20260101".into(),
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

    /// The SOP Instance UID this spec writes.
    pub fn sop_instance_uid(&self) -> String {
        self.sop_uid
            .clone()
            .unwrap_or_else(|| uid(self.seed, "sop"))
    }

    /// Build the DICOM object (file meta + data set).
    pub fn to_object(&self) -> Result<DefaultDicomObject, SynthError> {
        let n = self.rows * self.columns;
        if self.pixels.len() != n {
            return Err(SynthError::PixelCount {
                expected: n,
                actual: self.pixels.len(),
            });
        }
        let sop_uid = self.sop_instance_uid();
        let mut o = InMemDicomObject::new_empty();
        let s = |o: &mut InMemDicomObject, tag: Tag, vr: VR, v: &str| {
            o.put(InMemElement::new(tag, vr, PrimitiveValue::from(v)));
        };
        let us = |o: &mut InMemDicomObject, tag: Tag, v: u16| {
            o.put(InMemElement::new(tag, VR::US, PrimitiveValue::from(v)));
        };
        let seq = |o: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>| {
            o.put(InMemElement::new(
                tag,
                VR::SQ,
                DataSetSequence::new(items, Length::UNDEFINED),
            ));
        };
        let code = |value: &str, scheme: &str, meaning: &str| {
            let mut item = InMemDicomObject::new_empty();
            s(&mut item, tags::CODE_VALUE, VR::SH, value);
            s(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
            s(&mut item, tags::CODE_MEANING, VR::LO, meaning);
            item
        };
        let mono1 = self.photometric == "MONOCHROME1";
        // SOP Common
        s(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
        s(&mut o, tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY");
        s(&mut o, tags::SOP_CLASS_UID, VR::UI, &self.sop_class_uid);
        s(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
        // General Study
        s(&mut o, tags::STUDY_DATE, VR::DA, &self.study_date);
        s(&mut o, tags::CONTENT_DATE, VR::DA, &self.study_date);
        s(&mut o, tags::STUDY_TIME, VR::TM, "090000");
        s(&mut o, tags::CONTENT_TIME, VR::TM, "090000");
        s(
            &mut o,
            tags::ACCESSION_NUMBER,
            VR::SH,
            &self.accession_number,
        );
        if let Some(m) = &self.modality {
            s(&mut o, tags::MODALITY, VR::CS, m);
        }
        s(&mut o, tags::MANUFACTURER, VR::LO, &self.manufacturer);
        s(&mut o, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "");
        s(
            &mut o,
            tags::MANUFACTURER_MODEL_NAME,
            VR::LO,
            &self.model_name,
        );
        // Patient
        s(&mut o, tags::PATIENT_NAME, VR::PN, &self.patient_name);
        s(&mut o, tags::PATIENT_ID, VR::LO, &self.patient_id);
        s(&mut o, tags::PATIENT_BIRTH_DATE, VR::DA, "19700101");
        s(&mut o, tags::PATIENT_SEX, VR::CS, "F");
        // DX Anatomy Imaged / DX Image / DX Detector
        s(&mut o, tags::BODY_PART_EXAMINED, VR::CS, "BREAST");
        s(&mut o, tags::DETECTOR_TYPE, VR::CS, "DIRECT");
        if let Some(ps) = self.pixel_spacing_mm {
            s(
                &mut o,
                tags::IMAGER_PIXEL_SPACING,
                VR::DS,
                &format!("{ps:.6}\\{ps:.6}"),
            );
        }
        if let Some(v) = &self.view_position {
            s(&mut o, tags::VIEW_POSITION, VR::CS, v);
        }
        s(&mut o, tags::POSITIONER_TYPE, VR::CS, "MAMMOGRAPHIC");
        // General Series / General Image
        s(
            &mut o,
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            &self
                .study_uid
                .clone()
                .unwrap_or_else(|| uid(self.seed, "study")),
        );
        s(
            &mut o,
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            &self
                .series_uid
                .clone()
                .unwrap_or_else(|| uid(self.seed, "series")),
        );
        s(&mut o, tags::STUDY_ID, VR::SH, "1");
        s(&mut o, tags::SERIES_NUMBER, VR::IS, "1");
        s(
            &mut o,
            tags::INSTANCE_NUMBER,
            VR::IS,
            &self.instance_number.to_string(),
        );
        if let Some(po) = &self.patient_orientation {
            s(&mut o, tags::PATIENT_ORIENTATION, VR::CS, po);
        } else {
            s(&mut o, tags::PATIENT_ORIENTATION, VR::CS, "");
        }
        if let Some(l) = &self.laterality {
            s(&mut o, tags::LATERALITY, VR::CS, l);
        }
        if let Some(l) = &self.image_laterality {
            s(&mut o, tags::IMAGE_LATERALITY, VR::CS, l);
        }
        // Image Pixel
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
        s(&mut o, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
        s(&mut o, tags::PIXEL_INTENSITY_RELATIONSHIP, VR::CS, "LOG");
        o.put(InMemElement::new(
            tags::PIXEL_INTENSITY_RELATIONSHIP_SIGN,
            VR::SS,
            PrimitiveValue::from(if mono1 { 1i16 } else { -1i16 }),
        ));
        if !self.windows.is_empty() {
            let join = |f: fn(&(f64, f64)) -> f64| {
                self.windows
                    .iter()
                    .map(|w| format!("{}", f(w)))
                    .collect::<Vec<_>>()
                    .join("\\")
            };
            s(&mut o, tags::WINDOW_CENTER, VR::DS, &join(|w| w.0));
            s(&mut o, tags::WINDOW_WIDTH, VR::DS, &join(|w| w.1));
        }
        let (slope, intercept) = self.rescale.unwrap_or((1.0, 0.0));
        s(
            &mut o,
            tags::RESCALE_INTERCEPT,
            VR::DS,
            &format!("{intercept}"),
        );
        s(&mut o, tags::RESCALE_SLOPE, VR::DS, &format!("{slope}"));
        s(&mut o, tags::RESCALE_TYPE, VR::LO, "US");
        if let Some(f) = &self.voi_lut_function {
            s(&mut o, tags::VOILUT_FUNCTION, VR::CS, f);
        }
        s(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
        if !self.voi_luts.is_empty() {
            let items = self
                .voi_luts
                .iter()
                .map(|l| {
                    let mut item = InMemDicomObject::new_empty();
                    item.put(InMemElement::new(
                        tags::LUT_DESCRIPTOR,
                        VR::US,
                        PrimitiveValue::U16(
                            [l.data.len() as u16, l.first, l.bits].into_iter().collect(),
                        ),
                    ));
                    s(&mut item, tags::LUT_EXPLANATION, VR::LO, &l.explanation);
                    // OW: a 65536-entry table does not fit the 16-bit length of explicit-VR US
                    item.put(InMemElement::new(
                        tags::LUT_DATA,
                        VR::OW,
                        PrimitiveValue::U16(l.data.iter().copied().collect()),
                    ));
                    item
                })
                .collect();
            seq(&mut o, tags::VOILUT_SEQUENCE, items);
        }
        // Mammography Image
        s(&mut o, tags::ORGAN_EXPOSED, VR::CS, "BREAST");
        s(
            &mut o,
            tags::BREAST_IMPLANT_PRESENT,
            VR::CS,
            if self.breast_implant_present {
                "YES"
            } else {
                "NO"
            },
        );
        if let Some(p) = &self.presentation_intent {
            s(&mut o, tags::PRESENTATION_INTENT_TYPE, VR::CS, p);
        }
        seq(&mut o, tags::ACQUISITION_CONTEXT_SEQUENCE, Vec::new());
        seq(
            &mut o,
            tags::ANATOMIC_REGION_SEQUENCE,
            vec![code("76752008", "SCT", "Breast")],
        );
        if let Some((value, scheme, meaning)) = &self.view_code {
            let mut item = code(value, scheme, meaning);
            seq(&mut item, tags::VIEW_MODIFIER_CODE_SEQUENCE, Vec::new());
            seq(&mut o, tags::VIEW_CODE_SEQUENCE, vec![item]);
        }
        s(
            &mut o,
            tags::PRESENTATION_LUT_SHAPE,
            VR::CS,
            if mono1 { "INVERSE" } else { "IDENTITY" },
        );
        // Pixel Data
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
