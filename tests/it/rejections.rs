//! Every rejection reason, each with a file the test builds, and its category (`error` / `skipped`).

use std::path::{Path, PathBuf};

use dicom_core::value::{DataSetSequence, PixelFragmentSequence, PrimitiveValue};
use dicom_core::{Length, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::mem::InMemElement;
use dicom_object::{open_file, DefaultDicomObject, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use mammo_edge::ingest::dicom::{sop, ts, Category, IngestError, IngestOptions, Laterality};
use mammo_edge::synth::write_object;

use crate::util::*;

fn obj() -> DefaultDicomObject {
    phantom(120, 100, Laterality::L).to_object().unwrap()
}

fn save(o: &DefaultDicomObject, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    write_object(o, &p).unwrap();
    p
}

fn put_str(o: &mut DefaultDicomObject, tag: dicom_core::Tag, vr: VR, v: &str) {
    o.put(InMemElement::new(tag, vr, PrimitiveValue::from(v)));
}

fn put_us(o: &mut DefaultDicomObject, tag: dicom_core::Tag, v: u16) {
    o.put(InMemElement::new(tag, VR::US, PrimitiveValue::from(v)));
}

fn assert_reason(e: &IngestError, code: &str, category: Category, text: &str) {
    assert_eq!(e.code(), code, "{e}");
    assert_eq!(e.category(), category, "{e}");
    assert!(
        e.to_string().contains(text),
        "{e:?} should mention {text:?}"
    );
}

/// Re-label a file's transfer syntax without touching its (encapsulated) pixel data.
fn relabel(o: &mut DefaultDicomObject, uid: &str) {
    let ts = TransferSyntaxRegistry
        .get(uid)
        .expect("known transfer syntax");
    o.meta_mut().set_transfer_syntax(ts);
}

#[test]
fn empty_file() {
    let d = tmp();
    let p = d.path().join("empty.dcm");
    std::fs::write(&p, b"").unwrap();
    assert_reason(&reject(&p), "empty", Category::Error, "empty file");
}

#[test]
fn not_dicom() {
    let d = tmp();
    let p = d.path().join("report.txt");
    std::fs::write(&p, "Patient report, not an image\n".repeat(20)).unwrap();
    assert_reason(
        &reject(&p),
        "not_dicom",
        Category::Error,
        "not a DICOM file",
    );
}

#[test]
fn truncated_file() {
    let d = tmp();
    let p = save(&obj(), d.path(), "cut.dcm");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() * 6 / 10]).unwrap();
    assert_reason(&reject(&p), "truncated", Category::Error, "truncated");
}

#[test]
fn no_pixel_data() {
    let d = tmp();
    let mut o = obj();
    o.remove_element(tags::PIXEL_DATA);
    let p = save(&o, d.path(), "nopix.dcm");
    assert_reason(
        &reject(&p),
        "no_pixel_data",
        Category::Error,
        "no pixel data",
    );
}

#[test]
fn wrong_modality() {
    let d = tmp();
    let mut o = obj();
    put_str(&mut o, tags::MODALITY, VR::CS, "CT");
    put_str(
        &mut o,
        tags::SOP_CLASS_UID,
        VR::UI,
        "1.2.840.10008.5.1.4.1.1.2",
    );
    let p = save(&o, d.path(), "ct.dcm");
    assert_reason(
        &reject(&p),
        "not_mammogram",
        Category::Skipped,
        "Modality CT",
    );
}

#[test]
fn modality_absent_but_mammography_sop_class_is_accepted() {
    let d = tmp();
    let mut o = obj();
    o.remove_element(tags::MODALITY);
    let p = save(&o, d.path(), "nomod.dcm");
    assert_eq!(read(&p).meta.modality, None);
}

#[test]
fn multi_frame() {
    let d = tmp();
    let mut o = obj();
    put_str(&mut o, tags::NUMBER_OF_FRAMES, VR::IS, "2");
    let px: Vec<u16> = vec![100; 2 * 120 * 100];
    o.put(InMemElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(px.into()),
    ));
    let p = save(&o, d.path(), "frames.dcm");
    assert_reason(&reject(&p), "multi_frame", Category::Skipped, "2 frames");
}

#[test]
fn breast_tomosynthesis() {
    let d = tmp();
    let mut o = obj();
    put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, sop::BREAST_TOMO);
    let p = save(&o, d.path(), "dbt.dcm");
    assert_reason(
        &reject(&p),
        "tomosynthesis",
        Category::Skipped,
        "tomosynthesis",
    );
}

