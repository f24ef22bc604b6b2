//! Mammography CAD SR (SOP class 1.2.840.10008.5.1.4.1.1.88.50, DICOM PS3.16 TID 4000) of one
//! exam result, built with dicom-object (no Rust crate writes SR; issue 14). The content tree:
//! language (TID 1204); the Image Library (TID 4020: each scored image with its laterality and
//! view); the CAD Processing and Findings Summary (TID 4001) whose body (TID 4002) carries the
//! research-only impression text, the algorithm (TID 4019), the operating threshold and the exam
//! and per-breast probability of cancer (111047, %); one Individual Impression (TID 4003) per
//! image with a Breast composition finding (TID 4006 + TID 4007: BI-RADS category A–D and
//! percent fibroglandular tissue); the Summaries of Detections and Analyses (TID 4015–4018)
//! referencing the library images by reference. Two documented template/IOD conflicts are
//! resolved as DCMTK does: TID 4007 under HAS PROPERTIES (not CONTAINS), TID 4002 only under
//! the summary CODE item. docs/conformance.md has the content table; checked by dciodvfy and
//! dsrdump in tests/it/daemon/dicom.rs. The SR carries the patient module of the source
//! images (a PACS needs it to file the SR): it goes to configured DICOM destinations or an
//! output folder only, never to MQTT or a log. Main items: [`SourceImage`], [`build`].

use std::path::Path;

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};
use serde_json::Value;

use crate::ingest::dicom::header_string;
use thiserror::Error;

/// Mammography CAD SR Storage.
pub const MAMMOGRAPHY_CAD_SR: &str = "1.2.840.10008.5.1.4.1.1.88.50";

/// Why an SR could not be built.
#[derive(Debug, Error)]
pub enum SrError {
    /// A source image's header could not be read or lacks a UID the SR must reference.
    #[error("source image {path}: {reason}")]
    Source { path: String, reason: String },
    /// The results given do not describe one study's scored images.
    #[error("results: {0}")]
    Results(String),
    /// The data set could not be assembled.
    #[error("SR object: {0}")]
    Object(String),
}

/// What the SR needs from one source image's header: its identity, and the patient and study
/// attributes (copied into the SR so that a PACS files it with the study).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceImage {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub study_instance_uid: String,
    /// Patient and General Study attributes, as (tag, VR, text) in the source's values.
    pub patient_study: Vec<(Tag, VR, String)>,
}

/// Patient module and General Study attributes copied from the source (Type 2 unless noted).
const COPIED: &[(Tag, VR)] = &[
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
];

