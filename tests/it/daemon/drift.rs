//! The drift monitor end to end (issue 16): the shipped demo model given a drift reference of
//! Hologic-style phantoms (tract on the files, as `mammo-train reference` does), the daemon on a
//! real mosquitto: more phantoms of that style stay quiet, the same phantoms with another VOI
//! window (a "firmware update" of the modality's presentation, as a new ManufacturerModelName)
//! raise an alert with the numbers asserted, and a restart resumes the windows from SQLite.

use std::path::{Path, PathBuf};

use mammo_edge::ingest::dicom::IngestOptions;
use mammo_edge::ingest::dicom::Vendor;
use mammo_edge::model::reference::{DriftReference, Observation};
use mammo_edge::model::ModelRunner;
use mammo_edge::synth::generator::{generate, SynthConfig};
use prost::Message;
use serde_json::Value;
use tract_onnx::pb;

use super::harness::*;
use crate::util::tmp;

fn phantoms(dir: &Path, count: usize, seed: u64) -> Vec<PathBuf> {
    let rows = generate(
        &SynthConfig {
            count,
            seed,
            scale: 0.1,
            threads: 2,
            vendors: vec![Vendor::Hologic],
            ..Default::default()
        },
        dir,
    )
    .expect("synth");
    rows.iter().map(|g| dir.join(&g.row.path)).collect()
}

/// The modality's presentation changed: another VOI window and model name.
fn shift_style(src: &Path, dst: &Path) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let mut obj = dicom_object::open_file(src).unwrap();
    for (tag, vr, v) in [
        (tags::WINDOW_CENTER, VR::DS, "2900"),
        (tags::WINDOW_WIDTH, VR::DS, "1200"),
        (
            tags::MANUFACTURER_MODEL_NAME,
            VR::LO,
            "Selenia Dimensions FW2",
        ),
    ] {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    obj.write_to_file(dst).unwrap();
}

/// The bundled float32 model with a drift reference computed by tract on `files` (source
/// `hologic`), written to `out`.
fn model_with_reference(files: &[PathBuf], out: &Path) -> DriftReference {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mammo-mtl-demo.onnx");
    let runner = ModelRunner::load(&src).unwrap();
    let opts = IngestOptions::default();
    let scored: Vec<(String, Observation)> = files
        .iter()
        .map(|f| {
            let r = mammo_edge::model::score::infer_file(&runner, f, &opts).unwrap();
            (
                "hologic".to_string(),
                mammo_edge::edge::drift::observation(&r),
            )
        })
        .collect();
    let reference = DriftReference::build(&scored, "test phantoms").unwrap();
    let mut m = pb::ModelProto::decode(std::fs::read(&src).unwrap().as_slice()).unwrap();
    m.metadata_props
        .retain(|p| p.key != "mammo.drift_reference");
    m.metadata_props.push(pb::StringStringEntryProto {
        key: "mammo.drift_reference".into(),
        value: serde_json::to_string(&reference).unwrap(),
    });
    std::fs::write(out, m.encode_to_vec()).unwrap();
    reference
}

fn latest_drift(sub: &Subscriber, source: &str) -> Option<Value> {
    sub.on(&format!("drift/{source}")).pop()
}

