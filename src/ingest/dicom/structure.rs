//! The structural pre-check run before dicom-object parses a file: every declared length fits in
//! what is left of the file (or of the inflate budget of a deflated data set), and sequences nest
//! at most [`Limits::max_depth`] deep. dicom-object allocates each value at its declared length and
//! parses nested sequences recursively, so without this check a 200-byte file declaring a 4 GiB
//! element, a deflate bomb, or 20 000 nested sequences (a stack overflow, which aborts the process)
//! would take the daemon down (reliability review #3; issue 13), and so would a file of
//! millions of empty elements (about 75 bytes of memory each once parsed).
//!
//! The walk reads element headers with dicom-encoding's decoders of the file's transfer syntax
//! (the dictionary gives implicit VRs) and mirrors dicom-parser's rules: SQ, or any undefined length
//! other than encapsulated Pixel Data, opens a sequence of items; encapsulated Pixel Data is a
//! sequence of fragments; an item delimiter outside an item is ignored; the end of the input at a
//! tag ends the data set. Values are skipped without being read (a seek in a plain file; read and
//! dropped in 8 KiB pieces from the inflater). Any other damage stops the walk and is left to the
//! parser, which names it.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use dicom_core::header::Header;
use dicom_core::{Tag, VR};
use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::IngestError;

/// Bounds of the pre-check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of sequences (a sequence inside an item of a sequence is depth 2). Real
    /// mammograms nest 3 or 4 deep; default [`MAX_DEPTH`].
    pub max_depth: usize,
    /// Most bytes a deflated data set (transfer syntax 1.2.840.10008.1.2.1.99) may inflate to.
    pub inflate_budget: u64,
    /// Most element, item and delimiter headers in the data set: dicom-object keeps about 75
    /// bytes per element (measured: 2^20 empty elements, 76 MiB), so a file of tens of millions
    /// of empty elements would otherwise take gigabytes. Real mammograms have a few hundred to a few thousand; default [`MAX_ELEMENTS`].
    pub max_elements: u64,
}

/// How much of the file a check covers: what the parse after it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Up to the top-level Pixel Data element (not included), as a header-only parse reads:
    /// a file whose Pixel Data is cut short still gives its header (and is refused later).
    Header,
    /// The whole file.
    Whole,
}

/// Default [`Limits::max_depth`].
pub const MAX_DEPTH: usize = 32;

/// Default [`Limits::max_elements`] (2^20).
pub const MAX_ELEMENTS: u64 = 1 << 20;

/// Room for the header elements beside the pixels in [`Limits::for_pixel_budget`], in bytes.
pub const HEADER_ALLOWANCE: u64 = 16 << 20;

impl Limits {
    /// Limits for a reader whose decoded image may take `max_pixel_bytes`: a deflated data set
    /// (native pixels) may inflate to that plus [`HEADER_ALLOWANCE`].
    pub fn for_pixel_budget(max_pixel_bytes: u64) -> Self {
        Limits {
            max_depth: MAX_DEPTH,
            inflate_budget: max_pixel_bytes.saturating_add(HEADER_ALLOWANCE),
            max_elements: MAX_ELEMENTS,
        }
    }
}

/// Pre-check the file at `path` up to what `scope` covers (see the module documentation).
///
/// # Errors
/// [`IngestError::Truncated`] when an element declares more bytes than the file has left,
/// [`IngestError::Damaged`] when sequences nest deeper than `limits.max_depth`, the data set
/// has more than `limits.max_elements` headers, or an element of a binary VR (US, OW, SS, AT,
/// FL, OF, SL, UL, OL, FD, OD, SV, UV, OV) declares a length that is not a whole number of values,
/// [`IngestError::InflateBudget`] when a deflated data set declares or inflates to more than
/// `limits.inflate_budget`, [`IngestError::Io`] when the file cannot be read. A file without the
/// `DICM` prefix, or with a transfer syntax dicom-rs does not know, passes unchecked: the parser
/// refuses it without reading its data set.
pub fn check(path: &Path, limits: &Limits, scope: Scope) -> Result<(), IngestError> {
    let mut file = BufReader::new(File::open(path)?);
    let size = file.get_ref().metadata()?.len();
    let mut head = [0u8; 132];
    let start = match read_full(&mut file, &mut head)? {
        132 if &head[128..132] == b"DICM" => 132,
        n if n >= 4 && &head[..4] == b"DICM" => 4,
        _ => return Ok(()),
    };
    file.seek(std::io::SeekFrom::Start(start))?;
    let Some((uid, pos)) = file_meta(&mut file, start, size)? else {
        return Ok(());
    };
    let Some(ts) = TransferSyntaxRegistry.get(&uid) else {
        return Ok(());
    };
    let Some(decoder) = ts.decoder() else {
        return Ok(());
    };
    let (kind, end, deflated) = match ts.codec() {
        Codec::Dataset(Some(adapter)) => (
            Kind::Inflated(adapter.adapt_reader(Box::new(file))),
            limits.inflate_budget,
            true,
        ),
        Codec::Dataset(None) => return Ok(()),
        _ => (Kind::Plain(file), size - pos, false),
    };
    let source = Source { kind, n: 0 };
    let mut walk = Walk {
        source,
        decoder,
        headers: 0,
        scope,
        end,
        deflated,
        limits: *limits,
    };
    walk.elements(None, 0).map(|_| ())
}