impl SourceImage {
    /// Read the header (up to Pixel Data) of a DICOM file. Errors: `Source` (unreadable, or no
    /// SOP Instance / Series / Study Instance UID).
    pub fn read(path: &Path) -> Result<SourceImage, SrError> {
        let bad = |reason: String| SrError::Source {
            path: path.display().to_string(),
            reason,
        };
        let obj = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(path)
            .map_err(|e| bad(e.to_string()))?;
        let text = |tag| header_string(&obj, tag).unwrap_or_default();
        let need = |tag, name: &str| {
            let v = text(tag);
            if v.is_empty() {
                Err(bad(format!("no {name}")))
            } else {
                Ok(v)
            }
        };
        Ok(SourceImage {
            sop_class_uid: need(tags::SOP_CLASS_UID, "SOPClassUID")?,
            sop_instance_uid: need(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
            series_instance_uid: need(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
            study_instance_uid: need(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?,
            patient_study: COPIED.iter().map(|(t, vr)| (*t, *vr, text(*t))).collect(),
        })
    }

    /// As JSON, for the daemon's state database until the exam's SR is made: the four UIDs and
    /// the copied attributes keyed by tag (`"00100010"`).
    pub fn to_json(&self) -> Value {
        let attrs: serde_json::Map<String, Value> = self
            .patient_study
            .iter()
            .map(|(t, _, v)| {
                (
                    format!("{:04X}{:04X}", t.group(), t.element()),
                    Value::from(v.as_str()),
                )
            })
            .collect();
        serde_json::json!({
            "sop_class_uid": self.sop_class_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "attributes": attrs,
        })
    }

    /// The inverse of [`SourceImage::to_json`]; an attribute missing from `v` is empty.
    /// Errors: `Source` (a UID missing).
    pub fn from_json(v: &Value) -> Result<SourceImage, SrError> {
        let need = |k: &str| {
            v[k].as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| SrError::Source {
                    path: "state database".into(),
                    reason: format!("no {k}"),
                })
        };
        let attr = |t: Tag| {
            v["attributes"][format!("{:04X}{:04X}", t.group(), t.element())]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        Ok(SourceImage {
            sop_class_uid: need("sop_class_uid")?,
            sop_instance_uid: need("sop_instance_uid")?,
            series_instance_uid: need("series_instance_uid")?,
            study_instance_uid: need("study_instance_uid")?,
            patient_study: COPIED.iter().map(|(t, vr)| (*t, *vr, attr(*t))).collect(),
        })
    }
}

/// Identity of the SR object: its series and instance UIDs and when it was made.
#[derive(Debug, Clone)]
pub struct SrIdentity {
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    /// DICOM DA and TM of the content (`20261205`, `135501`).
    pub date: String,
    pub time: String,
    /// Manufacturer's software version (General Equipment).
    pub software_version: String,
}

/// A coded concept (code value, coding scheme designator, code meaning).
type Code = (&'static str, &'static str, &'static str);

const LANGUAGE: Code = ("121049", "DCM", "Language of Content Item and Descendants");
const ENGLISH_US: Code = ("en-US", "RFC5646", "English (United States)");
const REPORT: Code = ("111036", "DCM", "Mammography CAD Report");
const IMAGE_LIBRARY: Code = ("111028", "DCM", "Image Library");
const IMAGE_LATERALITY: Code = ("111027", "DCM", "Image Laterality");
const IMAGE_VIEW: Code = ("111031", "DCM", "Image View");
const LEFT_BREAST: Code = ("80248007", "SCT", "Left breast");
const RIGHT_BREAST: Code = ("73056007", "SCT", "Right breast");
const CRANIO_CAUDAL: Code = ("399162004", "SCT", "cranio-caudal");
const MLO: Code = ("399368009", "SCT", "medio-lateral oblique");
const SUMMARY: Code = ("111017", "DCM", "CAD Processing and Findings Summary");
const WITH_FINDINGS: Code = ("111242", "DCM", "All algorithms succeeded; with findings");
const IMPRESSION_DESCRIPTION: Code = ("111033", "DCM", "Impression Description");
const ALGORITHM_NAME: Code = ("111001", "DCM", "Algorithm Name");
const ALGORITHM_VERSION: Code = ("111003", "DCM", "Algorithm Version");
const ALGORITHM_PARAMETERS: Code = ("111002", "DCM", "Algorithm Parameters");
const PROBABILITY_OF_CANCER: Code = ("111047", "DCM", "Probability of cancer");
const LATERALITY: Code = ("272741003", "SCT", "Laterality");
const CALCULATION_DESCRIPTION: Code = ("112034", "DCM", "Calculation Description");
const INDIVIDUAL_IMPRESSION: Code = ("111034", "DCM", "Individual Impression/Recommendation");
const RENDERING_INTENT: Code = ("111056", "DCM", "Rendering Intent");
const PRESENTATION_REQUIRED: Code = (
    "111150",
    "DCM",
    "Presentation Required: Rendering device is expected to present",
);
const SINGLE_IMAGE_FINDING: Code = ("111059", "DCM", "Single Image Finding");
const BREAST_COMPOSITION: Code = ("129715009", "SCT", "Breast composition");
const PERCENT_FIBROGLANDULAR: Code = ("111046", "DCM", "Percent Fibroglandular Tissue");
const PERCENT: Code = ("%", "UCUM", "Percent");
const SUMMARY_OF_DETECTIONS: Code = ("111064", "DCM", "Summary of Detections");
const SUMMARY_OF_ANALYSES: Code = ("111065", "DCM", "Summary of Analyses");
const SUCCEEDED: Code = ("111222", "DCM", "Succeeded");
const SUCCESSFUL_DETECTIONS: Code = ("111063", "DCM", "Successful Detections");
const SUCCESSFUL_ANALYSES: Code = ("111062", "DCM", "Successful Analyses");
const DETECTION_PERFORMED: Code = ("111022", "DCM", "Detection Performed");
const ANALYSIS_PERFORMED: Code = ("111004", "DCM", "Analysis Performed");
const OVERALL_ANALYSIS: Code = (
    "111234",
    "DCM",
    "Overall Impression/Recommendation Analysis",
);

/// BI-RADS density category → CID 6000 / 6001 code.
fn density_code(category: &str) -> Option<Code> {
    Some(match category {
        "A" => ("129716005", "SCT", "Almost entirely fat"),
        "B" => ("129717001", "SCT", "Scattered fibroglandular densities"),
        "C" => ("129718006", "SCT", "Heterogeneously dense"),
        "D" => ("129719003", "SCT", "Extremely dense"),
        _ => return None,
    })
}

fn code_item(c: Code) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(c.0)),
        DataElement::new(
            tags::CODING_SCHEME_DESIGNATOR,
            VR::SH,
            PrimitiveValue::from(c.1),
        ),
        DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(c.2)),
    ])
}

