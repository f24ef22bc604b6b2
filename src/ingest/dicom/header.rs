//! Reading the attributes we use from a parsed DICOM object into [`MammoMeta`], plus the Modality
//! LUT and VOI attributes (PS3.3 C.11.1, C.11.2). Patient name, ID and birth date are never read.

use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use serde::Serialize;

use super::grey::{Lut, ModalityLut, Voi, VoiLutFunction};
use super::{IngestError, Laterality, Vendor, View, ViewModifier};

/// Pixel spacing in mm (row spacing, column spacing) and the attribute it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PixelSpacing {
    /// Distance between rows, mm.
    pub row_mm: f64,
    /// Distance between columns, mm.
    pub column_mm: f64,
    /// `PixelSpacing` or `ImagerPixelSpacing`.
    pub source: &'static str,
}

/// The attributes of one image that the appliance uses. No patient-identifying attribute is read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MammoMeta {
    /// SOPClassUID (media storage SOP class when absent from the data set).
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    /// The first of the UIDs above that is longer than UI's 64 bytes (kept cut to 64 here);
    /// such a file is refused as `inconsistent_header`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oversized_uid: Option<&'static str>,
    /// Modality (0008,0060); may be absent (the SOP class alone can identify a mammogram).
    pub modality: Option<String>,
    /// PresentationIntentType (0008,0068): `FOR PRESENTATION` / `FOR PROCESSING`.
    pub presentation_intent: Option<String>,
    /// Manufacturer (0008,0070) as written.
    pub manufacturer: String,
    /// Manufacturer normalised to the vendor vocabulary.
    pub vendor: Vendor,
    /// ManufacturerModelName (0008,1090).
    pub model_name: String,
    /// From ImageLaterality, else Laterality; `None` when absent or `B`/`U`.
    pub laterality: Option<Laterality>,
    /// Which attribute gave the laterality (`ImageLaterality`, `Laterality`) or `none`.
    pub laterality_source: &'static str,
    /// ImageLaterality (else Laterality) is `B`: both breasts in one image.
    pub both_breasts: bool,
    /// From ViewCodeSequence, else ViewPosition; `Other` when unknown.
    pub view: View,
    /// The raw code value or ViewPosition string the view came from (empty when none).
    pub view_raw: String,
    /// `ViewCodeSequence`, `ViewPosition` or `none`.
    pub view_source: &'static str,
    /// Spot compression / magnification modifiers found in ViewModifierCodeSequence.
    pub view_modifiers: Vec<ViewModifier>,
    /// PatientOrientation (0020,0020), e.g. `A\R`.
    pub patient_orientation: Option<String>,
    /// PixelSpacing, else ImagerPixelSpacing; `None` when absent or zero (reported, not used).
    pub pixel_spacing: Option<PixelSpacing>,
    /// Why `pixel_spacing` is `None` (absent, zero, malformed).
    pub pixel_spacing_note: Option<String>,
    pub accession_number: Option<String>,
    /// BreastImplantPresent (0028,1300) = YES/NO.
    pub breast_implant_present: Option<bool>,
    /// ImageType (0008,0008) values.
    pub image_type: Vec<String>,
    pub transfer_syntax: String,
    pub transfer_syntax_name: String,
    pub rows: u32,
    pub columns: u32,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub high_bit: u16,
    pub pixel_representation: u16,
    pub samples_per_pixel: u16,
    /// PhotometricInterpretation, trimmed, upper case.
    pub photometric: String,
    /// PresentationLUTShape (2050,0020): `IDENTITY` / `INVERSE`.
    pub presentation_lut_shape: Option<String>,
    /// NumberOfFrames (1 when absent).
    pub number_of_frames: u32,
}

