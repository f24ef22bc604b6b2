//! Importers of public dataset metadata, each with a small fixture written in that dataset's exact
//! format (column names, encodings, file layout).

use std::path::Path;

use mammo_edge::dataset::import::{import, Format};
use mammo_edge::dataset::manifest::{self, ManifestRow};
use mammo_edge::ingest::dicom::{Laterality, Vendor, View};
use mammo_edge::model::labels::{Density, Split};

use crate::util::*;

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn roundtrip(rows: &[ManifestRow], dir: &Path) -> Vec<ManifestRow> {
    let m = dir.join("manifest.csv");
    manifest::write(&m, rows).unwrap();
    manifest::read(&m).unwrap()
}

#[test]
fn rsna_train_csv() {
    let d = tmp();
    let csv = d.path().join("rsna/train.csv");
    write(&csv, "site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,implant,density,machine_id,difficult_negative_case\n\
2,10006,462822612,L,CC,61.0,0,0,0,,0,,29,False\n\
2,10006,1459541791,L,MLO,61.0,0,0,0,1.0,0,B,29,False\n\
1,10038,1967300488,R,MLO,51.0,1,1,1,0.0,0,C,49,False\n\
1,10042,102733848,L,AT,59.0,0,0,0,2.0,0,D,21,True\n");
    let rows = roundtrip(
        &import(Format::Rsna, &[csv], &d.path().join("rsna"), d.path()).unwrap(),
        d.path(),
    );
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].path, "rsna/train_images/10006/462822612.dcm");
    assert_eq!(
        (rows[0].density, rows[0].normal, rows[0].cancer),
        (None, None, Some(false))
    );
    assert_eq!(
        (rows[1].density, rows[1].normal),
        (Some(Density::B), Some(true))
    );
    assert_eq!(
        (rows[2].cancer, rows[2].normal, rows[2].laterality),
        (Some(true), Some(false), Some(Laterality::R))
    );
    assert_eq!(rows[2].view, Some(View::MLO));
    assert_eq!(
        rows[3].view,
        Some(View::Other),
        "AT is not a screening view"
    );
    assert_eq!(rows[0].study_uid, "rsna-2-10006");
    assert_eq!(rows[0].split, rows[1].split, "one patient, one split");
    assert!(rows.iter().all(|r| r.vendor.is_none()));
}

#[test]
fn vindr_breast_level_annotations() {
    let d = tmp();
    let csv = d.path().join("breast-level_annotations.csv");
    write(&csv, "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,split\n\
b8d273e8601f348d3664778dae0e7e0b,b36517b9cc8e8b2a4d8f6a6d4da2a5b0,d8125545210c08e1b1793a5af6458ee2,L,CC,3518,2800,BI-RADS 2,DENSITY C,training\n\
b8d273e8601f348d3664778dae0e7e0b,b36517b9cc8e8b2a4d8f6a6d4da2a5b0,2ea4d6f8a35e7b7e4b8a1f6a76a4e7f3,R,MLO,3518,2800,BI-RADS 1,DENSITY C,training\n\
8269f5971eaca3e5d3772d1796e6bd7a,0dd5cf5b2b4ecd0ac9e39d0b9f2b1ab6,7e2f4f1b3c8b2a9d0e1f2a3b4c5d6e7f,L,MLO,3518,2800,BI-RADS 5,DENSITY D,test\n");
    let rows = import(Format::Vindr, &[csv], d.path(), d.path()).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0].path,
        "images/b8d273e8601f348d3664778dae0e7e0b/d8125545210c08e1b1793a5af6458ee2.dicom"
    );
    assert_eq!(
        (rows[0].density, rows[0].normal, rows[0].cancer),
        (Some(Density::C), Some(false), None)
    );
    assert_eq!(rows[1].normal, Some(true));
    assert_eq!(rows[2].split, Split::Test);
    assert_ne!(rows[0].split, Split::Test);
}

