//! Shared helpers: temp dirs, phantom files, external encoders, the test-data folder.

use std::path::{Path, PathBuf};
use std::process::Command;

use mammo_edge::ingest::dicom::{
    read_mammogram, IngestError, IngestOptions, Laterality, Mammogram,
};
use mammo_edge::synth::{DicomSpec, GeometricPhantom};

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A 12-bit MONOCHROME2 phantom mammogram header + pixels (`rows × columns`).
pub fn phantom(rows: usize, columns: usize, lat: Laterality) -> DicomSpec {
    let ph = GeometricPhantom::new(rows, columns, lat);
    let mut spec =
        DicomSpec::mammogram(rows, columns, DicomSpec::quantise(&ph.render(), 12, false));
    spec.image_laterality = Some(lat.to_string());
    spec
}

pub fn write(spec: &DicomSpec, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    spec.write(&p).expect("write DICOM");
    p
}

pub fn read(path: &Path) -> Mammogram {
    read_mammogram(path, &IngestOptions::default())
        .unwrap_or_else(|e| panic!("{} should be accepted: {e}", path.display()))
}

pub fn read_any(path: &Path) -> Mammogram {
    read_mammogram(path, &IngestOptions::any_image())
        .unwrap_or_else(|e| panic!("{} should decode: {e}", path.display()))
}

pub fn reject(path: &Path) -> IngestError {
    reject_with(path, &IngestOptions::default())
}

pub fn reject_with(path: &Path, opts: &IngestOptions) -> IngestError {
    match read_mammogram(path, opts) {
        Ok(_) => panic!("{} should be rejected", path.display()),
        Err(e) => e,
    }
}

/// Run an external encoder (dcmtk / GDCM, installed by .ci/run); a missing tool is a failure.
pub fn tool(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} not runnable ({e}); install dcmtk and libgdcm-tools")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Encodings made by real encoders nobody here wrote.
#[derive(Debug, Clone, Copy)]
pub enum Codec {
    JpegLosslessSv1,
    Rle,
    JpegLs,
    J2kLossless,
    J2kLossy,
    BigEndian,
    Deflate,
    JpegExtended12,
}

pub fn encode(codec: Codec, src: &Path, dst: &Path) {
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    match codec {
        Codec::JpegLosslessSv1 => tool("dcmcjpeg", &["+e1", s, d]),
        Codec::Rle => tool("dcmcrle", &[s, d]),
        Codec::JpegLs => tool("dcmcjpls", &["+el", s, d]),
        Codec::J2kLossless => tool("gdcmconv", &["--j2k", s, d]),
        Codec::J2kLossy => tool("gdcmconv", &["--j2k", "--lossy", "-q", "90", s, d]),
        Codec::BigEndian => tool("dcmconv", &["+tb", s, d]),
        Codec::Deflate => tool("dcmconv", &["+td", s, d]),
        Codec::JpegExtended12 => tool("dcmcjpeg", &["+ee", s, d]),
    }
}

/// The shared test-data folder from `MAMMO_TEST_DATA`. Unset: a failure in CI, a notice elsewhere.
pub fn data_dir() -> Option<PathBuf> {
    match std::env::var_os("MAMMO_TEST_DATA") {
        Some(d) => {
            let d = PathBuf::from(d);
            assert!(
                d.is_dir(),
                "MAMMO_TEST_DATA={} is not a folder",
                d.display()
            );
            Some(d)
        }
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "MAMMO_TEST_DATA must be set in CI (e.g. ../shared/data)"
            );
            eprintln!("MAMMO_TEST_DATA not set: real-data test not run");
            None
        }
    }
}

/// Largest absolute difference of two equally sized images.
pub fn max_abs_diff(a: &Mammogram, b: &Mammogram) -> f32 {
    assert_eq!(
        (a.image.width, a.image.height),
        (b.image.width, b.image.height)
    );
    a.image
        .data
        .iter()
        .zip(&b.image.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every value of every table of the SQLite database at `db`, as text, one per line
/// (`table.column=value`): for tests that no identifier is kept at rest (review #13).
pub fn database_text(db: &Path) -> String {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the state database");
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = String::new();
    for t in tables {
        let mut st = c.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let cols: Vec<String> = st.column_names().map(|s| s.to_string()).collect();
        let mut rows = st.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            for (i, col) in cols.iter().enumerate() {
                let v = match r.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => {
                        String::from_utf8_lossy(b).into_owned()
                    }
                    rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                    rusqlite::types::ValueRef::Real(x) => x.to_string(),
                    rusqlite::types::ValueRef::Null => continue,
                };
                out.push_str(&format!("{t}.{col}={v}\n"));
            }
        }
    }
    out
}