#[test]
fn for_processing_is_skipped_by_default_and_accepted_by_config() {
    let d = tmp();
    let mut o = obj();
    put_str(
        &mut o,
        tags::PRESENTATION_INTENT_TYPE,
        VR::CS,
        "FOR PROCESSING",
    );
    put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, sop::MG_PROCESSING);
    let p = save(&o, d.path(), "raw.dcm");
    assert_reason(
        &reject(&p),
        "for_processing",
        Category::Skipped,
        "For Processing",
    );
    let opts = IngestOptions {
        accept_for_processing: true,
        ..Default::default()
    };
    let m = mammo_edge::ingest::dicom::read_mammogram(&p, &opts).unwrap();
    assert!(m.grey.voi.contains("percentiles"), "{}", m.grey.voi);
    let s = m.image.stats();
    assert!(s.min >= 0.0 && s.max <= 1.0 && s.max > 0.9, "{s:?}");
}

#[test]
fn non_screening_views() {
    let d = tmp();
    let mut o = obj();
    o.remove_element(tags::VIEW_CODE_SEQUENCE);
    put_str(&mut o, tags::VIEW_POSITION, VR::CS, "ML");
    let p = save(&o, d.path(), "ml.dcm");
    assert_reason(&reject(&p), "not_screening_view", Category::Skipped, "ML");

    o.remove_element(tags::VIEW_POSITION);
    let p = save(&o, d.path(), "noview.dcm");
    assert_reason(
        &reject(&p),
        "not_screening_view",
        Category::Skipped,
        "unknown",
    );

    // CC with a spot-compression modifier (PS3.16 CID 4015, SRT R-102D7)
    let mut o = obj();
    let mut item = InMemDicomObject::new_empty();
    item.put(InMemElement::new(
        tags::CODE_VALUE,
        VR::SH,
        PrimitiveValue::from("399162004"),
    ));
    item.put(InMemElement::new(
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        PrimitiveValue::from("SCT"),
    ));
    let mut modifier = InMemDicomObject::new_empty();
    modifier.put(InMemElement::new(
        tags::CODE_VALUE,
        VR::SH,
        PrimitiveValue::from("R-102D7"),
    ));
    modifier.put(InMemElement::new(
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        PrimitiveValue::from("SRT"),
    ));
    item.put(InMemElement::new(
        tags::VIEW_MODIFIER_CODE_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(vec![modifier], Length::UNDEFINED),
    ));
    o.put(InMemElement::new(
        tags::VIEW_CODE_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(vec![item], Length::UNDEFINED),
    ));
    let p = save(&o, d.path(), "spot.dcm");
    assert_reason(
        &reject(&p),
        "work_up_view",
        Category::Skipped,
        "SpotCompression",
    );
}

/// ImageLaterality B (both breasts in one image) is refused with its own reason, also when only
/// Laterality says B; `inspect --any` still decodes it.
#[test]
fn both_breasts_in_one_image() {
    let d = tmp();
    let mut o = obj();
    put_str(&mut o, tags::IMAGE_LATERALITY, VR::CS, "B");
    let p = save(&o, d.path(), "both.dcm");
    assert_reason(
        &reject(&p),
        "both_breasts",
        Category::Skipped,
        "both breasts",
    );
    assert!(read_any(&p).meta.both_breasts);
    let mut o = obj();
    o.remove_element(tags::IMAGE_LATERALITY);
    put_str(&mut o, tags::LATERALITY, VR::CS, "B ");
    let p = save(&o, d.path(), "series_both.dcm");
    assert_reason(
        &reject(&p),
        "both_breasts",
        Category::Skipped,
        "ImageLaterality B",
    );
    // a left breast stays accepted
    let p = save(&obj(), d.path(), "left.dcm");
    assert!(!read(&p).meta.both_breasts);
}

