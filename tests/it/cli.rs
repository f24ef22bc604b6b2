//! The `mammo-edge` binary as an operator runs it: `demo` (daemon + embedded broker, no
//! mosquitto needed), `infer` and `inspect` (text, JSON, PNG outputs).

use std::process::Command;

use mammo_edge::ingest::dicom::Laterality;
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

/// Lines of `demo` / `infer` text output starting with `kind` (`image`, `exam`, `skipped`, `error`).
fn lines_of<'a>(stdout: &'a str, kind: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(kind))
        .collect()
}

fn no_patient_data(all: &str) {
    for phi in ["SYNTH^PATIENT", "SYNTH-", "19700101", "ACC1"] {
        assert!(!all.contains(phi), "{phi} leaked: {all}");
    }
}

/// The README's first command: no broker installed (`demo` starts the embedded one), no model
/// to fetch; the daemon publishes what it made of the phantom exam and of the four refusals.
#[test]
fn demo_runs_the_daemon_against_its_embedded_broker() {
    let out = bin().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    no_patient_data(&format!("{stdout}{stderr}"));
    let images = lines_of(&stdout, "image");
    assert_eq!(images.len(), 4, "{stdout}");
    let mut views: Vec<&str> = images
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    views.sort();
    assert_eq!(views, ["L-CC", "L-MLO", "R-CC", "R-MLO"], "{stdout}");
    for l in &images {
        assert!(l.contains(" cancer 0.") && l.contains(" density "), "{l}");
        assert!(l.trim_end().ends_with(".dcm"), "file name published: {l}");
    }
    let exams = lines_of(&stdout, "exam");
    assert_eq!(exams.len(), 1, "{stdout}");
    assert!(
        exams[0].contains("complete yes (views L-CC L-MLO R-CC R-MLO)"),
        "{}",
        exams[0]
    );
    assert!(exams[0].contains("[L: cancer ") && exams[0].contains("; R: cancer "));
    let mut refused: Vec<String> = lines_of(&stdout, "skipped")
        .into_iter()
        .chain(lines_of(&stdout, "error"))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {}", w[0], w[1], w[2])
        })
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        [
            "error notes.txt not_dicom:",
            "error truncated.dcm truncated:",
            "skipped ct-image.dcm not_mammogram:",
            "skipped for-processing.dcm for_processing:",
        ],
        "{stdout}"
    );
    assert!(stdout.contains("not a DICOM file"), "reason text: {stdout}");
    assert!(stdout.contains("Modality CT"), "reason text: {stdout}");
    assert!(
        stdout.contains("intended use: research only, not for clinical use"),
        "{stdout}"
    );
    assert!(stderr.contains("embedded broker"), "{stderr}");
}

