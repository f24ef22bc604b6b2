//! Hostile files (reliability review #3, issue 13): declared lengths larger than the file, a
//! deflate bomb and sequences nested 20 000 deep. Each is refused with its reason before
//! dicom-object allocates or recurses, by [`read_mammogram`] and by `mammo-edge inspect`, whose
//! peak memory (the child's `ru_maxrss`) stays near that of reading a small valid file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use mammo_edge::ingest::dicom::structure::{self, Limits, Scope};
use mammo_edge::ingest::dicom::{Category, IngestError, Laterality};

use crate::util::*;

const SOP_CLASS: &[u8] = b"1.2.840.10008.5.1.4.1.1.1.2\0";
const SOP_INSTANCE: &[u8] = b"1.2.826.0.1.3680043.9.9999.1";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

/// An element in explicit VR little endian (the long header for OB, OW, SQ, UN, UT).
fn el(out: &mut Vec<u8>, tag: (u16, u16), vr: &[u8; 2], value: &[u8]) {
    header(out, tag, vr, value.len() as u32);
    out.extend(value);
}

/// An element header in explicit VR little endian declaring `len` bytes.
fn header(out: &mut Vec<u8>, tag: (u16, u16), vr: &[u8; 2], len: u32) {
    out.extend(tag.0.to_le_bytes());
    out.extend(tag.1.to_le_bytes());
    out.extend(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        out.extend([0, 0]);
        out.extend(len.to_le_bytes());
    } else {
        out.extend((len as u16).to_le_bytes());
    }
}

/// Preamble, `DICM` and a file meta group naming transfer syntax `ts`.
fn preamble_and_meta(ts: &str) -> Vec<u8> {
    let mut ts = ts.as_bytes().to_vec();
    if ts.len() % 2 == 1 {
        ts.push(0);
    }
    let mut meta = Vec::new();
    el(&mut meta, (2, 1), b"OB", &[0, 1]);
    el(&mut meta, (2, 2), b"UI", SOP_CLASS);
    el(&mut meta, (2, 3), b"UI", SOP_INSTANCE);
    el(&mut meta, (2, 0x10), b"UI", &ts);
    let mut out = vec![0u8; 128];
    out.extend(b"DICM");
    el(&mut out, (2, 0), b"UL", &(meta.len() as u32).to_le_bytes());
    out.extend(meta);
    out
}

/// The first elements of a mammogram's data set (explicit VR little endian).
fn identity() -> Vec<u8> {
    let mut out = Vec::new();
    el(&mut out, (8, 0x16), b"UI", SOP_CLASS);
    el(&mut out, (8, 0x18), b"UI", SOP_INSTANCE);
    el(&mut out, (8, 0x60), b"CS", b"MG");
    out
}

