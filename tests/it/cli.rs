//! The `mammo-edge` binary as an operator runs it: `demo` and `inspect` (text, JSON, PNG outputs).

use std::process::Command;

use mammo_edge::dicom::Laterality;
use serde_json::Value;

use crate::util::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mammo-edge"))
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn demo_runs_on_a_fresh_folder() {
    let d = tmp();
    let out = bin()
        .args(["demo", "--json", "--out"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("SYNTH^PATIENT") && !stdout.contains("SYNTH-"),
        "no patient name or ID in the output"
    );
    let mut lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 5, "4 images, then the exam");
    let exam = lines.pop().unwrap();
    let views: Vec<String> = lines
        .iter()
        .map(|l| {
            let i = &l["inspection"];
            assert_eq!(i["status"], "accepted");
            // the bundled model scored it: probabilities in range, the research-only statement
            let r = &l["result"];
            assert!(r["intended_use"]
                .as_str()
                .unwrap()
                .contains("not for clinical use"));
            let c = r["cancer_probability"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&c));
            let pd = r["percent_density"].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&pd));
            let dsum: f64 = r["density_probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_f64().unwrap())
                .sum();
            assert!(
                (dsum - 1.0).abs() < 1e-3,
                "density probabilities sum to {dsum}"
            );
            assert_eq!(r["view"], i["view"]);
            format!(
                "{}{}",
                i["laterality"].as_str().unwrap(),
                i["view"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(views, ["LCC", "LMLO", "RCC", "RMLO"]);
    // the exam rule over the four views
    let e = &exam["exam"];
    assert_eq!(e["complete"], true);
    assert_eq!(e["images"], 4);
    let max_cancer = lines
        .iter()
        .map(|l| l["result"]["cancer_probability"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!((e["cancer_probability"].as_f64().unwrap() - max_cancer).abs() < 1e-6);
    assert!(exam["intended_use"]
        .as_str()
        .unwrap()
        .contains("research only"));
    let lines: Vec<serde_json::Value> = lines.iter().map(|l| l["inspection"].clone()).collect();
    let studies: std::collections::HashSet<_> = lines
        .iter()
        .map(|l| {
            l["file"]
                .as_str()
                .unwrap()
                .split('_')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(studies.len(), 1, "one woman, one exam: {studies:?}");
    let previews: Vec<_> = std::fs::read_dir(d.path().join("preview"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(previews.len(), 4);
    for p in previews {
        let png = image::open(&p).unwrap();
        assert_eq!((png.width(), png.height()), (320, 512));
    }
}

#[test]
fn inspect_json_keys_and_grey_png_match_the_pipeline() {
    let d = tmp();
    let spec = phantom(240, 200, Laterality::R);
    let f = write(&spec, d.path(), "R_CC.dcm");
    let grey_dir = d.path().join("grey");
    let out = bin()
        .args(["inspect", "--json", "--grey"])
        .arg(&grey_dir)
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = &json_lines(&out.stdout)[0];
    for key in [
        "file",
        "status",
        "reason",
        "category",
        "vendor",
        "laterality",
        "view",
        "presentation_intent",
        "transfer_syntax",
        "rows",
        "columns",
        "voi",
        "stats",
    ] {
        assert!(r.get(key).is_some(), "key {key} missing in {r}");
    }
    assert_eq!(r["status"], "accepted");
    assert_eq!(r["vendor"], "hologic");
    assert_eq!(r["laterality"], "R");
    assert_eq!(r["view"], "CC");
    assert_eq!(r["rows"], 240);
    assert_eq!(r["presentation_intent"], "FOR PRESENTATION");
    assert_eq!(r["transfer_syntax"], "1.2.840.10008.1.2.1");
    assert_eq!(r["flipped"], true);

    let m = read(&f);
    let png = image::open(grey_dir.join("R_CC.png"))
        .unwrap()
        .into_luma16();
    assert_eq!((png.width(), png.height()), (200, 240));
    for (i, p) in png.pixels().enumerate() {
        assert_eq!(
            p.0[0],
            (m.image.data[i] * 65535.0).round() as u16,
            "pixel {i}"
        );
    }
    let s = &r["stats"];
    let st = m.image.stats();
    assert!((s["mean"].as_f64().unwrap() - st.mean as f64).abs() < 1e-6);
}

#[test]
fn inspect_reports_rejections_and_exits_2() {
    let d = tmp();
    let bad = d.path().join("junk.dcm");
    std::fs::write(&bad, "not an image").unwrap();
    let good = write(&phantom(100, 80, Laterality::L), d.path(), "ok.dcm");
    let out = bin()
        .args(["inspect", "--json"])
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "3 = some inputs rejected");
    let lines = json_lines(&out.stdout);
    assert_eq!(lines[0]["status"], "accepted");
    assert_eq!(lines[1]["status"], "rejected");
    assert_eq!(lines[1]["category"], "error");
    assert!(lines[1]["reason"]
        .as_str()
        .unwrap()
        .contains("not a DICOM file"));
}

#[test]
fn no_patient_data_in_inspect_output_or_logs() {
    let d = tmp();
    let f = write(&phantom(100, 80, Laterality::L), d.path(), "img.dcm");
    for args in [vec!["-vv", "inspect"], vec!["-vv", "inspect", "--json"]] {
        let out = bin().args(&args).arg(&f).output().unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for phi in ["SYNTH^PATIENT", "SYNTH-1", "19700101", "ACC1"] {
            assert!(!all.contains(phi), "{phi} leaked: {all}");
        }
    }
}