/// Walk the file meta group (explicit VR little endian) from `pos` as dicom-object reads it: a
/// first element (0002,0000) of 4 bytes gives the group length, then elements of any group are
/// read until that many bytes are consumed, each value checked against what the file has left.
/// The transfer syntax UID and the offset of the data set, or `None` when dicom-object would
/// refuse the group before allocating anything (no group length, an undefined length).
fn file_meta(
    file: &mut BufReader<File>,
    mut pos: u64,
    size: u64,
) -> Result<Option<(String, u64)>, IngestError> {
    use dicom_encoding::decode::explicit_le::ExplicitVRLittleEndianDecoder;
    use dicom_encoding::decode::Decode;
    let decoder = ExplicitVRLittleEndianDecoder::default();
    let Ok((first, n)) = decoder.decode_header(file) else {
        return Ok(None);
    };
    if first.tag != Tag(0x0002, 0x0000) || first.len.get() != Some(4) {
        return Ok(None);
    }
    let mut word = [0u8; 4];
    if read_full(file, &mut word)? < 4 {
        return Ok(None);
    }
    pos += n as u64 + 4;
    let group_length = u64::from(u32::from_le_bytes(word));
    let (mut consumed, mut uid) = (0u64, None);
    while consumed < group_length {
        let Ok((header, n)) = decoder.decode_header(file) else {
            return Ok(None);
        };
        let Some(len) = header.len.get().map(u64::from) else {
            return Ok(None);
        };
        pos += n as u64;
        fits(header.tag, len, size.saturating_sub(pos), "the file has")?;
        if header.tag == Tag(0x0002, 0x0010) && len <= 1024 {
            let mut v = vec![0u8; len as usize];
            file.read_exact(&mut v)?;
            let s = String::from_utf8_lossy(&v);
            uid = Some(s.trim_end_matches(['\0', ' ']).to_string());
        } else {
            file.seek_relative(len as i64)?;
        }
        pos += len;
        consumed = consumed.saturating_add(n as u64 + len);
    }
    Ok(uid.map(|u| (u, pos)))
}

/// `Truncated` when an element of `len` bytes does not fit in `left`.
fn fits(tag: Tag, len: u64, left: u64, what: &str) -> Result<(), IngestError> {
    if len > left {
        return Err(IngestError::Truncated {
            detail: format!("element {tag} declares {len} bytes, {what} {left} left"),
        });
    }
    Ok(())
}

/// Bytes of one value of a binary VR, as dicom-parser reads it (`None`: text or bytes).
fn value_size(vr: VR) -> Option<u64> {
    match vr {
        VR::US | VR::OW | VR::SS => Some(2),
        VR::AT | VR::FL | VR::OF | VR::SL | VR::UL | VR::OL => Some(4),
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => Some(8),
        _ => None,
    }
}

/// `Damaged` when an element of a binary VR declares a length that is not a whole number of
/// values: dicom-parser reads the whole values only and takes the bytes left over as the start
/// of the next header, from which a garbage length of gigabytes follows (found by fuzzing: an
/// AT of 10 bytes, then a 1.3 GB OB allocation).
fn whole_values(tag: Tag, vr: VR, len: u64) -> Result<(), IngestError> {
    match value_size(vr) {
        Some(k) if !len.is_multiple_of(k) => Err(IngestError::Damaged {
            detail: format!(
                "element {tag} {vr:?} declares {len} bytes, not a whole number of {k}-byte values \
                 (refused before parsing)"
            ),
        }),
        _ => Ok(()),
    }
}

/// Read until `buf` is full or the input ends; the number of bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The data set's bytes (the file itself, or the inflater over it) and how many were consumed.
struct Source {
    kind: Kind,
    /// Bytes of the data set read or skipped so far.
    n: u64,
}

enum Kind {
    Plain(BufReader<File>),
    Inflated(Box<dyn Read>),
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = match &mut self.kind {
            Kind::Plain(f) => f.read(buf)?,
            Kind::Inflated(r) => r.read(buf)?,
        };
        self.n += k as u64;
        Ok(k)
    }
}

/// How a walk over elements ended.
enum Stop {
    /// The container's length was reached, or the input ended at a tag.
    End,
    /// An item delimitation item (FFFE,E00D).
    ItemDelimiter,
}

/// A decoded header: tag, VR, length (`None`: undefined), encapsulated Pixel Data.
type Head = (Tag, VR, Option<u64>, bool);

const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_DELIMITER: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: Tag = Tag(0xFFFE, 0xE0DD);

