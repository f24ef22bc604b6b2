//! The trainer (feature `train`): the data path equals the daemon's, masked losses ignore missing
//! labels, a tiny model's loss falls on phantoms, checkpoints resume.

use mammo_edge::manifest;
use mammo_edge::preprocess::preprocess;
use mammo_edge::synth::generator::{generate, SynthConfig};
use mammo_edge::train::data;
use mammo_edge::train::fit::{fit, FitConfig, InferBackend};
use mammo_edge::train::loss::{task_losses, LossWeights};
use mammo_edge::train::model::MtlConfig;

use crate::util::*;

fn tiny() -> FitConfig {
    FitConfig {
        model: MtlConfig::new()
            .with_height(128)
            .with_width(64)
            .with_base(8)
            .with_hidden(16),
        epochs: 4,
        batch_size: 8,
        lr: 3e-3,
        patience: 100,
        augment: false,
        ..Default::default()
    }
}

fn phantoms(count: usize) -> tempfile::TempDir {
    let d = tmp();
    let cfg = SynthConfig {
        count,
        seed: 5,
        scale: 0.06,
        ..Default::default()
    };
    generate(&cfg, d.path()).unwrap();
    d
}

#[test]
fn trainer_data_path_yields_the_daemons_tensor_through_threads_and_cache() {
    let d = phantoms(8);
    let rows = manifest::read(&d.path().join("manifest.csv")).unwrap();
    let cfg = tiny();
    let pre = cfg.preprocess();
    let cache = d.path().join("cache");
    let indexed: Vec<_> = rows.iter().enumerate().collect();
    let first = data::load(d.path(), &indexed, &pre, Some(&cache), 3).unwrap();
    let second = data::load(d.path(), &indexed, &pre, Some(&cache), 2).unwrap(); // from the cache
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), rows.len());
    for (a, b) in first.iter().zip(&second) {
        let m = read(&d.path().join(&rows[a.row].path));
        let daemon = preprocess(&m, &pre).unwrap().tensor;
        assert!(
            a.input == daemon,
            "{}: trainer tensor differs from the daemon's",
            rows[a.row].path
        );
        assert!(
            b.input == daemon,
            "{}: cached tensor differs",
            rows[a.row].path
        );
        assert_eq!(a.mask, b.mask);
        assert!(a.mask.is_some());
    }
}

#[test]
fn missing_labels_contribute_nothing() {
    let d = phantoms(4);
    let rows = manifest::read(&d.path().join("manifest.csv")).unwrap();
    let cfg = tiny();
    let indexed: Vec<_> = rows.iter().enumerate().collect();
    let mut samples = data::load(d.path(), &indexed, &cfg.preprocess(), None, 1).unwrap();
    for s in &mut samples {
        s.labels.cancer = None;
        s.labels.density = None;
        s.mask = None;
    }
    let device = Default::default();
    let net = cfg.model.init::<InferBackend>(&device);
    let items: Vec<_> = samples.iter().map(|s| (s, s.input.clone())).collect();
    let (x, t) = data::batch::<InferBackend>(&items, &cfg.model, &device);
    let losses = task_losses(&net.forward(x), &t);
    let v: Vec<f32> = losses.into_iter().map(|l| l.into_scalar()).collect();
    assert_eq!(v[0], 0.0, "cancer loss without cancer labels");
    assert_eq!(v[2], 0.0, "density loss without density labels");
    assert_eq!(v[6], 0.0, "mask loss without masks");
    assert!(
        v[1] > 0.0 && v[3] > 0.0 && v[7] > 0.0,
        "present tasks still count: {v:?}"
    );
    let _ = LossWeights::default();
}

#[test]
fn tiny_model_loss_falls_and_training_resumes() {
    let d = phantoms(48);
    let m = d.path().join("manifest.csv");
    let six = FitConfig {
        epochs: 6,
        ..tiny()
    };
    // uninterrupted
    let straight = fit(&m, &six, &d.path().join("straight"), false).unwrap();
    assert_eq!(straight.epochs.len(), 6);
    let (first, last) = (straight.epochs[0].train_loss, straight.epochs[5].train_loss);
    assert!(last < 0.9 * first, "loss did not fall: {first} -> {last}");
    assert!(straight.best.exists() && d.path().join("straight/checkpoint").is_dir());
    // interrupted after 4 epochs, then resumed: the same batches, the same losses
    let out = d.path().join("run");
    let part = fit(
        &m,
        &FitConfig {
            stop_after: Some(4),
            ..six.clone()
        },
        &out,
        false,
    )
    .unwrap();
    assert_eq!(part.epochs.len(), 4);
    let resumed = fit(&m, &six, &out, true).unwrap();
    assert_eq!(resumed.epochs.len(), 6);
    for e in 0..6 {
        let (a, b) = (straight.epochs[e].train_loss, resumed.epochs[e].train_loss);
        assert!(
            (a - b).abs() <= 1e-6 * a.abs().max(1.0),
            "epoch {}: {a} vs {b}",
            e + 1
        );
    }
    let lines = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 6);
}

