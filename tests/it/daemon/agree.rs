//! The daemon and `mammo-edge infer` agree: the same four-view phantom exam, the same model file,
//! scored by the daemon (through mosquitto) and by `infer --json`, gives the same image and exam
//! values (probabilities, classes, percent density, OOD, triage, per breast).

use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::harness::*;
use crate::util::tmp;

/// Keys whose values differ between two runs by design.
const RUN_SPECIFIC: [&str; 4] = ["produced_at", "timings_ms", "file", "file_hash"];

/// Equal JSON values, numbers within 1e-6 (the same code formats both, so they are expected to
/// be identical; the tolerance only covers float formatting).
fn same(a: &Value, b: &Value, at: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-6, "{at}: daemon {x} vs infer {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: {a} vs {b}");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                same(p, q, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            let keys = |m: &serde_json::Map<String, Value>| -> Vec<String> {
                m.keys()
                    .filter(|k| !RUN_SPECIFIC.contains(&k.as_str()))
                    .cloned()
                    .collect()
            };
            assert_eq!(keys(x), keys(y), "{at}: keys differ");
            for k in keys(x) {
                same(&x[&k], &y[&k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

#[test]
fn daemon_messages_equal_infer_json_on_the_same_files() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let got = Arc::new(Mutex::new(Vec::new()));
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-agree", got);
    let mut d = s.start();
    let src = tmp();
    let files = exam(src.path(), 23);
    for f in &files {
        drop_in(&s.watch, f, f.file_name().unwrap().to_str().unwrap());
    }
    sub.wait(120, "4 images and 1 exam", |s| {
        s.on("image").len() >= 4 && !s.on("exam").is_empty()
    });
    let images = sub.on("image");
    let exams = sub.on("exam");
    assert_eq!((images.len(), exams.len()), (4, 1), "{images:?} {exams:?}");
    assert!(d.alive());

    let out = Command::new(BIN)
        .args(["infer", "--json", "--model"])
        .arg(&s.model)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "4 images then the exam: {lines:?}");
    let (vi, ve) = (schema("image"), schema("exam"));
    for m in &lines[..4] {
        assert_valid(&vi, m);
    }
    assert_valid(&ve, &lines[4]);

    // the same model file: the same model fields, sha256 included
    assert_eq!(lines[0]["model"], images[0]["model"]);
    for m in &images {
        let sop = &m["sop_instance_uid"];
        let twin = lines[..4]
            .iter()
            .find(|l| l["sop_instance_uid"] == *sop)
            .unwrap_or_else(|| panic!("infer has no image {sop}"));
        same(m, twin, &format!("image {}-{}", m["laterality"], m["view"]));
    }

    let (de, ie) = (&exams[0], &lines[4]);
    let ids = |e: &Value| -> Vec<String> {
        let mut v: Vec<String> = e["image_result_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(de), ids(ie));
    let strip = |e: &Value| {
        let mut e = e.clone();
        e.as_object_mut().unwrap().remove("image_result_ids");
        e
    };
    same(&strip(de), &strip(ie), "exam");
    // the fields the issue names, spelled out
    for k in [
        "cancer_probability",
        "cancer_flag",
        "density",
        "density_probabilities",
        "percent_density",
        "dense_breasts",
        "ood",
        "triage",
        "breasts",
        "complete",
        "revision",
    ] {
        assert!(de.get(k).is_some() && ie.get(k).is_some(), "{k}");
    }
    assert_eq!(de["breasts"].as_array().unwrap().len(), 2);
    assert_eq!(d.stop().code(), Some(0));
}
