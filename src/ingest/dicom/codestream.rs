//! Header sniffing of encapsulated pixel data (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ) so that a
//! fragment whose codec or size disagrees with the DICOM header is rejected before a decoder
//! allocates or indexes past its buffer. Decoding itself is left to dicom-pixeldata.
//! Marker layouts: ITU-T T.81 B.2.2 (SOF), T.87 (SOF55), ITU-T T.800 A.5.1 (SIZ), ISO 15444-1 I.5 (JP2 boxes).

/// What a fragment's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodestreamKind {
    /// ISO 10918 JPEG with its SOF marker number (0xC0 baseline, 0xC1 extended, 0xC3 lossless …).
    Jpeg { sof: u8 },
    /// JPEG-LS (SOF55, 0xF7).
    JpegLs,
    /// JPEG 2000 codestream, bare (`FF4F FF51`) or wrapped in a JP2 file.
    Jpeg2000 { jp2_wrapped: bool },
    /// Anything else (RLE, deflate or garbage).
    Unknown,
}

/// Image geometry read from a codestream header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodestreamInfo {
    pub kind: CodestreamKind,
    /// Width in pixels (JPEG X, J2K Xsiz − XOsiz).
    pub width: u32,
    /// Height in pixels (JPEG Y, J2K Ysiz − YOsiz).
    pub height: u32,
    /// Sample precision in bits (JPEG P; J2K Ssiz + 1 of the first component).
    pub precision: u8,
    /// Number of components.
    pub components: u16,
}

fn be16(b: &[u8], i: usize) -> Option<u32> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as u32)
}

fn be32(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(i)?,
        *b.get(i + 1)?,
        *b.get(i + 2)?,
        *b.get(i + 3)?,
    ]))
}

const JP2_SIGNATURE: [u8; 12] = [0, 0, 0, 12, b'j', b'P', b' ', b' ', 0x0d, 0x0a, 0x87, 0x0a];

/// Read the geometry of the first frame's codestream; `None` when the header cannot be read
/// (the kind is still reported through [`sniff_kind`]).
pub fn sniff(fragment: &[u8]) -> Option<CodestreamInfo> {
    match sniff_kind(fragment) {
        CodestreamKind::Jpeg { .. } | CodestreamKind::JpegLs => sniff_jpeg(fragment),
        CodestreamKind::Jpeg2000 { jp2_wrapped } => {
            let start = if jp2_wrapped {
                find(fragment, &[0xff, 0x4f, 0xff, 0x51])?
            } else {
                0
            };
            sniff_siz(&fragment[start..], jp2_wrapped)
        }
        CodestreamKind::Unknown => None,
    }
}

