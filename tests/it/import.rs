//! Importers of public dataset metadata, each with a small fixture written in that dataset's exact
//! format (column names, encodings, file layout).

use std::path::Path;

use mammo_edge::dicom::{Laterality, Vendor, View};
use mammo_edge::import::{import, Format};
use mammo_edge::labels::{Density, Split};
use mammo_edge::manifest::{self, ManifestRow};

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
