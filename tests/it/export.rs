//! ONNX export (feature `train`): the exported file follows the contract, tract runs it with the
//! same outputs as Burn (max abs difference ≤ 1e-4), and a non-conforming model is refused by name.

use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softmax};
use mammo_edge::manifest;
use mammo_edge::model::contract::ModelMeta;
use mammo_edge::model::ModelRunner;
use mammo_edge::synth::generator::{generate, SynthConfig};
use mammo_edge::synth::SplitMix64;
use mammo_edge::train::data;
use mammo_edge::train::export::{export, meta_for};
use mammo_edge::train::fit::{fit, load_net, FitConfig, InferBackend};
use mammo_edge::train::model::{MtlConfig, MtlNet};
use prost::Message;

use crate::util::*;

fn trained() -> (tempfile::TempDir, FitConfig) {
    let d = tmp();
    generate(
        &SynthConfig {
            count: 24,
            seed: 9,
            scale: 0.06,
            ..Default::default()
        },
        d.path(),
    )
    .unwrap();
    let cfg = FitConfig {
        model: MtlConfig::new()
            .with_height(128)
            .with_width(64)
            .with_base(8)
            .with_hidden(16),
        epochs: 2,
        batch_size: 8,
        augment: false,
        ..Default::default()
    };
    fit(
        &d.path().join("manifest.csv"),
        &cfg,
        &d.path().join("run"),
        false,
    )
    .unwrap();
    (d, cfg)
}

/// The trained network of [`trained`], exported with research-only metadata to `m.onnx`.
fn exported(
    d: &std::path::Path,
    cfg: &FitConfig,
    recon_threshold: f32,
) -> (MtlNet<InferBackend>, ModelMeta, std::path::PathBuf) {
    let net = load_net(&d.join("run/best.mpk"), &cfg.model).unwrap();
    let meta = meta_for(
        cfg,
        "test-model",
        "0.0.1",
        "research only, not for clinical use",
        "phantoms",
        0.5,
        0.9,
        recon_threshold,
    );
    let path = d.join("m.onnx");
    export(&net, &meta, &path).unwrap();
    (net, meta, path)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn tract_runs_the_exported_file_like_burn() {
    let (d, cfg) = trained();
    let (net, meta, path) = exported(d.path(), &cfg, 1.0);
    let runner = ModelRunner::load(&path).unwrap();
    assert_eq!(runner.meta, meta);

    let rows = manifest::read(&d.path().join("manifest.csv")).unwrap();
    let phantom = data::load_one(d.path(), 0, &rows[0], &cfg.preprocess(), None)
        .unwrap()
        .input;
    let mut rng = SplitMix64::new(4);
    let random: Vec<f32> = (0..128 * 64).map(|_| rng.normal() as f32).collect();
    let device = Default::default();
    for input in [phantom, random] {
        let x = Tensor::<InferBackend, 4>::from_data(
            TensorData::new(input.clone(), [1, 1, 128, 64]),
            &device,
        );
        let o = net.forward(x);
        let v = |t: Tensor<InferBackend, 2>| t.into_data().to_vec::<f32>().unwrap();
        let recon: Vec<f32> = o.recon.clone().into_data().to_vec().unwrap();
        let target: Vec<f32> = o.recon_target.clone().into_data().to_vec().unwrap();
        let err = recon
            .iter()
            .zip(&target)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            / recon.len() as f32;
        let t = runner.run(&input).unwrap();
        let tol = 1e-4;
        assert!(max_diff(&[t.cancer], &v(sigmoid(o.cancer))) <= tol);
        assert!(max_diff(&[t.normal], &v(sigmoid(o.normal))) <= tol);
        assert!(max_diff(&t.density, &v(softmax(o.density, 1))) <= tol);
        assert!(max_diff(&[t.percent_density / 100.0], &v(sigmoid(o.percent))) <= tol);
        assert!(max_diff(&t.vendor, &v(softmax(o.vendor, 1))) <= tol);
        assert!(max_diff(&t.view, &v(softmax(o.view, 1))) <= tol);
        let mask: Vec<f32> = sigmoid(o.mask).into_data().to_vec().unwrap();
        assert_eq!(t.mask_size, (32, 16));
        assert!(
            max_diff(&t.dense_mask, &mask) <= tol,
            "mask {}",
            max_diff(&t.dense_mask, &mask)
        );
        assert!(max_diff(&t.reconstruction, &recon) <= tol);
        assert!(
            (t.recon_error - err).abs() <= tol * err.max(1.0),
            "{} vs {err}",
            t.recon_error
        );
    }
}

#[test]
fn a_model_that_breaks_the_contract_is_refused_with_the_reason() {
    let cfg = MtlConfig::new()
        .with_height(64)
        .with_width(32)
        .with_base(4)
        .with_hidden(0);
    let fit_cfg = FitConfig {
        model: cfg.clone(),
        ..Default::default()
    };
    let net = cfg.init::<InferBackend>(&Default::default());
    let meta = meta_for(
        &fit_cfg,
        "m",
        "1",
        "research only, not for clinical use",
        "none",
        0.5,
        0.9,
        1.0,
    );
    let d = tmp();
    let good = d.path().join("good.onnx");
    export(&net, &meta, &good).unwrap();
    assert!(ModelRunner::load(&good).is_ok());
    let proto =
        tract_onnx::pb::ModelProto::decode(std::fs::read(&good).unwrap().as_slice()).unwrap();

    let mut p = proto.clone();
    p.metadata_props.retain(|e| e.key != "mammo.intended_use");
    let f = d.path().join("no_use.onnx");
    std::fs::write(&f, p.encode_to_vec()).unwrap();
    let e = ModelRunner::load(&f).err().unwrap().to_string();
    assert!(e.contains("mammo.intended_use"), "{e}");

    let mut p = proto.clone();
    for e in &mut p.metadata_props {
        if e.key == "mammo.preprocess_version" {
            e.value = "99".into();
        }
    }
    let f = d.path().join("pre99.onnx");
    std::fs::write(&f, p.encode_to_vec()).unwrap();
    let e = ModelRunner::load(&f).err().unwrap().to_string();
    assert!(e.contains("preprocessing version 99"), "{e}");

    let mut p = proto.clone();
    let g = p.graph.as_mut().unwrap();
    g.output.retain(|o| o.name != "recon_error");
    let f = d.path().join("no_recon_error.onnx");
    std::fs::write(&f, p.encode_to_vec()).unwrap();
    let e = ModelRunner::load(&f).err().unwrap().to_string();
    assert!(e.contains("recon_error"), "{e}");

    std::fs::write(d.path().join("junk.onnx"), b"not a model").unwrap();
    assert!(ModelRunner::load(&d.path().join("junk.onnx")).is_err());
    let _ = ModelMeta::from_props(&Default::default()).unwrap_err();
}

#[test]
fn infer_scores_dicom_files_with_the_exported_model_and_leaks_no_patient_data() {
    let (d, cfg) = trained();
    let (_, _, model) = exported(d.path(), &cfg, 1e9);
    let junk = d.path().join("images/zz_junk.dcm");
    std::fs::write(&junk, b"junk").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mammo-edge"))
        .args(["-vv", "infer", "--model"])
        .arg(&model)
        .arg(d.path().join("images"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "one junk file rejected");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 25);
    let rows = manifest::read(&d.path().join("manifest.csv")).unwrap();
    for (l, r) in lines.iter().zip(&rows) {
        assert_eq!(l["status"], "scored");
        assert_eq!(l["intended_use"], "research only, not for clinical use");
        assert_eq!(l["laterality"], r.laterality.unwrap().as_str());
        let p = l["cancer_probability"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p));
        let pd = l["percent_density"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&pd));
        assert_eq!(l["ood"], false, "threshold 1e9");
    }
    assert_eq!(lines[24]["status"], "rejected");
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for phi in ["SYNTH^PATIENT", "SYNTH-", "19700101"] {
        assert!(!all.contains(phi), "{phi} leaked");
    }
}