/// Results are keyed by SOPInstanceUID and exams by StudyInstanceUID: an image without either (or
/// with a blank one) is an `error` (review of 3168c40, #9), not a result that swallows the next
/// image as a duplicate or merges patients into one exam; inspection still decodes it.
#[test]
fn absent_or_blank_uids() {
    let d = tmp();
    for (tag, name, value) in [
        (tags::SOP_INSTANCE_UID, "SOPInstanceUID", None),
        (tags::SOP_INSTANCE_UID, "SOPInstanceUID", Some(" ")),
        (tags::STUDY_INSTANCE_UID, "StudyInstanceUID", None),
        (tags::STUDY_INSTANCE_UID, "StudyInstanceUID", Some("")),
    ] {
        let mut o = obj();
        match value {
            None => {
                o.remove_element(tag);
            }
            Some(v) => put_str(&mut o, tag, VR::UI, v),
        }
        let file = format!("{name}-{}.dcm", value.map_or(0, |v| v.len() + 1));
        let p = save(&o, d.path(), &file);
        assert_reason(&reject(&p), "missing_attribute", Category::Error, name);
        assert_eq!(
            read_any(&p).image.width,
            100,
            "{file}: inspection decodes it"
        );
    }
}

fn header(p: &Path) -> mammo_edge::ingest::dicom::MammoMeta {
    let o = mammo_edge::ingest::dicom::open_header(p).unwrap();
    mammo_edge::ingest::dicom::MammoMeta::from_object(&o).unwrap()
}

/// Review #1 (issue 13): a UID longer than UI's 64 bytes is refused as an inconsistent header
/// (it would otherwise be published and stored as is), and a string past its VR's length is
/// cut to 64 characters with its control characters removed before anything quotes it.
#[test]
fn oversized_uids_are_refused_and_long_strings_bounded() {
    let d = tmp();
    let long_uid = format!("1.2.826.0.1.3680043.9.{}", "7".repeat(300));
    for (tag, name) in [
        (tags::SOP_INSTANCE_UID, "SOPInstanceUID"),
        (tags::STUDY_INSTANCE_UID, "StudyInstanceUID"),
        (tags::SERIES_INSTANCE_UID, "SeriesInstanceUID"),
    ] {
        let mut o = obj();
        put_str(&mut o, tag, VR::UI, &long_uid);
        let p = save(&o, d.path(), &format!("{name}.dcm"));
        let e = reject(&p);
        assert_reason(&e, "inconsistent_header", Category::Error, name);
        assert!(e.to_string().len() < 200, "{e}");
        let meta = header(&p);
        assert!(meta.sop_instance_uid.len() <= 64 && meta.study_instance_uid.len() <= 64);
    }
    let mut o = obj();
    put_str(
        &mut o,
        tags::MANUFACTURER,
        VR::LO,
        &"\u{1}GE ".repeat(15_000),
    );
    put_str(
        &mut o,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        &"x".repeat(5_000),
    );
    let p = save(&o, d.path(), "long-strings.dcm");
    let meta = header(&p);
    assert_eq!(
        meta.manufacturer.chars().count(),
        64,
        "{:?}",
        meta.manufacturer
    );
    assert!(!meta.manufacturer.chars().any(char::is_control));
    assert!(meta.manufacturer.starts_with("GE GE"));
    assert_eq!(meta.model_name.chars().count(), 64);
}

#[test]
fn colour_image() {
    let d = tmp();
    let mut o = obj();
    put_us(&mut o, tags::SAMPLES_PER_PIXEL, 3);
    put_us(&mut o, tags::PLANAR_CONFIGURATION, 0);
    put_us(&mut o, tags::BITS_ALLOCATED, 8);
    put_us(&mut o, tags::BITS_STORED, 8);
    put_us(&mut o, tags::HIGH_BIT, 7);
    put_str(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
    o.put(InMemElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(vec![7u8; 3 * 120 * 100]),
    ));
    let p = save(&o, d.path(), "rgb.dcm");
    assert_reason(&reject(&p), "colour", Category::Skipped, "RGB");
}

#[test]
fn unsupported_transfer_syntax() {
    let d = tmp();
    let mut o = obj();
    o.put(InMemElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new(Vec::<u32>::new(), vec![vec![0u8, 0, 1, 0xb3, 1, 2, 3, 4]]),
    ));
    relabel(&mut o, "1.2.840.10008.1.2.4.100"); // MPEG2 Main Profile
    let p = save(&o, d.path(), "mpeg2.dcm");
    assert_reason(
        &reject(&p),
        "unsupported_transfer_syntax",
        Category::Error,
        "1.2.840.10008.1.2.4.100",
    );
}

#[test]
fn lossy_12bit_jpeg_is_rejected_with_that_reason() {
    let d = tmp();
    let src = save(&obj(), d.path(), "src.dcm");
    let dst = d.path().join("jpeg12.dcm");
    encode(Codec::JpegExtended12, &src, &dst);
    let e = reject(&dst);
    assert_reason(
        &e,
        "lossy_jpeg_12bit",
        Category::Error,
        "12-bit lossy JPEG (process 4)",
    );
}

