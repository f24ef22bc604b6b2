//! DICOM mammogram ingest: one file → [`Mammogram`] (metadata + grey levels in [0, 1]) or an
//! [`IngestError`] whose [`Category`] says whether the file is damaged (`error`) or valid but not for
//! the CNN (`skipped`). Uses dicom-object for parsing and dicom-pixeldata for decompression; the
//! checks before decoding keep memory within [`IngestOptions::max_pixel_bytes`].

pub mod codestream;
pub mod grey;
mod header;
pub mod j2k;
pub mod structure;
pub mod vendor;
pub mod view;

use std::path::Path;
use std::time::Instant;

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use serde::Serialize;
use thiserror::Error;

use codestream::{CodestreamInfo, CodestreamKind};
use grey::{GreyError, GreyImage, GreyPipeline, RangeSource, SampleFormat, Voi};
pub use header::{string as header_string, MammoMeta, PixelSpacing};
pub use vendor::Vendor;
pub use view::{Laterality, View, ViewModifier};

/// SOP Class UIDs (PS3.4 B.5).
pub mod sop {
    /// Digital Mammography X-Ray Image Storage – For Presentation.
    pub const MG_PRESENTATION: &str = "1.2.840.10008.5.1.4.1.1.1.2";
    /// Digital Mammography X-Ray Image Storage – For Processing.
    pub const MG_PROCESSING: &str = "1.2.840.10008.5.1.4.1.1.1.2.1";
    /// Digital X-Ray Image Storage – For Presentation.
    pub const DX_PRESENTATION: &str = "1.2.840.10008.5.1.4.1.1.1.1";
    /// Digital X-Ray Image Storage – For Processing.
    pub const DX_PROCESSING: &str = "1.2.840.10008.5.1.4.1.1.1.1.1";
    /// Computed Radiography Image Storage.
    pub const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
    /// Breast Tomosynthesis Image Storage.
    pub const BREAST_TOMO: &str = "1.2.840.10008.5.1.4.1.1.13.1.3";
    /// Breast Projection X-Ray Image Storage – For Presentation (DBT projections).
    pub const BREAST_PROJECTION_PRESENTATION: &str = "1.2.840.10008.5.1.4.1.1.13.1.4";
    /// Breast Projection X-Ray Image Storage – For Processing.
    pub const BREAST_PROJECTION_PROCESSING: &str = "1.2.840.10008.5.1.4.1.1.13.1.5";
}

/// Transfer syntaxes named in rejections (PS3.5 Annex A).
pub mod ts {
    pub const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
    pub const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";
    pub const JPEG_LOSSLESS: &str = "1.2.840.10008.1.2.4.57";
    pub const JPEG_LOSSLESS_SV1: &str = "1.2.840.10008.1.2.4.70";
    pub const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
    pub const JPEG_LS_NEAR_LOSSLESS: &str = "1.2.840.10008.1.2.4.81";
    pub const JPEG2000_LOSSLESS: &str = "1.2.840.10008.1.2.4.90";
    pub const JPEG2000: &str = "1.2.840.10008.1.2.4.91";
    pub const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
}

/// What the daemon does with a rejected file: `error` (damaged, inconsistent, undecodable → MQTT
/// `error`) or `skipped` (valid DICOM that the CNN does not score → MQTT `skipped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Error,
    Skipped,
}

