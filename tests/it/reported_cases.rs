//! Cases from public bug reports of DICOM viewers and mammography pipelines, each built here.

use crate::util::*;
use mammo_edge::ingest::dicom::{read_mammogram, IngestOptions, Laterality, View};
use mammo_edge::ingest::preprocess::{preprocess, PreprocessConfig, Side};
use mammo_edge::synth::{DicomSpec, GeometricPhantom};

/// A 64 × 64 12-bit ramp: pixel i holds stored value i (0 … 4095).
fn ramp() -> DicomSpec {
    DicomSpec::mammogram(64, 64, (0..4096u16).collect())
}

fn grey_at(spec: &DicomSpec, name: &str) -> Vec<f32> {
    let d = tmp();
    let p = write(spec, d.path(), name);
    let m = read_mammogram(&p, &IngestOptions::any_image()).unwrap();
    m.image.data
}

fn sigmoid(x: f64, c: f64, w: f64) -> f64 {
    1.0 / (1.0 + (-4.0 * (x - c) / w).exp())
}

#[test]
fn case1_sigmoid_with_three_windows_uses_the_first_pair() {
    let mut spec = ramp();
    spec.windows = vec![(1000.0, 500.0), (2000.0, 800.0), (3000.0, 300.0)];
    spec.voi_lut_function = Some("SIGMOID".into());
    let g = grey_at(&spec, "sig.dcm");
    assert!((g[1000] - 0.5).abs() < 1e-6, "{}", g[1000]);
    for x in [600usize, 900, 1125, 1250, 1500, 2000] {
        let want = sigmoid(x as f64, 1000.0, 500.0) as f32;
        assert!((g[x] - want).abs() < 1e-5, "x {x}: {} vs {want}", g[x]);
    }
    // a linear ramp would reach 1.0 at 1250; the sigmoid is at 0.88
    assert!((g[1250] - 0.8808).abs() < 1e-3);
}

#[test]
fn case2_voi_lut_function_with_trailing_space_or_lower_case() {
    let mut spec = ramp();
    spec.windows = vec![(1000.0, 500.0)];
    spec.voi_lut_function = Some("SIGMOID".into());
    let reference = grey_at(&spec, "a.dcm");
    for variant in ["SIGMOID ", "sigmoid", " Sigmoid"] {
        spec.voi_lut_function = Some(variant.into());
        assert_eq!(grey_at(&spec, "b.dcm"), reference, "{variant:?}");
    }
}

#[test]
fn case3_monochrome1_asymmetric_window() {
    let mut spec = ramp();
    spec.photometric = "MONOCHROME1".into();
    spec.windows = vec![(1000.0, 500.0)];
    let g = grey_at(&spec, "m1.dcm");
    for x in [0usize, 500, 749] {
        assert_eq!(g[x], 1.0, "x {x}");
    }
    for x in [1251usize, 2000, 4095] {
        assert_eq!(g[x], 0.0, "x {x}");
    }
    assert!((g[1000] - 0.5).abs() < 0.01, "{}", g[1000]);
    // linear and decreasing in between
    for x in 760..1240 {
        assert!(g[x + 1] < g[x], "not decreasing at {x}");
        let slope = g[x] - g[x + 1];
        assert!((slope - 1.0 / 499.0).abs() < 1e-4, "slope {slope} at {x}");
    }
}

#[test]
fn case4_overlay_bits_above_bits_stored_are_masked() {
    let clean = ramp();
    let mut dirty = ramp();
    for y in 10..30 {
        for x in 10..30 {
            dirty.pixels[y * 64 + x] |= 0x8000;
        }
    }
    let d = tmp();
    let m = read_any(&write(&dirty, d.path(), "overlay.dcm"));
    assert!(m.grey.modality_max <= 4095.0, "{}", m.grey.modality_max);
    assert_eq!(
        m.image.data,
        grey_at(&clean, "clean.dcm"),
        "overlay block visible"
    );
}

fn signed_spec() -> DicomSpec {
    // Background −2000 (14-bit signed), tissue 500 … 6000, sign-extended 16-bit words.
    let ph = GeometricPhantom::new(200, 160, Laterality::R);
    let pixels = ph
        .render()
        .iter()
        .map(|&g| {
            let v: i16 = if g < 0.05 {
                -2000
            } else {
                (500.0 + g * 5500.0) as i16
            };
            v as u16
        })
        .collect();
    let mut spec = DicomSpec::mammogram(200, 160, pixels);
    spec.bits_stored = 14;
    spec.signed = true;
    spec.windows = vec![(2000.0, 8000.0)];
    spec.image_laterality = Some("R".into());
    spec
}

#[test]
fn case5_signed_14bit_background_decodes_to_minus_2000() {
    let d = tmp();
    let spec = signed_spec();
    let top = spec.pixels.iter().map(|&v| v as i16).max().unwrap() as f64;
    let src = write(&spec, d.path(), "signed.dcm");
    let a = read(&src);
    assert_eq!(a.grey.modality_min, -2000.0);
    assert_eq!(a.grey.modality_max, top);
    for (codec, name) in [
        (Codec::JpegLosslessSv1, "jpegll.dcm"),
        (Codec::JpegLs, "jls.dcm"),
        (Codec::J2kLossless, "j2k.dcm"),
        (Codec::Rle, "rle.dcm"),
    ] {
        let dst = d.path().join(name);
        encode(codec, &src, &dst);
        let b = read(&dst);
        assert_eq!(b.grey.modality_min, -2000.0, "{codec:?}");
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{codec:?}");
    }
}

