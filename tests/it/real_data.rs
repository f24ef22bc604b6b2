//! The real files of `MAMMO_TEST_DATA` (../shared/data): four real screening mammograms and the
//! non-mammography files of dicom-misc/, each with the handling its README lists.

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use mammo_edge::ingest::dicom::grey::{window, VoiLutFunction};
use mammo_edge::ingest::dicom::{
    read_mammogram, Category, IngestOptions, Laterality, Vendor, View,
};
use mammo_edge::ingest::preprocess::{preprocess, PreprocessConfig, Side};

use crate::util::*;

fn file(dir: &Path, sub: &str, name: &str) -> PathBuf {
    let p = dir.join(sub).join(name);
    assert!(p.is_file(), "{} missing from the test data", p.display());
    p
}

fn check_real(name: &str, vendor: Vendor, lat: Laterality, view: View, voi: &str) {
    let Some(dir) = data_dir() else { return };
    let m = read(&file(&dir, "real-mammo", name));
    assert_eq!(m.meta.vendor, vendor, "{name}");
    assert_eq!(m.meta.laterality, Some(lat), "{name}");
    assert_eq!(m.meta.view, view, "{name}");
    assert!(m.grey.voi.contains(voi), "{name}: VOI {}", m.grey.voi);
    let s = m.image.stats();
    assert!(s.min >= 0.0 && s.max <= 1.0 && s.max > 0.5, "{name}: {s:?}");
    let p = preprocess(&m, &PreprocessConfig::default()).unwrap();
    let g = &p.geometry;
    let (w, h) = (m.image.width, m.image.height);
    // chest wall found in the image, on the side the laterality says, and the crop touches it
    assert_eq!(g.chest_wall_source, "image", "{name}");
    assert!(!g.orientation_mismatch, "{name}");
    match lat {
        Laterality::L => assert!(
            g.chest_wall == Side::Left && g.crop.x0 == 0,
            "{name}: {g:?}"
        ),
        Laterality::R => assert!(
            g.chest_wall == Side::Right && g.crop.x1 == w,
            "{name}: {g:?}"
        ),
    }
    assert_eq!(g.flipped, lat == Laterality::R);
    // a breast, not the whole detector and not a sliver
    let area = (g.crop.width() * g.crop.height()) as f64 / (w * h) as f64;
    assert!(
        area > 0.08 && area < 0.75,
        "{name}: crop {:?} is {area:.2} of the image",
        g.crop
    );
    assert!(
        g.crop.height() as f64 > 0.5 * h as f64,
        "{name}: crop {:?}",
        g.crop
    );
    // the breast is brighter than the padding in the model input
    let grey = p.grey_levels(&PreprocessConfig::default());
    let left: f32 = (0..p.height).map(|y| grey[y * p.width + 2]).sum::<f32>() / p.height as f32;
    assert!(left > 0.1, "{name}: chest-wall column mean {left}");
}

#[test]
fn ge_right_cc() {
    check_real(
        "ge_senographe_R_CC_jpegll.dcm",
        Vendor::Ge,
        Laterality::R,
        View::CC,
        "VOI LUT Sequence item 1 of 3",
    );
}

#[test]
fn ge_left_cc() {
    check_real(
        "ge_senographe_L_CC_jpegll.dcm",
        Vendor::Ge,
        Laterality::L,
        View::CC,
        "VOI LUT Sequence item 1 of 3",
    );
}

#[test]
fn hologic_left_cc_jp2_wrapped() {
    check_real(
        "hologic_selenia_L_CC_j2k.dcm",
        Vendor::Hologic,
        Laterality::L,
        View::CC,
        "window 1 of 4: Sigmoid",
    );
}

#[test]
fn hologic_right_mlo_jp2_wrapped() {
    check_real(
        "hologic_selenia_R_MLO_j2k.dcm",
        Vendor::Hologic,
        Laterality::R,
        View::MLO,
        "window 1 of 4: Sigmoid",
    );
}

