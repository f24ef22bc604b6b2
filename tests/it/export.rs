//! ONNX export (feature `train`): the exported file follows the contract, tract runs it with the
//! same outputs as Burn (max abs difference ≤ 1e-4), and a non-conforming model is refused by name.

use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softmax};
use mammo_edge::dataset::manifest;
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

/// A 128x64, base-8 network trained for `epochs` without augmentation: seconds on phantoms.
fn small(epochs: usize) -> FitConfig {
    FitConfig {
        model: MtlConfig::new()
            .with_height(128)
            .with_width(64)
            .with_base(8)
            .with_hidden(16),
        epochs,
        batch_size: 8,
        augment: false,
        ..Default::default()
    }
}

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
    let cfg = small(2);
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

/// The network's outputs on `input` (`[1, 1, 128, 64]`) equal tract's on the exported file
/// within 1e-4, every head.
fn assert_tract_agrees<B: Backend>(
    net: &MtlNet<B>,
    device: &B::Device,
    runner: &ModelRunner,
    input: &[f32],
) {
    let x = Tensor::<B, 4>::from_data(TensorData::new(input.to_vec(), [1, 1, 128, 64]), device);
    let o = net.forward(x);
    let v = |t: Tensor<B, 2>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let v4 = |t: Tensor<B, 4>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let recon: Vec<f32> = v4(o.recon.clone());
    let target: Vec<f32> = v4(o.recon_target.clone());
    let err = recon
        .iter()
        .zip(&target)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        / recon.len() as f32;
    let t = runner.run(input).unwrap();
    let tol = 1e-4;
    assert!(max_diff(&[t.cancer], &v(sigmoid(o.cancer))) <= tol);
    assert!(max_diff(&[t.normal], &v(sigmoid(o.normal))) <= tol);
    assert!(max_diff(&t.density, &v(softmax(o.density, 1))) <= tol);
    assert!(max_diff(&[t.percent_density / 100.0], &v(sigmoid(o.percent))) <= tol);
    assert!(max_diff(&t.vendor, &v(softmax(o.vendor, 1))) <= tol);
    assert!(max_diff(&t.view, &v(softmax(o.view, 1))) <= tol);
    let mask: Vec<f32> = v4(sigmoid(o.mask));
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

#[test]
fn tract_runs_the_exported_file_like_burn() {
    // trained on the default backend (LibTorch where built), exported from NdArray
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
    for input in [&phantom, &random] {
        assert_tract_agrees(&net, &Default::default(), &runner, input);
    }
    // the backend that trains the shipped model computes the same outputs as tract on the file
    #[cfg(feature = "libtorch")]
    {
        use burn::backend::LibTorch;
        use burn::module::Module;
        use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
        let device = burn::backend::libtorch::LibTorchDevice::Cpu;
        // seeded: a bare init would draw from torch's one generator while a test trains
        let torch_net: MtlNet<LibTorch<f32>> =
            mammo_edge::train::backend::seeded::<LibTorch<f32>, _>(&device, 0, || {
                cfg.model.init::<LibTorch<f32>>(&device)
            })
            .load_file(
                d.path().join("run/best"),
                &NamedMpkFileRecorder::<FullPrecisionSettings>::new(),
                &device,
            )
            .unwrap();
        for input in [&phantom, &random] {
            assert_tract_agrees(&torch_net, &device, &runner, input);
        }
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
        .args(["-vv", "infer", "--json", "--model"])
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
    let rows = manifest::read(&d.path().join("manifest.csv")).unwrap();
    let studies: std::collections::HashSet<&str> =
        rows.iter().map(|r| r.study_uid.as_str()).collect();
    // one payload per file (24 images, the junk file), then one exam per study
    assert_eq!(lines.len(), 25 + studies.len());
    for (l, r) in lines.iter().zip(&rows) {
        assert_eq!(l["schema"], "mammo-edge.image/1");
        assert_eq!(
            l["model"]["intended_use"],
            "research only, not for clinical use"
        );
        assert_eq!(l["laterality"], r.laterality.unwrap().as_str());
        let p = l["cancer_probability"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p));
        let pd = l["percent_density"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&pd));
        assert_eq!(l["ood"], false, "threshold 1e9");
    }
    assert_eq!(lines[24]["schema"], "mammo-edge.error/1");
    for e in &lines[25..] {
        assert_eq!(e["schema"], "mammo-edge.exam/1");
        assert_eq!(e["ood"], false);
    }
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for phi in ["SYNTH^PATIENT", "SYNTH-", "19700101"] {
        assert!(!all.contains(phi), "{phi} leaked");
    }
}