#[test]
fn drift_of_one_vendor_style_stays_quiet_a_shifted_style_alerts_and_a_restart_resumes() {
    let broker = Broker::start();
    let data = tmp();
    let reference_files = phantoms(&data.path().join("reference"), 240, 31);
    let same = phantoms(&data.path().join("same"), 100, 32);
    let shifted_src = phantoms(&data.path().join("shifted"), 100, 33);
    let model = data.path().join("with-reference.onnx");
    let reference = model_with_reference(&reference_files, &model);
    assert_eq!(reference.sources["hologic"].images, 240);

    let s = Setup::new(
        &broker.url(),
        "[drift]\nwindow = 100\nmin_images = 100\npsi_alert = 0.25\nood_rate_alert = 0.1\n",
    );
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        cfg.replace(&format!("{:?}", s.model), &format!("{model:?}")),
    )
    .unwrap();
    let got = Default::default();
    let sub = Subscriber::start(broker.port, &s.prefix, "drift-sub", got);
    let mut d = s.start();
    let quiet = "hologic-inc-selenia-dimensions";
    for (i, f) in same.iter().enumerate() {
        drop_in(&s.watch, f, &format!("same-{i}.dcm"));
    }
    sub.wait(180, "100 drift updates of the same style", |sub| {
        latest_drift(sub, quiet).is_some_and(|v| v["window"]["images"] == 100)
    });
    let drift_schema = schema("drift");
    let v = latest_drift(&sub, quiet).unwrap();
    assert_valid(&drift_schema, &v);
    assert_eq!(v["source"]["manufacturer"], "HOLOGIC, Inc.");
    assert_eq!(v["reference"]["source"], "hologic");
    assert_eq!(v["window"]["judged"], true);
    assert_eq!(v["alert"], false, "{v}");
    for out in ["cancer_probability", "density", "percent_density"] {
        let p = v["psi"][out].as_f64().unwrap();
        assert!(p < 0.25, "PSI of {out} {p} on the same style: {v}");
    }
    assert!(sub.on("alert").is_empty(), "{:?}", sub.on("alert"));
    let quiet_psi = v["psi"].clone();

    // the same phantoms with another VOI window under a new model name: a new source window
    let fw2 = "hologic-inc-selenia-dimensions-fw2";
    for (i, f) in shifted_src.iter().enumerate() {
        let to = data.path().join(format!("fw2-{i}.dcm"));
        shift_style(f, &to);
        drop_in(&s.watch, &to, &format!("fw2-{i}.dcm"));
    }
    sub.wait(180, "an alert for the shifted style", |sub| {
        !sub.on("alert").is_empty()
    });
    sub.wait(120, "100 drift updates of the shifted style", |sub| {
        latest_drift(sub, fw2).is_some_and(|v| v["window"]["images"] == 100)
    });
    let alerts = sub.on("alert");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_valid(&schema("alert"), a);
    assert_eq!(a["state"], "raised");
    assert_eq!(a["source"]["id"], fw2);
    assert_eq!(a["reference"]["source"], "hologic");
    let n = a["window"]["images"].as_u64().unwrap();
    assert_eq!(n, 100, "raised once judged");
    let max_psi = ["cancer_probability", "density", "percent_density"]
        .iter()
        .map(|o| a["psi"][o].as_f64().unwrap())
        .fold(0f64, f64::max);
    assert!(max_psi > 0.25, "{a}");
    assert!(!a["reasons"].as_array().unwrap().is_empty());
    let v = latest_drift(&sub, fw2).unwrap();
    assert_valid(&drift_schema, &v);
    assert_eq!(v["alert"], true);
    eprintln!(
        "drift numbers: same style PSI {quiet_psi}; shifted style at the alert ({n} images) PSI {} OOD {}; after 100 images PSI {} OOD {}",
        a["psi"], a["ood_rate"], v["psi"], v["ood_rate"]
    );
    // nothing identifying in the drift and alert messages
    for r in sub.all() {
        if r.topic.contains("/drift/") || r.topic.ends_with("/alert") {
            assert!(!r.payload.contains("PatientName") && !r.payload.contains(".dcm"));
        }
    }
    d.stop();
    assert_eq!(
        s.count("SELECT COUNT(*) FROM drift_obs"),
        200,
        "both windows kept in SQLite"
    );
    assert_eq!(
        s.count("SELECT COUNT(*) FROM drift_state WHERE alerting = 1"),
        1
    );

    // restart: the windows and the alert state are resumed, not reset
    let mut d = s.start();
    wait_for(30, "the drift windows resumed", &s, || {
        s.log_text()
            .contains("drift monitor: 2 source window(s) resumed")
    });
    let extra = data.path().join("fw2-extra.dcm");
    shift_style(&shifted_src[0], &extra);
    // another SOPInstanceUID, so it is a new image and not a duplicate
    {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        let mut obj = dicom_object::open_file(&extra).unwrap();
        obj.put(DataElement::new(
            dicom_dictionary_std::tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("1.2.826.0.1.3680043.9.7433.99.1"),
        ));
        obj.meta_mut().media_storage_sop_instance_uid = "1.2.826.0.1.3680043.9.7433.99.1".into();
        obj.meta_mut().update_information_group_length();
        obj.write_to_file(&extra).unwrap();
    }
    let before = sub.on(&format!("drift/{fw2}")).len();
    drop_in(&s.watch, &extra, "fw2-extra.dcm");
    sub.wait(60, "a drift update after the restart", |sub| {
        sub.on(&format!("drift/{fw2}")).len() > before
    });
    let v = latest_drift(&sub, fw2).unwrap();
    assert_eq!(v["window"]["images"], 100, "window kept full: {v}");
    assert_eq!(v["alert"], true, "alert state kept: {v}");
    // at least once: an alert whose PUBACK the stop cut off is sent again after the restart with
    // the same result_id (the contract's de-duplication key); a second raise would be a new one
    assert_eq!(
        distinct_result_ids(&sub.on("alert")).len(),
        1,
        "no second raise after the restart: {:?}",
        sub.on("alert")
    );
    d.stop();
}
