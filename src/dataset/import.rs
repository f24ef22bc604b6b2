//! Importers from public mammography dataset metadata to our manifest (docs/manifest.md), each
//! reading the published format's real column names and encodings:
//! RSNA Screening Mammography `train.csv`, VinDr-Mammo `breast-level_annotations.csv`, CBIS-DDSM
//! mass/calc case description CSVs (`breast_density` in mass files, `breast density` in calc
//! files), the CMMD clinical sheet (CSV export of `CMMD_clinicaldata_revision.xlsx`; images found by
//! reading DICOM headers) and the INbreast sheet (CSV export, `;`-separated). Splits are by patient:
//! a dataset's own test split is kept; a dataset without one is divided 70 / 15 / 15 into train /
//! val / test by a hash of the patient ID (a test split of held-out women that nothing is tuned
//! on), the rest of a dataset with one 85 / 15 into train / val; one woman never appears in two
//! splits.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::dataset::manifest::ManifestRow;
use crate::dataset::rng::SplitMix64;
use crate::ingest::dicom::{open_header, Laterality, MammoMeta, Vendor, View};
use crate::ingest::files::files_under;
use crate::model::labels::{Density, Split};

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
    /// mini-MIAS `Info.txt` (+ `mdbNNN.pgm`).
    Mias,
    /// DDSM films with tissue masks (Tiryaki & Kaplanoğlu): `tissue_fractions.csv`.
    DdsmTissue,
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

/// Deterministic train/val split of a patient not in the dataset's own test set (85 / 15 %).
fn split_for(patient: &str) -> Split {
    match patient_draw(patient) {
        u if u < 0.85 => Split::Train,
        _ => Split::Val,
    }
}

/// Deterministic train/val/test split of a patient of a dataset without a test set of its own
/// (70 / 15 / 15 %).
fn split3_for(patient: &str) -> Split {
    match patient_draw(patient) {
        u if u < 0.70 => Split::Train,
        u if u < 0.85 => Split::Val,
        _ => Split::Test,
    }
}

/// A uniform number in [0, 1) drawn from the patient ID alone (FNV-1a, then SplitMix64).
fn patient_draw(patient: &str) -> f64 {
    let h = patient.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    SplitMix64::new(h).uniform()
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
            Format::Mias => mias(csv, root, manifest_dir, &mut out)?,
            Format::DdsmTissue => ddsm_tissue(csv, root, manifest_dir, &mut out)?,
        }
    }
    Ok(out)
}

/// RSNA Screening Mammography Breast Cancer Detection (2022) `train.csv`:
/// `site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,implant,density,
/// machine_id,difficult_negative_case`; images `train_images/<patient_id>/<image_id>.dcm`, or the
/// `.png` of a converted copy when no `.dcm` is there. `normal` = BIRADS 1 (0 for BIRADS 0/2 or
/// cancer); the machine is not mapped to a vendor but kept as extra columns `source`
/// (`rsna-m<machine_id>`), `machine_id`, `biopsy` (for per-machine evaluation and the biopsy-clip
/// shortcut check).
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
    let (machine, biopsy) = (t.col(&["machine_id"])?, t.col(&["biopsy"])?);
    for (line, r) in &t.rows {
        let p = cell(r, pid);
        let folder = root.join("train_images").join(p);
        let dcm = folder.join(format!("{}.dcm", cell(r, img)));
        let png = folder.join(format!("{}.png", cell(r, img)));
        let path = if !dcm.exists() && png.exists() {
            png
        } else {
            dcm
        };
        let mut m = row(
            rel(&path, md),
            p,
            format!("rsna-{}-{p}", cell(r, site)),
            split3_for(p),
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
        let b = flag(&t, *line, "biopsy", cell(r, biopsy))?;
        m.extra = source_columns(
            &format!("rsna-m{}", cell(r, machine)),
            cell(r, machine),
            b,
            None,
        );
        out.push(m);
    }
    Ok(())
}

/// The extra columns every research-set importer writes, in this order: `source` (data set and
/// machine or digitiser: the seed's "vendor" of images without a DICOM header), `machine_id`,
/// `biopsy` (0/1), `tissue` (MIAS background tissue F/G/D).
fn source_columns(
    source: &str,
    machine: &str,
    biopsy: Option<bool>,
    tissue: Option<char>,
) -> Vec<(String, String)> {
    vec![
        ("source".into(), source.into()),
        ("machine_id".into(), machine.into()),
        (
            "biopsy".into(),
            biopsy.map(|b| (b as u8).to_string()).unwrap_or_default(),
        ),
        (
            "tissue".into(),
            tissue.map(String::from).unwrap_or_default(),
        ),
    ]
}