#[test]
fn eval_reports_per_vendor_with_the_unseen_vendor_marked() {
    use mammo_edge::model::labels::Split;
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
    assert_eq!(r.by_source.len(), 1);
    let key = format!("{} (unseen)", held.as_str());
    let g = &r.by_source[&key];
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
    // the PNG plots: ROC per vendor, calibration, confusion matrices
    for (file, w, h) in [("roc.png", 640, 560), ("calibration.png", 640, 560)] {
        assert!(r.plots.iter().any(|p| p == file), "{file} in {:?}", r.plots);
        let img = image::open(out.join(file)).unwrap().into_rgb8();
        assert_eq!((img.width(), img.height()), (w, h));
        // not a blank canvas: curves and text put non-white pixels in
        let ink = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(ink > 2000, "{file}: {ink} non-white pixels");
    }
    assert!(r.plots.iter().any(|p| p == "confusion_density.png"));
    assert!(md.contains("![roc.png](roc.png)"));
    let r2 = mammo_edge::train::eval::evaluate(&model, &m, Split::Train, &out).unwrap();
    assert!(r2.by_source.keys().all(|k| !k.contains("unseen")));
    assert!(r2.overall.vendor_macro_f1.is_some());
}

#[test]
fn roc_points_and_reliability_bins_of_known_scores() {
    use mammo_edge::train::plots::{reliability, roc_points};
    let pts = roc_points(&[0.9, 0.8, 0.3, 0.1], &[true, false, true, false]);
    assert_eq!(
        pts,
        vec![(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]
    );
    // ties step diagonally
    assert_eq!(
        roc_points(&[0.5, 0.5], &[true, false]),
        vec![(0.0, 0.0), (1.0, 1.0)]
    );
    assert!(roc_points(&[0.5], &[true]).is_empty());
    let b = reliability(&[0.05, 0.15, 0.12, 0.95], &[false, true, false, true], 10);
    assert_eq!(b.len(), 3);
    assert!((b[0].0 - 0.05).abs() < 1e-12 && b[0].1 == 0.0 && b[0].2 == 1);
    assert!((b[1].0 - 0.135).abs() < 1e-12 && b[1].1 == 0.5 && b[1].2 == 2);
    assert!(b[2].1 == 1.0 && b[2].2 == 1);
}

/// True when `python3` can import onnx and onnxruntime; in CI (`CI` set) their absence fails.
fn python_quantizer() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import onnx, onnxruntime.quantization, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide python3 with onnx and onnxruntime"
        );
        eprintln!("SKIPPED: python3 with onnx + onnxruntime not found (pip install onnx onnxruntime numpy)");
    }
    ok
}