#[test]
fn demo_and_production_sizes() {
    use burn::module::Module;
    let device = Default::default();
    for (cfg, max_params) in [
        (MtlConfig::new(), 1_000_000usize),
        (
            MtlConfig::new()
                .with_height(1024)
                .with_width(640)
                .with_base(32),
            5_000_000,
        ),
    ] {
        let n = cfg.init::<InferBackend>(&device).num_params();
        eprintln!(
            "{}x{} base {}: {n} parameters, {} MACs",
            cfg.height,
            cfg.width,
            cfg.base,
            cfg.macs()
        );
        assert!(n < max_params, "{n}");
    }
}

#[test]
fn half_precision_is_refused_on_the_cpu_backend_with_the_reason() {
    use mammo_edge::train::fit::{Device, FitError, Precision};
    let d = phantoms(8);
    for p in [Precision::F16, Precision::Bf16] {
        let cfg = FitConfig {
            device: Device::Cpu,
            precision: p,
            ..tiny()
        };
        match fit(
            &d.path().join("manifest.csv"),
            &cfg,
            &d.path().join("run"),
            false,
        ) {
            Err(FitError::Config(m)) => assert!(m.contains("needs device cuda"), "{m}"),
            other => panic!(
                "expected a config error, got {:?}",
                other.map(|r| r.best_epoch)
            ),
        }
    }
    // nothing was written for a refused run
    assert!(!d.path().join("run/fit_config.json").exists());
}

#[test]
fn affine_augmentation_moves_image_and_mask_together_and_keeps_the_chest_wall_left() {
    use mammo_edge::synth::SplitMix64;
    use mammo_edge::train::data::{affine, AffineParams};
    let cfg = tiny();
    let pre = cfg.preprocess();
    let (hh, ww) = (pre.height, pre.width);
    let (h, w) = (hh / 4, ww / 4);
    let d = phantoms(8);
    let rows = manifest::read(&d.path().join("manifest.csv")).unwrap();
    let pick: Vec<_> = rows.iter().enumerate().collect();
    let samples = data::load(d.path(), &pick, &pre, None, 2).unwrap();
    let s = samples.iter().find(|s| s.mask.is_some()).unwrap();
    let mask = s.mask.as_deref().unwrap();
    // the identity changes nothing
    let (x, m) = affine(&s.input, Some(mask), &pre, &AffineParams::IDENTITY);
    assert_eq!(x, s.input);
    assert_eq!(m.as_deref(), Some(mask));
    // a shift of 4 input rows (1 mask row) moves both by exactly that much
    let shift = AffineParams {
        shift: 4.0 / hh as f64,
        ..AffineParams::IDENTITY
    };
    let (x, m) = affine(&s.input, Some(mask), &pre, &shift);
    let m = m.unwrap();
    for y in 4..hh {
        for c in 0..ww {
            assert!((x[y * ww + c] - s.input[(y - 4) * ww + c]).abs() < 1e-5);
        }
    }
    for y in 1..h {
        for c in 0..w {
            assert!((m[y * w + c] - mask[(y - 1) * w + c]).abs() < 1e-6);
        }
    }
    let pad = (0.0 - pre.mean) / pre.std;
    assert!(
        x[..4 * ww].iter().all(|&v| v == pad),
        "rows shifted in are padding"
    );
    // random draws: the chest wall (left column, middle rows) stays breast, the far right edge
    // stays padding, and the mask's dense fraction changes little
    let mut rng = SplitMix64::new(11);
    let frac = |m: &[f32]| m.iter().sum::<f32>() / m.len() as f32;
    let left0: usize = (hh / 4..3 * hh / 4)
        .filter(|&y| s.input[y * ww] != pad)
        .count();
    assert!(left0 > hh / 4, "the phantom's chest wall is on the left");
    for _ in 0..20 {
        let a = AffineParams::random(&mut rng);
        assert!(
            (0.95..=1.05).contains(&a.scale) && a.degrees.abs() <= 3.0 && a.shift.abs() <= 0.02
        );
        let (x, m) = affine(&s.input, Some(mask), &pre, &a);
        let left: usize = (hh / 4..3 * hh / 4).filter(|&y| x[y * ww] != pad).count();
        assert!(
            left as f64 > 0.9 * (hh / 2) as f64,
            "chest wall left: {left} of {}",
            hh / 2
        );
        let m = m.unwrap();
        assert!((frac(&m) - frac(mask)).abs() < 0.25 * frac(mask) + 0.01);
    }
}