/// mini-MIAS `Info.txt`: after a free-text header, one line per abnormality
/// `REFNUM BG CLASS [SEVERITY [X Y RADIUS]]` (several lines for some films, `*NOTE 3*` instead of
/// coordinates, trailing spaces); images `mdbNNN.pgm` beside it. Odd numbers are right MLOs,
/// even numbers left MLOs, `mdb(2k−1)`/`mdb(2k)` one woman (Info.txt note 1). `cancer` = a
/// malignant (`M`) abnormality on the film; `normal` = class NORM; BG (F fatty, G fatty-glandular,
/// D dense-glandular) is not BI-RADS A–D, so `density` stays missing and BG goes to `tissue`.
fn mias(csv: &Path, root: &Path, md: &Path, out: &mut Vec<ManifestRow>) -> Result<(), ImportError> {
    let p = csv.display().to_string();
    let text = std::fs::read_to_string(csv).map_err(|error| ImportError::Io {
        path: p.clone(),
        error,
    })?;
    // film -> (tissue, any malignant, normal)
    let mut films: BTreeMap<u32, (char, bool, bool)> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(num) = f.first().and_then(|r| r.strip_prefix("mdb")) else {
            continue;
        };
        let bad = |column, detail: String| ImportError::Value {
            path: p.clone(),
            line: i as u64 + 1,
            column,
            detail,
        };
        let n: u32 = num
            .parse()
            .map_err(|_| bad("REFNUM", format!("{:?} is not mdbNNN", f[0])))?;
        let tissue = match f.get(1).copied() {
            Some(t @ ("F" | "G" | "D")) => t.chars().next().unwrap_or('F'),
            t => return Err(bad("BG", format!("{t:?} is not F/G/D"))),
        };
        let class = f.get(2).copied().unwrap_or("");
        if !["CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM"].contains(&class) {
            return Err(bad("CLASS", format!("{class:?} is not a MIAS class")));
        }
        let malignant = match f.get(3).copied() {
            Some("M") => true,
            Some("B") | None => false,
            Some(v) => return Err(bad("SEVERITY", format!("{v:?} is not B/M"))),
        };
        let e = films.entry(n).or_insert((tissue, false, true));
        e.1 |= malignant;
        e.2 &= class == "NORM";
    }
    for (n, (tissue, malignant, normal)) in films {
        let woman = format!("mias-{:03}", n.div_ceil(2));
        let path = root.join(format!("mdb{n:03}.pgm"));
        let mut m = row(rel(&path, md), &woman, woman.clone(), split3_for(&woman));
        m.laterality = Some(if n % 2 == 1 {
            Laterality::R
        } else {
            Laterality::L
        });
        m.view = Some(View::MLO);
        m.cancer = Some(malignant);
        m.normal = Some(normal);
        m.extra = source_columns("mias", "", None, Some(tissue));
        out.push(m);
    }
    Ok(())
}

/// DDSM films with manual tissue masks, `tissue_fractions.csv` (`image, mask, case_id, digitizer,
/// source_subset, …, percent_density`); films under `segmentation_data/<subset>/fgt_seg/`, masks
/// (64 background, 128 adipose, 192 fibroglandular, 255 pectoral) under `…/fgt_seg_labels/`.
/// Each mask is rewritten in the manifest's convention (255 dense, 128 other breast tissue, 0
/// outside the breast; the pectoral muscle counts as outside, as in the percent density) to
/// `masks/ddsm-tissue/` beside the manifest. All right MLOs; `percent_density` from the CSV;
/// source `ddsm-<digitizer>`.
fn ddsm_tissue(
    csv: &Path,
    root: &Path,
    md: &Path,
    out: &mut Vec<ManifestRow>,
) -> Result<(), ImportError> {
    let t = Table::read(csv, b',')?;
    let (img, mask, case) = (t.col(&["image"])?, t.col(&["mask"])?, t.col(&["case_id"])?);
    let (dig, subset, pd) = (
        t.col(&["digitizer"])?,
        t.col(&["source_subset"])?,
        t.col(&["percent_density"])?,
    );
    let mask_dir = md.join("masks").join("ddsm-tissue");
    std::fs::create_dir_all(&mask_dir).map_err(|error| ImportError::Io {
        path: mask_dir.display().to_string(),
        error,
    })?;
    for (line, r) in &t.rows {
        let folder = root.join("segmentation_data").join(cell(r, subset));
        let film = folder.join("fgt_seg").join(cell(r, img));
        let src_mask = folder.join("fgt_seg_labels").join(cell(r, mask));
        let percent: f64 = cell(r, pd)
            .parse()
            .map_err(|_| t.bad(*line, "percent_density", format!("{:?}", cell(r, pd))))?;
        let labels = image::open(&src_mask)
            .map_err(|e| t.bad(*line, "mask", format!("{}: {e}", src_mask.display())))?
            .into_luma8();
        let converted = image::GrayImage::from_fn(labels.width(), labels.height(), |x, y| {
            image::Luma([match labels.get_pixel(x, y).0[0] {
                160..=223 => 255u8, // fibroglandular
                96..=159 => 128,    // adipose
                _ => 0,             // background, pectoral muscle
            }])
        });
        let dst = mask_dir.join(cell(r, mask));
        converted
            .save(&dst)
            .map_err(|e| t.bad(*line, "mask", format!("{}: {e}", dst.display())))?;
        let c = cell(r, case);
        let mut m = row(rel(&film, md), c, format!("ddsm-{c}"), split3_for(c));
        m.laterality = Some(Laterality::R);
        m.view = Some(View::MLO);
        m.percent_density = Some(percent);
        m.mask_path = Some(rel(&dst, md));
        m.extra = source_columns(&format!("ddsm-{}", cell(r, dig)), "", None, None);
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
                split3_for(p),
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
            split3_for(p),
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