#[test]
fn quantize_writes_an_int8_model_that_tract_runs_with_integer_kernels() {
    use mammo_edge::train::quantize::{quantize, QuantizeOptions};
    if !python_quantizer() {
        return;
    }
    let (d, cfg) = trained();
    let (_, _, f32_path) = exported(d.path(), &cfg, 1.0);
    let int8_path = d.path().join("m.int8.onnx");
    let r = quantize(&QuantizeOptions {
        model: f32_path.clone(),
        manifest: d.path().join("manifest.csv"),
        out: int8_path.clone(),
        samples: 8,
        python: "python3".into(),
        cache: Some(d.path().join("run/cache")),
        threads: 2,
    })
    .unwrap();
    assert!(r.calibration_images >= 4 && r.calibration_images <= 8);
    // every quantised convolution runs as an integer kernel in tract's plan
    // the 9 convolutions (stem, 6 encoder, mask and reconstruction 1×1) run as int8 GEMMs
    assert!(
        r.int8_nodes.len() >= 9,
        "int8 nodes in tract's plan: {:#?}",
        r.int8_nodes
    );
    assert!(r
        .int8_nodes
        .iter()
        .all(|o| mammo_edge::train::quantize::kernels(o)
            .iter()
            .all(|k| k.contains("i32"))));
    assert!(
        r.script_summary.contains("QLinearConv"),
        "{}",
        r.script_summary
    );
    let f = ModelRunner::load(&f32_path).unwrap();
    let q = ModelRunner::load(&int8_path).unwrap();
    assert!(
        q.meta.quantization.starts_with("int8 QOperator"),
        "{}",
        q.meta.quantization
    );
    assert_eq!(f.meta.quantization, "float32");
    assert!(q.meta.recon_error_threshold.is_finite() && q.meta.recon_error_threshold > 0.0);
    assert_eq!(q.meta.intended_use, f.meta.intended_use);
    // int8 outputs stay close to float32 on real (phantom) inputs
    let rows = manifest::read(&d.path().join("manifest.csv")).unwrap();
    let pick: Vec<_> = rows.iter().enumerate().take(6).collect();
    let samples = data::load(d.path(), &pick, &cfg.preprocess(), None, 2).unwrap();
    for s in &samples {
        let (a, b) = (f.run(&s.input).unwrap(), q.run(&s.input).unwrap());
        let d = max_diff(
            &[
                a.cancer,
                a.normal,
                a.density[0],
                a.density[1],
                a.density[2],
                a.density[3],
                a.view[0],
            ],
            &[
                b.cancer,
                b.normal,
                b.density[0],
                b.density[1],
                b.density[2],
                b.density[3],
                b.view[0],
            ],
        );
        assert!(d <= 0.05, "int8 vs float32 probabilities differ by {d}");
        assert!((a.percent_density - b.percent_density).abs() <= 5.0);
    }
}

#[test]
fn ablation_trains_the_cancer_only_baseline_with_the_same_config_and_compares_per_vendor() {
    use mammo_edge::model::labels::Split;
    use mammo_edge::train::ablation::{ablation, AblationOptions};
    use mammo_edge::train::fit::read_config;
    let (d, cfg) = trained();
    let (_, _, model) = exported(d.path(), &cfg, 1.0);
    let out = d.path().join("ablation");
    let a = ablation(&AblationOptions {
        run: d.path().join("run"),
        model: model.clone(),
        manifest: d.path().join("manifest.csv"),
        split: Split::Train,
        out: out.clone(),
        stop_after: None,
    })
    .unwrap();
    // same configuration, only the loss weights differ
    let base = read_config(&out.join("baseline-run")).unwrap();
    assert_eq!(base.model, cfg.model);
    assert_eq!(
        (base.epochs, base.seed, base.lr),
        (cfg.epochs, cfg.seed, cfg.lr)
    );
    let w = base.weights;
    assert_eq!(w.cancer, 1.0);
    assert_eq!(
        [w.normal, w.density, w.percent, w.vendor, w.view, w.mask, w.recon],
        [0.0; 7]
    );
    assert!(std::fs::symlink_metadata(out.join("baseline-run/cache"))
        .unwrap()
        .file_type()
        .is_symlink());
    let q = ModelRunner::load(&out.join("baseline.onnx")).unwrap();
    assert!(q.meta.model_name.ends_with("-cancer-only"));
    assert_eq!(a.baseline_epochs, cfg.epochs);
    // one row per vendor plus "all", both models scored on the same images
    let mtl = mammo_edge::train::eval::evaluate(
        &model,
        &d.path().join("manifest.csv"),
        Split::Train,
        &d.path().join("e"),
    )
    .unwrap();
    assert_eq!(a.rows.len(), mtl.by_source.len() + mtl.pooled.len() + 1);
    let all = a.rows.last().unwrap();
    assert_eq!(
        (all.group.as_str(), all.images),
        ("all", mtl.overall.images)
    );
    assert_eq!(all.mtl.map(|x| x[0]), mtl.overall.cancer_auc.map(|x| x[0]));
    assert_eq!(
        (all.positives, all.positives + all.negatives),
        (mtl.overall.cancer_positive, mtl.overall.cancer_labelled)
    );
    // AUC exists for both models or for neither (it needs both classes among the images)
    assert_eq!(all.single_task.is_some(), all.mtl.is_some());
    let md = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    assert!(md.contains("single-task") && md.contains("| all |"));
    assert!(out.join("mtl/report.json").exists() && out.join("baseline/report.json").exists());
}

