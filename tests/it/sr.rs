//! The Mammography CAD SR (`src/edge/sr.rs`) through `mammo-edge infer --sr DIR`: a phantom exam
//! and the real GE / Hologic files give one SR per study that dicom3tools' `dciodvfy` finds no
//! error in and DCMTK's `dsrdump` reads (it enforces the IOD's relationship table); the values
//! in the content tree are those of the exam and image payloads; the SR is stored at dcmtk's
//! `storescp` by our C-STORE SCU; the same exam revision gives the same SR instance.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::daemon::harness::{exam, free_port, patient, wait_port};
use crate::util::tmp;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mammo-edge"))
}

/// `infer --json --sr DIR FILES`: (payloads printed, SR files written).
fn infer_sr(dir: &Path, files: &[PathBuf]) -> (Vec<Value>, Vec<PathBuf>) {
    let out = bin()
        .args(["infer", "--json", "--sr"])
        .arg(dir)
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut srs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    srs.sort();
    (printed, srs)
}

/// dciodvfy's report: no line with "Error" (warnings about DICOMDIR attributes the source
/// lacks are allowed).
pub(crate) fn dciodvfy_clean(sr: &Path) -> String {
    let out = Command::new("dciodvfy")
        .arg("-new")
        .arg(sr)
        .output()
        .expect("dciodvfy (dicom3tools) not runnable; scripts/test-deps.sh installs it");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("MammographyCADSR"), "{text}");
    assert!(!text.contains("Error"), "dciodvfy: {text}");
    text
}

