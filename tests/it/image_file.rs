//! Image files as input (research sets): PNG 8/16-bit, PGM, JPEG and grey-as-RGB decode to
//! display-polarity grey levels, inverted polarity is detected and corrected, colour pictures and
//! oversized or damaged files are refused with the reason, and the real RSNA/MIAS/DDSM files all
//! read in display polarity.

use std::path::Path;

use mammo_edge::ingest::image_file::{
    is_image_file, looks_inverted, read_image_file, ImageFileError,
};

use crate::util::*;

/// A mammogram-like 8-bit picture: dark background, a bright half-disc against the left edge.
fn breast(w: u32, h: u32) -> image::GrayImage {
    image::GrayImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (
            x as f32 / w as f32,
            (y as f32 - h as f32 / 2.0) / (h as f32 / 2.0),
        );
        let inside = dx * dx / 0.49 + dy * dy * 0.8 < 1.0;
        image::Luma([if inside { 150 + (x % 7) as u8 * 10 } else { 3 }])
    })
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn eight_bit_png_pgm_and_grey_rgb_read_alike_and_inversion_is_undone() {
    let d = tmp();
    let img = breast(120, 200);
    let png = d.path().join("a.png");
    img.save(&png).unwrap();
    let pgm = d.path().join("a.pgm");
    img.save(&pgm).unwrap();
    let rgb = d.path().join("rgb.PNG");
    image::DynamicImage::ImageLuma8(img.clone())
        .to_rgb8()
        .save(&rgb)
        .unwrap();
    let mut neg = img.clone();
    image::imageops::invert(&mut neg);
    let inv = d.path().join("inv.png");
    neg.save(&inv).unwrap();

    let a = read_image_file(&png).unwrap();
    assert_eq!((a.image.width, a.image.height), (120, 200));
    assert!(!a.report.inverted && !a.report.grey_from_rgb);
    assert_eq!((a.report.bits_stored, a.report.format.as_str()), (8, "Png"));
    let expect: Vec<f32> = img.pixels().map(|p| p.0[0] as f32 / 255.0).collect();
    assert!(max_diff(&a.image.data, &expect) < 1e-6);
    for (p, from_rgb) in [(&pgm, false), (&rgb, true)] {
        let b = read_image_file(p).unwrap();
        assert_eq!(b.report.grey_from_rgb, from_rgb, "{}", p.display());
        assert!(max_diff(&b.image.data, &expect) < 1e-6, "{}", p.display());
    }
    let c = read_image_file(&inv).unwrap();
    assert!(c.report.inverted, "a bright border means inverted polarity");
    assert!(max_diff(&c.image.data, &expect) < 1e-6);
    assert!(!looks_inverted(&a.image) && is_image_file(&rgb) && !is_image_file(Path::new("x.dcm")));
}

#[test]
fn sixteen_bit_png_is_scaled_by_its_significant_bits_and_jpeg_reads() {
    let d = tmp();
    // 12-bit detector values stored in 16 bits
    let img = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(64, 96, |x, y| {
        image::Luma([if x < 30 && y > 10 && y < 86 {
            4095 - x as u16
        } else {
            20
        }])
    });
    let p = d.path().join("12bit.png");
    img.save(&p).unwrap();
    let a = read_image_file(&p).unwrap();
    assert_eq!((a.report.bits_stored, a.report.bits_used), (16, 12));
    assert_eq!(a.image.data[11 * 64], 1.0);
    assert!((a.image.data[0] - 20.0 / 4095.0).abs() < 1e-6);
    // JPEG is lossy: close, not equal
    let j = d.path().join("a.jpg");
    breast(80, 120).save(&j).unwrap();
    let b = read_image_file(&j).unwrap();
    assert_eq!(
        (b.image.width, b.image.height, b.report.inverted),
        (80, 120, false)
    );
    let expect: Vec<f32> = breast(80, 120)
        .pixels()
        .map(|p| p.0[0] as f32 / 255.0)
        .collect();
    let mean_err: f32 = b
        .image
        .data
        .iter()
        .zip(&expect)
        .map(|(x, y)| (x - y).abs())
        .sum::<f32>()
        / expect.len() as f32;
    assert!(mean_err < 0.03, "{mean_err}");
}