fn sq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

/// One content item under construction (by value or by reference).
struct Item {
    relationship: Option<&'static str>,
    body: Body,
    children: Vec<Item>,
}

enum Body {
    Container(Code),
    Code(Code, Code),
    Text(Code, String),
    Num(Code, f64, Code),
    Image {
        class: String,
        instance: String,
    },
    /// By-reference: the 1-based positions from the root.
    Reference(Vec<u32>),
}

impl Item {
    fn new(relationship: &'static str, body: Body) -> Item {
        Item {
            relationship: Some(relationship),
            body,
            children: Vec::new(),
        }
    }

    fn with(mut self, children: Vec<Item>) -> Item {
        self.children = children;
        self
    }

    fn encode(&self) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        if let Some(r) = self.relationship {
            o.put(DataElement::new(
                tags::RELATIONSHIP_TYPE,
                VR::CS,
                PrimitiveValue::from(r),
            ));
        }
        let name = |o: &mut InMemDicomObject, c: Code| {
            o.put(sq(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code_item(c)]));
        };
        let vt = |o: &mut InMemDicomObject, v: &str| {
            o.put(DataElement::new(
                tags::VALUE_TYPE,
                VR::CS,
                PrimitiveValue::from(v),
            ));
        };
        match &self.body {
            Body::Container(c) => {
                vt(&mut o, "CONTAINER");
                name(&mut o, *c);
                o.put(DataElement::new(
                    tags::CONTINUITY_OF_CONTENT,
                    VR::CS,
                    PrimitiveValue::from("SEPARATE"),
                ));
            }
            Body::Code(c, v) => {
                vt(&mut o, "CODE");
                name(&mut o, *c);
                o.put(sq(tags::CONCEPT_CODE_SEQUENCE, vec![code_item(*v)]));
            }
            Body::Text(c, t) => {
                vt(&mut o, "TEXT");
                name(&mut o, *c);
                o.put(DataElement::new(
                    tags::TEXT_VALUE,
                    VR::UT,
                    PrimitiveValue::from(t.as_str()),
                ));
            }
            Body::Num(c, v, unit) => {
                vt(&mut o, "NUM");
                name(&mut o, *c);
                let mv = InMemDicomObject::from_element_iter([
                    sq(
                        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
                        vec![code_item(*unit)],
                    ),
                    DataElement::new(
                        tags::NUMERIC_VALUE,
                        VR::DS,
                        PrimitiveValue::from(decimal_string(*v)),
                    ),
                ]);
                o.put(sq(tags::MEASURED_VALUE_SEQUENCE, vec![mv]));
            }
            Body::Image { class, instance } => {
                vt(&mut o, "IMAGE");
                let r = InMemDicomObject::from_element_iter([
                    DataElement::new(
                        tags::REFERENCED_SOP_CLASS_UID,
                        VR::UI,
                        PrimitiveValue::from(class.as_str()),
                    ),
                    DataElement::new(
                        tags::REFERENCED_SOP_INSTANCE_UID,
                        VR::UI,
                        PrimitiveValue::from(instance.as_str()),
                    ),
                ]);
                o.put(sq(tags::REFERENCED_SOP_SEQUENCE, vec![r]));
            }
            Body::Reference(path) => {
                o.put(DataElement::new(
                    tags::REFERENCED_CONTENT_ITEM_IDENTIFIER,
                    VR::UL,
                    PrimitiveValue::U32(path.iter().copied().collect()),
                ));
            }
        }
        if !self.children.is_empty() {
            o.put(sq(
                tags::CONTENT_SEQUENCE,
                self.children.iter().map(Item::encode).collect(),
            ));
        }
        o
    }
}