/// Classify a fragment by its magic bytes.
pub fn sniff_kind(fragment: &[u8]) -> CodestreamKind {
    if fragment.starts_with(&[0xff, 0x4f, 0xff, 0x51]) {
        return CodestreamKind::Jpeg2000 { jp2_wrapped: false };
    }
    if fragment.starts_with(&JP2_SIGNATURE) {
        return CodestreamKind::Jpeg2000 { jp2_wrapped: true };
    }
    if fragment.starts_with(&[0xff, 0xd8]) {
        return match sniff_jpeg(fragment) {
            Some(info) => info.kind,
            None => CodestreamKind::Jpeg { sof: 0 },
        };
    }
    CodestreamKind::Unknown
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn sniff_siz(cs: &[u8], jp2_wrapped: bool) -> Option<CodestreamInfo> {
    // FF4F (SOC), FF51 (SIZ), Lsiz(2) Rsiz(2) Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz(2) Ssiz(1)…
    let x = be32(cs, 8)?;
    let y = be32(cs, 12)?;
    let xo = be32(cs, 16)?;
    let yo = be32(cs, 20)?;
    let csiz = be16(cs, 40)? as u16;
    let ssiz = *cs.get(42)?;
    Some(CodestreamInfo {
        kind: CodestreamKind::Jpeg2000 { jp2_wrapped },
        width: x.checked_sub(xo)?,
        height: y.checked_sub(yo)?,
        precision: (ssiz & 0x7f) + 1,
        components: csiz,
    })
}

/// The number of wavelet decomposition levels of a JPEG 2000 codestream (bare or JP2-wrapped):
/// the NL field of the COD marker of the main header (ITU-T T.800 A.6.1), i.e. how many times
/// the decoder can halve the resolution (`reduce` ≤ NL). `None` when no COD marker precedes the
/// first tile (SOT) or the header is cut short. A COC marker may lower NL for one component;
/// mammograms have one component and the caller falls back to a full decode on any error.
pub fn j2k_decomposition_levels(fragment: &[u8]) -> Option<u8> {
    let start = match sniff_kind(fragment) {
        CodestreamKind::Jpeg2000 { jp2_wrapped: false } => 0,
        CodestreamKind::Jpeg2000 { jp2_wrapped: true } => {
            find(fragment, &[0xff, 0x4f, 0xff, 0x51])?
        }
        _ => return None,
    };
    let cs = &fragment[start..];
    let mut i = 2; // after SOC
    while i + 4 <= cs.len() {
        if cs[i] != 0xff {
            return None;
        }
        let marker = cs[i + 1];
        match marker {
            0x52 => return cs.get(i + 9).copied(), // COD: Lcod(2) Scod(1) SGcod(4) SPcod: NL …
            0x90 | 0x93 | 0xd9 => return None,     // SOT, SOD, EOC: main header over
            _ => i += 2 + be16(cs, i + 2)? as usize,
        }
    }
    None
}

fn sniff_jpeg(b: &[u8]) -> Option<CodestreamInfo> {
    let mut i = 2;
    while i + 4 <= b.len() {
        if b[i] != 0xff {
            return None;
        }
        let marker = b[i + 1];
        if marker == 0xff {
            i += 1;
            continue;
        }
        let len = be16(b, i + 2)? as usize;
        let is_sof = matches!(marker, 0xc0..=0xcf) && !matches!(marker, 0xc4 | 0xc8 | 0xcc);
        if is_sof || marker == 0xf7 {
            let kind = if marker == 0xf7 {
                CodestreamKind::JpegLs
            } else {
                CodestreamKind::Jpeg { sof: marker }
            };
            return Some(CodestreamInfo {
                kind,
                precision: *b.get(i + 4)?,
                height: be16(b, i + 5)?,
                width: be16(b, i + 7)?,
                components: *b.get(i + 9)? as u16,
            });
        }
        if marker == 0xda {
            return None; // scan before any frame header
        }
        i += 2 + len;
    }
    None
}

/// The decoded length of each segment of one RLE Lossless frame (PS3.5 Annex G): the 64-byte
/// header (segment count ≤ 15, offsets) and a count of what each PackBits segment expands to,
/// without writing it. `None` when the header is unusable (count 0 or over 15, offsets out of
/// order or past the fragment). Lets the caller refuse a frame whose segments are shorter than
/// Rows × Columns before dicom-rs's RLE decoder indexes past them (a panic found by fuzzing).
pub fn rle_segment_lengths(fragment: &[u8]) -> Option<Vec<usize>> {
    let word = |i: usize| {
        fragment
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    if count == 0 || count > 15 {
        return None;
    }
    let mut offsets: Vec<usize> = (1..=count).map(word).collect::<Option<_>>()?;
    offsets.push(fragment.len());
    if offsets[0] < 64 || offsets.windows(2).any(|w| w[0] > w[1]) {
        return None;
    }
    Some(
        offsets
            .windows(2)
            .map(|w| packbits_len(&fragment[w[0]..w[1]]))
            .collect(),
    )
}

/// Bytes a PackBits run expands to: n in 0..=127 copies n + 1 literal bytes, n in -127..=-1
/// repeats the next byte 1 − n times, -128 is skipped (PS3.5 G.3.1).
fn packbits_len(seg: &[u8]) -> usize {
    let (mut i, mut out) = (0usize, 0usize);
    while i < seg.len() {
        let n = seg[i] as i8;
        i += 1;
        match n {
            0..=127 => {
                let k = (n as usize + 1).min(seg.len() - i);
                out += k;
                i += k;
            }
            -127..=-1 if i < seg.len() => {
                out += (1 - n as isize) as usize;
                i += 1;
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jpeg_sof3_and_j2k_siz() {
        // SOI, SOF3 len 11: P=12, Y=300, X=200, Nf=1
        let jpeg = [
            0xff, 0xd8, 0xff, 0xc3, 0, 11, 12, 0x01, 0x2c, 0x00, 0xc8, 1, 1, 0x11, 0,
        ];
        let info = sniff(&jpeg).unwrap();
        assert_eq!(info.kind, CodestreamKind::Jpeg { sof: 0xc3 });
        assert_eq!((info.width, info.height, info.precision), (200, 300, 12));

        let mut j2k = vec![0xff, 0x4f, 0xff, 0x51, 0, 41, 0, 0];
        for v in [640u32, 480, 0, 0, 640, 480, 0, 0] {
            j2k.extend_from_slice(&v.to_be_bytes());
        }
        j2k.extend_from_slice(&[0, 1, 15, 1, 1]);
        let info = sniff(&j2k).unwrap();
        assert_eq!(info.kind, CodestreamKind::Jpeg2000 { jp2_wrapped: false });
        assert_eq!((info.width, info.height, info.precision), (640, 480, 16));
        assert_eq!(sniff_kind(b"garbage"), CodestreamKind::Unknown);
        assert_eq!(
            j2k_decomposition_levels(&j2k),
            None,
            "no COD before the end"
        );
        // COD: Lcod 12, Scod 0, LRCP, 1 layer, no MCT, NL 5, then SOT
        j2k.extend_from_slice(&[0xff, 0x52, 0, 12, 0, 0, 0, 1, 0, 5, 4, 4, 0, 0]);
        j2k.extend_from_slice(&[0xff, 0x90, 0, 10]);
        assert_eq!(j2k_decomposition_levels(&j2k), Some(5));
        assert_eq!(j2k_decomposition_levels(&jpeg), None);
    }
}
