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