/// A DS value: at most 16 characters, no exponent for the 0–100 range used here.
fn decimal_string(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    // NumericValue is Type 1: 0 (or a value rounded to it) must not come out empty
    match s {
        "" | "-" | "-0" => "0".into(),
        s => s.chars().take(16).collect(),
    }
}

fn algorithm(name: &str, version: &str) -> Vec<Item> {
    vec![
        Item::new(
            "HAS PROPERTIES",
            Body::Text(ALGORITHM_NAME, name.to_string()),
        ),
        Item::new(
            "HAS PROPERTIES",
            Body::Text(ALGORITHM_VERSION, version.to_string()),
        ),
    ]
}

fn side(l: &str) -> Option<Code> {
    match l {
        "L" => Some(LEFT_BREAST),
        "R" => Some(RIGHT_BREAST),
        _ => None,
    }
}

fn percent(p: f64) -> f64 {
    (p * 100.0).clamp(0.0, 100.0)
}

/// Build the SR of one exam: `images` are the scored source images with their `image`
/// payloads (docs/schemas/image.json), `exam` the study's `exam` payload (exam.json). The
/// SR's content follows the module doc; its header copies the patient and study attributes of
/// the first image. `CompletionFlag` is `PARTIAL` while the exam misses screening views.
/// Errors: `Results` (no image, images of several studies, a payload without the fields
/// used), `Object`.
pub fn build(
    images: &[(SourceImage, Value)],
    exam: &Value,
    id: &SrIdentity,
) -> Result<FileDicomObject<InMemDicomObject>, SrError> {
    let bad = |s: &str| SrError::Results(s.to_string());
    let first = images.first().ok_or_else(|| bad("no scored image"))?;
    let study = &first.0.study_instance_uid;
    if images.iter().any(|(s, _)| &s.study_instance_uid != study) {
        return Err(bad("images of more than one study"));
    }
    let num = |v: &Value, k: &str| v[k].as_f64().ok_or_else(|| bad(&format!("no {k}")));
    let str_of = |v: &Value, k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| bad(&format!("no {k}")))
    };
    let model = &exam["model"];
    let (alg_name, alg_version) = (str_of(model, "name")?, str_of(model, "version")?);
    let intended_use = str_of(model, "intended_use")?;
    let threshold = num(exam, "cancer_threshold")?;

    // ---- 1.2 Image Library: one IMAGE per source, in order (by-reference targets 1.2.k)
    let mut library = Vec::new();
    let mut lines = Vec::new();
    for (src, p) in images {
        let lat = str_of(p, "laterality")?;
        let view = str_of(p, "view")?;
        let mut ctx = Vec::new();
        if let Some(c) = side(&lat) {
            ctx.push(Item::new(
                "HAS ACQ CONTEXT",
                Body::Code(IMAGE_LATERALITY, c),
            ));
        }
        match view.as_str() {
            "CC" => ctx.push(Item::new(
                "HAS ACQ CONTEXT",
                Body::Code(IMAGE_VIEW, CRANIO_CAUDAL),
            )),
            "MLO" => ctx.push(Item::new("HAS ACQ CONTEXT", Body::Code(IMAGE_VIEW, MLO))),
            _ => {}
        }
        library.push(
            Item::new(
                "CONTAINS",
                Body::Image {
                    class: src.sop_class_uid.clone(),
                    instance: src.sop_instance_uid.clone(),
                },
            )
            .with(ctx),
        );
        lines.push(format!(
            "{lat} {view}: probability of cancer {:.1} %, density {} ({:.1} % fibroglandular){}",
            percent(num(p, "cancer_probability")?),
            str_of(p, "density")?,
            num(p, "percent_density")?,
            if p["ood"] == true {
                ", OUT OF DISTRIBUTION (unlike the training images: treat its scores with caution)"
            } else {
                ""
            }
        ));
    }

    // ---- 1.3 CAD Processing and Findings Summary with its TID 4002 body
    let exam_p = percent(num(exam, "cancer_probability")?);
    let flag = exam["cancer_flag"] == true;
    let impression = format!(
        "RESEARCH USE ONLY - NOT FOR CLINICAL USE ({intended_use}). Exam probability of cancer \
         {exam_p:.1} % against the operating threshold {:.1} %: {}. Exam density {} ({:.1} % \
         fibroglandular){}. Per image, in Image Library order: {}.",
        percent(threshold),
        if flag { "at or above" } else { "below" },
        str_of(exam, "density")?,
        num(exam, "percent_density")?,
        if exam["complete"] == true {
            String::new()
        } else {
            format!(
                "; incomplete exam, views missing: {}",
                exam["views_missing"]
                    .as_array()
                    .map(|v| v
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(" "))
                    .unwrap_or_default()
            )
        },
        lines.join("; ")
    );
    let mut body = vec![Item::new(
        "HAS PROPERTIES",
        Body::Text(IMPRESSION_DESCRIPTION, impression),
    )];
    body.extend(algorithm(&alg_name, &alg_version));
    body.push(Item::new(
        "HAS PROPERTIES",
        Body::Text(
            ALGORITHM_PARAMETERS,
            format!(
                "operating threshold (probability of cancer) = {} %",
                decimal_string(percent(threshold))
            ),
        ),
    ));
    body.push(Item::new(
        "HAS PROPERTIES",
        Body::Num(PROBABILITY_OF_CANCER, exam_p, PERCENT),
    ));
    for b in exam["breasts"].as_array().into_iter().flatten() {
        let Some(c) = b["laterality"].as_str().and_then(side) else {
            continue;
        };
        body.push(
            Item::new(
                "HAS PROPERTIES",
                Body::Num(
                    PROBABILITY_OF_CANCER,
                    percent(num(b, "cancer_probability")?),
                    PERCENT,
                ),
            )
            .with(vec![
                Item::new("HAS CONCEPT MOD", Body::Code(LATERALITY, c)),
                Item::new(
                    "INFERRED FROM",
                    Body::Text(
                        CALCULATION_DESCRIPTION,
                        "maximum over the breast's scored CC and MLO images".into(),
                    ),
                ),
            ]),
        );
    }
    // one Individual Impression per image: a Breast composition finding
    for (_, p) in images {
        let category = str_of(p, "density")?;
        let Some(code) = density_code(&category) else {
            return Err(bad("density not A, B, C or D"));
        };
        let mut finding = vec![Item::new(
            "HAS CONCEPT MOD",
            Body::Code(RENDERING_INTENT, PRESENTATION_REQUIRED),
        )];
        finding.extend(algorithm(&alg_name, &alg_version));
        finding.push(Item::new(
            "HAS PROPERTIES",
            Body::Code(BREAST_COMPOSITION, code),
        ));
        finding.push(Item::new(
            "HAS PROPERTIES",
            Body::Num(
                PERCENT_FIBROGLANDULAR,
                num(p, "percent_density")?.clamp(0.0, 100.0),
                PERCENT,
            ),
        ));
        body.push(
            Item::new("INFERRED FROM", Body::Container(INDIVIDUAL_IMPRESSION)).with(vec![
                Item::new(
                    "HAS CONCEPT MOD",
                    Body::Code(RENDERING_INTENT, PRESENTATION_REQUIRED),
                ),
                Item::new(
                    "CONTAINS",
                    Body::Code(SINGLE_IMAGE_FINDING, BREAST_COMPOSITION),
                )
                .with(finding),
            ]),
        );
    }
    let summary = Item::new("CONTAINS", Body::Code(SUMMARY, WITH_FINDINGS)).with(body);

    // ---- 1.4 / 1.5 Summaries of Detections and Analyses, images by reference (1.2.k)
    let refs = || {
        (1..=images.len() as u32)
            .map(|k| Item::new("HAS PROPERTIES", Body::Reference(vec![1, 2, k])))
            .collect::<Vec<_>>()
    };
    let performed = |what: Code, kind: Code| {
        let mut c = algorithm(&alg_name, &alg_version);
        c.extend(refs());
        Item::new("CONTAINS", Body::Code(what, kind)).with(c)
    };
    let detections = Item::new("CONTAINS", Body::Code(SUMMARY_OF_DETECTIONS, SUCCEEDED)).with(
        vec![
            Item::new("INFERRED FROM", Body::Container(SUCCESSFUL_DETECTIONS))
                .with(vec![performed(DETECTION_PERFORMED, BREAST_COMPOSITION)]),
        ],
    );
    let analyses =
        Item::new("CONTAINS", Body::Code(SUMMARY_OF_ANALYSES, SUCCEEDED)).with(vec![Item::new(
            "INFERRED FROM",
            Body::Container(SUCCESSFUL_ANALYSES),
        )
        .with(vec![performed(ANALYSIS_PERFORMED, OVERALL_ANALYSIS)])]);

    let root = Item {
        relationship: None,
        body: Body::Container(REPORT),
        children: vec![
            Item::new("HAS CONCEPT MOD", Body::Code(LANGUAGE, ENGLISH_US)),
            Item::new("CONTAINS", Body::Container(IMAGE_LIBRARY)).with(library),
            summary,
            detections,
            analyses,
        ],
    };

    // ---- header
    let mut o = root.encode();
    let put = |o: &mut InMemDicomObject, tag, vr, v: &str| {
        o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    };
    put(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    put(&mut o, tags::SOP_CLASS_UID, VR::UI, MAMMOGRAPHY_CAD_SR);
    put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &id.sop_instance_uid);
    for (tag, vr, v) in &first.0.patient_study {
        put(&mut o, *tag, *vr, v);
    }
    put(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, study);
    put(&mut o, tags::MODALITY, VR::CS, "SR");
    put(
        &mut o,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &id.series_instance_uid,
    );
    put(&mut o, tags::SERIES_NUMBER, VR::IS, "9901");
    put(
        &mut o,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        "mammo-edge CAD SR - RESEARCH USE ONLY",
    );
    o.put(sq(
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        vec![],
    ));
    put(&mut o, tags::MANUFACTURER, VR::LO, "mammo-edge");
    put(&mut o, tags::MANUFACTURER_MODEL_NAME, VR::LO, "mammo-edge");
    put(
        &mut o,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        &id.software_version,
    );
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    let complete = exam["complete"] == true;
    put(
        &mut o,
        tags::COMPLETION_FLAG,
        VR::CS,
        if complete { "COMPLETE" } else { "PARTIAL" },
    );
    put(&mut o, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put(&mut o, tags::CONTENT_DATE, VR::DA, &id.date);
    put(&mut o, tags::CONTENT_TIME, VR::TM, &id.time);
    o.put(sq(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]));
    o.put(sq(
        tags::CONTENT_TEMPLATE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            DataElement::new(tags::MAPPING_RESOURCE, VR::CS, PrimitiveValue::from("DCMR")),
            DataElement::new(
                tags::TEMPLATE_IDENTIFIER,
                VR::CS,
                PrimitiveValue::from("4000"),
            ),
        ])],
    ));
    // every referenced image, by series (Hierarchical SOP Instance Reference macro)
    let mut series: Vec<(&str, Vec<&SourceImage>)> = Vec::new();
    for (s, _) in images {
        match series
            .iter_mut()
            .find(|(uid, _)| *uid == s.series_instance_uid)
        {
            Some((_, v)) => v.push(s),
            None => series.push((&s.series_instance_uid, vec![s])),
        }
    }
    let series_items = series
        .iter()
        .map(|(uid, members)| {
            InMemDicomObject::from_element_iter([
                DataElement::new(
                    tags::SERIES_INSTANCE_UID,
                    VR::UI,
                    PrimitiveValue::from(*uid),
                ),
                sq(
                    tags::REFERENCED_SOP_SEQUENCE,
                    members
                        .iter()
                        .map(|m| {
                            InMemDicomObject::from_element_iter([
                                DataElement::new(
                                    tags::REFERENCED_SOP_CLASS_UID,
                                    VR::UI,
                                    PrimitiveValue::from(m.sop_class_uid.as_str()),
                                ),
                                DataElement::new(
                                    tags::REFERENCED_SOP_INSTANCE_UID,
                                    VR::UI,
                                    PrimitiveValue::from(m.sop_instance_uid.as_str()),
                                ),
                            ])
                        })
                        .collect(),
                ),
            ])
        })
        .collect();
    o.put(sq(
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::STUDY_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(study.as_str()),
            ),
            sq(tags::REFERENCED_SERIES_SEQUENCE, series_items),
        ])],
    ));
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(MAMMOGRAPHY_CAD_SR)
        .media_storage_sop_instance_uid(id.sop_instance_uid.as_str())
        .transfer_syntax("1.2.840.10008.1.2.1")
        .implementation_class_uid(crate::edge::dicom_scp::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(crate::edge::dicom_scp::IMPLEMENTATION_VERSION)
        .build()
        .map_err(|e| SrError::Object(e.to_string()))?;
    Ok(o.with_exact_meta(meta))
}

