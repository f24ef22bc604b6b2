//! Image files as input for the research sets (RSNA crops, MIAS, DDSM films): PNG 8/16-bit, JPEG,
//! PGM/PNM, grey stored as RGB accepted, decoded by the `image` crate into the same [`GreyImage`]
//! (display polarity, 0 = background) that DICOM ingest yields, so THE preprocessing treats both
//! alike. Polarity is detected from the image border and corrected ([`ImageFile::inverted`]);
//! colour images and oversized declarations are refused with the reason.

use std::path::Path;

use serde::Serialize;
use thiserror::Error;

use crate::ingest::dicom::grey::GreyImage;

/// File name extensions read as image files (case-insensitive).
pub const EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "pgm", "pnm", "ppm", "pbm"];

/// Largest image accepted, in pixels (a 16-bit PNG of this size is 512 MiB of f32).
pub const MAX_PIXELS: u64 = 128 * 1024 * 1024;

/// Largest image file read, in bytes (as the DICOM ingest's default `max_file_bytes`); checked
/// from the file's size before anything is read.
pub const MAX_FILE_BYTES: u64 = 512 << 20;

/// Why an image file cannot be read.
#[derive(Debug, Error)]
pub enum ImageFileError {
    #[error("cannot read the image file: {0}")]
    Io(#[from] std::io::Error),
    #[error("image file of {bytes} bytes exceeds the limit of {limit} bytes")]
    FileTooLarge { bytes: u64, limit: u64 },
    #[error("undecodable image file: {0}")]
    Decode(String),
    #[error("{width}x{height} image exceeds the limit of {limit} pixels")]
    TooLarge { width: u32, height: u32, limit: u64 },
    /// The decoder refused the declared size before decoding.
    #[error("image exceeds the decoder's memory limit: {0}")]
    LimitExceeded(String),
    #[error("empty image ({width}x{height})")]
    Empty { width: u32, height: u32 },
    /// A colour picture: {share} % of its pixels have channels that differ.
    #[error("colour image ({share:.1} % of pixels are not grey): not a mammogram")]
    NotGrey { share: f64 },
}

impl ImageFileError {
    /// Stable machine code of the reason (as the DICOM ingest's codes).
    pub fn code(&self) -> &'static str {
        match self {
            ImageFileError::Io(_) => "unreadable",
            ImageFileError::FileTooLarge { .. } => "file_too_large",
            ImageFileError::Decode(_) => "undecodable",
            ImageFileError::TooLarge { .. } | ImageFileError::LimitExceeded(_) => "too_large",
            ImageFileError::Empty { .. } => "empty_image",
            ImageFileError::NotGrey { .. } => "not_grey",
        }
    }
}

/// A decoded image file.
#[derive(Debug, Clone)]
pub struct ImageFile {
    /// Grey levels in [0, 1], display polarity (breast bright, background dark).
    pub image: GreyImage,
    pub report: ImageFileReport,
}

/// What was found and done while reading (reported by `inspect` / `infer`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageFileReport {
    /// Decoder's name of the format, e.g. `Png`.
    pub format: String,
    /// Bits per sample stored (8 or 16).
    pub bits_stored: u8,
    /// Significant bits of a 16-bit image (the grey levels are divided by 2^bits − 1).
    pub bits_used: u8,
    /// Stored as RGB(A) with equal channels.
    pub grey_from_rgb: bool,
    /// The border was bright: the image was stored inverted and has been inverted back.
    pub inverted: bool,
}

/// Whether `path` has one of the [`EXTENSIONS`].
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Dark and bright shares of the image's outer frame (4 % of the shorter side, at least 2 px).
fn frame_shares(img: &GreyImage) -> (f64, f64) {
    let (w, h) = (img.width, img.height);
    let k = ((w.min(h) as f64 * 0.04) as usize).max(2).min(w.min(h));
    let (mut dark, mut bright, mut n) = (0usize, 0usize, 0usize);
    for y in 0..h {
        let row = &img.data[y * w..(y + 1) * w];
        let edge_row = y < k || y >= h - k;
        for (x, &v) in row.iter().enumerate() {
            if edge_row || x < k || x >= w - k {
                n += 1;
                dark += (v < 0.12) as usize;
                bright += (v > 0.88) as usize;
            }
        }
    }
    (
        dark as f64 / n.max(1) as f64,
        bright as f64 / n.max(1) as f64,
    )
}

/// Whether the image is stored inverted (background bright). A mammogram's frame is mostly air or
/// film background, so in display polarity its dark share exceeds its bright share (true for all
/// 1,798 RSNA, MIAS and DDSM images of the shared set, and false for each of them inverted).
pub fn looks_inverted(img: &GreyImage) -> bool {
    let (dark, bright) = frame_shares(img);
    bright > dark
}