/// The seed's source head on a manifest with a `source` column: `fit` takes its classes from the
/// training rows (a held-out source gets none), the export names them, and `eval` marks the
/// held-out source unseen, pools each set's seen and unseen sources, and scores the biopsy and
/// tissue columns.
#[test]
fn the_source_head_learns_the_manifest_sources_and_eval_marks_the_unseen_one() {
    use mammo_edge::model::labels::{Density, Split};
    use mammo_edge::train::fit::read_config;
    let d = tmp();
    generate(
        &SynthConfig {
            count: 24,
            seed: 4,
            scale: 0.06,
            ..Default::default()
        },
        d.path(),
    )
    .unwrap();
    let mut rows = manifest::read(&d.path().join("manifest.csv")).unwrap();
    let held = rows[0].vendor.unwrap();
    for (i, r) in rows.iter_mut().enumerate() {
        let v = r.vendor.unwrap();
        let tissue = match r.density {
            Some(Density::A) => "F",
            Some(Density::D) => "D",
            _ => "G",
        };
        r.extra = vec![
            ("source".into(), format!("site-{}", v.as_str())),
            ("biopsy".into(), "1".into()),
            ("tissue".into(), tissue.into()),
        ];
        r.split = if v == held || i % 3 == 0 {
            Split::Test
        } else {
            Split::Train
        };
    }
    let m = d.path().join("sources.csv");
    manifest::write(&m, &rows).unwrap();
    let mut trained: Vec<String> = rows
        .iter()
        .filter(|r| r.split == Split::Train)
        .map(|r| r.source().unwrap())
        .collect();
    trained.sort();
    trained.dedup();
    assert!(trained.len() >= 2 && !trained.contains(&format!("site-{}", held.as_str())));
    let cfg = small(1);
    let run = d.path().join("run");
    fit(&m, &cfg, &run, false).unwrap();
    let used = read_config(&run).unwrap();
    assert_eq!(used.model.sources, trained);
    assert_eq!(used.model.vendors, trained.len());
    let net = load_net(&run.join("best.mpk"), &used.model).unwrap();
    let meta = meta_for(
        &used,
        "t",
        "0.0.1",
        "research only",
        "phantoms",
        0.5,
        0.9,
        1.0,
    );
    assert_eq!(meta.vendor_classes, trained);
    let model = d.path().join("m.onnx");
    export(&net, &meta, &model).unwrap();
    let r =
        mammo_edge::train::eval::evaluate(&model, &m, Split::Test, &d.path().join("eval")).unwrap();
    let unseen = format!("site-{} (unseen)", held.as_str());
    assert!(
        r.by_source.contains_key(&unseen),
        "{:?}",
        r.by_source.keys()
    );
    assert!(r.by_source[&unseen].vendor_macro_f1.is_none());
    let seen: Vec<&String> = r
        .by_source
        .keys()
        .filter(|k| !k.contains("unseen"))
        .collect();
    assert!(!seen.is_empty(), "{:?}", r.by_source.keys());
    assert!(r.by_source[seen[0]].vendor_macro_f1.is_some());
    assert_eq!(
        r.pooled.keys().collect::<Vec<_>>(),
        ["site seen", "site unseen"]
    );
    assert_eq!(
        r.pooled["site seen"].images + r.pooled["site unseen"].images,
        r.overall.images
    );
    assert_eq!(r.by_source[&unseen].images, r.pooled["site unseen"].images);
    // every image is biopsied here, so the biopsied-only AUC is the AUC
    assert_eq!(r.overall.cancer_auc_biopsied, r.overall.cancer_auc);
    let rho = r
        .overall
        .tissue_spearman
        .expect("tissue vs percent density");
    assert!((-1.0..=1.0).contains(&rho));
    assert!(r.overall.patients > 0 && r.overall.patients <= r.overall.images);
    let md = std::fs::read_to_string(d.path().join("eval/report.md")).unwrap();
    assert!(md.contains(&unseen) && md.contains("site seen") && md.contains("biopsied only"));
}

