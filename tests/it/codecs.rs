//! Every supported transfer syntax, made by dcmtk / GDCM from one uncompressed phantom, decodes to
//! the uncompressed twin (exactly for lossless codecs, within tolerance for lossy ones).

use crate::util::*;
use mammo_edge::ingest::dicom::{ts, Laterality};

fn twin(codec: Codec) -> (f32, f32, String) {
    let dir = tmp();
    let spec = phantom(300, 240, Laterality::R);
    let src = write(&spec, dir.path(), "src.dcm");
    let dst = dir.path().join("dst.dcm");
    encode(codec, &src, &dst);
    let a = read(&src);
    let b = read(&dst);
    let mean = a
        .image
        .data
        .iter()
        .zip(&b.image.data)
        .map(|(x, y)| (x - y).abs())
        .sum::<f32>()
        / a.image.data.len() as f32;
    (max_abs_diff(&a, &b), mean, b.meta.transfer_syntax)
}

#[test]
fn jpeg_lossless_sv1_is_exact() {
    let (max, _, uid) = twin(Codec::JpegLosslessSv1);
    assert_eq!(uid, ts::JPEG_LOSSLESS_SV1);
    assert_eq!(max, 0.0);
}

#[test]
fn rle_is_exact() {
    let (max, _, uid) = twin(Codec::Rle);
    assert_eq!(uid, "1.2.840.10008.1.2.5");
    assert_eq!(max, 0.0);
}

#[test]
fn jpeg_ls_lossless_is_exact() {
    let (max, _, uid) = twin(Codec::JpegLs);
    assert_eq!(uid, ts::JPEG_LS_LOSSLESS);
    assert_eq!(max, 0.0);
}

#[test]
fn jpeg2000_lossless_is_exact() {
    let (max, _, uid) = twin(Codec::J2kLossless);
    assert_eq!(uid, ts::JPEG2000_LOSSLESS);
    assert_eq!(max, 0.0);
}

#[test]
fn jpeg2000_lossy_is_close() {
    let (max, mean, uid) = twin(Codec::J2kLossy);
    assert_eq!(uid, ts::JPEG2000);
    assert!(mean < 0.01, "mean abs difference {mean}");
    assert!(max < 0.25, "max abs difference {max}");
}

#[test]
fn explicit_big_endian_is_exact() {
    let (max, _, uid) = twin(Codec::BigEndian);
    assert_eq!(uid, "1.2.840.10008.1.2.2");
    assert_eq!(max, 0.0);
}

#[test]
fn deflate_is_exact() {
    let (max, _, uid) = twin(Codec::Deflate);
    assert_eq!(uid, "1.2.840.10008.1.2.1.99");
    assert_eq!(max, 0.0);
}

/// An 8-bit phantom through a lossy dcmcjpeg mode: decodes close to the original.
fn lossy_8bit(flag: &str, uid: &str) {
    let dir = tmp();
    let mut spec = phantom(300, 240, Laterality::L);
    spec.bits_allocated = 8;
    spec.bits_stored = 8;
    spec.windows = vec![(128.0, 256.0)];
    spec.pixels = spec.pixels.iter().map(|&v| v >> 4).collect();
    let src = write(&spec, dir.path(), "src.dcm");
    let dst = dir.path().join("dst.dcm");
    tool(
        "dcmcjpeg",
        &[flag, src.to_str().unwrap(), dst.to_str().unwrap()],
    );
    let (a, b) = (read(&src), read(&dst));
    assert_eq!(b.meta.transfer_syntax, uid);
    let mean = a
        .image
        .data
        .iter()
        .zip(&b.image.data)
        .map(|(x, y)| (x - y).abs())
        .sum::<f32>()
        / a.image.data.len() as f32;
    assert!(mean < 0.01, "mean abs difference {mean}");
}

#[test]
fn jpeg_baseline_8bit_is_close() {
    lossy_8bit("+eb", ts::JPEG_BASELINE);
}

#[test]
fn jpeg_extended_8bit_is_close() {
    // process 2 (8-bit extended sequential) decodes; only 12-bit process 4 is refused
    lossy_8bit("+ee", ts::JPEG_EXTENDED);
}

/// `path` read as the scorer reads it for `runner`: JPEG 2000 at the coarsest level that keeps
/// four times the model's input.
pub fn read_for_model(
    path: &std::path::Path,
    runner: &mammo_edge::model::ModelRunner,
) -> mammo_edge::ingest::dicom::Mammogram {
    let default = mammo_edge::ingest::dicom::IngestOptions::default();
    let opts = mammo_edge::model::score::for_model(runner, &default);
    mammo_edge::ingest::dicom::read_mammogram(path, &opts).unwrap()
}

