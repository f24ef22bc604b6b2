//! Importers from public mammography dataset metadata to our manifest (docs/manifest.md), each
//! reading the published format's real column names and encodings:
//! RSNA Screening Mammography `train.csv`, VinDr-Mammo `breast-level_annotations.csv`, CBIS-DDSM
//! mass/calc case description CSVs (`breast_density` in mass files, `breast density` in calc
//! files), the CMMD clinical sheet (CSV export of `CMMD_clinicaldata_revision.xlsx`; images found by
//! reading DICOM headers) and the INbreast sheet (CSV export, `;`-separated). Splits are by patient:
//! a dataset's own test split is kept, the rest is divided 85 / 15 into train / val by a hash of the
//! patient ID, so one woman never appears in two splits.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::dicom::{open_header, Laterality, MammoMeta, Vendor, View};
use crate::files::files_under;
use crate::labels::{Density, Split};
use crate::manifest::ManifestRow;
use crate::synth::SplitMix64;

/// Errors of an import; messages name the file, line and column.
#[derive(Debug, Error)]
pub enum ImportError {
    #[error("{path}: {error}")]
    Csv { path: String, error: csv::Error },
    #[error("{path}: column {column:?} is missing (columns: {found})")]
    MissingColumn {
        path: String,
        column: &'static str,
        found: String,
    },
    #[error("{path} line {line}: column {column:?}: {detail}")]
    Value {
        path: String,
        line: u64,
        column: &'static str,
        detail: String,
    },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
}

/// The formats [`import`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Rsna,
    Vindr,
    CbisDdsm,
    Cmmd,
    Inbreast,
}

/// A CSV with columns looked up by name.
struct Table {
    path: String,
    header: HashMap<String, usize>,
    rows: Vec<(u64, csv::StringRecord)>,
}

impl Table {
    fn read(path: &Path, delimiter: u8) -> Result<Table, ImportError> {
        let p = path.display().to_string();
        let err = |error| ImportError::Csv {
            path: p.clone(),
            error,
        };
        let mut r = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .from_path(path)
            .map_err(err)?;
        let header = r
            .headers()
            .map_err(err)?
            .iter()
            .enumerate()
            .map(|(i, h)| (h.trim().trim_start_matches('\u{feff}').to_string(), i))
            .collect();
        let mut rows = Vec::new();
        for rec in r.records() {
            let rec = rec.map_err(err)?;
            let line = rec.position().map(|p| p.line()).unwrap_or(0);
            rows.push((line, rec));
        }
        Ok(Table {
            path: p,
            header,
            rows,
        })
    }