/// `Σ_depths scale · mean_j(((f − μ)P)_j (f − μ)_j)` of [`OodStats`], from Burn's features of one
/// `[1, 1, 128, 64]` input, in f64: what the graph's `ood_score` must equal.
fn ood_by_hand(
    net: &MtlNet<InferBackend>,
    ood: &mammo_edge::train::export::OodStats,
    input: &[f32],
) -> f64 {
    let x = Tensor::<InferBackend, 4>::from_data(
        TensorData::new(input.to_vec(), [1, 1, 128, 64]),
        &Default::default(),
    );
    let mut total = 0.0;
    for (f, l) in net.stage_stats(x).into_iter().zip(&ood.layers) {
        let f = f.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        let d = f.len();
        let c: Vec<f64> = f.iter().zip(&l.mean).map(|(a, m)| (a - m) as f64).collect();
        let mut q = 0.0;
        for i in 0..d {
            for j in 0..d {
                q += c[i] * l.precision[i * d + j] as f64 * c[j];
            }
        }
        total += l.scale as f64 * q / d as f64;
    }
    total
}

#[test]
fn ood_score_in_the_graph_is_the_feature_distance_and_separates_foreign_images() {
    use mammo_edge::train::export::{export_with, fit_ood, stage_features, write_meta};
    let (d, cfg) = trained();
    let net = load_net(&d.path().join("run/best.mpk"), &cfg.model).unwrap();
    let rows = manifest::read(&d.path().join("manifest.csv")).unwrap();
    let all: Vec<_> = rows.iter().enumerate().collect();
    let samples = data::load(d.path(), &all, &cfg.preprocess(), None, 2).unwrap();
    assert!(samples.len() >= 20, "{} phantoms", samples.len());
    let features = stage_features(&net, &samples, 128, 64).unwrap();
    // three depths: channel mean + sd of 2c, 4c, 8c channels (c = 8)
    assert_eq!(
        features.iter().map(|f| f[0].len()).collect::<Vec<_>>(),
        vec![32, 64, 128]
    );
    let ood = fit_ood(&features).unwrap();
    let mut meta = meta_for(
        &cfg,
        "test-model",
        "0.0.1",
        "research only, not for clinical use",
        "phantoms",
        0.5,
        0.9,
        1.0,
    );
    meta.ood_threshold = Some(2.5);
    let path = d.path().join("ood.onnx");
    export_with(&net, &meta, Some(&ood), &path).unwrap();
    let runner = ModelRunner::load(&path).unwrap();
    assert_eq!(runner.meta.ood_threshold, Some(2.5));

    // the graph computes the distance of the formula (f32 in tract, f64 here)
    let mut rng = SplitMix64::new(4);
    let noise: Vec<f32> = (0..128 * 64).map(|_| rng.normal() as f32).collect();
    let mut scores = Vec::new();
    for input in samples.iter().map(|s| &s.input).take(4).chain([&noise]) {
        let t = runner.run(input).unwrap().ood_score.unwrap();
        let want = ood_by_hand(&net, &ood, input);
        assert!(
            (t as f64 - want).abs() <= 1e-3 * want.max(1.0),
            "tract {t} vs by hand {want}"
        );
        scores.push(t);
    }
    // a training image scores about 1 (each depth is divided by its training median); noise,
    // which no phantom resembles, scores far above every training image and is flagged
    let mut train: Vec<f32> = samples
        .iter()
        .map(|s| runner.run(&s.input).unwrap().ood_score.unwrap())
        .collect();
    train.sort_by(f32::total_cmp);
    let median = train[train.len() / 2];
    assert!((0.5..=1.5).contains(&median), "training median {median}");
    let noise_score = scores[4];
    assert!(
        noise_score > 3.0 * train[train.len() - 1],
        "noise {noise_score} vs {train:?}"
    );
    let o = runner.run(&noise).unwrap();
    assert_eq!(o.ood(&runner.meta), (noise_score, 2.5));

    // the output without its threshold (or the reverse) is refused by name
    meta.ood_threshold = None;
    write_meta(&path, &meta).unwrap();
    let e = ModelRunner::load(&path).err().unwrap().to_string();
    assert!(
        e.contains("ood_threshold") && e.contains("ood_score"),
        "{e}"
    );
}