#[test]
fn cbis_ddsm_mass_and_calc_descriptions() {
    let d = tmp();
    let mass = d.path().join("mass_case_description_train_set.csv");
    write(&mass, "patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,mass shape,mass margins,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path\n\
P_00001,3,LEFT,CC,1,mass,IRREGULAR-ARCHITECTURAL_DISTORTION,SPICULATED,4,MALIGNANT,4,Mass-Training_P_00001_LEFT_CC/1.3.6.1.4.1.9590.100.1.2.422112722213189649807611434612228974994/1.3.6.1.4.1.9590.100.1.2.342386194811267636608694132590482924515/000000.dcm,Mass-Training_P_00001_LEFT_CC_1/x/000000.dcm,Mass-Training_P_00001_LEFT_CC_1/x/000001.dcm\n\
P_00001,3,LEFT,CC,2,mass,OVAL,CIRCUMSCRIBED,3,BENIGN,3,Mass-Training_P_00001_LEFT_CC/1.3.6.1.4.1.9590.100.1.2.422112722213189649807611434612228974994/1.3.6.1.4.1.9590.100.1.2.342386194811267636608694132590482924515/000000.dcm,a,b\n\
P_00004,3,RIGHT,MLO,1,mass,LOBULATED,OBSCURED,4,BENIGN_WITHOUT_CALLBACK,3,Mass-Training_P_00004_RIGHT_MLO/1.3/1.3/000000.dcm,a,b\n");
    let calc = d.path().join("calc_case_description_test_set.csv");
    write(&calc, "patient_id,breast density,left or right breast,image view,abnormality id,abnormality type,calc type,calc distribution,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path\n\
P_00038,2,LEFT,CC,1,calcification,PLEOMORPHIC,CLUSTERED,4,MALIGNANT,2,Calc-Test_P_00038_LEFT_CC/1.3/1.3/000000.dcm,a,b\n");
    // P_00004 is on disk in TCIA's download layout, not the CSV's
    let tcia = d.path().join("Mass-Training_P_00004_RIGHT_MLO/07-20-2016-DDSM-NA-90988/1.000000-full mammogram images-20246/1-1.dcm");
    write(&tcia, "");
    let rows = import(Format::CbisDdsm, &[mass, calc], d.path(), d.path()).unwrap();
    assert_eq!(rows.len(), 3, "two abnormalities of one image give one row");
    let p4 = rows.iter().find(|r| r.patient_id == "P_00004").unwrap();
    assert_eq!(p4.path, "Mass-Training_P_00004_RIGHT_MLO/07-20-2016-DDSM-NA-90988/1.000000-full mammogram images-20246/1-1.dcm");
    let first = rows.iter().find(|r| r.patient_id == "P_00001").unwrap();
    assert_eq!(
        (first.cancer, first.density, first.normal),
        (Some(true), Some(Density::C), Some(false))
    );
    assert_eq!(first.view, Some(View::CC));
    let benign = rows.iter().find(|r| r.patient_id == "P_00004").unwrap();
    assert_eq!(
        (benign.cancer, benign.laterality),
        (Some(false), Some(Laterality::R))
    );
    let test = rows.iter().find(|r| r.patient_id == "P_00038").unwrap();
    assert_eq!(
        (test.split, test.density, test.cancer),
        (Split::Test, Some(Density::B), Some(true))
    );
    assert!(rows.iter().all(|r| r.vendor == Some(Vendor::Other)));
}

#[test]
fn cmmd_clinical_sheet_matches_dicom_headers() {
    let d = tmp();
    let root = d.path().join("CMMD");
    for (i, (pid, lat, view)) in [
        ("D1-0001", "L", "CC"),
        ("D1-0001", "L", "MLO"),
        ("D1-0002", "R", "CC"),
    ]
    .iter()
    .enumerate()
    {
        let mut spec = phantom(64, 48, Laterality::from_code(lat).unwrap());
        spec.patient_id = pid.to_string();
        spec.seed = i as u64 + 1;
        spec.view_position = Some(view.to_string());
        spec.view_code = None;
        spec.manufacturer = "GE MEDICAL SYSTEMS".into();
        let p = root.join(pid).join(format!("1-{}.dcm", i + 1));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        spec.write(&p).unwrap();
    }
    let csv = d.path().join("CMMD_clinicaldata_revision.csv");
    write(&csv, "ID1,LeftRight,Age,number,abnormality,classification,subtype\nD1-0001,L,44,2,calcification,Benign,\nD1-0002,R,40,1,mass,Malignant,Luminal B\n");
    let rows = import(Format::Cmmd, &[csv], &root, d.path()).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows.iter().filter(|r| r.patient_id == "D1-0001").count(), 2);
    let r = rows.iter().find(|r| r.patient_id == "D1-0002").unwrap();
    assert_eq!(
        (r.cancer, r.laterality, r.view, r.vendor),
        (
            Some(true),
            Some(Laterality::R),
            Some(View::CC),
            Some(Vendor::Ge)
        )
    );
    assert!(r.path.starts_with("CMMD/D1-0002/"));
}

