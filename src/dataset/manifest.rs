//! The dataset manifest CSV of DESIGN.md ("Training"): header exactly
//! `path,patient_id,study_uid,laterality,view,vendor,density,percent_density,cancer,normal,mask_path,split`
//! (extra columns allowed after these); an empty cell is a missing label; paths are relative to the
//! manifest's folder. Written by the phantom generator and the importers, read by the trainer.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::ingest::dicom::{Laterality, Vendor, View};
use crate::model::labels::{Density, Split};

/// The standard columns, in order.
pub const COLUMNS: [&str; 12] = [
    "path",
    "patient_id",
    "study_uid",
    "laterality",
    "view",
    "vendor",
    "density",
    "percent_density",
    "cancer",
    "normal",
    "mask_path",
    "split",
];

/// Errors reading or writing a manifest; messages name the line and column.
#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("{path}: {error}")]
    Csv { path: String, error: csv::Error },
    #[error("{path}: header must start with {expected}, found {found}")]
    Header {
        path: String,
        expected: String,
        found: String,
    },
    #[error("{path} line {line}: column {column}: {detail}")]
    Value {
        path: String,
        line: u64,
        column: &'static str,
        detail: String,
    },
    #[error("rows have different extra columns ({0})")]
    ExtraColumns(String),
}

/// One image of the manifest. `None` = missing label (empty cell).
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestRow {
    /// Path of the DICOM file, relative to the manifest's folder.
    pub path: String,
    pub patient_id: String,
    pub study_uid: String,
    pub laterality: Option<Laterality>,
    pub view: Option<View>,
    pub vendor: Option<Vendor>,
    /// BI-RADS density A–D.
    pub density: Option<Density>,
    /// Percent density, 0–100 %.
    pub percent_density: Option<f64>,
    /// Malignant finding present (0/1).
    pub cancer: Option<bool>,
    /// No finding at all (0/1).
    pub normal: Option<bool>,
    /// Dense-tissue mask (PNG: 255 = dense tissue, 128 = other breast tissue, 0 = outside the
    /// breast), relative to the manifest's folder.
    pub mask_path: Option<String>,
    pub split: Split,
    /// Extra columns after the standard ones, `(name, value)`, same names in every row.
    pub extra: Vec<(String, String)>,
}