fn elem(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemElement> {
    obj.element_opt(tag).ok().flatten()
}

/// Longest header string kept, in characters: LO's limit (PS3.5 6.2), which also bounds every
/// shorter VR the appliance reads. A file may declare any length; what is kept, logged and
/// published is cut here (review #1: one 65 kB Manufacturer blocked the outbox).
pub const MAX_STRING_CHARS: usize = 64;
/// Longest UID, bytes (UI, PS3.5 6.2): a longer one is refused, not cut.
pub const MAX_UID_BYTES: usize = 64;
/// Most values kept of a multi-valued string attribute.
const MAX_VALUES: usize = 16;

/// A header string as kept: control characters removed, trimmed, at most
/// [`MAX_STRING_CHARS`] characters.
fn bound(s: &str) -> String {
    let kept: String = s.chars().filter(|c| !c.is_control()).collect();
    let cut: String = kept.trim().chars().take(MAX_STRING_CHARS).collect();
    cut.trim_end().to_string()
}

/// Trimmed, non-empty, bounded ([`bound`]) string value of a header element: what the ingest
/// reads, and what the C-STORE receiver and the SR writer read from command sets and headers.
pub fn string(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = bound(&elem(obj, tag)?.to_str().ok()?);
    (!s.is_empty()).then_some(s)
}

/// A UID value, trimmed; one longer than [`MAX_UID_BYTES`] is kept cut and named in
/// `oversized` (the first such attribute), so acceptance refuses the file.
fn uid(
    obj: &InMemDicomObject,
    tag: Tag,
    name: &'static str,
    oversized: &mut Option<&'static str>,
) -> String {
    let Some(raw) = elem(obj, tag).and_then(|e| e.to_str().ok()) else {
        return String::new();
    };
    let raw = raw.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if raw.len() > MAX_UID_BYTES && oversized.is_none() {
        *oversized = Some(name);
    }
    bound(raw)
}

fn strings(obj: &InMemDicomObject, tag: Tag) -> Vec<String> {
    match elem(obj, tag).map(|e| e.value()) {
        Some(Value::Primitive(p)) => p
            .to_multi_str()
            .iter()
            .take(MAX_VALUES)
            .map(|s| bound(s))
            .collect(),
        _ => Vec::new(),
    }
}

/// Finite numbers of a DS/FD/… attribute; absent, malformed or non-finite ("NaN", "1e999") values
/// give an empty list (and a warning naming the attribute).
fn floats(obj: &InMemDicomObject, tag: Tag) -> Vec<f64> {
    match elem(obj, tag) {
        None => Vec::new(),
        Some(e) => e.to_multi_finite_float64().unwrap_or_else(|_| {
            log::warn!("attribute {tag} has a malformed or non-finite number; ignored");
            Vec::new()
        }),
    }
}

/// An unsigned integer attribute; 0 when absent (checked after the acceptance rules, so that a
/// non-image object is skipped rather than reported as broken).
fn uint(obj: &InMemDicomObject, tag: Tag, name: &'static str) -> Result<u32, IngestError> {
    match elem(obj, tag) {
        None => Ok(0),
        Some(e) => e
            .to_int::<u32>()
            .map_err(|_| IngestError::Inconsistent(format!("{name} is not an unsigned integer"))),
    }
}

fn items(obj: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    elem(obj, tag).and_then(|e| e.items()).unwrap_or(&[])
}

impl MammoMeta {
    /// Read the attributes; errors only for missing or malformed image-pixel attributes.
    pub fn from_object(obj: &DefaultDicomObject) -> Result<MammoMeta, IngestError> {
        let file_meta = obj.meta();
        let ds: &InMemDicomObject = obj;
        let sop_class_uid = string(ds, tags::SOP_CLASS_UID)
            .unwrap_or_else(|| bound(file_meta.media_storage_sop_class_uid()));
        let ts_uid = bound(file_meta.transfer_syntax());
        let transfer_syntax_name = TransferSyntaxRegistry
            .get(&ts_uid)
            .map(|t| t.name().to_string())
            .unwrap_or_else(|| "unknown".into());

        let both_breasts = string(ds, tags::IMAGE_LATERALITY)
            .or_else(|| string(ds, tags::LATERALITY))
            .is_some_and(|s| s.trim().eq_ignore_ascii_case("B"));
        let (laterality, laterality_source) = match string(ds, tags::IMAGE_LATERALITY)
            .and_then(|s| Laterality::from_code(&s))
        {
            Some(l) => (Some(l), "ImageLaterality"),
            None => match string(ds, tags::LATERALITY).and_then(|s| Laterality::from_code(&s)) {
                Some(l) => (Some(l), "Laterality"),
                None => (None, "none"),
            },
        };

        let mut view = None;
        let mut view_raw = String::new();
        let mut view_source = "none";
        let mut view_modifiers = Vec::new();
        if let Some(item) = items(ds, tags::VIEW_CODE_SEQUENCE).first() {
            if let Some(code) = string(item, tags::CODE_VALUE) {
                if let Some(v) = View::from_code_value(&code) {
                    view = Some(v);
                    view_source = "ViewCodeSequence";
                }
                view_raw = code;
            }
            for m in items(item, tags::VIEW_MODIFIER_CODE_SEQUENCE) {
                if let Some(vm) =
                    string(m, tags::CODE_VALUE).and_then(|c| ViewModifier::from_code_value(&c))
                {
                    view_modifiers.push(vm);
                }
            }
        }
        if view.is_none() {
            if let Some(vp) = string(ds, tags::VIEW_POSITION) {
                view = View::from_view_position(&vp);
                view_source = "ViewPosition";
                view_raw = vp;
            }
        }

        let mut pixel_spacing_note = None;
        let pixel_spacing = [
            (tags::PIXEL_SPACING, "PixelSpacing"),
            (tags::IMAGER_PIXEL_SPACING, "ImagerPixelSpacing"),
        ]
        .iter()
        .find_map(|&(tag, source)| {
            let present = elem(ds, tag).is_some();
            let v = floats(ds, tag);
            if v.len() == 2 && v[0] > 0.0 && v[1] > 0.0 {
                Some(PixelSpacing {
                    row_mm: v[0],
                    column_mm: v[1],
                    source,
                })
            } else {
                if present && pixel_spacing_note.is_none() {
                    pixel_spacing_note = Some(format!(
                        "{source} {v:?} is not two positive numbers; not used"
                    ));
                }
                None
            }
        });
        if pixel_spacing.is_none() && pixel_spacing_note.is_none() {
            pixel_spacing_note = Some("no PixelSpacing or ImagerPixelSpacing".into());
        }

        let bits_allocated = u16::try_from(uint(ds, tags::BITS_ALLOCATED, "BitsAllocated")?)
            .map_err(|_| IngestError::Inconsistent("BitsAllocated over 65535".into()))?;
        let bits_stored = elem(ds, tags::BITS_STORED)
            .and_then(|e| e.to_int::<u16>().ok())
            .unwrap_or(bits_allocated);
        let high_bit = elem(ds, tags::HIGH_BIT)
            .and_then(|e| e.to_int::<u16>().ok())
            .unwrap_or(bits_stored.saturating_sub(1));
        let number_of_frames = match string(ds, tags::NUMBER_OF_FRAMES) {
            Some(s) => s.parse::<u32>().map_err(|_| {
                IngestError::Inconsistent(format!("NumberOfFrames {s:?} is not a number"))
            })?,
            None => 1,
        };
        let manufacturer = string(ds, tags::MANUFACTURER).unwrap_or_default();
        let mut oversized_uid = None;
        let sop_instance_uid = uid(
            ds,
            tags::SOP_INSTANCE_UID,
            "SOPInstanceUID",
            &mut oversized_uid,
        );
        let study_instance_uid = uid(
            ds,
            tags::STUDY_INSTANCE_UID,
            "StudyInstanceUID",
            &mut oversized_uid,
        );
        let series_instance_uid = uid(
            ds,
            tags::SERIES_INSTANCE_UID,
            "SeriesInstanceUID",
            &mut oversized_uid,
        );
        Ok(MammoMeta {
            sop_class_uid,
            sop_instance_uid,
            study_instance_uid,
            series_instance_uid,
            oversized_uid,
            modality: string(ds, tags::MODALITY).map(|s| s.to_ascii_uppercase()),
            presentation_intent: string(ds, tags::PRESENTATION_INTENT_TYPE)
                .map(|s| s.to_ascii_uppercase()),
            vendor: Vendor::from_manufacturer(&manufacturer),
            manufacturer,
            model_name: string(ds, tags::MANUFACTURER_MODEL_NAME).unwrap_or_default(),
            laterality,
            laterality_source,
            both_breasts,
            view: view.unwrap_or(View::Other),
            view_raw,
            view_source,
            view_modifiers,
            patient_orientation: string(ds, tags::PATIENT_ORIENTATION),
            pixel_spacing,
            pixel_spacing_note,
            accession_number: string(ds, tags::ACCESSION_NUMBER),
            breast_implant_present: string(ds, tags::BREAST_IMPLANT_PRESENT)
                .map(|s| s.eq_ignore_ascii_case("YES")),
            image_type: strings(ds, tags::IMAGE_TYPE),
            transfer_syntax: ts_uid,
            transfer_syntax_name,
            rows: uint(ds, tags::ROWS, "Rows")?,
            columns: uint(ds, tags::COLUMNS, "Columns")?,
            bits_allocated,
            bits_stored,
            high_bit,
            pixel_representation: elem(ds, tags::PIXEL_REPRESENTATION)
                .and_then(|e| e.to_int::<u16>().ok())
                .unwrap_or(0),
            samples_per_pixel: elem(ds, tags::SAMPLES_PER_PIXEL)
                .and_then(|e| e.to_int::<u16>().ok())
                .unwrap_or(1),
            photometric: string(ds, tags::PHOTOMETRIC_INTERPRETATION)
                .map(|s| s.to_ascii_uppercase())
                .unwrap_or_default(),
            presentation_lut_shape: string(ds, tags::PRESENTATION_LUT_SHAPE)
                .map(|s| s.to_ascii_uppercase()),
            number_of_frames,
        })
    }

    /// For Processing: PresentationIntentType says so, or the SOP class is a For Processing one.
    pub fn is_for_processing(&self) -> bool {
        self.presentation_intent.as_deref() == Some("FOR PROCESSING")
            || self.sop_class_uid == super::sop::MG_PROCESSING
            || self.sop_class_uid == super::sop::DX_PROCESSING
    }
}

/// 16-bit words of an element whatever VR it was read with (US, SS as bit patterns, OW/OB bytes
/// little endian, numbers otherwise).
fn words(e: &InMemElement) -> Vec<u16> {
    match e.value() {
        Value::Primitive(PrimitiveValue::U16(v)) => v.to_vec(),
        Value::Primitive(PrimitiveValue::I16(v)) => v.iter().map(|&x| x as u16).collect(),
        Value::Primitive(PrimitiveValue::U8(v)) => v
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect(),
        Value::Primitive(p) => p
            .to_multi_int::<i64>()
            .unwrap_or_default()
            .iter()
            .map(|&x| x as u16)
            .collect(),
        _ => Vec::new(),
    }
}

/// LUT Data entries. 8-bit entries packed two per OW word (PS3.3 C.11.2.1.1) are unpacked when
/// `declared` asks for them.
fn lut_data(e: &InMemElement, declared: usize, bits: u16) -> Vec<u16> {
    let words = words(e);
    if bits <= 8 && words.len() < declared && words.len() * 2 >= declared {
        return words
            .iter()
            .flat_map(|w| [w & 0xff, w >> 8])
            .take(declared)
            .collect();
    }
    words
}

/// One LUT item (LUTDescriptor + LUTData + LUTExplanation). The descriptor's first value 0 means
/// 65536 entries; its second (first mapped input) is signed when the descriptor is SS or
/// `signed_input` says the LUT's input can be negative (PS3.3 C.11.1.1.1, C.11.2.1.1).
fn read_lut(
    item: &InMemDicomObject,
    which: &'static str,
    signed_input: bool,
) -> Result<Lut, IngestError> {
    let bad = |detail: &str| IngestError::Inconsistent(format!("{which} LUT: {detail}"));
    let desc_elem = elem(item, tags::LUT_DESCRIPTOR).ok_or_else(|| bad("no LUTDescriptor"))?;
    let desc = words(desc_elem);
    if desc.len() != 3 {
        return Err(bad("LUTDescriptor does not have 3 values"));
    }
    let declared = if desc[0] == 0 {
        65536
    } else {
        desc[0] as usize
    };
    let signed = signed_input || desc_elem.vr() == VR::SS;
    let first = if signed {
        desc[1] as i16 as i32
    } else {
        desc[1] as i32
    };
    let bits = desc[2].clamp(1, 16);
    let data = elem(item, tags::LUT_DATA)
        .map(|e| lut_data(e, declared, bits))
        .unwrap_or_default();
    if data.len() < declared || data.is_empty() {
        return Err(super::grey::GreyError::BadLut {
            which,
            declared,
            actual: data.len(),
        }
        .into());
    }
    Ok(Lut {
        first,
        bits,
        data: data[..declared].to_vec(),
        explanation: string(item, tags::LUT_EXPLANATION).unwrap_or_default(),
    })
}

/// Modality LUT: Modality LUT Sequence first item when present, else Rescale Slope/Intercept.
pub fn modality_lut(
    obj: &DefaultDicomObject,
    meta: &MammoMeta,
) -> Result<ModalityLut, IngestError> {
    let ds: &InMemDicomObject = obj;
    if let Some(item) = items(ds, tags::MODALITY_LUT_SEQUENCE).first() {
        return Ok(ModalityLut::Table(read_lut(
            item,
            "Modality",
            meta.pixel_representation == 1,
        )?));
    }
    let slope = floats(ds, tags::RESCALE_SLOPE)
        .first()
        .copied()
        .unwrap_or(1.0);
    let intercept = floats(ds, tags::RESCALE_INTERCEPT)
        .first()
        .copied()
        .unwrap_or(0.0);
    Ok(ModalityLut::Rescale {
        slope: if slope == 0.0 { 1.0 } else { slope },
        intercept,
    })
}

/// VOI from the file: VOI LUT Sequence first (its first item), else the first WindowCenter/Width
/// pair with VOILUTFunction; `None` when the file has neither.
/// `modality_signed`: the Modality LUT output can be negative (PS3.3 C.11.2.1.1: the VOI LUT
/// Descriptor's first mapped value is then signed).
pub fn voi(obj: &DefaultDicomObject, modality_signed: bool) -> Result<Option<Voi>, IngestError> {
    let ds: &InMemDicomObject = obj;
    let seq = items(ds, tags::VOILUT_SEQUENCE);
    let centers = floats(ds, tags::WINDOW_CENTER);
    let widths = floats(ds, tags::WINDOW_WIDTH);
    let have_window = !centers.is_empty() && !widths.is_empty();
    if let Some(item) = seq.first() {
        // The VOI LUT input is the modality output: signed when that can be negative.
        match read_lut(item, "VOI", modality_signed) {
            Ok(lut) => {
                return Ok(Some(Voi::Table {
                    scale: lut.full_scale(),
                    lut,
                    index: 0,
                    count: seq.len(),
                }))
            }
            // no UID in the log (review #14): the daemon names the file by its label
            Err(e) if have_window => {
                log::warn!("VOI LUT Sequence unusable ({e}); using the window instead")
            }
            Err(e) => return Err(e),
        }
    }
    if !have_window {
        return Ok(None);
    }
    let raw = string(ds, tags::VOILUT_FUNCTION);
    let function = VoiLutFunction::parse(raw.as_deref()).unwrap_or_else(|| {
        log::warn!(
            "unknown VOILUTFunction {:?}, using LINEAR (PS3.3 C.11.2.1.3 default)",
            raw.as_deref()
                .map(|f| f.chars().take(16).collect::<String>())
        );
        VoiLutFunction::Linear
    });
    Ok(Some(Voi::Window {
        center: centers[0],
        width: widths[0],
        function,
        index: 0,
        count: centers.len().min(widths.len()),
    }))
}