#[test]
fn an_ensemble_export_averages_its_members_outputs_and_refuses_unlike_runs() {
    use mammo_edge::train::export::{export_run, ExportOptions};
    let (d, cfg) = trained();
    let manifest = d.path().join("manifest.csv");
    // a second member: the same network and data, another seed
    let other = FitConfig {
        seed: 2,
        ..cfg.clone()
    };
    fit(&manifest, &other, &d.path().join("run2"), false).unwrap();
    let o = ExportOptions {
        name: "test-ensemble".into(),
        version: "0.0.1".into(),
        intended_use: "research only, not for clinical use".into(),
        training_data: "phantoms".into(),
        sensitivity: 0.8,
    };
    let runs = [d.path().join("run"), d.path().join("run2")];
    let paths: Vec<_> = ["a.onnx", "b.onnx", "ab.onnx"]
        .iter()
        .map(|f| d.path().join(f))
        .collect();
    export_run(&runs[..1], &manifest, &paths[0], &o).unwrap();
    export_run(&runs[1..], &manifest, &paths[1], &o).unwrap();
    let meta = export_run(&runs, &manifest, &paths[2], &o).unwrap();
    let config: serde_json::Value = serde_json::from_str(&meta.config).unwrap();
    assert_eq!(config["ensemble"].as_array().map(Vec::len), Some(2));
    assert_eq!(config["ensemble"][1]["seed"], 2);
    let [a, b, ab] = [0, 1, 2].map(|i| ModelRunner::load(&paths[i]).unwrap());

    let rows = manifest::read(&manifest).unwrap();
    let phantom = data::load_one(d.path(), 0, &rows[0], &cfg.preprocess(), None)
        .unwrap()
        .input;
    let mut rng = SplitMix64::new(5);
    let noise: Vec<f32> = (0..128 * 64).map(|_| rng.normal() as f32).collect();
    for input in [&phantom, &noise] {
        let (x, y, m) = (
            a.run(input).unwrap(),
            b.run(input).unwrap(),
            ab.run(input).unwrap(),
        );
        // the two seeds give two networks, and the ensemble is their mean, output by output
        assert!(
            (x.cancer - y.cancer).abs() > 1e-4,
            "{} {}",
            x.cancer,
            y.cancer
        );
        let mean = |p: f32, q: f32| (p + q) / 2.0;
        assert!((m.cancer - mean(x.cancer, y.cancer)).abs() <= 1e-5);
        assert!((m.percent_density - mean(x.percent_density, y.percent_density)).abs() <= 1e-3);
        assert!((m.recon_error - mean(x.recon_error, y.recon_error)).abs() <= 1e-5);
        let (ox, oy, om) = (
            x.ood_score.unwrap(),
            y.ood_score.unwrap(),
            m.ood_score.unwrap(),
        );
        assert!(
            (om - mean(ox, oy)).abs() <= 1e-3 * om.max(1.0),
            "{om} {ox} {oy}"
        );
        for (v, (p, q)) in m.density.iter().zip(x.density.iter().zip(&y.density)) {
            assert!((v - mean(*p, *q)).abs() <= 1e-5);
        }
        assert!(max_diff(&m.dense_mask, &x.dense_mask) > 0.0);
    }
    // the thresholds are the ensemble's own, set with tract on its file
    assert!(ab.meta.ood_threshold.unwrap().is_finite());

    // a run of another network shape is not a member
    let wider = FitConfig {
        model: cfg.model.clone().with_hidden(8),
        ..cfg.clone()
    };
    fit(&manifest, &wider, &d.path().join("run3"), false).unwrap();
    let e = export_run(
        &[runs[0].clone(), d.path().join("run3")],
        &manifest,
        &d.path().join("bad.onnx"),
        &o,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not one ensemble"), "{e}");
}