/// Why a file was not turned into a [`Mammogram`]. Every message is meant for an operator's log.
#[derive(Debug, Error)]
pub enum IngestError {
    /// The OS error is part of the message (not a `source`), so it is printed once.
    #[error("cannot read file: {0}")]
    Io(std::io::Error),
    #[error("empty file")]
    Empty,
    #[error("file of {size} bytes exceeds the limit of {limit} bytes")]
    FileTooLarge { size: u64, limit: u64 },
    #[error("not a DICOM file: {detail}")]
    NotDicom { detail: String },
    #[error("truncated DICOM file: {detail}")]
    Truncated { detail: String },
    #[error("damaged DICOM file: {detail}")]
    Damaged { detail: String },
    #[error("missing attribute {0}")]
    MissingAttribute(&'static str),
    #[error("no pixel data")]
    NoPixelData,
    #[error("multi-frame image ({frames} frames): tomosynthesis and cine are not scored")]
    MultiFrame { frames: u32 },
    #[error("breast tomosynthesis / projection set (SOP class {sop_class}) is not scored")]
    Tomosynthesis { sop_class: String },
    #[error("colour image ({photometric}, {samples} samples per pixel) is not a mammogram")]
    Colour { photometric: String, samples: u16 },
    #[error("not a mammogram: Modality {modality}, SOP class {sop_class}")]
    NotMammogram { modality: String, sop_class: String },
    #[error("For Processing image (raw detector data) is not scored; set ingest.allow_for_processing (daemon) or --accept-for-processing to score it")]
    ForProcessing,
    #[error("not a screening view: {view} (only CC and MLO are scored)")]
    NotScreeningView { view: String },
    #[error("not a screening view: {0:?} view modifier")]
    WorkUpView(ViewModifier),
    #[error("ImageLaterality B: both breasts in one image are not scored (the model scores one breast per image)")]
    BothBreasts,
    #[error("unsupported transfer syntax {uid} ({name})")]
    UnsupportedTransferSyntax { uid: String, name: String },
    #[error("12-bit lossy JPEG (process 4) is not decodable: no well-kept decoder (transfer syntax 1.2.840.10008.1.2.4.51)")]
    LossyJpeg12Bit,
    #[error("image of {bytes} bytes ({rows}x{columns}x{frames}, {bits_allocated} bits) exceeds the pixel budget of {limit} bytes")]
    OverPixelBudget {
        bytes: u64,
        rows: u32,
        columns: u32,
        frames: u32,
        bits_allocated: u16,
        limit: u64,
    },
    #[error("deflated data set declares or inflates to more than {limit} bytes (max_pixel_bytes + 16 MiB); refused before inflating it")]
    InflateBudget { limit: u64 },
    #[error("inconsistent header: {0}")]
    Inconsistent(String),
    #[error("undecodable pixel data: {0}")]
    Undecodable(String),
    #[error(transparent)]
    Grey(#[from] GreyError),
}

impl From<std::io::Error> for IngestError {
    fn from(e: std::io::Error) -> Self {
        IngestError::Io(e)
    }
}

impl IngestError {
    /// `error` for damaged input, `skipped` for valid input the CNN does not score.
    pub fn category(&self) -> Category {
        use IngestError::*;
        match self {
            MultiFrame { .. }
            | Tomosynthesis { .. }
            | Colour { .. }
            | NotMammogram { .. }
            | ForProcessing
            | NotScreeningView { .. }
            | WorkUpView(_)
            | BothBreasts => Category::Skipped,
            _ => Category::Error,
        }
    }

    /// A short stable machine code for the reason (`truncated`, `not_mammogram` …), for MQTT and metrics.
    pub fn code(&self) -> &'static str {
        use IngestError::*;
        match self {
            Io(_) => "io",
            Empty => "empty",
            FileTooLarge { .. } => "file_too_large",
            NotDicom { .. } => "not_dicom",
            Truncated { .. } => "truncated",
            Damaged { .. } => "damaged",
            MissingAttribute(_) => "missing_attribute",
            NoPixelData => "no_pixel_data",
            MultiFrame { .. } => "multi_frame",
            Tomosynthesis { .. } => "tomosynthesis",
            Colour { .. } => "colour",
            NotMammogram { .. } => "not_mammogram",
            ForProcessing => "for_processing",
            NotScreeningView { .. } => "not_screening_view",
            WorkUpView(_) => "work_up_view",
            BothBreasts => "both_breasts",
            UnsupportedTransferSyntax { .. } => "unsupported_transfer_syntax",
            LossyJpeg12Bit => "lossy_jpeg_12bit",
            OverPixelBudget { .. } | InflateBudget { .. } => "over_pixel_budget",
            Inconsistent(_) => "inconsistent_header",
            Undecodable(_) => "undecodable",
            Grey(GreyError::PixelDataTooShort { .. } | GreyError::BadLut { .. }) => {
                "inconsistent_header"
            }
            Grey(_) => "unsupported_pixel_format",
        }
    }
}

/// What the reader accepts. Defaults suit a screening appliance.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestOptions {
    /// Largest decoded image accepted: Rows × Columns × frames × samples × BitsAllocated / 8, in bytes.
    /// Default 128 MiB (a 5355 × 4915 16-bit mammogram is 50 MiB).
    pub max_pixel_bytes: u64,
    /// Largest file read, in bytes (default 512 MiB).
    pub max_file_bytes: u64,
    /// Modalities scored besides a mammography SOP class; `"*"` accepts any (inspection, tests).
    /// Default `["MG"]`.
    pub accept_modalities: Vec<String>,
    /// Score For Processing images with a 0.5–99.5 percentile window (default false: skipped).
    pub accept_for_processing: bool,
    /// Accept views other than CC/MLO (default false: skipped as not a screening view).
    pub accept_any_view: bool,
    /// Refuse an image whose SOPInstanceUID or StudyInstanceUID is absent or blank
    /// (`missing_attribute`): results are keyed by the first and exams by the second, so one such
    /// image would swallow the next as a duplicate, or merge patients into one exam. Default
    /// true; false only for inspection ([`IngestOptions::any_image`]). Not a configuration key.
    #[serde(skip)]
    pub require_uids: bool,
    /// The resolution JPEG 2000 is decoded at ([`Resolution`]; other transfer syntaxes are
    /// always decoded whole). Default [`Resolution::ForModel`]. Not a configuration key
    /// (`ingest.reduced_decode = false` makes it `Full` in the daemon).
    #[serde(skip)]
    pub resolution: Resolution,
}