#[test]
fn case6_laterality_and_view_fallbacks() {
    let d = tmp();
    let mut spec = phantom(100, 80, Laterality::R);
    spec.image_laterality = None;
    spec.laterality = Some("R".into());
    spec.view_position = Some("".into());
    spec.view_code = Some((
        "R-10226".into(),
        "SRT".into(),
        "medio-lateral oblique".into(),
    ));
    let m = read(&write(&spec, d.path(), "a.dcm"));
    assert_eq!(m.meta.laterality, Some(Laterality::R));
    assert_eq!(m.meta.laterality_source, "Laterality");
    assert_eq!(m.meta.view, View::MLO);

    spec.view_code = None;
    spec.view_position = Some("ML".into());
    let p = write(&spec, d.path(), "b.dcm");
    let m = read_mammogram(&p, &IngestOptions::any_image()).unwrap();
    assert_eq!(m.meta.view, View::ML);
    assert_eq!(reject(&p).code(), "not_screening_view");

    spec.image_laterality = Some("B".into());
    spec.laterality = None;
    let m = read_mammogram(
        &write(&spec, d.path(), "c.dcm"),
        &IngestOptions::any_image(),
    )
    .unwrap();
    assert_eq!(m.meta.laterality, None, "B is not one breast");
}

#[test]
fn case7_noisy_background_label_and_implant() {
    let d = tmp();
    let mut ph = GeometricPhantom::new(600, 480, Laterality::L);
    ph.background = 30.0 / 4095.0;
    ph.background_noise = 5.0 / 4095.0;
    ph.label_block = true;
    ph.implant = true;
    let mut spec = DicomSpec::mammogram(600, 480, DicomSpec::quantise(&ph.render(), 12, false));
    spec.image_laterality = Some("L".into());
    let m = read(&write(&spec, d.path(), "implant.dcm"));
    let p = preprocess(&m, &PreprocessConfig::default()).unwrap();
    let c = p.geometry.crop;
    let (a, b, cy) = ph.ellipse();
    // whole breast (chest wall at x = 0 to the nipple at x = a, y = cy ± b) inside the crop
    assert_eq!(c.x0, 0);
    assert!(
        c.x1 as f64 >= a.floor(),
        "crop {c:?} cuts the breast (a = {a})"
    );
    assert!(
        (c.y0 as f64) <= cy - b + 1.0 && c.y1 as f64 >= cy + b - 1.0,
        "crop {c:?}"
    );
    // implant (centre 0.35 a, semi-axes 0.18 a × 0.25 b) inside; label block outside
    assert!((c.x1 as f64) > 0.53 * a);
    let (lx0, _, _, _) = ph.label_rect();
    assert!(c.x1 <= lx0, "label block at x >= {lx0} inside crop {c:?}");
    // not much more than the breast either
    assert!((c.x1 as f64) < a + 0.05 * 480.0, "crop {c:?} too wide");
    assert_eq!(p.geometry.chest_wall, Side::Left);
    assert!(!p.geometry.flipped);
}

#[test]
fn case8_mirrored_left_cc_preprocesses_like_its_usual_twin() {
    let d = tmp();
    let (rows, cols) = (512, 384);
    let ph = GeometricPhantom::new(rows, cols, Laterality::L);
    let usual = DicomSpec::quantise(&ph.render(), 12, false);
    let mirrored: Vec<u16> = usual
        .chunks(cols)
        .flat_map(|row| row.iter().rev().copied())
        .collect();
    let mut a = DicomSpec::mammogram(rows, cols, usual);
    a.image_laterality = Some("L".into());
    let mut b = a.clone();
    b.pixels = mirrored;
    let cfg = PreprocessConfig::default();
    let pa = preprocess(&read(&write(&a, d.path(), "a.dcm")), &cfg).unwrap();
    let pb = preprocess(&read(&write(&b, d.path(), "b.dcm")), &cfg).unwrap();
    assert!(!pa.geometry.flipped && pb.geometry.flipped);
    assert!(
        pb.geometry.orientation_mismatch,
        "header says L, breast on the right edge"
    );
    let diff = pa
        .tensor
        .iter()
        .zip(&pb.tensor)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "max difference {diff}");
}

#[test]
fn monochrome1_and_its_monochrome2_twin_give_the_same_grey_levels() {
    let d = tmp();
    let m2 = phantom(200, 160, Laterality::L);
    let mut m1 = m2.clone();
    m1.photometric = "MONOCHROME1".into();
    m1.pixels = m2.pixels.iter().map(|&v| 4095 - v).collect();
    let a = read(&write(&m2, d.path(), "m2.dcm"));
    let b = read(&write(&m1, d.path(), "m1.dcm"));
    assert!(b.grey.inverted && !a.grey.inverted);
    assert!(max_abs_diff(&a, &b) < 1e-6);
}

#[test]
fn modality_lut_is_applied_before_the_window() {
    let mut spec = ramp();
    spec.rescale = Some((2.0, -1000.0));
    spec.windows = vec![(1000.0, 2000.0)];
    spec.voi_lut_function = Some("LINEAR_EXACT".into());
    let g = grey_at(&spec, "rescale.dcm");
    // stored 1000 → modality 1000 = window centre → 0.5
    assert!((g[1000] - 0.5).abs() < 1e-6, "{}", g[1000]);
    // stored 500 → 0 → lower window edge → 0
    assert_eq!(g[500], 0.0);
}
