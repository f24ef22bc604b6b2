//! Grey-level pipeline cases built in code: VOI LUT Sequence (values, precedence, descriptor rules),
//! Modality LUT Sequence, PresentationLUTShape INVERSE, JP2-wrapped JPEG 2000 fragments.

use dicom_core::value::{DataSetSequence, PixelFragmentSequence, PrimitiveValue};
use dicom_core::{Length, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::{open_file, InMemDicomObject};
use mammo_edge::ingest::dicom::{read_mammogram, IngestOptions, Laterality};
use mammo_edge::synth::{write_object, DicomSpec, LutItem};

use crate::util::*;

fn ramp() -> DicomSpec {
    DicomSpec::mammogram(64, 64, (0..4096u16).collect())
}

fn grey(spec: &DicomSpec) -> Vec<f32> {
    let d = tmp();
    read_any(&write(spec, d.path(), "x.dcm")).image.data
}

#[test]
fn voi_lut_sequence_values_and_precedence_over_windows() {
    let mut spec = ramp();
    // a window that would give a near step at 3000, and a LUT that must win over it
    spec.windows = vec![(3000.0, 10.0)];
    spec.voi_lut_function = Some("SIGMOID".into());
    let data: Vec<u16> = (0..2000u16).map(|i| i * 2).collect();
    spec.voi_luts = vec![
        LutItem {
            first: 1000,
            bits: 12,
            data: data.clone(),
            explanation: "FIRST".into(),
        },
        LutItem {
            first: 0,
            bits: 12,
            data: vec![4095; 10],
            explanation: "SECOND".into(),
        },
    ];
    let g = grey(&spec);
    assert_eq!(g[0], 0.0, "below the first mapped value: first entry");
    assert_eq!(g[999], 0.0);
    for x in [1000usize, 1500, 2500] {
        let want = data[x - 1000] as f32 / 4095.0;
        assert!((g[x] - want).abs() < 1e-6, "x {x}: {} vs {want}", g[x]);
    }
    assert!(
        (g[4095] - 3998.0 / 4095.0).abs() < 1e-6,
        "above the table: last entry"
    );
}

/// Issue 13: a VOI LUT Sequence whose descriptor declares 16 bits per entry while its entries
/// only use 12 (seen in real GE files) is scaled by the bits the entries use, as DCMTK does when
/// it checks the table (dcmimgle's `checkBits`: the depth from the largest entry, 8–16); scaled by
/// 2^16 − 1 the image came out at most 6 % bright.
#[test]
fn a_16_bit_lut_descriptor_with_12_bit_entries_spans_the_full_grey_range() {
    let mut spec = ramp();
    spec.voi_luts = vec![LutItem {
        first: 0,
        bits: 16,
        data: (0..4096u16).collect(),
        explanation: "GE 16/12".into(),
    }];
    let g = grey(&spec);
    assert_eq!(g[0], 0.0);
    assert!((g[4095] - 1.0).abs() < 1e-6, "white end at {}", g[4095]);
    assert!((g[2048] - 2048.0 / 4095.0).abs() < 1e-6, "{}", g[2048]);
    // a table that uses its 16 bits keeps the declared scale
    let mut wide = ramp();
    wide.voi_luts = vec![LutItem {
        first: 0,
        bits: 16,
        data: (0..4096u32).map(|i| (i * 16) as u16).collect(),
        explanation: "full 16".into(),
    }];
    let g = grey(&wide);
    assert!((g[4095] - 65520.0 / 65535.0).abs() < 1e-6, "{}", g[4095]);
}

#[test]
fn lut_descriptor_zero_means_65536_entries() {
    let mut spec = DicomSpec::mammogram(256, 256, (0..=65535u16).collect());
    spec.bits_stored = 16;
    // 65536 entries, written with descriptor value 0 (PS3.3 C.11.2.1.1)
    let data: Vec<u16> = (0..=65535u32).map(|i| (65535 - i) as u16).collect();
    spec.voi_luts = vec![LutItem {
        first: 0,
        bits: 16,
        data,
        explanation: "INV".into(),
    }];
    let g = grey(&spec);
    assert_eq!(g[0], 1.0);
    assert_eq!(g[65535], 0.0);
    assert!((g[32768] - 32767.0 / 65535.0).abs() < 1e-6);
}

#[test]
fn signed_first_mapped_value_after_negative_rescale() {
    let mut spec = ramp();
    spec.rescale = Some((1.0, -2048.0));
    // modality values −2048 … 2047; the LUT starts at −2048 (descriptor US holding 63488)
    let data: Vec<u16> = (0..4096u16).collect();
    spec.voi_luts = vec![LutItem {
        first: (-2048i16) as u16,
        bits: 12,
        data,
        explanation: String::new(),
    }];
    let g = grey(&spec);
    for x in [0usize, 100, 2048, 4095] {
        assert!((g[x] - x as f32 / 4095.0).abs() < 1e-6, "x {x}: {}", g[x]);
    }
}

#[test]
fn modality_lut_sequence_is_applied() {
    let d = tmp();
    let mut spec = ramp();
    spec.windows = vec![(2048.0, 4096.0)];
    spec.voi_lut_function = Some("LINEAR_EXACT".into());
    let mut o = spec.to_object().unwrap();
    let mut item = InMemDicomObject::new_empty();
    item.put(InMemElement::new(
        tags::LUT_DESCRIPTOR,
        VR::US,
        PrimitiveValue::U16([4096u16, 0, 12].into_iter().collect()),
    ));
    item.put(InMemElement::new(
        tags::MODALITY_LUT_TYPE,
        VR::LO,
        PrimitiveValue::from("US"),
    ));
    item.put(InMemElement::new(
        tags::LUT_DATA,
        VR::US,
        PrimitiveValue::U16((0..4096u16).map(|i| 4095 - i).collect()),
    ));
    o.put(InMemElement::new(
        tags::MODALITY_LUT_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(vec![item], Length::UNDEFINED),
    ));
    o.remove_element(tags::RESCALE_SLOPE);
    o.remove_element(tags::RESCALE_INTERCEPT);
    let p = d.path().join("mlut.dcm");
    write_object(&o, &p).unwrap();
    let m = read_any(&p);
    // stored x → modality 4095 − x → window → (4095 − x − 2048) / 4096 + 0.5
    for x in [0usize, 1000, 4095] {
        let want = (4095.0 - x as f32 - 2048.0) / 4096.0 + 0.5;
        assert!(
            (m.image.data[x] - want).abs() < 1e-5,
            "x {x}: {} vs {want}",
            m.image.data[x]
        );
    }
}

#[test]
fn presentation_lut_shape_inverse_inverts_monochrome2() {
    let d = tmp();
    let spec = phantom(120, 100, Laterality::L);
    let plain = read(&write(&spec, d.path(), "a.dcm"));
    let mut o = spec.to_object().unwrap();
    o.put(InMemElement::new(
        tags::PRESENTATION_LUT_SHAPE,
        VR::CS,
        PrimitiveValue::from("INVERSE"),
    ));
    let p = d.path().join("inv.dcm");
    write_object(&o, &p).unwrap();
    let inv = read(&p);
    assert!(inv.grey.inverted);
    for (a, b) in plain.image.data.iter().zip(&inv.image.data) {
        assert!((a + b - 1.0).abs() < 1e-6);
    }
}

#[test]
fn monochrome1_twin_with_an_asymmetric_window() {
    // Inversion after the VOI: M1 stored 4095 − v with centre 4095 − c equals M2 with centre c.
    let d = tmp();
    let mut m2 = phantom(120, 100, Laterality::L);
    m2.windows = vec![(1500.0, 1000.0)];
    m2.voi_lut_function = Some("LINEAR_EXACT".into());
    let mut m1 = m2.clone();
    m1.photometric = "MONOCHROME1".into();
    m1.pixels = m2.pixels.iter().map(|&v| 4095 - v).collect();
    m1.windows = vec![(4095.0 - 1500.0, 1000.0)];
    let a = read(&write(&m2, d.path(), "m2.dcm"));
    let b = read(&write(&m1, d.path(), "m1.dcm"));
    assert!(max_abs_diff(&a, &b) < 1e-6);
    // and it is not the symmetric case: the window saturates the denser breast tissue
    assert!(a.image.data.contains(&1.0));
}

/// Wrap a bare JPEG 2000 codestream in a minimal JP2 file (ISO 15444-1 Annex I: signature, ftyp,
/// jp2h with ihdr + colr, jp2c).
fn jp2_wrap(codestream: &[u8], width: u32, height: u32, bits: u8) -> Vec<u8> {
    let bx = |kind: &[u8; 4], body: &[u8]| {
        let mut v = ((8 + body.len()) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    };
    let mut ihdr = height.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&[0, 1, bits - 1, 7, 0, 0]);
    let colr = [1u8, 0, 0, 0, 0, 0, 17];
    let mut jp2h = bx(b"ihdr", &ihdr);
    jp2h.extend(bx(b"colr", &colr));
    let mut out = vec![0, 0, 0, 12, b'j', b'P', b' ', b' ', 0x0d, 0x0a, 0x87, 0x0a];
    out.extend(bx(b"ftyp", b"jp2 \0\0\0\0jp2 "));
    out.extend(bx(b"jp2h", &jp2h));
    out.extend(bx(b"jp2c", codestream));
    if out.len() % 2 == 1 {
        out.push(0);
    }
    out
}

#[test]
fn jpeg2000_fragment_holding_a_jp2_file_decodes() {
    let d = tmp();
    let spec = phantom(150, 120, Laterality::R);
    let src = write(&spec, d.path(), "src.dcm");
    let j2k = d.path().join("j2k.dcm");
    encode(Codec::J2kLossless, &src, &j2k);
    let mut o = open_file(&j2k).unwrap();
    let frag = o.element(tags::PIXEL_DATA).unwrap().fragments().unwrap()[0].clone();
    assert_eq!(
        &frag[..4],
        &[0xff, 0x4f, 0xff, 0x51],
        "gdcmconv writes a bare codestream"
    );
    let wrapped = jp2_wrap(&frag, 120, 150, 12);
    o.put(InMemElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new(Vec::<u32>::new(), vec![wrapped]),
    ));
    let p = d.path().join("jp2.dcm");
    write_object(&o, &p).unwrap();
    let (a, b) = (read(&src), read(&p));
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    let _ = read_mammogram(&p, &IngestOptions::default()).unwrap();
}