/// dsrdump's tree (code values printed): it must parse without an error.
pub(crate) fn dsrdump(sr: &Path) -> String {
    let out = Command::new("dsrdump")
        .args(["+Pc", "+Pl", "+Pu"])
        .arg(sr)
        .output()
        .expect("dsrdump (dcmtk) not runnable");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dsrdump: {err}");
    assert!(
        !err.lines()
            .any(|l| l.starts_with("E:") || l.starts_with("F:")),
        "dsrdump: {err}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn pct(p: f64) -> String {
    let s = format!("{:.4}", p * 100.0);
    match s.trim_end_matches('0').trim_end_matches('.') {
        "" | "-0" => "0".to_string(),
        s => s.to_string(),
    }
}

#[test]
fn a_phantom_exam_gives_a_cad_sr_that_dciodvfy_and_dsrdump_accept_with_the_exam_values() {
    let src = tmp();
    let files = exam(src.path(), 31);
    let out = tmp();
    let (printed, srs) = infer_sr(out.path(), &files);
    assert_eq!(srs.len(), 1, "{srs:?}");
    let sr = &srs[0];
    dciodvfy_clean(sr);
    let tree = dsrdump(sr);
    let exam_msg = printed
        .iter()
        .find(|m| m["schema"] == "mammo-edge.exam/1")
        .unwrap();
    let images: Vec<&Value> = printed
        .iter()
        .filter(|m| m["schema"] == "mammo-edge.image/1")
        .collect();
    assert_eq!(images.len(), 4);
    // exam and per-breast probability of cancer, in percent
    let exam_p = pct(exam_msg["cancer_probability"].as_f64().unwrap());
    assert!(
        tree.contains(&format!(
            "\"Probability of cancer\")=\"{exam_p}\" (%,UCUM,\"Percent\")"
        )),
        "exam {exam_p} not in\n{tree}"
    );
    for b in exam_msg["breasts"].as_array().unwrap() {
        let p = pct(b["cancer_probability"].as_f64().unwrap());
        assert!(tree.contains(&format!("=\"{p}\" (%,UCUM")), "breast {p}");
    }
    // per image: BI-RADS category code and percent fibroglandular tissue
    for m in &images {
        let code = match m["density"].as_str().unwrap() {
            "A" => "129716005",
            "B" => "129717001",
            "C" => "129718006",
            _ => "129719003",
        };
        assert!(tree.contains(&format!("\"Breast composition\")=({code},SCT,")));
        let pd = m["percent_density"].as_f64().unwrap();
        let pd = format!("{pd:.4}");
        let pd = pd.trim_end_matches('0').trim_end_matches('.');
        assert!(
            tree.contains(&format!("\"Percent Fibroglandular Tissue\")=\"{pd}\"")),
            "{pd}"
        );
    }
    assert!(tree.contains("(80248007,SCT,\"Left breast\")"));
    assert!(tree.contains("(399368009,SCT,\"medio-lateral oblique\")"));
    assert!(tree.contains("(111242,DCM,\"All algorithms succeeded; with findings\")"));
    // header: the source's patient and study, the evidence, research-only, unverified
    let o = dicom_object::open_file(sr).unwrap();
    let get = |t| {
        o.element(t)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches(['\0', ' '])
            .to_string()
    };
    use dicom_dictionary_std::tags;
    assert_eq!(get(tags::SOP_CLASS_UID), "1.2.840.10008.5.1.4.1.1.88.50");
    assert_eq!(get(tags::MODALITY), "SR");
    assert_eq!(get(tags::COMPLETION_FLAG), "COMPLETE");
    assert_eq!(get(tags::VERIFICATION_FLAG), "UNVERIFIED");
    assert_eq!(get(tags::PATIENT_NAME), patient(&files[0]).0);
    assert_eq!(
        get(tags::STUDY_INSTANCE_UID),
        exam_msg["study_instance_uid"].as_str().unwrap()
    );
    assert!(get(tags::SERIES_DESCRIPTION).contains("RESEARCH USE ONLY"));
    let evidence = o
        .element(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0]
        .element(tags::REFERENCED_SERIES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()
        .iter()
        .map(|s| {
            s.element(tags::REFERENCED_SOP_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()
                .len()
        })
        .sum::<usize>();
    assert_eq!(evidence, 4);

    // the same exam revision again: the same SR instance (a PACS sees a resend, not a new SR)
    let again = tmp();
    let (_, srs2) = infer_sr(again.path(), &files);
    assert_eq!(srs2[0].file_name(), sr.file_name());

    // PACS: stored at dcmtk's storescp by our SCU
    let pacs = tmp();
    let port = free_port();
    let mut scp = Command::new("storescp")
        .args(["-aet", "PACS", "-od"])
        .arg(pacs.path())
        .arg(port.to_string())
        .spawn()
        .expect("storescp (dcmtk) not runnable");
    wait_port(port, true);
    let peer = mammo_edge::edge::dicom_scu::Peer {
        address: format!("127.0.0.1:{port}"),
        calling_ae: "MAMMO_EDGE".into(),
        called_ae: "PACS".into(),
        timeout: Duration::from_secs(30),
        tls: None,
    };
    let statuses = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(mammo_edge::edge::dicom_scu::store_files(
            &peer,
            std::slice::from_ref(sr),
        ))
        .unwrap();
    let _ = scp.kill();
    let _ = scp.wait();
    assert_eq!(statuses, [0]);
    let stored: Vec<_> = std::fs::read_dir(pacs.path()).unwrap().flatten().collect();
    assert_eq!(stored.len(), 1);
    dsrdump(&stored[0].path());
}

#[test]
fn the_real_ge_and_hologic_files_give_one_valid_sr_per_study() {
    let Some(data) = crate::util::data_dir() else {
        return;
    };
    let real: Vec<PathBuf> = std::fs::read_dir(data.join("real-mammo"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    let out = tmp();
    let (printed, srs) = infer_sr(out.path(), &real);
    let studies = printed
        .iter()
        .filter(|m| m["schema"] == "mammo-edge.exam/1")
        .count();
    assert!(studies >= 2, "{printed:?}");
    assert_eq!(srs.len(), studies);
    for sr in &srs {
        dciodvfy_clean(sr);
        let tree = dsrdump(sr);
        assert!(tree.contains("Image Library"));
        // an exam with fewer than four views is marked partial
        let o = dicom_object::open_file(sr).unwrap();
        let flag = o
            .element(dicom_dictionary_std::tags::COMPLETION_FLAG)
            .unwrap()
            .to_str()
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(flag, "PARTIAL");
    }
}