#[test]
fn eval_reports_per_vendor_with_the_unseen_vendor_marked() {
    use mammo_edge::labels::Split;
    let (d, cfg) = trained();
    let (_, _, model) = exported(d.path(), &cfg, 1.0);
    // hold one vendor out: all its rows become the test split, the others train
    let mut rows = manifest::read(&d.path().join("manifest.csv")).unwrap();
    let held = rows[0].vendor.unwrap();
    for r in &mut rows {
        r.split = if r.vendor == Some(held) {
            Split::Test
        } else {
            Split::Train
        };
    }
    let m = d.path().join("holdout.csv");
    manifest::write(&m, &rows).unwrap();
    let out = d.path().join("eval");
    let r = mammo_edge::train::eval::evaluate(&model, &m, Split::Test, &out).unwrap();
    let n_test = rows.iter().filter(|r| r.split == Split::Test).count();
    assert_eq!(r.overall.images, n_test);
    assert_eq!(r.by_vendor.len(), 1);
    let key = format!("{} (unseen)", held.as_str());
    let g = &r.by_vendor[&key];
    assert_eq!(g.images, n_test);
    assert!(
        g.vendor_macro_f1.is_none(),
        "the vendor head is not scored on an unseen vendor"
    );
    assert!(g.percent_density_mae.unwrap() >= 0.0 && g.mask_dice.unwrap() > 0.0);
    assert!(g.view_accuracy.unwrap() <= 1.0);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains(&key) && md.contains("research only"));
    assert!(out.join("report.json").exists());
    let r2 = mammo_edge::train::eval::evaluate(&model, &m, Split::Train, &out).unwrap();
    assert!(r2.by_vendor.keys().all(|k| !k.contains("unseen")));
    assert!(r2.overall.vendor_macro_f1.is_some());
}