#[test]
fn inbreast_semicolon_sheet() {
    let d = tmp();
    let root = d.path().join("INbreast");
    for n in [
        "22678622_61b13c59bcba149e_MG_R_CC_ANON.dcm",
        "22678646_61b13c59bcba149e_MG_R_ML_ANON.dcm",
        "20586908_6c613a14b80a8591_MG_R_CC_ANON.dcm",
    ] {
        write(&root.join("AllDICOMs").join(n), "");
    }
    let csv = root.join("INbreast.csv");
    write(
        &csv,
        "Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads\n\
removed;removed;R;CC;201001;22678622;4;1\n\
removed;removed;R;MLO;201001;22678646;4;4c\n\
removed;removed;R;CC;200906;20586908;1;2\n\
removed;removed;L;CC;200906;99999999;1;2\n",
    );
    let rows = import(Format::Inbreast, &[csv], &root, d.path()).unwrap();
    assert_eq!(rows.len(), 3, "a row without its image is skipped");
    assert_eq!(
        (rows[0].density, rows[0].normal, rows[0].cancer),
        (Some(Density::D), Some(true), Some(false))
    );
    assert_eq!(
        (rows[1].cancer, rows[1].view),
        (Some(true), Some(View::MLO))
    );
    assert_eq!(
        (rows[2].density, rows[2].cancer),
        (Some(Density::A), Some(false))
    );
    assert_eq!(
        rows[0].path,
        "INbreast/AllDICOMs/22678622_61b13c59bcba149e_MG_R_CC_ANON.dcm"
    );
    // "removed" in the sheet: the patient comes from the file name, so one woman, one split
    assert_eq!(rows[0].patient_id, "61b13c59bcba149e");
    assert_eq!(rows[1].patient_id, "61b13c59bcba149e");
    assert_eq!(rows[2].patient_id, "6c613a14b80a8591");
    assert_eq!(rows[0].split, rows[1].split);
}

#[test]
fn a_missing_column_is_named() {
    let d = tmp();
    let csv = d.path().join("train.csv");
    write(
        &csv,
        "site_id,patient_id,image_id,laterality,view\n1,2,3,L,CC\n",
    );
    let e = import(Format::Rsna, &[csv], d.path(), d.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"cancer\"") && e.contains("missing"), "{e}");
}