/// At which resolution a JPEG 2000 image is decoded ([`j2k`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Resolution {
    /// Every sample (inspection previews, `inspect`'s PNGs).
    Full,
    /// The coarsest wavelet level that keeps at least this many rows and columns.
    AtLeast { rows: usize, columns: usize },
    /// What the model scoring the image needs: the scorer turns it into `AtLeast` four times
    /// the model's input (`PreprocessConfig::decode_at_least`); a reader with no model (the
    /// trainer's cache, `inspect`) decodes in full.
    #[default]
    ForModel,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            max_pixel_bytes: 128 << 20,
            max_file_bytes: 512 << 20,
            accept_modalities: vec!["MG".into()],
            accept_for_processing: false,
            accept_any_view: false,
            require_uids: true,
            resolution: Resolution::ForModel,
        }
    }
}

impl IngestOptions {
    /// Options that decode any single-frame greyscale image whatever its modality or view
    /// (for `inspect --any` and codec tests).
    pub fn any_image() -> Self {
        IngestOptions {
            accept_modalities: vec!["*".into()],
            accept_for_processing: true,
            accept_any_view: true,
            require_uids: false,
            ..Default::default()
        }
    }
}

/// How the grey levels were produced, for logs and `inspect`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GreyReport {
    /// The VOI path taken, e.g. `window 1 of 4: Sigmoid center 1802.31 width 1091.97`.
    pub voi: String,
    /// Whether the output was inverted (MONOCHROME1 or PresentationLUTShape INVERSE).
    pub inverted: bool,
    /// Smallest and largest modality value (after the Modality LUT) present in the image.
    pub modality_min: f64,
    pub modality_max: f64,
    /// Time to decompress, in ms.
    pub decode_ms: f64,
    /// JPEG 2000 resolution reduction the image was decoded at (0 = full resolution): the image
    /// is ⌈Rows / 2^reduce⌉ × ⌈Columns / 2^reduce⌉ ([`IngestOptions::resolution`]).
    pub reduce: u32,
    /// Time for the grey-level pipeline, in ms.
    pub grey_ms: f64,
}

/// A decoded mammogram: metadata plus grey levels in [0, 1] at source resolution (`[Rows, Columns]`),
/// or ⌈Rows / 2^r⌉ × ⌈Columns / 2^r⌉ for JPEG 2000 decoded at reduction r = `grey.reduce`;
/// 0 = background / black after MONOCHROME1 inversion.
#[derive(Debug, Clone)]
pub struct Mammogram {
    pub meta: MammoMeta,
    pub image: GreyImage,
    pub grey: GreyReport,
}

/// Read one file into a [`Mammogram`], or say why not. Never panics on damaged input (decoder
/// panics are caught and reported as [`IngestError::Undecodable`]).
pub fn read_mammogram(path: &Path, opts: &IngestOptions) -> Result<Mammogram, IngestError> {
    read_mammogram_detailed(path, opts).map_err(|(_, e)| e)
}