    /// Index of the first of `names` present.
    fn col(&self, names: &[&'static str]) -> Result<usize, ImportError> {
        names
            .iter()
            .find_map(|n| self.header.get(*n).copied())
            .ok_or_else(|| ImportError::MissingColumn {
                path: self.path.clone(),
                column: names[0],
                found: {
                    let mut v: Vec<_> = self.header.keys().cloned().collect();
                    v.sort();
                    v.join(", ")
                },
            })
    }

    fn bad(&self, line: u64, column: &'static str, detail: String) -> ImportError {
        ImportError::Value {
            path: self.path.clone(),
            line,
            column,
            detail,
        }
    }
}

fn cell(rec: &csv::StringRecord, i: usize) -> &str {
    rec.get(i).unwrap_or("").trim()
}

/// Deterministic train/val split of a patient not in the dataset's test set (85 / 15 %).
fn split_for(patient: &str) -> Split {
    let h = patient.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    if SplitMix64::new(h).uniform() < 0.85 {
        Split::Train
    } else {
        Split::Val
    }
}

fn rel(target: &Path, base: &Path) -> String {
    pathdiff::diff_paths(target, base)
        .unwrap_or_else(|| target.to_path_buf())
        .to_string_lossy()
        .replace('\\', "/")
}

fn row(path: String, patient: &str, study: String, split: Split) -> ManifestRow {
    ManifestRow {
        path,
        patient_id: patient.to_string(),
        study_uid: study,
        laterality: None,
        view: None,
        vendor: None,
        density: None,
        percent_density: None,
        cancer: None,
        normal: None,
        mask_path: None,
        split,
        extra: Vec::new(),
    }
}

fn flag(t: &Table, line: u64, column: &'static str, v: &str) -> Result<Option<bool>, ImportError> {
    match v {
        "" => Ok(None),
        "0" | "0.0" | "False" | "false" => Ok(Some(false)),
        "1" | "1.0" | "True" | "true" => Ok(Some(true)),
        _ => Err(t.bad(line, column, format!("{v:?} is not 0/1"))),
    }
}

/// Density from a BI-RADS letter or number (1–4), as datasets write it.
fn density(
    t: &Table,
    line: u64,
    column: &'static str,
    v: &str,
) -> Result<Option<Density>, ImportError> {
    let v = v.trim().to_ascii_uppercase();
    let v = v.trim_start_matches("DENSITY").trim();
    if v.is_empty() || v == "0" || v == "NAN" {
        return Ok(None);
    }
    Density::parse(v)
        .or_else(|| {
            v.parse::<usize>()
                .ok()
                .and_then(|n| n.checked_sub(1))
                .and_then(Density::from_index)
        })
        .map(Some)
        .ok_or_else(|| t.bad(line, column, format!("{v:?} is not a density (A-D or 1-4)")))
}

/// Read `csvs` in `format` with image files under `root`; returns rows with paths relative to
/// `manifest_dir` (the folder the manifest will be written to).
pub fn import(
    format: Format,
    csvs: &[PathBuf],
    root: &Path,
    manifest_dir: &Path,
) -> Result<Vec<ManifestRow>, ImportError> {
    let mut out = Vec::new();
    for csv in csvs {
        match format {
            Format::Rsna => rsna(csv, root, manifest_dir, &mut out)?,
            Format::Vindr => vindr(csv, root, manifest_dir, &mut out)?,
            Format::CbisDdsm => cbis(csv, root, manifest_dir, &mut out)?,
            Format::Cmmd => cmmd(csv, root, manifest_dir, &mut out)?,
            Format::Inbreast => inbreast(csv, root, manifest_dir, &mut out)?,
        }
    }
    Ok(out)
}

/// RSNA Screening Mammography Breast Cancer Detection (2022) `train.csv`:
/// `site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,implant,density,
/// machine_id,difficult_negative_case`; images `train_images/<patient_id>/<image_id>.dcm`.
/// `normal` = BIRADS 1 (0 for BIRADS 0/2 or cancer); the machine is not mapped to a vendor.
fn rsna(csv: &Path, root: &Path, md: &Path, out: &mut Vec<ManifestRow>) -> Result<(), ImportError> {
    let t = Table::read(csv, b',')?;
    let (site, pid, img) = (
        t.col(&["site_id"])?,
        t.col(&["patient_id"])?,
        t.col(&["image_id"])?,
    );
    let (lat, view, cancer) = (
        t.col(&["laterality"])?,
        t.col(&["view"])?,
        t.col(&["cancer"])?,
    );
    let (birads, dens) = (t.col(&["BIRADS"])?, t.col(&["density"])?);
    for (line, r) in &t.rows {
        let p = cell(r, pid);
        let path = root
            .join("train_images")
            .join(p)
            .join(format!("{}.dcm", cell(r, img)));
        let mut m = row(
            rel(&path, md),
            p,
            format!("rsna-{}-{p}", cell(r, site)),
            split_for(p),
        );
        m.laterality = Laterality::from_code(cell(r, lat));
        m.view = View::from_view_position(cell(r, view));
        m.cancer = flag(&t, *line, "cancer", cell(r, cancer))?;
        m.density = density(&t, *line, "density", cell(r, dens))?;
        m.normal = match (cell(r, birads), m.cancer) {
            (_, Some(true)) => Some(false),
            ("1" | "1.0", _) => Some(true),
            ("0" | "0.0" | "2" | "2.0", _) => Some(false),
            _ => None,
        };
        out.push(m);
    }
    Ok(())
}

/// VinDr-Mammo `breast-level_annotations.csv`: `study_id,series_id,image_id,laterality,
/// view_position,height,width,breast_birads,breast_density,split`; images
/// `images/<study_id>/<image_id>.dicom`. No pathology: `cancer` stays missing; `normal` =
/// "BI-RADS 1"; split "test" kept, "training" divided into train/val.
fn vindr(
    csv: &Path,
    root: &Path,
    md: &Path,
    out: &mut Vec<ManifestRow>,
) -> Result<(), ImportError> {
    let t = Table::read(csv, b',')?;
    let (study, img, lat) = (
        t.col(&["study_id"])?,
        t.col(&["image_id"])?,
        t.col(&["laterality"])?,
    );
    let (view, birads, dens, split) = (
        t.col(&["view_position"])?,
        t.col(&["breast_birads"])?,
        t.col(&["breast_density"])?,
        t.col(&["split"])?,
    );
    for (line, r) in &t.rows {
        let s = cell(r, study);
        let sp = match cell(r, split) {
            "test" => Split::Test,
            "training" => split_for(s),
            v => return Err(t.bad(*line, "split", format!("{v:?} is not training/test"))),
        };
        let path = root
            .join("images")
            .join(s)
            .join(format!("{}.dicom", cell(r, img)));
        let mut m = row(rel(&path, md), s, format!("vindr-{s}"), sp);
        m.laterality = Laterality::from_code(cell(r, lat));
        m.view = View::from_view_position(cell(r, view));
        m.density = density(&t, *line, "breast_density", cell(r, dens))?;
        let b = cell(r, birads).to_ascii_uppercase();
        m.normal = match b.trim_start_matches("BI-RADS").trim() {
            "" => None,
            "1" => Some(true),
            "2" | "3" | "4" | "5" => Some(false),
            v => return Err(t.bad(*line, "breast_birads", format!("{v:?} is not BI-RADS 1-5"))),
        };
        out.push(m);
    }
    Ok(())
}

/// CBIS-DDSM case descriptions (mass or calc, train or test): one row per abnormality, grouped
/// here by image. `cancer` = any MALIGNANT pathology; `normal` = 0; digitised film, vendor
/// `other`; split from the file name (`Test` → test).
fn cbis(csv: &Path, root: &Path, md: &Path, out: &mut Vec<ManifestRow>) -> Result<(), ImportError> {
    let t = Table::read(csv, b',')?;
    let pid = t.col(&["patient_id"])?;
    let dens = t.col(&["breast_density", "breast density"])?;
    let (lat, view) = (t.col(&["left or right breast"])?, t.col(&["image view"])?);
    let (path_c, patho) = (t.col(&["image file path"])?, t.col(&["pathology"])?);
    let name = csv
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let test = name.contains("test");
    let mut images: BTreeMap<String, ManifestRow> = BTreeMap::new();
    for (line, r) in &t.rows {
        let p = cell(r, pid);
        let file = cell(r, path_c).replace('\\', "/");
        let malignant = match cell(r, patho).to_ascii_uppercase().as_str() {
            "MALIGNANT" => true,
            "BENIGN" | "BENIGN_WITHOUT_CALLBACK" => false,
            v => return Err(t.bad(*line, "pathology", format!("{v:?} is not MALIGNANT/BENIGN"))),
        };
        let resolved = resolve_cbis(root, &file);
        let entry = images.entry(file.clone()).or_insert_with(|| {
            let mut m = row(
                rel(&resolved, md),
                p,
                format!("cbis-{p}"),
                if test { Split::Test } else { split_for(p) },
            );
            m.laterality = match cell(r, lat).to_ascii_uppercase().as_str() {
                "LEFT" => Some(Laterality::L),
                "RIGHT" => Some(Laterality::R),
                _ => None,
            };
            m.view = View::from_view_position(cell(r, view));
            m.vendor = Some(Vendor::Other);
            m.normal = Some(false);
            m.cancer = Some(false);
            m
        });
        entry.density = density(&t, *line, "breast_density", cell(r, dens))?;
        entry.cancer = Some(entry.cancer == Some(true) || malignant);
    }
    out.extend(images.into_values());
    Ok(())
}

/// The image file of a CBIS-DDSM row: the CSV's `image file path` when it exists under `root`,
/// else the TCIA download layout `<case>/<date>-DDSM-…/<n>-full mammogram images-<id>/1-1.dcm`
/// found under the case folder (the path's first component).
fn resolve_cbis(root: &Path, file: &str) -> PathBuf {
    let direct = root.join(file);
    if direct.exists() {
        return direct;
    }
    let case = file.split('/').next().unwrap_or(file);
    files_under(&root.join(case))
        .unwrap_or_default()
        .into_iter()
        .find(|p| {
            p.extension().is_some_and(|x| x == "dcm")
                && p.parent()
                    .and_then(|d| d.file_name())
                    .is_some_and(|n| n.to_string_lossy().contains("full mammogram"))
        })
        .unwrap_or(direct)
}

/// DICOM files under `root` with their header (recursively, name order); unreadable files skipped.
fn scan(root: &Path) -> Vec<(PathBuf, MammoMeta, String)> {
    let files = files_under(root).unwrap_or_else(|e| {
        log::warn!("{}: {e}", root.display());
        Vec::new()
    });
    files
        .into_iter()
        .filter_map(|p| {
            let obj = open_header(&p).ok()?;
            let pid = obj
                .element_opt(dicom_dictionary_std::tags::PATIENT_ID)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            let meta = MammoMeta::from_object(&obj).ok()?;
            Some((p, meta, pid))
        })
        .collect()
}

/// CMMD clinical sheet (CSV export): `ID1,LeftRight,Age,number,abnormality,classification,subtype`,
/// one row per breast; the images are found by reading PatientID and laterality from the DICOM
/// headers under `root`. `cancer` = classification Malignant; vendor from the header.
fn cmmd(csv: &Path, root: &Path, md: &Path, out: &mut Vec<ManifestRow>) -> Result<(), ImportError> {
    let t = Table::read(csv, b',')?;
    let (id, lr, class) = (
        t.col(&["ID1"])?,
        t.col(&["LeftRight"])?,
        t.col(&["classification"])?,
    );
    let files = scan(root);
    for (line, r) in &t.rows {
        let p = cell(r, id);
        let l = Laterality::from_code(cell(r, lr))
            .ok_or_else(|| t.bad(*line, "LeftRight", format!("{:?} is not L/R", cell(r, lr))))?;
        let malignant = match cell(r, class).to_ascii_lowercase().as_str() {
            "malignant" => true,
            "benign" => false,
            v => {
                return Err(t.bad(
                    *line,
                    "classification",
                    format!("{v:?} is not Benign/Malignant"),
                ))
            }
        };
        for (path, meta, pid) in files
            .iter()
            .filter(|(_, m, pid)| pid == p && m.laterality == Some(l))
        {
            let mut m = row(
                rel(path, md),
                pid,
                meta.study_instance_uid.clone(),
                split_for(p),
            );
            m.laterality = Some(l);
            m.view = Some(meta.view);
            m.vendor = Some(meta.vendor);
            m.cancer = Some(malignant);
            m.normal = Some(false);
            out.push(m);
        }
    }
    Ok(())
}

/// INbreast sheet (CSV export, `;`-separated): `Patient ID;Patient age;Laterality;View;
/// Acquisition date;File Name;ACR;Bi-Rads`; images `AllDICOMs/<File Name>_*.dcm`. ACR 1–4 →
/// density A–D; `cancer` = BI-RADS 4a–6 (the usual proxy: INbreast has no per-image pathology);
/// `normal` = BI-RADS 1; Siemens MammoNovation.
fn inbreast(
    csv: &Path,
    root: &Path,
    md: &Path,
    out: &mut Vec<ManifestRow>,
) -> Result<(), ImportError> {
    let t = Table::read(csv, b';')?;
    let (pid, lat, view) = (
        t.col(&["Patient ID"])?,
        t.col(&["Laterality"])?,
        t.col(&["View"])?,
    );
    let (file, acr, birads) = (
        t.col(&["File Name"])?,
        t.col(&["ACR"])?,
        t.col(&["Bi-Rads"])?,
    );
    let dir = root.join("AllDICOMs");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|error| ImportError::Io {
            path: dir.display().to_string(),
            error,
        })?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    for (line, r) in &t.rows {
        let f = cell(r, file);
        if f.is_empty() {
            continue;
        }
        let Some(name) = names
            .iter()
            .filter(|n| n.starts_with(&format!("{f}_")) && n.ends_with(".dcm"))
            .min()
        else {
            log::warn!(
                "{} line {line}: no AllDICOMs/{f}_*.dcm; row skipped",
                t.path
            );
            continue;
        };
        // The sheet's "Patient ID" is the literal "removed"; the file name carries the patient:
        // <File Name>_<patient>_MG_<L|R>_<view>_ANON.dcm
        let p = match cell(r, pid) {
            "" | "removed" => name.split('_').nth(1).unwrap_or(""),
            v => v,
        };
        let mut m = row(
            rel(&dir.join(name), md),
            p,
            format!("inbreast-{p}"),
            split_for(p),
        );
        m.laterality = Laterality::from_code(cell(r, lat));
        m.view = View::from_view_position(cell(r, view));
        m.vendor = Some(Vendor::Siemens);
        m.density = density(&t, *line, "ACR", cell(r, acr))?;
        let b = cell(r, birads).to_ascii_lowercase();
        let (cancer, normal) = match b.as_str() {
            "1" => (false, true),
            "2" | "3" => (false, false),
            "4a" | "4b" | "4c" | "4" | "5" | "6" => (true, false),
            v => return Err(t.bad(*line, "Bi-Rads", format!("{v:?} is not a BI-RADS category"))),
        };
        m.cancer = Some(cancer);
        m.normal = Some(normal);
        out.push(m);
    }
    Ok(())
}