#[test]
fn rsna_png_crops_are_found_and_keep_machine_and_biopsy() {
    let d = tmp();
    let csv = d.path().join("rsna/train.csv");
    write(&csv, "site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,implant,density,machine_id,difficult_negative_case\n\
2,10006,1459541791,L,MLO,61,0,0,0,,0,,29,False\n\
1,10038,1967300488,R,MLO,51,1,1,1,,0,C,49,False\n");
    // the converted copy: PNG crops where the competition had DICOM
    write(
        &d.path().join("rsna/train_images/10006/1459541791.png"),
        "png",
    );
    let rows = roundtrip(
        &import(Format::Rsna, &[csv], &d.path().join("rsna"), d.path()).unwrap(),
        d.path(),
    );
    assert_eq!(rows[0].path, "rsna/train_images/10006/1459541791.png");
    assert_eq!(
        rows[1].path, "rsna/train_images/10038/1967300488.dcm",
        "no PNG there: the DICOM name stays"
    );
    let extra = |r: &ManifestRow, k: &str| {
        r.extra
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(extra(&rows[0], "source"), "rsna-m29");
    assert_eq!(extra(&rows[1], "machine_id"), "49");
    assert_eq!(
        (extra(&rows[0], "biopsy"), extra(&rows[1], "biopsy")),
        ("0".into(), "1".into())
    );
}

#[test]
fn mias_info_txt_with_several_lines_per_film_notes_and_no_coordinates() {
    let d = tmp();
    let info = d.path().join("mias/Info.txt");
    // the real layout: a free-text header, one line per abnormality, trailing spaces,
    // a film without coordinates and one with *NOTE 3*
    write(
        &info,
        "              MAMMOGRAPHIC IMAGE ANALYSIS SOCIETY\n\
                  MiniMammographic Database\n\n\
mdb001 G CIRC B 535 425 197\n\
mdb002 G CIRC B 522 280 69 \n\
mdb005 F CIRC B 477 133 30\n\
mdb005 F CIRC M 500 168 26\n\
mdb006 F NORM\n\
mdb059 F CIRC B\n\
mdb060 D NORM \n\
mdb245 G CALC M *NOTE 3*\n\
mdb246 G NORM\n",
    );
    let rows = roundtrip(
        &import(Format::Mias, &[info], &d.path().join("mias"), d.path()).unwrap(),
        d.path(),
    );
    let names: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "mias/mdb001.pgm",
            "mias/mdb002.pgm",
            "mias/mdb005.pgm",
            "mias/mdb006.pgm",
            "mias/mdb059.pgm",
            "mias/mdb060.pgm",
            "mias/mdb245.pgm",
            "mias/mdb246.pgm"
        ],
        "one row per film"
    );
    let by = |n: &str| rows.iter().find(|r| r.path.contains(n)).unwrap();
    // benign and malignant on one film: malignant wins
    assert_eq!(
        (by("005").cancer, by("005").normal),
        (Some(true), Some(false))
    );
    assert_eq!(
        (by("006").cancer, by("006").normal),
        (Some(false), Some(true))
    );
    assert_eq!(by("245").cancer, Some(true));
    assert_eq!(
        (by("059").cancer, by("059").normal),
        (Some(false), Some(false))
    );
    // odd = right, even = left; 2k-1 and 2k are one woman, one split
    assert_eq!(
        (by("001").laterality, by("002").laterality),
        (Some(Laterality::R), Some(Laterality::L))
    );
    assert_eq!(by("005").patient_id, by("006").patient_id);
    assert_eq!(by("005").split, by("006").split);
    assert_ne!(by("001").patient_id, by("005").patient_id);
    assert!(rows
        .iter()
        .all(|r| r.view == Some(View::MLO) && r.density.is_none()));
    let tissue = |n: &str| {
        by(n)
            .extra
            .iter()
            .find(|(k, _)| k == "tissue")
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!((tissue("001"), tissue("060")), ("G".into(), "D".into()));
    // a malformed line names the file, line and column
    write(&d.path().join("bad/Info.txt"), "mdb001 X CIRC B 1 2 3\n");
    let e = import(
        Format::Mias,
        &[d.path().join("bad/Info.txt")],
        d.path(),
        d.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("line 1") && e.contains("BG"), "{e}");
}

#[test]
fn ddsm_tissue_masks_are_rewritten_as_dense_tissue_masks() {
    let d = tmp();
    let root = d.path().join("ddsm-tissue");
    let seg = root.join("segmentation_data/test");
    std::fs::create_dir_all(seg.join("fgt_seg")).unwrap();
    std::fs::create_dir_all(seg.join("fgt_seg_labels")).unwrap();
    // a 4x2 mask with the four label values of the set
    let labels =
        image::GrayImage::from_raw(4, 2, vec![64, 128, 192, 255, 192, 192, 128, 64]).unwrap();
    labels
        .save(seg.join("fgt_seg_labels/A_0040_1.RIGHT_MLO_LI.png"))
        .unwrap();
    image::GrayImage::new(4, 2)
        .save(seg.join("fgt_seg/A_0040_1.RIGHT_MLO.png"))
        .unwrap();
    let csv = root.join("tissue_fractions.csv");
    write(&csv, "image,mask,case_id,digitizer,source_subset,width,height,px_background,px_adipose,px_fibroglandular,px_pectoral,percent_density\n\
A_0040_1.RIGHT_MLO.png,A_0040_1.RIGHT_MLO_LI.png,A_0040,A,test,4,2,2,2,3,1,60.00\n");
    let out = d.path().join("m");
    let rows = roundtrip(
        &import(Format::DdsmTissue, &[csv], &root, &out).unwrap(),
        &out,
    );
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        r.path,
        "../ddsm-tissue/segmentation_data/test/fgt_seg/A_0040_1.RIGHT_MLO.png"
    );
    assert_eq!(
        (r.laterality, r.view),
        (Some(Laterality::R), Some(View::MLO))
    );
    assert_eq!(r.percent_density, Some(60.0));
    let mask = image::open(out.join(r.mask_path.as_ref().unwrap()))
        .unwrap()
        .into_luma8();
    assert_eq!(mask.into_raw(), vec![0, 128, 255, 0, 255, 255, 128, 0]);
    assert_eq!(r.extra[0], ("source".to_string(), "ddsm-A".to_string()));
}