#[test]
fn hologic_quirks_are_reported() {
    let Some(dir) = data_dir() else { return };
    let p = file(&dir, "real-mammo", "hologic_selenia_L_CC_j2k.dcm");
    let obj = mammo_edge::ingest::dicom::open_header(&p).unwrap();
    let meta = mammo_edge::ingest::dicom::MammoMeta::from_object(&obj).unwrap();
    assert_eq!(meta.modality, None);
    assert_eq!(meta.presentation_intent, None);
    assert_eq!(meta.pixel_spacing, None);
    assert_eq!(meta.photometric, "MONOCHROME1");
    assert_eq!((meta.rows, meta.columns), (5355, 4915));
}

#[test]
fn fuji_cr_uncompressed_and_j2k_are_identical_and_not_mammograms() {
    let Some(dir) = data_dir() else { return };
    let a = file(&dir, "dicom-misc", "cr_fuji_RG3_UNCR.dcm");
    let b = file(&dir, "dicom-misc", "cr_fuji_RG3_J2KR.dcm");
    let (ma, mb) = (read_any(&a), read_any(&b));
    assert_eq!((ma.image.width, ma.image.height), (1760, 1760));
    assert_eq!(ma.image.data, mb.image.data);
    assert!(ma.grey.inverted, "MONOCHROME1");
    for f in [&a, &b] {
        let e = reject(f);
        assert_eq!(
            (e.code(), e.category()),
            ("not_mammogram", Category::Skipped)
        );
    }
    // accepted when the site's config accepts CR
    let opts = IngestOptions {
        accept_modalities: vec!["MG".into(), "CR".into()],
        accept_any_view: true,
        ..Default::default()
    };
    assert!(read_mammogram(&a, &opts).is_ok());
}

#[test]
fn agfa_cr_modality_lut_before_voi() {
    let Some(dir) = data_dir() else { return };
    let p = file(&dir, "dicom-misc", "cr_agfa_16px_cspine_AP_6247.dcm");
    let m = read_any(&p);
    // Independent read of the stored values, then rescale → window → inversion by the PS3.3 formulas.
    let obj = dicom_object::open_file(&p).unwrap();
    let stored: Vec<u16> = obj
        .element(tags::PIXEL_DATA)
        .unwrap()
        .to_multi_int()
        .unwrap();
    let f = |t| obj.element(t).unwrap().to_multi_float64().unwrap()[0];
    let (slope, intercept) = (f(tags::RESCALE_SLOPE), f(tags::RESCALE_INTERCEPT));
    let (c, w) = (f(tags::WINDOW_CENTER), f(tags::WINDOW_WIDTH));
    assert!((slope - 0.684).abs() < 1e-9 && intercept == 200.0);
    let lo = *stored.iter().min().unwrap() as f64 * slope + intercept;
    assert!((m.grey.modality_min - lo).abs() < 1e-9);
    for (i, &s) in stored.iter().enumerate() {
        let want = 1.0 - window(s as f64 * slope + intercept, c, w, VoiLutFunction::Linear);
        assert!((m.image.data[i] as f64 - want).abs() < 1e-6, "pixel {i}");
    }
}

#[test]
fn codec_coverage_files_decode_and_are_not_mammograms() {
    let Some(dir) = data_dir() else { return };
    let mr: Vec<_> = [
        "mr_small_RLE.dcm",
        "mr_small_jpeg_ls_lossless.dcm",
        "mr_small_jp2klossless.dcm",
    ]
    .iter()
    .map(|n| read_any(&file(&dir, "dicom-misc", n)).image.data)
    .collect();
    assert_eq!(mr[0], mr[1]);
    assert_eq!(mr[0], mr[2]);
    for n in [
        "sc_JPEGLSNearLossless_16.dcm",
        "nm_JPEG-LL_lossless_sv1_16bit.dcm",
        "mr_small_RLE.dcm",
        "mr_small_jpeg_ls_lossless.dcm",
        "mr_small_jp2klossless.dcm",
        "ct_small.dcm",
    ] {
        let p = file(&dir, "dicom-misc", n);
        let m = read_any(&p);
        assert!(m.image.stats().max > 0.0, "{n}");
        let e = reject(&p);
        assert_eq!(
            (e.code(), e.category()),
            ("not_mammogram", Category::Skipped),
            "{n}: {e}"
        );
    }
    // a gamma camera whose model name contains "MG" is not a mammogram
    let e = reject(&file(
        &dir,
        "dicom-misc",
        "nm_JPEG-LL_lossless_sv1_16bit.dcm",
    ));
    assert!(e.to_string().contains("Modality NM"), "{e}");
}