/// As [`read_mammogram`], but a rejection also returns the metadata when it could be read
/// (so a skipped file can still be reported with its vendor, view and transfer syntax).
///
/// Order: the structural pre-check of the header ([`structure::check`], [`structure::Scope::Header`]:
/// declared lengths within the file or the inflate budget, nesting depth, element count; values
/// are skipped, not read), then the header alone is parsed (up to Pixel Data), the `skipped` rules
/// and the header checks (transfer syntax, pixel budget, file size) run on it, then the
/// pre-check of the whole file, and only then is the whole file read and decoded: an unscorable
/// or oversized file never has its pixel data loaded, no declared length is allocated unchecked,
/// and a file whose Pixel Data is cut short is refused with its header's metadata.
pub fn read_mammogram_detailed(
    path: &Path,
    opts: &IngestOptions,
) -> Result<Mammogram, (Option<Box<MammoMeta>>, IngestError)> {
    let limits = structure::Limits::for_pixel_budget(opts.max_pixel_bytes);
    let header = parse(
        path,
        header_options(),
        Some((&limits, structure::Scope::Header)),
    )
    .map_err(|e| (None, e))?;
    let meta = MammoMeta::from_object(&header).map_err(|e| (None, e))?;
    drop(header);
    let fail = |meta: &MammoMeta, e| (Some(Box::new(meta.clone())), e);
    check_acceptance(&meta, opts).map_err(|e| fail(&meta, e))?;
    check_image_header(&meta, opts).map_err(|e| fail(&meta, e))?;
    let size = std::fs::metadata(path)
        .map_err(|e| fail(&meta, e.into()))?
        .len();
    if size > opts.max_file_bytes {
        return Err(fail(
            &meta,
            IngestError::FileTooLarge {
                size,
                limit: opts.max_file_bytes,
            },
        ));
    }
    // the rest of the file (Pixel Data) is checked before it is parsed: a cut-short or hostile
    // Pixel Data is refused with the header's metadata
    let obj = parse(
        path,
        OpenFileOptions::new(),
        Some((&limits, structure::Scope::Whole)),
    )
    .map_err(|e| fail(&meta, e))?;
    let keep = meta.clone();
    let at_least = match opts.resolution {
        Resolution::AtLeast { rows, columns } => Some((rows, columns)),
        Resolution::Full | Resolution::ForModel => None,
    };
    decode(&obj, meta, at_least).map_err(|e| (Some(Box::new(keep)), e))
}

/// Parse the whole file (header and pixel data) after the structural pre-check
/// ([`structure::check`], default limits). No size or acceptance checks: callers that read
/// untrusted input use [`read_mammogram`].
pub fn open(path: &Path) -> Result<DefaultDicomObject, IngestError> {
    let limits = structure::Limits::for_pixel_budget(IngestOptions::default().max_pixel_bytes);
    parse(
        path,
        OpenFileOptions::new(),
        Some((&limits, structure::Scope::Whole)),
    )
}

/// Parse the file meta group and the data set up to (not including) Pixel Data, after the
/// structural pre-check of that part ([`structure::check`], default limits).
pub fn open_header(path: &Path) -> Result<DefaultDicomObject, IngestError> {
    let limits = structure::Limits::for_pixel_budget(IngestOptions::default().max_pixel_bytes);
    parse(
        path,
        header_options(),
        Some((&limits, structure::Scope::Header)),
    )
}

fn header_options() -> OpenFileOptions {
    OpenFileOptions::new().read_until(tags::PIXEL_DATA)
}