/// A DICOM file whose data set nests `depth` sequences (each an undefined-length (0008,1140)
/// SQ holding one undefined-length item). Without the pre-check, dicom-object recurses once per
/// level and at 20 000 levels overflows its thread's stack, which aborts the process.
pub(crate) fn deeply_nested_dicom(path: &Path, depth: usize) {
    let mut out = preamble_and_meta(EXPLICIT_LE);
    out.extend(identity());
    let undefined = 0xFFFF_FFFFu32.to_le_bytes();
    for _ in 0..depth {
        out.extend([0x08, 0x00, 0x40, 0x11]);
        out.extend(b"SQ\0\0");
        out.extend(undefined);
        out.extend([0xFE, 0xFF, 0x00, 0xE0]);
        out.extend(undefined);
    }
    for _ in 0..depth {
        out.extend([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        out.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    }
    std::fs::write(path, out).unwrap();
}

/// `mammo-edge inspect --json FILE`: its one JSON line and its peak resident memory in KiB.
// the child is reaped by wait4 (for its rusage), which clippy does not see
#[allow(clippy::zombie_processes)]
fn inspect_peak(path: &Path) -> (serde_json::Value, i64) {
    use std::os::unix::process::ExitStatusExt;
    let child = Command::new(env!("CARGO_BIN_EXE_mammo-edge"))
        .args(["inspect", "--json"])
        .arg(path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
    let mut status = 0;
    // SAFETY: plain FFI with pointers to locals; the child is ours and not yet reaped.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4");
    let status = std::process::ExitStatus::from_raw(status);
    assert!(
        status.code().is_some(),
        "inspect was killed by a signal: {status:?} (stack overflow or out of memory)"
    );
    let line = text.lines().next().unwrap_or_else(|| panic!("no output"));
    (serde_json::from_str(line).unwrap(), usage.ru_maxrss)
}

/// Peak memory of `inspect` on a small valid phantom, the larger of two runs (loading the binary
/// with LibTorch varies by some 30 MiB): the baseline the hostile files are held to.
fn baseline_peak_kib(dir: &Path) -> i64 {
    let ok = write(&phantom(120, 100, Laterality::L), dir, "ok.dcm");
    (0..2)
        .map(|_| {
            let (json, peak) = inspect_peak(&ok);
            assert_eq!(json["status"], "accepted", "{json}");
            peak
        })
        .max()
        .unwrap()
}

fn assert_reason(e: &IngestError, code: &str, text: &str) {
    assert_eq!(e.code(), code, "{e}");
    assert_eq!(e.category(), Category::Error, "{e}");
    assert!(e.to_string().contains(text), "{e} should mention {text:?}");
}

/// The rejected line of `inspect` for `path`, and its peak memory above the baseline, in MiB.
fn inspect_rejected(path: &Path, dir: &Path, code: &str) -> (serde_json::Value, f64) {
    let base = baseline_peak_kib(dir);
    let (json, peak) = inspect_peak(path);
    eprintln!(
        "inspect peak RSS: {} KiB for {}, {base} KiB for a small valid file",
        peak,
        path.display()
    );
    assert_eq!(json["status"], "rejected", "{json}");
    assert_eq!(json["code"], code, "{json}");
    (json, (peak - base) as f64 / 1024.0)
}

#[test]
fn fuzz_regression_declared_ob_length_is_truncated_before_any_allocation() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions/dicom-oom-declared-ob-length.dcm");
    let size = std::fs::metadata(&p).unwrap().len();
    assert!(size < 64 << 10, "{size}");
    let e = reject(&p);
    assert_reason(&e, "truncated", "declares");
    // the declared length is named with what the file really has left
    assert!(
        e.to_string()
            .contains("(0008,0070) declares 1330401096 bytes, the file has 25590 left"),
        "{e}"
    );
}

fn four_gib_declared(ts: &str, dir: &Path) -> PathBuf {
    let mut out = preamble_and_meta(ts);
    let mut data = identity();
    if ts == IMPLICIT_LE {
        // implicit VR: tag and a 4-byte length; (0029,1010) is private, read as UN
        data.clear();
        for (tag, v) in [(0x16u16, SOP_CLASS), (0x18, SOP_INSTANCE)] {
            data.extend([8, 0]);
            data.extend(tag.to_le_bytes());
            data.extend((v.len() as u32).to_le_bytes());
            data.extend(v);
        }
        data.extend([0x29, 0x00, 0x10, 0x10]);
        data.extend(0xFFFF_FFF0u32.to_le_bytes());
    } else {
        header(&mut data, (0x29, 0x1010), b"OB", 0xFFFF_FFF0);
    }
    data.extend([0x5Au8; 100]);
    out.extend(data);
    let p = dir.join(format!("declares-4gib-{ts}.dcm"));
    std::fs::write(&p, out).unwrap();
    p
}

#[test]
fn a_small_file_declaring_a_4_gib_element_is_truncated_in_either_vr_encoding() {
    let d = tmp();
    for ts in [EXPLICIT_LE, IMPLICIT_LE] {
        let p = four_gib_declared(ts, d.path());
        assert!(std::fs::metadata(&p).unwrap().len() < 512);
        let e = reject(&p);
        assert_reason(&e, "truncated", "(0029,1010) declares 4294967280 bytes");
        assert!(e.to_string().contains("100 left"), "{e}");
    }
    let (json, over) = inspect_rejected(
        &four_gib_declared(EXPLICIT_LE, d.path()),
        d.path(),
        "truncated",
    );
    assert!(
        over < 48.0,
        "inspect peaked {over:.1} MiB above the baseline: {json}"
    );
}

/// A deflated data set (raw deflate, PS3.5 A.5) of the identity elements and `blocks` private OB
/// elements of 64 MiB of zeros each: a few hundred KiB on disk.
fn deflate_bomb(path: &Path, blocks: u16) {
    let mut out = preamble_and_meta(DEFLATED);
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&identity()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for i in 0..blocks {
        let mut h = Vec::new();
        header(&mut h, (0x29, 0x1010 + i), b"OB", 64 << 20);
        z.write_all(&h).unwrap();
        for _ in 0..64 {
            z.write_all(&zeros).unwrap();
        }
    }
    out.extend(z.finish().unwrap());
    std::fs::write(path, out).unwrap();
}

#[test]
fn a_deflate_bomb_is_refused_within_the_inflate_budget() {
    let d = tmp();
    let p = d.path().join("bomb.dcm");
    // 8 x 64 MiB = 512 MiB inflated; each element alone is within the 144 MiB budget
    deflate_bomb(&p, 8);
    let size = std::fs::metadata(&p).unwrap().len();
    assert!(size < 4 << 20, "{size} bytes on disk, 512 MiB inflated");
    let e = reject(&p);
    assert_reason(
        &e,
        "over_pixel_budget",
        "inflates to more than 150994944 bytes",
    );
    let (json, over) = inspect_rejected(&p, d.path(), "over_pixel_budget");
    // dicom-object alone would hold the 512 MiB it inflated
    assert!(
        over < 48.0,
        "inspect peaked {over:.1} MiB above the baseline: {json}"
    );

    // a small deflated file under the budget is not refused by the pre-check
    let small = d.path().join("small.dcm");
    deflate_bomb(&small, 1);
    assert_eq!(
        structure::check(&small, &Limits::for_pixel_budget(128 << 20), Scope::Whole)
            .map_err(|e| e.code()),
        Ok(())
    );
    // and a smaller budget refuses it
    let e =
        structure::check(&small, &Limits::for_pixel_budget(32 << 20), Scope::Whole).unwrap_err();
    assert_reason(&e, "over_pixel_budget", "50331648");
}

#[test]
fn sequences_nested_20000_deep_are_damaged_not_a_stack_overflow() {
    let d = tmp();
    let p = d.path().join("nested.dcm");
    deeply_nested_dicom(&p, 20_000);
    let e = reject(&p);
    assert_reason(&e, "damaged", "sequences nested deeper than 32 levels");
    let (json, over) = inspect_rejected(&p, d.path(), "damaged");
    assert!(over < 48.0, "{over:.1} MiB: {json}");
}

#[test]
fn nesting_limit_is_exact() {
    let d = tmp();
    let p = d.path().join("nested.dcm");
    let limits = Limits {
        max_depth: 5,
        inflate_budget: 1 << 20,
        max_elements: 1000,
    };
    deeply_nested_dicom(&p, 5);
    structure::check(&p, &limits, Scope::Whole).unwrap();
    deeply_nested_dicom(&p, 6);
    let e = structure::check(&p, &limits, Scope::Whole).unwrap_err();
    assert_reason(&e, "damaged", "deeper than 5 levels");
    // the default limit accepts what real files have (3-4 levels) and far more
    deeply_nested_dicom(&p, 32);
    structure::check(&p, &Limits::for_pixel_budget(1 << 20), Scope::Whole).unwrap();
}

#[test]
fn millions_of_empty_elements_are_refused_before_parsing() {
    let d = tmp();
    let p = d.path().join("many.dcm");
    let mut out = preamble_and_meta(EXPLICIT_LE);
    out.extend(identity());
    // 2^20 + 1 empty private elements of 8 bytes each, all different tags (dicom-object keeps
    // one per tag): 8 MiB on disk, 76 MiB more resident once parsed (measured with inspect)
    let tags = (0..).flat_map(|k: u16| (0x1000..=0xFFFFu16).map(move |e| (0x29 + 2 * k, e)));
    for tag in tags.take((1 << 20) + 1) {
        header(&mut out, tag, b"LO", 0);
    }
    std::fs::write(&p, out).unwrap();
    let e = reject(&p);
    assert_reason(&e, "damaged", "more than 1048576 data elements");
    let (json, over) = inspect_rejected(&p, d.path(), "damaged");
    assert!(over < 48.0, "{over:.1} MiB: {json}");
    // a smaller limit is exact: the identity elements and 7 more pass 10
    let small = d.path().join("ten.dcm");
    let mut out = preamble_and_meta(EXPLICIT_LE);
    out.extend(identity());
    for _ in 0..7 {
        header(&mut out, (0x29, 0x1010), b"LO", 0);
    }
    std::fs::write(&small, &out).unwrap();
    let limits = |n| Limits {
        max_elements: n,
        ..Limits::for_pixel_budget(1 << 20)
    };
    structure::check(&small, &limits(10), Scope::Whole).unwrap();
    let e = structure::check(&small, &limits(9), Scope::Whole).unwrap_err();
    assert_reason(&e, "damaged", "more than 9 data elements");
}

#[test]
fn a_cut_short_pixel_data_keeps_its_header_and_is_refused_as_truncated() {
    let d = tmp();
    let mut out = preamble_and_meta(EXPLICIT_LE);
    out.extend(identity());
    header(&mut out, (0x7FE0, 0x0010), b"OW", 0xFFFF_FFF0);
    out.extend([0u8; 64]);
    let p = d.path().join("cut.dcm");
    std::fs::write(&p, out).unwrap();
    let limits = Limits::for_pixel_budget(128 << 20);
    // the header parse stops before Pixel Data, so the header check lets it through …
    structure::check(&p, &limits, Scope::Header).unwrap();
    // … and the whole-file check refuses it before Pixel Data is read
    let e = structure::check(&p, &limits, Scope::Whole).unwrap_err();
    assert_reason(&e, "truncated", "(7FE0,0010) declares 4294967280 bytes");
}

/// Found by fuzzing (session 7, 3646 executions): an element of another group inside the file
/// meta group's length. dicom-object reads the meta group by its length, whatever the groups
/// inside; the pre-check stopped at the first element outside group 0002, found no transfer
/// syntax and let the file through, and the parser then allocated an OB's declared 1.4 GB.
#[test]
fn an_off_group_element_inside_the_meta_group_does_not_hide_the_data_set() {
    let d = tmp();
    let mut meta = Vec::new();
    el(&mut meta, (2, 1), b"OB", &[0, 1]);
    el(&mut meta, (0, 0), b"UI", b"1.2.3.4\0");
    el(&mut meta, (2, 0x10), b"UI", b"1.2.840.10008.1.2.1\0");
    let mut out = vec![0u8; 128];
    out.extend(b"DICM");
    el(&mut out, (2, 0), b"UL", &(meta.len() as u32).to_le_bytes());
    out.extend(meta);
    out.extend(identity());
    header(&mut out, (0x0060, 0x5343), b"OB", 1_414_283_264);
    out.extend([0u8; 100]);
    let p = d.path().join("off-group-meta.dcm");
    std::fs::write(&p, out).unwrap();
    let e = reject(&p);
    assert_reason(&e, "truncated", "(0060,5343) declares 1414283264 bytes");
}

/// Fuzz finding (session 8, `dicom` target, 5393 executions): an AT element of 10 bytes. dicom-
/// parser reads two 4-byte tags and takes the 2 bytes left over as the start of the next header;
/// the element after it, read 2 bytes early, becomes an OB of 0x5000_0000 bytes (1.3 GB), which
/// it allocated and zeroed. The pattern is rebuilt here from scratch (the crashing input was a
/// mutation of a shared-data file, not kept). Refused as `damaged` before parsing, in bounded
/// memory.
#[test]
fn a_binary_value_of_a_broken_length_is_damaged_before_the_parser_loses_its_place() {
    let d = tmp();
    let mut out = preamble_and_meta(EXPLICIT_LE);
    out.extend(identity());
    // (0018,1403) AT of 10 bytes: two tags, then the bytes `M ` that dicom-parser reads as the
    // group of the next tag
    el(&mut out, (0x0018, 0x1403), b"AT", b"5CMX35CMM ");
    // (0018,424F) OB of 0x5000 bytes, read 2 bytes early: tag (204D,0018), VR "OB" (the element
    // number's bytes), and a length of 0x5000_0000
    el(&mut out, (0x0018, 0x424F), b"OB", &[0u8; 0x5000]);
    let p = d.path().join("at-10-bytes.dcm");
    std::fs::write(&p, &out).unwrap();
    let e = reject(&p);
    assert_reason(&e, "damaged", "(0018,1403) AT declares 10 bytes");
    let (_, over) = inspect_rejected(&p, d.path(), "damaged");
    assert!(
        over < 48.0,
        "inspect peaked {over:.0} MiB above a valid file's"
    );
    // whole values of every binary VR pass the check
    let mut ok = preamble_and_meta(EXPLICIT_LE);
    ok.extend(identity());
    el(&mut ok, (0x0018, 0x1403), b"AT", b"5CMX35CM");
    el(&mut ok, (0x0018, 0x6000), b"FD", &1.5f64.to_le_bytes());
    let p = d.path().join("at-8-bytes.dcm");
    std::fs::write(&p, &ok).unwrap();
    structure::check(&p, &Limits::for_pixel_budget(1 << 20), Scope::Whole).unwrap();
}