#[test]
fn broken_and_unscorable_files_are_rejected_with_their_reason() {
    let Some(dir) = data_dir() else { return };
    let cases = [
        ("ct_small.dcm", "not_mammogram", Category::Skipped),
        (
            "us_multiframe_ybr_jpeg.dcm",
            "multi_frame",
            Category::Skipped,
        ),
        (
            "mr_truncated_pixeldata.dcm",
            "not_mammogram",
            Category::Skipped,
        ),
        ("ct_no_meta_no_preamble.dcm", "not_dicom", Category::Error),
    ];
    for (n, code, cat) in cases {
        let e = reject(&file(&dir, "dicom-misc", n));
        assert_eq!((e.code(), e.category()), (code, cat), "{n}: {e}");
    }
    // The header alone says "not MG", so the default reader never touches the cut pixel data;
    // decoding it anyway (any modality) finds the truncation.
    let e = reject_with(
        &file(&dir, "dicom-misc", "mr_truncated_pixeldata.dcm"),
        &IngestOptions::any_image(),
    );
    assert_eq!(
        (e.code(), e.category()),
        ("truncated", Category::Error),
        "{e}"
    );
}

/// The shipped model (compiled into `mammo-edge`, models/MODEL_CARD.md) on real data, through
/// `infer` as a user runs it: on the four real DICOMs the predicted view is the header's and the
/// laterality is right; on the RSNA crop of the same Hologic exam (patient 10006, L-MLO, an
/// image file) the laterality and view come out right from the pixels alone; the source head
/// names the research sources it was trained on; every result says research only.
#[test]
fn the_shipped_model_gets_view_and_laterality_right_on_the_real_files() {
    let Some(dir) = data_dir() else { return };
    let model = mammo_edge::model::score::load_model(None).unwrap();
    let meta = &model.runner.meta;
    assert!(
        meta.intended_use.contains("research only"),
        "{}",
        meta.intended_use
    );
    assert!(
        meta.vendor_classes.iter().any(|c| c == "rsna-m49")
            && meta.vendor_classes.iter().any(|c| c == "mias")
            && !meta.vendor_classes.iter().any(|c| c == "rsna-m21"),
        "source classes {:?}: trained on RSNA and MIAS, machine 21 held out",
        meta.vendor_classes
    );
    let mut batch = mammo_edge::cli::infer::Batch::new(&model, IngestOptions::default());
    for (name, lat, view) in [
        ("ge_senographe_R_CC_jpegll.dcm", "R", "CC"),
        ("ge_senographe_L_CC_jpegll.dcm", "L", "CC"),
        ("hologic_selenia_L_CC_j2k.dcm", "L", "CC"),
        ("hologic_selenia_R_MLO_j2k.dcm", "R", "MLO"),
    ] {
        let r = batch.file(&file(&dir, "real-mammo", name));
        assert!(r.scored, "{name}: {}", r.payload);
        let p = &r.payload;
        assert_eq!(
            (p["laterality"].as_str(), p["view_predicted"].as_str()),
            (Some(lat), Some(view)),
            "{name}: {p}"
        );
        assert_eq!(p["view"], view, "{name}");
        assert!(p["model"]["intended_use"]
            .as_str()
            .unwrap()
            .contains("research only"));
    }
    let crop = file(
        &dir,
        "real-labelled/rsna/train_images/10006",
        "1459541791.png",
    );
    let r = batch.file(&crop);
    assert!(r.scored, "{}", r.payload);
    assert_eq!(
        (
            r.payload["laterality"].as_str(),
            r.payload["view_predicted"].as_str()
        ),
        (Some("L"), Some("MLO")),
        "{}",
        r.payload
    );
    assert_eq!(r.payload["image_file"]["inverted"], false);
}