/// Parse with a classification of failures: empty / not DICOM / truncated / damaged; with
/// `limits`, the structural pre-check runs first.
fn parse(
    path: &Path,
    options: OpenFileOptions,
    limits: Option<(&structure::Limits, structure::Scope)>,
) -> Result<DefaultDicomObject, IngestError> {
    let size = std::fs::metadata(path)?.len();
    if size == 0 {
        return Err(IngestError::Empty);
    }
    if let Some((limits, scope)) = limits {
        structure::check(path, limits, scope)?;
    }
    let mut head = [0u8; 132];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let mut n = 0;
        while n < head.len() {
            let k = f.read(&mut head[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    };
    let has_magic = n == 132 && &head[128..132] == b"DICM" || head.starts_with(b"DICM");
    match options.open_file(path) {
        Ok(obj) => Ok(obj),
        Err(e) => {
            let detail = error_chain(&e);
            if !has_magic {
                Err(IngestError::NotDicom {
                    detail: format!("no DICM prefix and no readable file meta group ({detail})"),
                })
            } else if is_eof(&detail) {
                Err(IngestError::Truncated { detail })
            } else {
                Err(IngestError::Damaged { detail })
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn is_eof(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    d.contains("eof") || d.contains("end of file") || d.contains("fill whole buffer")
}

/// Decide whether a parsed file is for the CNN (the `skipped` rules), before any pixel is decoded.
pub fn check_acceptance(meta: &MammoMeta, opts: &IngestOptions) -> Result<(), IngestError> {
    let sop = meta.sop_class_uid.as_str();
    if meta.number_of_frames > 1 {
        return Err(IngestError::MultiFrame {
            frames: meta.number_of_frames,
        });
    }
    if [
        sop::BREAST_TOMO,
        sop::BREAST_PROJECTION_PRESENTATION,
        sop::BREAST_PROJECTION_PROCESSING,
    ]
    .contains(&sop)
    {
        return Err(IngestError::Tomosynthesis {
            sop_class: sop.to_string(),
        });
    }
    let any = opts.accept_modalities.iter().any(|m| m == "*");
    let mammo_sop = sop == sop::MG_PRESENTATION || sop == sop::MG_PROCESSING;
    let xray_sop = mammo_sop || [sop::DX_PRESENTATION, sop::DX_PROCESSING, sop::CR].contains(&sop);
    let accepted = match meta.modality.as_deref() {
        // Modality absent (real Hologic exports): the SOP class alone identifies a mammogram.
        None => mammo_sop || any,
        Some(m) => {
            any || (xray_sop
                && opts
                    .accept_modalities
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(m)))
        }
    };
    if !accepted {
        return Err(IngestError::NotMammogram {
            modality: meta.modality.clone().unwrap_or_else(|| "(absent)".into()),
            sop_class: sop.to_string(),
        });
    }
    let mono = matches!(meta.photometric.as_str(), "MONOCHROME1" | "MONOCHROME2");
    if meta.samples_per_pixel != 1 || (!mono && !meta.photometric.is_empty()) {
        return Err(IngestError::Colour {
            photometric: meta.photometric.clone(),
            samples: meta.samples_per_pixel,
        });
    }
    if meta.is_for_processing() && !opts.accept_for_processing {
        return Err(IngestError::ForProcessing);
    }
    if !opts.accept_any_view {
        if meta.both_breasts {
            return Err(IngestError::BothBreasts);
        }
        if let Some(m) = meta.view_modifiers.first() {
            return Err(IngestError::WorkUpView(*m));
        }
        if !meta.view.is_screening() {
            return Err(IngestError::NotScreeningView {
                view: if meta.view_raw.is_empty() {
                    "unknown (no ViewCodeSequence, no ViewPosition)".into()
                } else {
                    format!("{} ({})", meta.view, meta.view_raw)
                },
            });
        }
    }
    Ok(())
}

/// The transfer syntaxes whose decoders are compiled in (PS3.5 Annex A), by UID: what the
/// C-STORE receiver accepts (`edge::dicom_scp`), and only those.
pub const DECODABLE_TRANSFER_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
    ts::RLE_LOSSLESS,
    ts::JPEG_BASELINE,
    ts::JPEG_EXTENDED,
    ts::JPEG_LOSSLESS,
    ts::JPEG_LOSSLESS_SV1,
    ts::JPEG_LS_LOSSLESS,
    ts::JPEG_LS_NEAR_LOSSLESS,
    ts::JPEG2000_LOSSLESS,
    ts::JPEG2000,
];

/// Whether `uid` is one of [`DECODABLE_TRANSFER_SYNTAXES`].
fn transfer_syntax_supported(uid: &str) -> bool {
    DECODABLE_TRANSFER_SYNTAXES.contains(&uid)
}

/// Checks on the image attributes before any pixel is read: required attributes present, transfer
/// syntax decodable, layout consistent, decoded size within the pixel budget.
pub fn check_image_header(meta: &MammoMeta, opts: &IngestOptions) -> Result<(), IngestError> {
    if meta.photometric.is_empty() {
        return Err(IngestError::MissingAttribute("PhotometricInterpretation"));
    }
    for (v, name) in [
        (meta.rows, "Rows"),
        (meta.columns, "Columns"),
        (meta.bits_allocated as u32, "BitsAllocated"),
    ] {
        if v == 0 {
            return Err(IngestError::MissingAttribute(name));
        }
    }
    if let Some(name) = meta.oversized_uid {
        return Err(IngestError::Inconsistent(format!(
            "{name} is longer than the {} bytes a UID may have",
            header::MAX_UID_BYTES
        )));
    }
    if opts.require_uids {
        for (v, name) in [
            (&meta.sop_instance_uid, "SOPInstanceUID"),
            (&meta.study_instance_uid, "StudyInstanceUID"),
        ] {
            if v.trim().trim_end_matches('\0').is_empty() {
                return Err(IngestError::MissingAttribute(name));
            }
        }
    }
    let ts_uid = meta.transfer_syntax.as_str();
    if ts_uid == ts::JPEG_EXTENDED && meta.bits_stored > 8 {
        return Err(IngestError::LossyJpeg12Bit);
    }
    if !transfer_syntax_supported(ts_uid) {
        return Err(IngestError::UnsupportedTransferSyntax {
            uid: ts_uid.to_string(),
            name: meta.transfer_syntax_name.clone(),
        });
    }
    if meta.pixel_representation > 1 {
        return Err(IngestError::Inconsistent(format!(
            "PixelRepresentation {} (must be 0 or 1)",
            meta.pixel_representation
        )));
    }
    let bytes = decoded_bytes(meta);
    if bytes > opts.max_pixel_bytes {
        return Err(IngestError::OverPixelBudget {
            bytes,
            rows: meta.rows,
            columns: meta.columns,
            frames: meta.number_of_frames,
            bits_allocated: meta.bits_allocated,
            limit: opts.max_pixel_bytes,
        });
    }
    Ok(())
}

/// Rows × Columns × frames × samples × ⌈BitsAllocated / 8⌉, saturating (never overflows).
fn decoded_bytes(meta: &MammoMeta) -> u64 {
    [
        meta.rows as u64,
        meta.columns as u64,
        meta.number_of_frames.max(1) as u64,
        meta.samples_per_pixel as u64,
        (meta.bits_allocated as u64).div_ceil(8),
    ]
    .iter()
    .fold(1u64, |acc, &v| acc.saturating_mul(v))
}

/// Checks on the pixel data itself, before decoding: present, native length, codestream vs header.
fn check_pixel_data(obj: &DefaultDicomObject, meta: &MammoMeta) -> Result<(), IngestError> {
    let bytes = decoded_bytes(meta);
    let px = obj
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .ok_or(IngestError::NoPixelData)?;
    if let Some(fragments) = px.fragments() {
        let first = fragments.first().ok_or(IngestError::NoPixelData)?;
        check_codestream(first, meta)?;
    } else {
        let actual = px
            .value()
            .primitive()
            .map(|p| p.calculate_byte_len())
            .unwrap_or(0) as u64;
        if actual == 0 {
            return Err(IngestError::NoPixelData);
        }
        if actual < bytes {
            return Err(IngestError::Inconsistent(format!(
                "pixel data length mismatch: {rows}x{cols}x{bits} bits needs {bytes} bytes, Pixel Data has {actual}",
                rows = meta.rows,
                cols = meta.columns,
                bits = meta.bits_allocated
            )));
        }
    }
    Ok(())
}

fn check_codestream(fragment: &[u8], meta: &MammoMeta) -> Result<(), IngestError> {
    if meta.transfer_syntax == ts::RLE_LOSSLESS {
        return check_rle(fragment, meta);
    }
    let expected_kind = match meta.transfer_syntax.as_str() {
        ts::JPEG_BASELINE | ts::JPEG_EXTENDED | ts::JPEG_LOSSLESS | ts::JPEG_LOSSLESS_SV1 => "JPEG",
        ts::JPEG_LS_LOSSLESS | ts::JPEG_LS_NEAR_LOSSLESS => "JPEG-LS",
        ts::JPEG2000_LOSSLESS | ts::JPEG2000 => "JPEG 2000",
        _ => return Ok(()),
    };
    let kind = codestream::sniff_kind(fragment);
    let found = match kind {
        CodestreamKind::Jpeg { .. } => "JPEG",
        CodestreamKind::JpegLs => "JPEG-LS",
        CodestreamKind::Jpeg2000 { .. } => "JPEG 2000",
        CodestreamKind::Unknown => "unrecognised data",
    };
    if found != expected_kind {
        return Err(IngestError::Inconsistent(format!(
            "transfer syntax {} ({}) but the first fragment is {found}",
            meta.transfer_syntax, meta.transfer_syntax_name
        )));
    }
    if let Some(CodestreamInfo {
        width,
        height,
        precision,
        kind,
        ..
    }) = codestream::sniff(fragment)
    {
        if width != meta.columns || height != meta.rows {
            return Err(IngestError::Inconsistent(format!(
                "{found} codestream is {width}x{height} but Columns x Rows is {}x{}",
                meta.columns, meta.rows
            )));
        }
        if kind == (CodestreamKind::Jpeg { sof: 0xc1 }) && precision > 8 {
            return Err(IngestError::LossyJpeg12Bit);
        }
    }
    Ok(())
}

/// An RLE Lossless frame has one segment per byte of each sample, each expanding to at least
/// Rows × Columns bytes (PS3.5 G.2); dicom-rs's decoder indexes past a shorter one (a panic
/// found by fuzzing, caught but reported as a panic). `Undecodable` names what is wrong.
fn check_rle(fragment: &[u8], meta: &MammoMeta) -> Result<(), IngestError> {
    let lengths = codestream::rle_segment_lengths(fragment).ok_or_else(|| {
        IngestError::Undecodable("RLE header unusable (segment count or offsets)".into())
    })?;
    let needed_segments =
        usize::from(meta.samples_per_pixel) * usize::from(meta.bits_allocated).div_ceil(8);
    if lengths.len() < needed_segments {
        return Err(IngestError::Undecodable(format!(
            "RLE frame has {} segments, {needed_segments} needed",
            lengths.len()
        )));
    }
    let pixels = meta.rows as usize * meta.columns as usize;
    if let Some((k, n)) = lengths
        .iter()
        .take(needed_segments)
        .enumerate()
        .find(|(_, n)| **n < pixels)
    {
        return Err(IngestError::Undecodable(format!(
            "RLE segment {} decodes to {n} bytes, Rows x Columns needs {pixels}",
            k + 1
        )));
    }
    Ok(())
}

/// The decoded samples of the (single) frame as little-endian bytes of `BitsAllocated`: JPEG-LS
/// through pure_jpegls (pure Rust, so the appliance builds without CharLS's cmake), everything
/// else through dicom-pixeldata.
fn decode_pixels<'a>(
    obj: &'a DefaultDicomObject,
    meta: &MammoMeta,
    at_least: Option<(usize, usize)>,
) -> Result<Decoded<'a>, IngestError> {
    match meta.transfer_syntax.as_str() {
        ts::JPEG_LS_LOSSLESS | ts::JPEG_LS_NEAR_LOSSLESS => {
            decode_jpeg_ls(obj, meta).map(Decoded::Samples)
        }
        ts::JPEG2000_LOSSLESS | ts::JPEG2000 if at_least.is_some() => {
            match decode_jpeg2000_reduced(obj, meta, at_least.unwrap_or_default()) {
                Some(Ok(r)) => Ok(Decoded::Reduced(r)),
                Some(Err(e)) => {
                    log::debug!("{e}; decoding at full resolution");
                    decode_pixels(obj, meta, None)
                }
                None => decode_pixels(obj, meta, None),
            }
        }
        _ => obj
            .decode_pixel_data()
            .map(Decoded::Pixeldata)
            .map_err(|e| IngestError::Undecodable(error_chain(&e))),
    }
}

/// Decoded pixel data from either decoder.
enum Decoded<'a> {
    Pixeldata(dicom_pixeldata::DecodedPixelData<'a>),
    Samples(Vec<u8>),
    Reduced(j2k::Reduced),
}

impl Decoded<'_> {
    /// (columns, rows, reduction) of the samples.
    fn size(&self, meta: &MammoMeta) -> (usize, usize, u32) {
        match self {
            Decoded::Reduced(r) => (r.width, r.height, r.reduce),
            _ => (meta.columns as usize, meta.rows as usize, 0),
        }
    }
}

/// The frame's JPEG 2000 codestream (its fragments joined) decoded at the coarsest level that
/// keeps `at_least` samples ([`j2k::plan`]); `None` when that is full resolution.
fn decode_jpeg2000_reduced(
    obj: &DefaultDicomObject,
    meta: &MammoMeta,
    at_least: (usize, usize),
) -> Option<Result<j2k::Reduced, IngestError>> {
    let px = obj.element_opt(tags::PIXEL_DATA).ok().flatten()?;
    let fragments = px.fragments()?;
    let first = fragments.first()?;
    let reduce = j2k::plan(first, meta, at_least);
    if reduce == 0 {
        return None;
    }
    // one fragment (the usual case) is the codestream itself; several are joined
    let stream: std::borrow::Cow<[u8]> = if fragments.len() == 1 {
        std::borrow::Cow::Borrowed(first)
    } else {
        std::borrow::Cow::Owned(fragments.iter().flat_map(|f| f.iter().copied()).collect())
    };
    Some(j2k::decode_reduced(&stream, meta, reduce))
}

impl std::ops::Deref for Decoded<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Decoded::Pixeldata(d) => d.data(),
            Decoded::Samples(v) => v,
            Decoded::Reduced(r) => &r.bytes,
        }
    }
}