fn decode_err(e: image::ImageError) -> ImageFileError {
    match e {
        image::ImageError::Limits(l) => ImageFileError::LimitExceeded(l.to_string()),
        // the file opened; a read error while decoding is truncated or damaged data
        image::ImageError::IoError(io) => ImageFileError::Decode(format!("damaged data: {io}")),
        other => ImageFileError::Decode(other.to_string()),
    }
}

/// Read an image file into display-polarity grey levels, or say why not.
///
/// 8-bit samples are divided by 255; 16-bit ones by 2^b − 1 with b the significant bits of the
/// largest value (a 12-bit detector image stored in 16 bits fills [0, 1] like an 8-bit one).
/// Errors: unreadable file or over [`MAX_FILE_BYTES`], and those of [`read_image_bytes`].
pub fn read_image_file(path: &Path) -> Result<ImageFile, ImageFileError> {
    read_image_bytes(&read_bounded(path)?)
}

/// The bytes of a file of at most [`MAX_FILE_BYTES`] (its size is checked before reading), read
/// once: `infer` hashes and decodes the same bytes.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, ImageFileError> {
    let bytes = std::fs::metadata(path)?.len();
    if bytes > MAX_FILE_BYTES {
        return Err(ImageFileError::FileTooLarge {
            bytes,
            limit: MAX_FILE_BYTES,
        });
    }
    Ok(std::fs::read(path)?)
}

/// Decode an image file's bytes as [`read_image_file`] does. Errors: undecodable, more than
/// [`MAX_PIXELS`] declared (checked from the header before decoding), an empty image, a colour
/// picture.
pub fn read_image_bytes(bytes: &[u8]) -> Result<ImageFile, ImageFileError> {
    let open = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(ImageFileError::Io)
    };
    let reader = open()?;
    let format = reader
        .format()
        .map(|f| format!("{f:?}"))
        .unwrap_or_else(|| "unknown".into());
    let (width, height) = reader.into_dimensions().map_err(decode_err)?;
    if width as u64 * height as u64 > MAX_PIXELS {
        return Err(ImageFileError::TooLarge {
            width,
            height,
            limit: MAX_PIXELS,
        });
    }
    if width == 0 || height == 0 {
        return Err(ImageFileError::Empty { width, height });
    }
    let mut reader = open()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    let decoded = reader.decode().map_err(decode_err)?;
    let has_colour = decoded.color().has_color();
    let bits_stored = if decoded.color().bytes_per_pixel() / decoded.color().channel_count() > 1 {
        16
    } else {
        8
    };
    // grey samples and, for RGB, how many pixels have unequal channels
    let (grey, colour_pixels): (Vec<u16>, usize) = if has_colour {
        let rgb = decoded.to_rgb16();
        let mut n = 0usize;
        let tol = if bits_stored == 8 { 2 * 257 } else { 2 * 16 };
        let g = rgb
            .pixels()
            .map(|p| {
                let [r, g, b] = p.0;
                if r.abs_diff(g) > tol || g.abs_diff(b) > tol {
                    n += 1;
                }
                ((r as u32 + g as u32 + b as u32) / 3) as u16
            })
            .collect();
        (g, n)
    } else {
        (decoded.to_luma16().into_raw(), 0)
    };
    let total = grey.len().max(1);
    if colour_pixels as f64 / total as f64 > 0.01 {
        return Err(ImageFileError::NotGrey {
            share: 100.0 * colour_pixels as f64 / total as f64,
        });
    }
    // `to_luma16` / `to_rgb16` scale 8-bit samples by 257: 8-bit images fill 0..=65535 too
    let max = grey.iter().copied().max().unwrap_or(0);
    let bits_used = if bits_stored == 8 {
        8
    } else {
        (16 - max.leading_zeros()).max(1) as u8
    };
    let full = if bits_stored == 8 {
        65535.0
    } else {
        ((1u32 << bits_used) - 1) as f32
    };
    let data: Vec<f32> = grey.iter().map(|&v| (v as f32 / full).min(1.0)).collect();
    let mut image = GreyImage {
        width: width as usize,
        height: height as usize,
        data,
    };
    let inverted = looks_inverted(&image);
    if inverted {
        for v in &mut image.data {
            *v = 1.0 - *v;
        }
    }
    Ok(ImageFile {
        image,
        report: ImageFileReport {
            format,
            bits_stored,
            bits_used,
            grey_from_rgb: has_colour,
            inverted,
        },
    })
}