#[test]
fn over_pixel_budget() {
    let d = tmp();
    let p = save(&obj(), d.path(), "big.dcm");
    let opts = IngestOptions {
        max_pixel_bytes: 10_000,
        ..Default::default()
    };
    assert_reason(
        &reject_with(&p, &opts),
        "over_pixel_budget",
        Category::Error,
        "pixel budget",
    );
}

#[test]
fn pixel_data_length_mismatch() {
    let d = tmp();
    let mut o = obj();
    put_us(&mut o, tags::ROWS, 240);
    let p = save(&o, d.path(), "short.dcm");
    assert_reason(
        &reject(&p),
        "inconsistent_header",
        Category::Error,
        "pixel data length mismatch",
    );
}

#[test]
fn pixel_representation_out_of_range() {
    let d = tmp();
    let mut o = obj();
    put_us(&mut o, tags::PIXEL_REPRESENTATION, 2);
    let p = save(&o, d.path(), "pr2.dcm");
    assert_reason(
        &reject(&p),
        "inconsistent_header",
        Category::Error,
        "PixelRepresentation 2",
    );
}

#[test]
fn jpeg_lossless_header_around_a_jpeg2000_image() {
    let d = tmp();
    let src = save(&obj(), d.path(), "src.dcm");
    let j2k = d.path().join("j2k.dcm");
    encode(Codec::J2kLossless, &src, &j2k);
    let mut o = open_file(&j2k).unwrap();
    relabel(&mut o, ts::JPEG_LOSSLESS_SV1);
    let p = save(&o, d.path(), "mislabelled.dcm");
    assert_reason(
        &reject(&p),
        "inconsistent_header",
        Category::Error,
        "first fragment is JPEG 2000",
    );
}

#[test]
fn codestream_size_disagrees_with_rows_columns() {
    let d = tmp();
    let src = save(&obj(), d.path(), "src.dcm");
    let j2k = d.path().join("j2k.dcm");
    encode(Codec::J2kLossless, &src, &j2k);
    let mut o = open_file(&j2k).unwrap();
    put_us(&mut o, tags::ROWS, 60);
    let p = save(&o, d.path(), "small_rows.dcm");
    assert_reason(
        &reject(&p),
        "inconsistent_header",
        Category::Error,
        "codestream is 100x120",
    );
}

#[test]
fn non_image_object_is_skipped_not_broken() {
    // A Basic Text SR: no Rows, no pixel attributes at all.
    let d = tmp();
    let mut o = obj();
    for t in [
        tags::ROWS,
        tags::COLUMNS,
        tags::BITS_ALLOCATED,
        tags::BITS_STORED,
        tags::HIGH_BIT,
        tags::PIXEL_REPRESENTATION,
        tags::SAMPLES_PER_PIXEL,
        tags::PHOTOMETRIC_INTERPRETATION,
        tags::PIXEL_DATA,
    ] {
        o.remove_element(t);
    }
    put_str(&mut o, tags::MODALITY, VR::CS, "SR");
    put_str(
        &mut o,
        tags::SOP_CLASS_UID,
        VR::UI,
        "1.2.840.10008.5.1.4.1.1.88.11",
    );
    let p = save(&o, d.path(), "sr.dcm");
    assert_reason(
        &reject(&p),
        "not_mammogram",
        Category::Skipped,
        "Modality SR",
    );
}

#[test]
fn mammogram_without_rows_or_with_zero_rows() {
    let d = tmp();
    let mut o = obj();
    o.remove_element(tags::ROWS);
    let p = save(&o, d.path(), "norows.dcm");
    assert_reason(&reject(&p), "missing_attribute", Category::Error, "Rows");
    put_us(&mut o, tags::ROWS, 0);
    let p = save(&o, d.path(), "zerorows.dcm");
    assert_reason(&reject(&p), "missing_attribute", Category::Error, "Rows");
}

#[test]
fn bits_allocated_32_is_an_unsupported_pixel_format() {
    let d = tmp();
    let mut o = obj();
    put_us(&mut o, tags::BITS_ALLOCATED, 32);
    let px: Vec<u16> = vec![100; 2 * 120 * 100];
    o.put(InMemElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(px.into()),
    ));
    let p = save(&o, d.path(), "ba32.dcm");
    assert_reason(
        &reject(&p),
        "unsupported_pixel_format",
        Category::Error,
        "BitsAllocated 32",
    );
}