/// `demo --json`: the raw payloads; the exam agrees with its images under the exam rule.
#[test]
fn demo_json_prints_the_payloads_the_daemon_published() {
    let keep = tmp();
    let out = bin()
        .args(["demo", "--json", "--seed", "3", "--keep"])
        .arg(keep.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msgs = json_lines(&out.stdout);
    let of = |schema: &str| -> Vec<&Value> {
        msgs.iter()
            .filter(|m| m["schema"] == format!("mammo-edge.{schema}/1"))
            .collect()
    };
    let (images, exams) = (of("image"), of("exam"));
    assert_eq!((images.len(), exams.len()), (4, 1), "{msgs:?}");
    assert_eq!(of("skipped").len() + of("error").len(), 4, "{msgs:?}");
    assert_eq!(msgs.len(), 9);
    let e = exams[0];
    assert_eq!(e["complete"], true);
    assert_eq!(e["images"], 4);
    let max_cancer = images
        .iter()
        .map(|m| m["cancer_probability"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!((e["cancer_probability"].as_f64().unwrap() - max_cancer).abs() < 1e-6);
    for m in &images {
        assert_eq!(m["study_instance_uid"], e["study_instance_uid"]);
        assert!(m["model"]["intended_use"]
            .as_str()
            .unwrap()
            .contains("not for clinical use"));
        let dsum: f64 = m["density_probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .sum();
        assert!((dsum - 1.0).abs() < 2e-3, "{dsum}");
    }
    // --keep: the files and the daemon's state stay; the bundled model was written out
    let k = keep.path();
    assert_eq!(std::fs::read_dir(k.join("export")).unwrap().count(), 8);
    assert!(k.join("state/state.sqlite").is_file());
    assert_eq!(
        std::fs::read(k.join("model/mammo-mtl-demo.int8.onnx")).unwrap(),
        mammo_edge::model::bundled::DEMO_MODEL_INT8
    );
    assert!(mammo_edge::edge::config::Config::load(&k.join("config.toml")).is_ok());
    // a folder that is not an earlier demo's is refused
    let other = tmp();
    std::fs::write(other.path().join("mine.txt"), "x").unwrap();
    let out = bin()
        .args(["demo", "--keep"])
        .arg(other.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

/// `infer`: text lines and JSON payloads for a phantom exam and a junk file, the exam last.
#[test]
fn infer_prints_image_payloads_then_the_exam() {
    let d = tmp();
    let rows = mammo_edge::synth::generator::generate(
        &mammo_edge::synth::generator::SynthConfig {
            count: 4,
            seed: 5,
            scale: 0.06,
            threads: 1,
            ..Default::default()
        },
        d.path(),
    )
    .unwrap();
    std::fs::write(d.path().join("images/zz_junk.dcm"), b"junk").unwrap();
    let out = bin()
        .args(["infer", "--json"])
        .arg(d.path().join("images"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "the junk file is rejected");
    let msgs = json_lines(&out.stdout);
    assert_eq!(msgs.len(), 6, "4 images, 1 error, 1 exam: {msgs:?}");
    for (m, r) in msgs[..4].iter().zip(&rows) {
        assert_eq!(m["schema"], "mammo-edge.image/1");
        assert_eq!(m["laterality"], r.row.laterality.unwrap().as_str());
        assert!(m["file"].as_str().unwrap().ends_with(&r.row.path));
    }
    let image_schema = crate::daemon::harness::schema("image");
    for m in &msgs[..4] {
        crate::daemon::harness::assert_valid(&image_schema, m);
        assert!(m["vendor"].is_string() && m["sop_instance_uid"].is_string());
    }
    assert_eq!(msgs[4]["schema"], "mammo-edge.error/1");
    assert_eq!(msgs[4]["reason_code"], "not_dicom");
    let e = &msgs[5];
    assert_eq!(e["schema"], "mammo-edge.exam/1");
    assert_eq!(
        (e["complete"].as_bool(), e["images"].as_u64()),
        (Some(true), Some(4))
    );
    let text = bin()
        .arg("infer")
        .arg(d.path().join("images"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&text.stdout).into_owned();
    assert_eq!(lines_of(&stdout, "image").len(), 4, "{stdout}");
    assert_eq!(lines_of(&stdout, "error").len(), 1, "{stdout}");
    assert_eq!(lines_of(&stdout, "exam").len(), 1, "{stdout}");
    no_patient_data(&format!(
        "{stdout}{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&text.stderr)
    ));
}

/// `infer` on image files (research sets' PNG/PGM): the same image payload without UIDs or
/// DICOM vendor, laterality from the chest-wall side (a mirrored copy is the other breast and
/// scores the same), an inverted copy reported and scored the same, a colour picture skipped and
/// a damaged file an error with their reasons, no exam.
#[test]
fn infer_scores_image_files_with_laterality_and_polarity_from_the_pixels() {
    let d = tmp();
    // a left breast: chest wall on the left edge, bright tissue on a dark background
    let (w, h) = (140u32, 240u32);
    let left = image::GrayImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (
            x as f32 / w as f32,
            (y as f32 - h as f32 / 2.0) / (h as f32 / 2.0),
        );
        let inside = dx * dx / 0.5 + dy * dy * 0.8 < 1.0;
        image::Luma([if inside {
            90 + ((x * 7 + y * 3) % 60) as u8
        } else {
            2
        }])
    });
    left.save(d.path().join("a_left.png")).unwrap();
    image::imageops::flip_horizontal(&left)
        .save(d.path().join("b_right.pgm"))
        .unwrap();
    let mut neg = left.clone();
    image::imageops::invert(&mut neg);
    neg.save(d.path().join("c_inverted.png")).unwrap();
    image::RgbImage::from_fn(64, 64, |x, _| image::Rgb([(x * 4) as u8, 200, 30]))
        .save(d.path().join("d_colour.png"))
        .unwrap();
    std::fs::write(d.path().join("e_damaged.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let out = bin()
        .args(["infer", "--json"])
        .arg(d.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "two files are rejected");
    let msgs = json_lines(&out.stdout);
    assert_eq!(
        msgs.len(),
        5,
        "three images, one skipped, one error, no exam: {msgs:?}"
    );
    let image_schema = crate::daemon::harness::schema("image");
    for m in &msgs[..3] {
        assert_eq!(m["schema"], "mammo-edge.image/1");
        crate::daemon::harness::assert_valid(&image_schema, m);
        for absent in [
            "vendor",
            "manufacturer",
            "sop_instance_uid",
            "study_instance_uid",
        ] {
            assert!(m.get(absent).is_none(), "{absent} in {m}");
        }
        assert_eq!(m["image_file"]["bits_stored"], 8);
        assert!(m["vendor_predicted"].is_string());
        assert!(m["intended_use"].is_null() && m["model"]["intended_use"].is_string());
    }
    let (a, b, c) = (&msgs[0], &msgs[1], &msgs[2]);
    assert!(a["file"].as_str().unwrap().ends_with("a_left.png"));
    assert_eq!(
        (a["laterality"].as_str(), b["laterality"].as_str()),
        (Some("L"), Some("R"))
    );
    assert_eq!(a["image_file"]["inverted"], false);
    assert_eq!(c["image_file"]["inverted"], true);
    assert_eq!(b["image_file"]["format"], "Pnm");
    // mirrored and inverted copies are the same breast once made canonical: the inverted copy
    // gives the same model input; the mirrored one may crop a pixel differently (probabilities
    // within 0.02, percent density within 1 point)
    for (other, scale) in [(b, 10.0), (c, 1.0)] {
        for (k, tol) in [
            ("cancer_probability", 2e-3),
            ("normal_probability", 2e-3),
            ("percent_density", 0.1),
        ] {
            let (x, y) = (a[k].as_f64().unwrap(), other[k].as_f64().unwrap());
            assert!(
                (x - y).abs() <= scale * tol,
                "{k}: {x} vs {y} ({})",
                other["file"]
            );
        }
    }
    let ids: std::collections::BTreeSet<&str> = msgs
        .iter()
        .map(|m| m["result_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "a result id per file");
    assert_eq!(
        (msgs[3]["schema"].as_str(), msgs[3]["reason_code"].as_str()),
        (Some("mammo-edge.skipped/1"), Some("not_grey"))
    );
    assert_eq!(
        (msgs[4]["schema"].as_str(), msgs[4]["reason_code"].as_str()),
        (Some("mammo-edge.error/1"), Some("undecodable"))
    );
    // the same file again gives the same result id
    let again = bin()
        .args(["infer", "--json"])
        .arg(d.path().join("a_left.png"))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(json_lines(&again.stdout)[0]["result_id"], a["result_id"]);
    let text = bin()
        .arg("infer")
        .arg(d.path().join("c_inverted.png"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("polarity corrected"), "{stdout}");
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