struct Walk {
    source: Source,
    decoder: dicom_encoding::transfer_syntax::DynDecoder<dyn Read>,
    /// Headers decoded so far.
    headers: u64,
    scope: Scope,
    /// Bytes the data set may have: the file's rest, or the inflate budget.
    end: u64,
    deflated: bool,
    limits: Limits,
}

impl Walk {
    /// The next header, or `None` when the input ends or cannot be decoded (left to the parser).
    fn header(&mut self) -> Result<Option<Head>, IngestError> {
        let decoded = self.decoder.decode_header(&mut self.source);
        if self.deflated && self.pos() > self.end {
            return Err(self.over_budget());
        }
        self.headers += u64::from(decoded.is_ok());
        if self.headers > self.limits.max_elements {
            return Err(IngestError::Damaged {
                detail: format!(
                    "more than {} data elements (refused before parsing)",
                    self.limits.max_elements
                ),
            });
        }
        Ok(decoded.ok().map(|(h, _)| {
            (
                h.tag,
                h.vr,
                h.len.get().map(u64::from),
                h.is_encapsulated_pixeldata(),
            )
        }))
    }

    /// Bytes of the data set consumed.
    fn pos(&self) -> u64 {
        self.source.n
    }

    fn over_budget(&self) -> IngestError {
        IngestError::InflateBudget {
            limit: self.limits.inflate_budget,
        }
    }

    /// `len` bytes of `tag` (an element, item or sequence) fit in what is left: in the file, or
    /// in the inflate budget.
    fn room(&self, tag: Tag, len: u64) -> Result<(), IngestError> {
        let left = self.end.saturating_sub(self.pos());
        if len <= left {
            Ok(())
        } else if self.deflated {
            Err(self.over_budget())
        } else {
            fits(tag, len, left, "the file has")
        }
    }

    /// Check that `len` bytes fit, then move past them. `false` when the input ended first (a
    /// truncated deflate stream: left to the parser).
    fn skip(&mut self, tag: Tag, len: u64) -> Result<bool, IngestError> {
        self.room(tag, len)?;
        match &mut self.source.kind {
            Kind::Plain(f) => {
                f.seek_relative(len as i64)?;
                self.source.n += len;
                Ok(true)
            }
            Kind::Inflated(_) => {
                // read and dropped through the counting source, 8 KiB at a time
                let copied =
                    std::io::copy(&mut (&mut self.source).take(len), &mut std::io::sink())?;
                Ok(copied == len)
            }
        }
    }

    /// Elements up to absolute position `until` (a defined-length item), or to an item
    /// delimiter or the end of the input.
    fn elements(&mut self, until: Option<u64>, depth: usize) -> Result<Stop, IngestError> {
        loop {
            if until.is_some_and(|u| self.pos() >= u) {
                return Ok(Stop::End);
            }
            let Some((tag, vr, len, encapsulated)) = self.header()? else {
                return Ok(Stop::End);
            };
            if depth == 0 && tag == PIXEL_DATA && self.scope == Scope::Header {
                return Ok(Stop::End);
            }
            if tag == ITEM_DELIMITER {
                if depth > 0 && until.is_none() {
                    return Ok(Stop::ItemDelimiter);
                }
                continue;
            }
            let more = if encapsulated {
                self.items(tag, None, depth + 1, true)?
            } else if vr == VR::SQ || len.is_none() {
                self.items(tag, len, depth + 1, false)?
            } else {
                let len = len.unwrap_or(0);
                whole_values(tag, vr, len)?;
                self.skip(tag, len)?
            };
            if !more {
                return Ok(Stop::End);
            }
        }
    }

    /// The items of a sequence (`fragments`: of encapsulated Pixel Data) of `len` bytes or up to
    /// its sequence delimiter. `false` when the input ended inside.
    fn items(
        &mut self,
        tag: Tag,
        len: Option<u64>,
        depth: usize,
        fragments: bool,
    ) -> Result<bool, IngestError> {
        if depth > self.limits.max_depth {
            return Err(IngestError::Damaged {
                detail: format!(
                    "sequences nested deeper than {} levels (refused before parsing)",
                    self.limits.max_depth
                ),
            });
        }
        let until = match len {
            Some(len) => {
                self.room(tag, len)?;
                Some(self.pos() + len)
            }
            None => None,
        };
        loop {
            if until.is_some_and(|u| self.pos() >= u) {
                return Ok(true);
            }
            let Some((tag, _, item_len, _)) = self.header()? else {
                return Ok(false);
            };
            match (tag, item_len) {
                (SEQUENCE_DELIMITER, _) => return Ok(true),
                (ITEM, Some(n)) if fragments => {
                    if !self.skip(tag, n)? {
                        return Ok(false);
                    }
                }
                (ITEM, Some(n)) => {
                    self.room(tag, n)?;
                    let end = self.pos() + n;
                    self.elements(Some(end), depth)?;
                }
                (ITEM, None) if !fragments => {
                    if let Stop::End = self.elements(None, depth)? {
                        return Ok(false);
                    }
                }
                // anything else: damage the parser will name
                _ => return Ok(false),
            }
        }
    }
}