#[test]
fn file_over_the_size_limit() {
    let d = tmp();
    let p = save(&obj(), d.path(), "big.dcm");
    let opts = IngestOptions {
        max_file_bytes: 1000,
        ..Default::default()
    };
    assert_reason(
        &reject_with(&p, &opts),
        "file_too_large",
        Category::Error,
        "exceeds the limit",
    );
}

#[test]
fn corrupt_jpeg2000_codestream_is_undecodable_not_a_crash() {
    let d = tmp();
    let src = save(&obj(), d.path(), "src.dcm");
    let j2k = d.path().join("j2k.dcm");
    encode(Codec::J2kLossless, &src, &j2k);
    let mut o = open_file(&j2k).unwrap();
    let mut frag = o.element(tags::PIXEL_DATA).unwrap().fragments().unwrap()[0].clone();
    // keep the main header (SIZ says 100x120), destroy the tile data
    let keep = 120.min(frag.len());
    let n = frag.len();
    frag.truncate(keep);
    frag.resize(n, 0x5a);
    o.put(InMemElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new(Vec::<u32>::new(), vec![frag]),
    ));
    let p = save(&o, d.path(), "corrupt.dcm");
    assert_reason(&reject(&p), "undecodable", Category::Error, "undecodable");
}

#[test]
fn twelve_bit_extended_jpeg_under_a_baseline_label_is_found_in_the_codestream() {
    let d = tmp();
    let src = save(&obj(), d.path(), "src.dcm");
    let jpeg = d.path().join("jpeg12.dcm");
    encode(Codec::JpegExtended12, &src, &jpeg);
    let mut o = open_file(&jpeg).unwrap();
    relabel(&mut o, ts::JPEG_BASELINE);
    put_us(&mut o, tags::BITS_STORED, 8);
    put_us(&mut o, tags::HIGH_BIT, 7);
    let p = save(&o, d.path(), "mislabelled.dcm");
    assert_reason(
        &reject(&p),
        "lossy_jpeg_12bit",
        Category::Error,
        "12-bit lossy JPEG (process 4)",
    );
}

/// PackBits runs of `n` zero bytes (128 at a time).
fn packbits_zeros(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while n > 0 {
        let k = n.min(128);
        out.extend([(1i16 - k as i16) as i8 as u8, 0]);
        n -= k;
    }
    out
}

/// Found by fuzzing (a mutated RLE file): a segment that expands to fewer bytes than Rows x
/// Columns made dicom-rs's RLE decoder index past it, a panic the decoder guard caught and
/// reported as one. The segment lengths are now checked first and named.
#[test]
fn rle_segment_shorter_than_the_image_is_undecodable_before_decoding() {
    let d = tmp();
    let mut o = obj();
    let pixels = 120 * 100;
    let (msb, lsb) = (packbits_zeros(pixels), packbits_zeros(100));
    let mut frame = vec![0u8; 64];
    frame[..4].copy_from_slice(&2u32.to_le_bytes());
    frame[4..8].copy_from_slice(&64u32.to_le_bytes());
    frame[8..12].copy_from_slice(&(64 + msb.len() as u32).to_le_bytes());
    frame.extend(&msb);
    frame.extend(&lsb);
    o.put(InMemElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new(Vec::<u32>::new(), vec![frame.clone()]),
    ));
    relabel(&mut o, ts::RLE_LOSSLESS);
    let p = save(&o, d.path(), "short-rle.dcm");
    assert_reason(
        &reject(&p),
        "undecodable",
        Category::Error,
        "RLE segment 2 decodes to 100 bytes, Rows x Columns needs 12000",
    );
    // the same frame with a full second segment decodes (a black image)
    let lsb = packbits_zeros(pixels);
    frame.truncate(64 + msb.len());
    frame.extend(&lsb);
    o.put(InMemElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new(Vec::<u32>::new(), vec![frame]),
    ));
    let p = save(&o, d.path(), "full-rle.dcm");
    let opts = IngestOptions::any_image();
    match mammo_edge::ingest::dicom::read_mammogram(&p, &opts) {
        Ok(m) => assert_eq!(m.image.stats().max, m.image.stats().min),
        Err(e) => assert_ne!(e.code(), "undecodable", "{e}"),
    }
}