impl ManifestRow {
    /// The value of the extra column `name`, when present and not empty.
    pub fn extra(&self, name: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Where the image comes from, for the source head and per-source evaluation: the extra
    /// column `source` (importers write e.g. `rsna-m49`, `mias`, `ddsm-howtek`), else the vendor.
    pub fn source(&self) -> Option<String> {
        self.extra("source")
            .map(String::from)
            .or_else(|| self.vendor.map(|v| v.as_str().to_string()))
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_default()
}

fn bit(v: Option<bool>) -> String {
    v.map(|b| if b { "1" } else { "0" }.to_string())
        .unwrap_or_default()
}

/// Write rows to `path` (standard header + the first row's extra column names).
pub fn write(path: &Path, rows: &[ManifestRow]) -> Result<(), ManifestError> {
    let err = |error| ManifestError::Csv {
        path: path.display().to_string(),
        error,
    };
    let mut w = csv::Writer::from_path(path).map_err(err)?;
    let extra: Vec<String> = rows
        .first()
        .map(|r| r.extra.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let header: Vec<&str> = COLUMNS
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .collect();
    w.write_record(&header).map_err(err)?;
    for r in rows {
        let names: Vec<&String> = r.extra.iter().map(|(k, _)| k).collect();
        if names.len() != extra.len() || names.iter().zip(&extra).any(|(a, b)| *a != b) {
            return Err(ManifestError::ExtraColumns(r.path.clone()));
        }
        let mut rec = vec![
            r.path.clone(),
            r.patient_id.clone(),
            r.study_uid.clone(),
            opt(&r.laterality),
            opt(&r.view),
            opt(&r.vendor),
            opt(&r.density),
            r.percent_density
                .map(|v| format!("{v:.3}"))
                .unwrap_or_default(),
            bit(r.cancer),
            bit(r.normal),
            opt(&r.mask_path),
            r.split.as_str().to_string(),
        ];
        rec.extend(r.extra.iter().map(|(_, v)| v.clone()));
        w.write_record(&rec).map_err(err)?;
    }
    w.flush().map_err(|e| err(e.into()))
}

/// Read a manifest; checks the header and every standard cell.
pub fn read(path: &Path) -> Result<Vec<ManifestRow>, ManifestError> {
    let p = path.display().to_string();
    let err = |error| ManifestError::Csv {
        path: p.clone(),
        error,
    };
    let mut r = csv::Reader::from_path(path).map_err(err)?;
    let header: Vec<String> = r.headers().map_err(err)?.iter().map(String::from).collect();
    if header.len() < COLUMNS.len() || header[..COLUMNS.len()] != COLUMNS {
        return Err(ManifestError::Header {
            path: p.clone(),
            expected: COLUMNS.join(","),
            found: header.join(","),
        });
    }
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(err)?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let bad = |column: &'static str, detail: String| ManifestError::Value {
            path: p.clone(),
            line,
            column,
            detail,
        };
        let cell = |i: usize| rec.get(i).unwrap_or("").trim();
        let parse_opt = |i: usize, f: &dyn Fn(&str) -> Option<()>| -> Result<(), ManifestError> {
            let v = cell(i);
            if v.is_empty() || f(v).is_some() {
                Ok(())
            } else {
                Err(bad(COLUMNS[i], format!("invalid value {v:?}")))
            }
        };
        let nonempty = |i: usize| (!cell(i).is_empty()).then(|| cell(i).to_string());
        parse_opt(3, &|v| Laterality::from_code(v).map(|_| ()))?;
        let view = match cell(4) {
            "" => None,
            v => Some(
                serde_json::from_value::<View>(serde_json::Value::String(v.to_string())).map_err(
                    |_| {
                        bad(
                            "view",
                            format!("{v:?} is not CC, MLO, ML, LM, XCCL or other"),
                        )
                    },
                )?,
            ),
        };
        let vendor = match cell(5) {
            "" => None,
            v => Some(
                serde_json::from_value::<Vendor>(serde_json::Value::String(v.to_string()))
                    .map_err(|_| bad("vendor", format!("{v:?} is not in the vendor vocabulary")))?,
            ),
        };
        let density = match cell(6) {
            "" => None,
            v => {
                Some(Density::parse(v).ok_or_else(|| bad("density", format!("{v:?} is not A-D")))?)
            }
        };
        let percent_density = match cell(7) {
            "" => None,
            v => {
                let x: f64 = v
                    .parse()
                    .map_err(|_| bad("percent_density", format!("{v:?} is not a number")))?;
                if !(0.0..=100.0).contains(&x) {
                    return Err(bad("percent_density", format!("{x} is outside 0-100")));
                }
                Some(x)
            }
        };
        let flag = |i: usize| -> Result<Option<bool>, ManifestError> {
            match cell(i) {
                "" => Ok(None),
                "0" => Ok(Some(false)),
                "1" => Ok(Some(true)),
                v => Err(bad(COLUMNS[i], format!("{v:?} is not 0 or 1"))),
            }
        };
        let split = match cell(11) {
            "train" => Split::Train,
            "val" => Split::Val,
            "test" => Split::Test,
            v => return Err(bad("split", format!("{v:?} is not train/val/test"))),
        };
        rows.push(ManifestRow {
            path: nonempty(0).ok_or_else(|| bad("path", "empty".into()))?,
            patient_id: cell(1).to_string(),
            study_uid: cell(2).to_string(),
            laterality: Laterality::from_code(cell(3)),
            view,
            vendor,
            density,
            percent_density,
            cancer: flag(8)?,
            normal: flag(9)?,
            mask_path: nonempty(10),
            split,
            extra: header[COLUMNS.len()..]
                .iter()
                .enumerate()
                .map(|(j, k)| {
                    (
                        k.clone(),
                        rec.get(COLUMNS.len() + j).unwrap_or("").to_string(),
                    )
                })
                .collect(),
        });
    }
    Ok(rows)
}

/// Rows of several manifests as one manifest in folder `out_dir`: image and mask paths re-based
/// from each input's folder to `out_dir`, extra columns unified (their union in first-seen order,
/// an empty cell where a row lacks one). With `hold_out = Some((column, value))` every row whose
/// extra `column` equals `value` goes to the `test` split (a whole machine or data set never
/// trained on: the seed's unseen vendor).
pub fn merge(
    inputs: &[PathBuf],
    out_dir: &Path,
    hold_out: Option<(&str, &str)>,
) -> Result<Vec<ManifestRow>, ManifestError> {
    let mut rows = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for input in inputs {
        let dir = input.parent().unwrap_or(Path::new("."));
        let rebase = |p: &str| {
            let abs = std::path::absolute(dir.join(p)).unwrap_or_else(|_| dir.join(p));
            let base = std::path::absolute(out_dir).unwrap_or_else(|_| out_dir.to_path_buf());
            pathdiff::diff_paths(&abs, &base)
                .unwrap_or(abs)
                .to_string_lossy()
                .replace('\\', "/")
        };
        for mut r in read(input)? {
            r.path = rebase(&r.path);
            r.mask_path = r.mask_path.as_deref().map(rebase);
            for (k, _) in &r.extra {
                if !names.contains(k) {
                    names.push(k.clone());
                }
            }
            rows.push(r);
        }
    }
    for r in &mut rows {
        let extra = std::mem::take(&mut r.extra);
        r.extra = names
            .iter()
            .map(|n| {
                let v = extra.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                (n.clone(), v.unwrap_or_default())
            })
            .collect();
        if let Some((column, value)) = hold_out {
            if r.extra.iter().any(|(k, v)| k == column && v == value) {
                r.split = Split::Test;
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors_name_line_and_column() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.csv");
        let row = ManifestRow {
            path: "a.dcm".into(),
            patient_id: "P1".into(),
            study_uid: "1.2.3".into(),
            laterality: Some(Laterality::L),
            view: Some(View::MLO),
            vendor: Some(Vendor::ImsGiotto),
            density: Some(Density::C),
            percent_density: Some(55.5),
            cancer: Some(true),
            normal: None,
            mask_path: None,
            split: Split::Val,
            extra: vec![("note".into(), "x".into())],
        };
        write(&p, std::slice::from_ref(&row)).unwrap();
        assert_eq!(read(&p).unwrap(), vec![row]);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with(&COLUMNS.join(",")));
        std::fs::write(&p, text.replace(",C,", ",E,")).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("density"), "{e}");
        std::fs::write(&p, "path,patient\na,b\n").unwrap();
        assert!(read(&p)
            .unwrap_err()
            .to_string()
            .contains("header must start with"));
    }
}