#[test]
fn merged_manifests_rebase_paths_unify_extra_columns_and_hold_out_a_machine() {
    let d = tmp();
    let mk = |dir: &str, rows: Vec<ManifestRow>| {
        let p = d.path().join(dir).join("manifest.csv");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        manifest::write(&p, &rows).unwrap();
        p
    };
    let base = |path: &str, patient: &str| ManifestRow {
        path: path.into(),
        patient_id: patient.into(),
        study_uid: patient.into(),
        laterality: None,
        view: None,
        vendor: None,
        density: None,
        percent_density: None,
        cancer: Some(false),
        normal: None,
        mask_path: None,
        split: Split::Train,
        extra: vec![],
    };
    let phantoms = mk(
        "synth",
        vec![ManifestRow {
            mask_path: Some("masks/a.png".into()),
            ..base("images/a.dcm", "p1")
        }],
    );
    let with = |path: &str, p: &str, source: &str| ManifestRow {
        extra: vec![
            ("source".into(), source.into()),
            ("machine_id".into(), "".into()),
        ],
        ..base(path, p)
    };
    let rsna = mk(
        "real/rsna",
        vec![
            with("train_images/1/1.png", "1", "rsna-m21"),
            with("train_images/2/2.png", "2", "rsna-m49"),
        ],
    );
    let out = d.path().join("all");
    std::fs::create_dir_all(&out).unwrap();
    let rows =
        mammo_edge::dataset::manifest::merge(&[phantoms, rsna], &out, Some(("source", "rsna-m21")))
            .unwrap();
    let rows = roundtrip(&rows, &out);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].path, "../synth/images/a.dcm");
    assert_eq!(rows[0].mask_path.as_deref(), Some("../synth/masks/a.png"));
    assert_eq!(rows[1].path, "../real/rsna/train_images/1/1.png");
    // the phantom row gets the research sets' columns, empty
    assert_eq!(
        rows[0].extra,
        vec![
            ("source".to_string(), String::new()),
            ("machine_id".to_string(), String::new())
        ]
    );
    // the held-out machine is test, the other stays train
    assert_eq!(
        rows.iter().map(|r| r.split).collect::<Vec<_>>(),
        [Split::Train, Split::Test, Split::Train]
    );
}

/// The real research sets (MAMMO_TEST_DATA) through their importers: every image found and
/// labelled, splits by woman (no patient in two splits) near 70 / 15 / 15, and the merge with
/// machine 21 held out puts all 267 of its images, and only those, beyond the women's own test
/// split, in `test`.
#[test]
fn real_research_sets_import_with_splits_by_woman_and_a_held_out_machine() {
    let Some(data) = data_dir() else { return };
    let set = data.join("real-labelled");
    let d = tmp();
    let mut inputs = vec![];
    for (format, csv, root, name, n) in [
        (Format::Rsna, "rsna/train.csv", "rsna", "rsna", 1525),
        (Format::Mias, "mias/Info.txt", "mias", "mias", 224),
        (
            Format::DdsmTissue,
            "ddsm-tissue/tissue_fractions.csv",
            "ddsm-tissue",
            "ddsm",
            49,
        ),
    ] {
        let dir = d.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let rows = import(format, &[set.join(csv)], &set.join(root), &dir).unwrap();
        assert_eq!(rows.len(), n, "{name}");
        let mut split_of = std::collections::HashMap::new();
        for r in &rows {
            assert!(dir.join(&r.path).is_file(), "{name}: {}", r.path);
            let first = *split_of.entry(r.patient_id.clone()).or_insert(r.split);
            assert_eq!(
                first, r.split,
                "{name}: patient {} in two splits",
                r.patient_id
            );
        }
        let share = |s: Split| {
            split_of.values().filter(|&&x| x == s).count() as f64 / split_of.len() as f64
        };
        assert!((0.6..0.8).contains(&share(Split::Train)), "{name}");
        assert!((0.07..0.25).contains(&share(Split::Test)), "{name}");
        manifest::write(&dir.join("manifest.csv"), &rows).unwrap();
        inputs.push(dir.join("manifest.csv"));
    }
    let out = d.path().join("all");
    std::fs::create_dir_all(&out).unwrap();
    let before: Vec<ManifestRow> = inputs
        .iter()
        .flat_map(|m| manifest::read(m).unwrap())
        .collect();
    let rows = manifest::merge(&inputs, &out, Some(("source", "rsna-m21"))).unwrap();
    assert_eq!(rows.len(), 1525 + 224 + 49);
    let m21: Vec<&ManifestRow> = rows
        .iter()
        .filter(|r| r.extra("source") == Some("rsna-m21"))
        .collect();
    assert_eq!(m21.len(), 267);
    assert!(m21.iter().all(|r| r.split == Split::Test));
    let own_test = before
        .iter()
        .filter(|r| r.split == Split::Test && r.extra("source") != Some("rsna-m21"))
        .count();
    assert_eq!(
        rows.iter().filter(|r| r.split == Split::Test).count(),
        267 + own_test
    );
    // MIAS tissue and RSNA biopsy columns come through for the evaluation
    assert!(rows.iter().any(|r| r.extra("tissue") == Some("D")));
    assert!(rows
        .iter()
        .any(|r| r.extra("biopsy") == Some("1") && r.cancer == Some(false)));
}