#[test]
fn colour_damaged_and_oversized_files_are_refused_with_the_reason() {
    let d = tmp();
    let colour = d.path().join("photo.png");
    image::RgbImage::from_fn(40, 40, |x, _| image::Rgb([200, (x * 5) as u8, 30]))
        .save(&colour)
        .unwrap();
    let e = read_image_file(&colour).unwrap_err();
    assert!(matches!(e, ImageFileError::NotGrey { .. }), "{e}");
    assert_eq!(e.code(), "not_grey");

    let png = d.path().join("ok.png");
    breast(64, 64).save(&png).unwrap();
    let bytes = std::fs::read(&png).unwrap();
    let cut = d.path().join("cut.png");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = read_image_file(&cut).unwrap_err();
    assert_eq!(e.code(), "undecodable", "{e}");

    // a 57-byte PNG whose header declares 100000 x 100000 pixels: refused before any decoding
    let mut huge = bytes[..33].to_vec();
    huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&huge[12..29]);
    huge[29..33].copy_from_slice(&crc.to_be_bytes());
    // an empty IDAT and IEND: a complete, tiny file
    for kind in [b"IDAT", b"IEND"] {
        huge.extend_from_slice(&0u32.to_be_bytes());
        huge.extend_from_slice(kind);
        huge.extend_from_slice(&crc32(kind).to_be_bytes());
    }
    let big = d.path().join("huge.png");
    std::fs::write(&big, &huge).unwrap();
    let e = read_image_file(&big).unwrap_err();
    assert_eq!(e.code(), "too_large", "{e}");

    let missing = read_image_file(&d.path().join("none.png")).unwrap_err();
    assert_eq!(missing.code(), "unreadable");
}

/// CRC-32 of PNG chunks (ISO 3309), for the hand-made header above.
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn real_research_set_images_read_in_display_polarity() {
    let Some(data) = data_dir() else { return };
    let set = data.join("real-labelled");
    let files = [
        set.join("rsna/train_images/10006/1459541791.png"),
        set.join("mias/mdb003.pgm"),
        set.join("mias/mdb004.pgm"),
        set.join("ddsm-tissue/segmentation_data/test/fgt_seg/A_0040_1.RIGHT_MLO.png"),
    ];
    for f in &files {
        let a = read_image_file(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!a.report.inverted, "{} is display polarity", f.display());
        // and its negative is caught
        let mut neg = a.image.clone();
        neg.data.iter_mut().for_each(|v| *v = 1.0 - *v);
        assert!(looks_inverted(&neg), "{}", f.display());
    }
}

/// A file over the size limit is refused from its size alone, before it is read, with the reason
/// code the DICOM ingest uses; the in-memory reader gives what the file reader gives.
#[test]
fn an_oversized_file_is_refused_before_reading_and_bytes_read_like_the_file() {
    use mammo_edge::ingest::image_file::{read_bounded, read_image_bytes, MAX_FILE_BYTES};
    let d = tmp();
    let big = d.path().join("big.png");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(MAX_FILE_BYTES + 1)
        .unwrap(); // sparse: no disk used
    let e = read_bounded(&big).unwrap_err();
    assert_eq!(e.code(), "file_too_large", "{e}");
    let e = read_image_file(&big).unwrap_err();
    assert!(matches!(e, ImageFileError::FileTooLarge { .. }), "{e}");
    let png = d.path().join("a.png");
    breast(64, 96).save(&png).unwrap();
    let (a, b) = (
        read_image_file(&png).unwrap(),
        read_image_bytes(&read_bounded(&png).unwrap()).unwrap(),
    );
    assert_eq!((a.image.data, a.report), (b.image.data, b.report));
}