/// The outputs of one image scored at full and at reduced JPEG 2000 resolution may differ by
/// at most this much (the stated tolerance of `ingest.reduced_decode`, docs/bench-daemon.md):
/// cancer and normal probabilities 0.03, density probabilities 0.08, percent density 1.5
/// points, `ood_score` 0.15 (its threshold is ~3.6 to 3.8); the density class, predicted view,
/// laterality and OOD flag must agree. Measured on these phantoms and the real Hologic files with
/// the shipped int8 model: at most 0.020, 0.058, 1.09 and 0.11, less than the same model's own
/// float32 → int8 change on the phantoms (0.016, 0.089, 1.99, 0.36).
pub fn assert_outputs_agree(name: &str, full: &serde_json::Value, reduced: &serde_json::Value) {
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    for (k, tol) in [
        ("cancer_probability", 0.03),
        ("normal_probability", 0.03),
        ("percent_density", 1.5),
        ("ood_score", 0.15),
    ] {
        let d = (f(full, k) - f(reduced, k)).abs();
        assert!(
            d <= tol,
            "{name}: {k} differs by {d:.4} (> {tol}): {full} vs {reduced}"
        );
    }
    for i in 0..4 {
        let d = (full["density_probabilities"][i].as_f64().unwrap()
            - reduced["density_probabilities"][i].as_f64().unwrap())
        .abs();
        assert!(
            d <= 0.08,
            "{name}: density probability {i} differs by {d:.4}"
        );
    }
    for k in ["density", "view_predicted", "laterality", "ood"] {
        assert_eq!(full[k], reduced[k], "{name}: {k}");
    }
}

/// Hologic-style phantoms compressed as JPEG 2000 (lossless, GDCM / dcmtk) and scored by the
/// shipped model: the default decode stops one wavelet level early (2048 × 1664 → 1024 × 832, the
/// smallest that keeps four times the 256 × 160 input) and gives the same outputs within tolerance as
/// `--full-resolution`; the other vendors' syntaxes are decoded whole either way.
#[test]
fn jpeg2000_at_reduced_resolution_keeps_the_models_outputs_on_phantoms() {
    use mammo_edge::ingest::dicom::{read_mammogram, IngestOptions, Resolution, Vendor};
    use mammo_edge::synth::generator::{generate, SynthConfig};
    let dir = tmp();
    let cfg = SynthConfig {
        count: 4,
        seed: 5,
        scale: 0.5,
        vendors: vec![Vendor::Hologic],
        compress: true,
        ..Default::default()
    };
    let gen = generate(&cfg, dir.path()).unwrap();
    let model = mammo_edge::model::score::load_model(None).unwrap();
    let full_opts = IngestOptions {
        resolution: Resolution::Full,
        ..IngestOptions::default()
    };
    let mut full = mammo_edge::cli::infer::Batch::new(&model, full_opts.clone());
    let mut reduced = mammo_edge::cli::infer::Batch::new(&model, IngestOptions::default());
    assert!(!gen.is_empty());
    for g in &gen {
        let path = dir.path().join(&g.row.path);
        let whole = read_mammogram(&path, &full_opts).unwrap();
        assert_eq!(whole.meta.transfer_syntax, ts::JPEG2000_LOSSLESS);
        assert_eq!((whole.meta.rows, whole.meta.columns), (2048, 1664));
        assert_eq!(
            model.runner.meta.preprocess().decode_at_least(),
            (1024, 640)
        );
        let small = read_for_model(&path, &model.runner);
        assert_eq!(
            (small.grey.reduce, small.image.height, small.image.width),
            (1, 1024, 832)
        );
        assert_eq!(whole.grey.reduce, 0);
        // the reduced image is the full one's low-pass: same mean grey level within 1 %
        let mean = |m: &mammo_edge::ingest::dicom::Mammogram| {
            m.image.data.iter().map(|&v| v as f64).sum::<f64>() / m.image.data.len() as f64
        };
        assert!((mean(&whole) - mean(&small)).abs() < 0.01);
        let a = full.file(&path);
        let b = reduced.file(&path);
        assert!(a.scored && b.scored, "{} / {}", a.payload, b.payload);
        assert_outputs_agree(&g.row.path, &a.payload, &b.payload);
    }
}