/// `scripts/subset_manifest.py` (the data-size learning curve of the model card): a share of the
/// RSNA training women with all their images, the women of a smaller share among those of a larger
/// one, and every other row (other splits, other sets) unchanged.
#[test]
fn subset_manifest_keeps_a_nested_share_of_rsna_training_women_and_every_other_row() {
    let d = tmp();
    let header = format!("{},source", manifest::COLUMNS.join(","));
    let mut text = header.clone() + "\n";
    // 20 RSNA training women with two images each, 3 validation and 2 test women, 4 MIAS films
    for w in 0..20 {
        for v in ["CC", "MLO"] {
            text += &format!("rsna/{w}-{v}.png,p{w},,L,{v},,,,0,,,train,rsna-m49\n");
        }
    }
    for (w, split) in [
        (100, "val"),
        (101, "val"),
        (102, "val"),
        (103, "test"),
        (104, "test"),
    ] {
        text += &format!("rsna/{w}.png,p{w},,R,CC,,,,1,,,{split},rsna-m49\n");
    }
    for f in 0..4 {
        text += &format!("mias/{f}.pgm,m{f},,L,MLO,,,,0,,,train,mias\n");
    }
    let input = d.path().join("manifest.csv");
    write(&input, &text);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/subset_manifest.py");
    let run = |share: &str| {
        std::process::Command::new("python3")
            .arg(&script)
            .arg(&input)
            .arg(share)
            .output()
            .expect("python3 runs")
    };
    let rows = |share: &str| -> Vec<Vec<String>> {
        let out = run(share);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8(out.stdout).unwrap();
        let mut lines = s.lines();
        assert_eq!(lines.next(), Some(header.as_str()));
        lines
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect()
    };
    let train_women = |rows: &[Vec<String>]| -> std::collections::BTreeSet<String> {
        rows.iter()
            .filter(|r| r[11] == "train" && r[12] == "rsna-m49")
            .map(|r| r[1].clone())
            .collect()
    };
    let half = rows("0.5");
    let quarter = rows("0.25");
    let all = rows("1");
    assert_eq!(all.len(), 49, "share 1 keeps every row");
    let (w_half, w_quarter) = (train_women(&half), train_women(&quarter));
    assert_eq!(w_half.len(), 10);
    assert_eq!(w_quarter.len(), 5);
    assert!(
        w_quarter.is_subset(&w_half),
        "{w_quarter:?} within {w_half:?}"
    );
    // a kept woman keeps both images; validation, test and MIAS rows are all there
    assert_eq!(half.len(), 20 + 5 + 4);
    assert_eq!(quarter.len(), 10 + 5 + 4);
    for r in &quarter {
        assert!(r[11] != "train" || r[12] != "rsna-m49" || w_quarter.contains(&r[1]));
    }
    assert_eq!(half.iter().filter(|r| r[12] == "mias").count(), 4);
    assert_eq!(half.iter().filter(|r| r[11] != "train").count(), 5);
    // the same call gives the same women
    assert_eq!(train_women(&rows("0.5")), w_half);
    // a share outside (0, 1] is refused with its value
    let bad = run("0");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("SHARE must be in (0, 1]"));
}