/// JPEG-LS (ITU-T T.87) of one single-component frame: the fragments joined into one
/// codestream and decoded at the header's Columns × Rows (the decoder checks them against its
/// SOF55 marker), samples written as `BitsAllocated` little-endian words.
fn decode_jpeg_ls(obj: &DefaultDicomObject, meta: &MammoMeta) -> Result<Vec<u8>, IngestError> {
    let fragments = obj
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .and_then(|px| px.fragments())
        .ok_or_else(|| {
            IngestError::Inconsistent(
                "JPEG-LS transfer syntax without encapsulated pixel data".into(),
            )
        })?;
    let stream: Vec<u8> = fragments.iter().flat_map(|f| f.iter().copied()).collect();
    let stream = without_fill_before_eoi(stream);
    let (samples, w, h) = jpegls::decode(&stream, meta.columns, meta.rows)
        .map_err(|e| IngestError::Undecodable(format!("JPEG-LS: {e}")))?;
    if (w, h) != (meta.columns, meta.rows) || samples.len() < w as usize * h as usize {
        return Err(IngestError::Inconsistent(format!(
            "JPEG-LS codestream is {w}x{h} but Columns x Rows is {}x{}",
            meta.columns, meta.rows
        )));
    }
    let bytes: Vec<u8> = if meta.bits_allocated == 8 {
        samples.iter().map(|&v| v as u8).collect()
    } else {
        samples.iter().flat_map(|v| v.to_le_bytes()).collect()
    };
    Ok(bytes)
}