/// UIDs of an exam's SR, derived (UUIDv5 under 2.25) from the study, the model's sha256, the
/// exam revision and the SOPInstanceUIDs of the images it reports (in any order): the same
/// exam revision of the same images gives the same SR instance, so a resend is a duplicate a
/// PACS recognises; a new revision, or other images under a revision number used before (a
/// study purged past retention and sent again), is a new instance in the same series.
pub fn identity(
    study_instance_uid: &str,
    model_sha256: &str,
    revision: u64,
    sources: &[&str],
    now: ContentTime,
) -> SrIdentity {
    let uid = |key: String| {
        let u = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes());
        format!("2.25.{}", u.as_u128())
    };
    let mut sources: Vec<&str> = sources.iter().map(|s| s.trim()).collect();
    sources.sort_unstable();
    sources.dedup();
    SrIdentity {
        series_instance_uid: uid(format!(
            "mammo-edge-sr-series/{study_instance_uid}/{model_sha256}"
        )),
        sop_instance_uid: uid(format!(
            "mammo-edge-sr/{study_instance_uid}/{model_sha256}/{revision}/{}",
            sources.join("\\")
        )),
        date: now.date,
        time: now.time,
        software_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// DICOM date (`YYYYMMDD`) and time (`HHMMSS`) of a moment, UTC.
#[derive(Debug, Clone)]
pub struct ContentTime {
    pub date: String,
    pub time: String,
}

impl ContentTime {
    /// The given moment, UTC.
    pub fn at(t: std::time::SystemTime) -> ContentTime {
        // 2026-12-05T13:55:01Z
        let s = humantime::format_rfc3339_seconds(t).to_string();
        ContentTime {
            date: s[0..10].replace('-', ""),
            time: s[11..19].replace(':', ""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decimal_string;

    #[test]
    fn decimal_strings_are_never_empty_and_fit_a_ds() {
        assert_eq!(decimal_string(0.0), "0");
        assert_eq!(decimal_string(1e-7), "0");
        assert_eq!(decimal_string(-0.0), "0");
        assert_eq!(decimal_string(0.5), "0.5");
        assert_eq!(decimal_string(41.25), "41.25");
        assert_eq!(decimal_string(100.0), "100");
    }
}
