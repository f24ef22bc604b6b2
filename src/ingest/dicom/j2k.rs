//! JPEG 2000 decoded at a reduced resolution level: OpenJPEG's `reduce` (through the `jpeg2k`
//! crate and its Rust port `openjp2`, the backend dicom-pixeldata uses for full decodes) stops the
//! inverse wavelet transform `r` levels early and returns the LL band, an image of
//! ⌈Columns / 2^r⌉ × ⌈Rows / 2^r⌉ samples in the same value range. A 5355 × 4915 Hologic file
//! decoded at r = 3 is 670 × 615: 1/64 of the samples, and most of the decoding work skipped.
//! Sources: ITU-T T.800 Annex F (the wavelet levels), OpenJPEG's `opj_dparameters.cp_reduce`.

use super::{codestream, IngestError, MammoMeta};

/// The largest reduction `r` (0 = full resolution) that keeps at least `at_least` = (rows,
/// columns) samples: ⌈Rows / 2^r⌉ ≥ rows and ⌈Columns / 2^r⌉ ≥ columns, and `r` ≤ the
/// codestream's decomposition levels `levels`.
pub fn reduce_for(meta_rows: u32, meta_columns: u32, at_least: (usize, usize), levels: u8) -> u32 {
    let mut r = 0u32;
    while r < u32::from(levels) && r < 16 {
        let next = r + 1;
        let rows = meta_rows.div_ceil(1 << next) as usize;
        let cols = meta_columns.div_ceil(1 << next) as usize;
        if rows < at_least.0 || cols < at_least.1 {
            break;
        }
        r = next;
    }
    r
}

/// A frame decoded at reduction `reduce`: `width × height` samples as little-endian words of
/// `BitsAllocated` (what the grey pipeline reads), clamped to the range of `BitsStored` (the LL
/// band of a lossy codestream can overshoot it by a few units).
#[derive(Debug)]
pub struct Reduced {
    pub width: usize,
    pub height: usize,
    pub reduce: u32,
    pub bytes: Vec<u8>,
}

/// Decode the single-component codestream `stream` at reduction `reduce` (> 0). Errors: the
/// decoder's, a component count other than one, or a size other than ⌈Rows / 2^r⌉ ×
/// ⌈Columns / 2^r⌉ ([`IngestError::Undecodable`] / [`IngestError::Inconsistent`]); the caller
/// then decodes at full resolution.
pub fn decode_reduced(
    stream: &[u8],
    meta: &MammoMeta,
    reduce: u32,
) -> Result<Reduced, IngestError> {
    let params = jpeg2k::DecodeParameters::new().reduce(reduce);
    let image = jpeg2k::Image::from_bytes_with(stream, params)
        .map_err(|e| IngestError::Undecodable(format!("JPEG 2000 at reduce {reduce}: {e}")))?;
    let comps = image.components();
    let [comp] = comps else {
        return Err(IngestError::Inconsistent(format!(
            "JPEG 2000 codestream has {} components, 1 expected",
            comps.len()
        )));
    };
    let (w, h) = (comp.width() as usize, comp.height() as usize);
    let expected = (
        meta.columns.div_ceil(1 << reduce) as usize,
        meta.rows.div_ceil(1 << reduce) as usize,
    );
    let data = comp.data();
    if (w, h) != expected || data.len() < w * h {
        return Err(IngestError::Inconsistent(format!(
            "JPEG 2000 at reduce {reduce} gave {w}x{h}, {}x{} expected",
            expected.0, expected.1
        )));
    }
    let bits = u32::from(meta.bits_stored.clamp(1, 16));
    let (lo, hi) = if meta.pixel_representation == 1 {
        (-(1i32 << (bits - 1)), (1i32 << (bits - 1)) - 1)
    } else {
        (0, (1i32 << bits) - 1)
    };
    let data = &data[..w * h];
    let bytes = if meta.bits_allocated == 8 {
        data.iter().map(|&v| v.clamp(lo, hi) as u8).collect()
    } else {
        let mut out = Vec::with_capacity(2 * w * h);
        for &v in data {
            out.extend_from_slice(&(v.clamp(lo, hi) as u16).to_le_bytes());
        }
        out
    };
    Ok(Reduced {
        width: w,
        height: h,
        reduce,
        bytes,
    })
}

/// The reduction to decode `stream` at for `at_least` samples, or 0 when its levels are unknown.
pub fn plan(stream: &[u8], meta: &MammoMeta, at_least: (usize, usize)) -> u32 {
    match codestream::j2k_decomposition_levels(stream) {
        Some(levels) => reduce_for(meta.rows, meta.columns, at_least, levels),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::reduce_for;

    #[test]
    fn reduction_keeps_four_times_the_model_input() {
        // a 256 x 160 model needs 1024 x 640: Hologic 5355 x 4915 → r = 2 (1339 x 1229)
        assert_eq!(reduce_for(5355, 4915, (1024, 640), 5), 2);
        assert_eq!(reduce_for(5355, 4915, (1024, 640), 1), 1); // capped by the codestream's levels
        assert_eq!(reduce_for(5355, 4915, (512, 320), 5), 3); // 670 x 615
        assert_eq!(reduce_for(800, 600, (1024, 640), 5), 0); // already small
        assert_eq!(reduce_for(4096, 2560, (1024, 640), 0), 0); // no wavelet levels
        assert_eq!(reduce_for(4096, 2560, (1024, 640), 5), 2); // exactly 1024 x 640 allowed
        assert_eq!(reduce_for(4097, 2560, (1024, 640), 5), 2); // ⌈4097 / 4⌉ = 1025
    }
}