/// The shipped model's `ood_score` (issue 18): every CR image of `dicom-misc/` forced through it
/// (`infer --any`) and most other non-mammography images are flagged out of distribution; the
/// four real mammograms and the RSNA crop are not.
#[test]
fn the_shipped_model_flags_other_x_rays_out_of_distribution_and_not_mammograms() {
    let Some(dir) = data_dir() else { return };
    let model = mammo_edge::model::score::load_model(None).unwrap();
    assert!(
        model.runner.meta.ood_threshold.is_some(),
        "the shipped model has the ood_score output"
    );
    let mut any = mammo_edge::cli::infer::Batch::new(&model, IngestOptions::any_image());
    let mut flagged = Vec::new();
    let mut scored = 0;
    for name in [
        "cr_agfa_16px_cspine_AP_6247.dcm",
        "cr_fuji_RG3_J2KR.dcm",
        "cr_fuji_RG3_UNCR.dcm",
        "ct_small.dcm",
        "mr_small_RLE.dcm",
        "mr_small_jp2klossless.dcm",
        "mr_small_jpeg_ls_lossless.dcm",
        "nm_JPEG-LL_lossless_sv1_16bit.dcm",
        "sc_JPEGLSNearLossless_16.dcm",
    ] {
        let r = any.file(&file(&dir, "dicom-misc", name));
        assert!(r.scored, "{name}: {}", r.payload);
        scored += 1;
        let p = &r.payload;
        let (score, thr) = (
            p["ood_score"].as_f64().unwrap(),
            p["ood_threshold"].as_f64().unwrap(),
        );
        assert_eq!(p["ood"], score > thr, "{name}: {p}");
        if p["ood"] == true {
            flagged.push(name);
        }
        if name.starts_with("cr_") {
            assert_eq!(
                p["ood"], true,
                "{name}: a CR image passes as a mammogram: {p}"
            );
        }
    }
    assert!(
        flagged.len() * 10 >= scored * 8,
        "only {flagged:?} of {scored} flagged"
    );
    let mut batch = mammo_edge::cli::infer::Batch::new(&model, IngestOptions::default());
    for name in [
        "ge_senographe_R_CC_jpegll.dcm",
        "ge_senographe_L_CC_jpegll.dcm",
        "hologic_selenia_L_CC_j2k.dcm",
        "hologic_selenia_R_MLO_j2k.dcm",
    ] {
        let r = batch.file(&file(&dir, "real-mammo", name));
        assert_eq!(r.payload["ood"], false, "{name}: {}", r.payload);
    }
    let crop = file(
        &dir,
        "real-labelled/rsna/train_images/10006",
        "1459541791.png",
    );
    assert_eq!(batch.file(&crop).payload["ood"], false);
}

/// The two real Hologic JPEG 2000 mammograms (26 MP) decoded at reduced resolution, as the daemon and `infer` do by default: two wavelet levels
/// skipped for the shipped 256 × 160 model, and the float32 and int8 models' outputs agree with a
/// full decode within the tolerance of `codecs::assert_outputs_agree`.
#[test]
fn jpeg2000_at_reduced_resolution_keeps_the_models_outputs_on_real_hologic_files() {
    use mammo_edge::ingest::dicom::Resolution;
    let Some(dir) = data_dir() else { return };
    let f32_model = mammo_edge::model::score::load_model(Some(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mammo-mtl-demo.onnx"),
    ))
    .unwrap();
    let int8_model = mammo_edge::model::score::load_model(None).unwrap();
    let full_opts = IngestOptions {
        resolution: Resolution::Full,
        ..IngestOptions::default()
    };
    for name in [
        "hologic_selenia_L_CC_j2k.dcm",
        "hologic_selenia_R_MLO_j2k.dcm",
    ] {
        let path = file(&dir, "real-mammo", name);
        let small = crate::codecs::read_for_model(&path, &int8_model.runner);
        let (r, c) = (small.meta.rows as usize, small.meta.columns as usize);
        assert_eq!(small.grey.reduce, 2, "{name}: {r}x{c}");
        assert_eq!(
            (small.image.height, small.image.width),
            (r.div_ceil(4), c.div_ceil(4))
        );
        for model in [&f32_model, &int8_model] {
            let mut full = mammo_edge::cli::infer::Batch::new(model, full_opts.clone());
            let mut reduced = mammo_edge::cli::infer::Batch::new(model, IngestOptions::default());
            let a = full.file(&path);
            let b = reduced.file(&path);
            assert!(a.scored && b.scored, "{name}");
            crate::codecs::assert_outputs_agree(name, &a.payload, &b.payload);
        }
    }
}