/// The codestream without the fill bytes (0xFF) an encoder may put before its final EOI marker
/// (allowed before any marker, ITU-T T.81 B.1.1.2; CharLS 1.x in DCMTK writes one), and
/// without the even-length padding after it: the decoder expects EOI right after the scan.
fn without_fill_before_eoi(mut s: Vec<u8>) -> Vec<u8> {
    while s.last() == Some(&0) {
        s.pop();
    }
    if s.ends_with(&[0xFF, 0xD9]) {
        let eoi = s.len() - 2;
        let mut start = eoi;
        while start > 0 && s[start - 1] == 0xFF {
            start -= 1;
        }
        s.drain(start..eoi);
    }
    s
}

/// Decompress and run the grey-level pipeline.
fn decode(
    obj: &DefaultDicomObject,
    meta: MammoMeta,
    at_least: Option<(usize, usize)>,
) -> Result<Mammogram, IngestError> {
    check_pixel_data(obj, &meta)?;
    let format = SampleFormat {
        bits_allocated: meta.bits_allocated,
        bits_stored: meta.bits_stored,
        high_bit: meta.high_bit,
        signed: meta.pixel_representation == 1,
    };
    format.validate()?;
    let t0 = Instant::now();
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_pixels(obj, &meta, at_least)
    }))
    .map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("decoder panicked");
        IngestError::Undecodable(format!("decoder panicked: {msg}"))
    })??;
    let decode_ms = t0.elapsed().as_secs_f64() * 1e3;
    let data: &[u8] = &decoded;
    let (width, height, reduce) = decoded.size(&meta);
    let n = width * height;
    let expected = n * (meta.bits_allocated as usize / 8);
    if data.len() < expected {
        return Err(IngestError::Inconsistent(format!(
            "decoded pixel data has {} bytes, Rows x Columns needs {expected}",
            data.len()
        )));
    }

    let t1 = Instant::now();
    let modality = header::modality_lut(obj, &meta)?;
    let counts = grey::histogram(&format, data, n)?;
    let (modality_min, modality_max) = grey::modality_range(&format, &modality, &counts);
    let voi = if meta.is_for_processing() {
        let (lo, hi) = grey::modality_percentiles(&format, &modality, &counts, 0.5, 99.5);
        Voi::Range {
            lo,
            hi,
            source: RangeSource::Percentile,
        }
    } else {
        header::voi(obj, modality_min < 0.0)?.unwrap_or(Voi::Range {
            lo: modality_min,
            hi: modality_max,
            source: RangeSource::MinMax,
        })
    };
    let invert = meta.photometric == "MONOCHROME1"
        || meta.presentation_lut_shape.as_deref() == Some("INVERSE");
    log::debug!(
        "{}: VOI {voi}; modality LUT {modality:?}; invert {invert}",
        meta.sop_instance_uid
    );
    let pipeline = GreyPipeline {
        format,
        modality,
        voi,
        invert,
    };
    let image = pipeline.render(data, width, height)?;
    drop(decoded);
    let grey_ms = t1.elapsed().as_secs_f64() * 1e3;
    Ok(Mammogram {
        grey: GreyReport {
            voi: pipeline.voi.to_string(),
            inverted: invert,
            modality_min,
            modality_max,
            decode_ms,
            reduce,
            grey_ms,
        },
        meta,
        image,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn fill_bytes_and_padding_around_the_final_eoi_are_dropped() {
        let f = super::without_fill_before_eoi;
        assert_eq!(
            f(vec![1, 0x7E, 0xFF, 0xFF, 0xD9]),
            vec![1, 0x7E, 0xFF, 0xD9]
        );
        assert_eq!(f(vec![1, 0xFF, 0xFF, 0xFF, 0xD9, 0]), vec![1, 0xFF, 0xD9]);
        assert_eq!(f(vec![1, 2, 0xFF, 0xD9]), vec![1, 2, 0xFF, 0xD9]);
    }
}
