//! The trainer (feature `train`): the data path equals the daemon's, masked losses ignore missing
//! labels, a tiny model's loss falls on phantoms, checkpoints resume.

use mammo_edge::dataset::manifest;
use mammo_edge::ingest::preprocess::preprocess;
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
            (0.9..=1.1).contains(&a.scale)
                && (0.86..=1.16).contains(&a.aspect)
                && a.degrees.abs() <= 5.0
                && a.shift.abs() <= 0.03
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

/// Losses of three AdamW steps on one fixed batch, from the weights in `record` (an `.mpk` path
/// without extension), on backend `B`.
fn three_step_losses<B: burn::tensor::backend::AutodiffBackend>(
    cfg: &FitConfig,
    record: &std::path::Path,
    items: &[(&data::Sample, Vec<f32>)],
    device: B::Device,
) -> Vec<f64> {
    use burn::module::Module;
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
    let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    // seeded: a bare init would draw from the backend's one generator while a test trains
    let mut net =
        mammo_edge::train::backend::seeded::<B, _>(&device, 0, || cfg.model.init::<B>(&device))
            .load_file(record, &rec, &device)
            .unwrap();
    let mut optim = AdamWConfig::new().init::<B, MtlNetOf<B>>();
    let mut losses = vec![];
    for _ in 0..3 {
        let (x, t) = data::batch::<B>(items, &cfg.model, &device);
        let total = mammo_edge::train::loss::total(
            &task_losses(&net.forward(x), &t),
            &LossWeights::default(),
            None,
        );
        losses.push(
            total
                .clone()
                .into_data()
                .convert::<f64>()
                .to_vec::<f64>()
                .unwrap()[0],
        );
        let grads = GradientsParams::from_grads(total.backward(), &net);
        net = optim.step(1e-2, net, grads);
    }
    losses
}

type MtlNetOf<B> = mammo_edge::train::model::MtlNet<B>;

#[test]
fn every_cpu_backend_computes_the_same_losses_and_updates_from_the_same_weights() {
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::module::Module;
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
    let d = phantoms(8);
    let rows = manifest::read(&d.path().join("manifest.csv")).unwrap();
    let cfg = tiny();
    let indexed: Vec<_> = rows.iter().enumerate().collect();
    let samples = data::load(d.path(), &indexed, &cfg.preprocess(), None, 2).unwrap();
    let items: Vec<(&data::Sample, Vec<f32>)> =
        samples.iter().map(|s| (s, s.input.clone())).collect();
    let record = d.path().join("init");
    cfg.model
        .init::<InferBackend>(&Default::default())
        .save_file(
            &record,
            &NamedMpkFileRecorder::<FullPrecisionSettings>::new(),
        )
        .unwrap();
    let reference =
        three_step_losses::<Autodiff<NdArray<f32>>>(&cfg, &record, &items, Default::default());
    assert!(reference.iter().all(|l| l.is_finite()), "{reference:?}");
    // the steps change the weights: the loss moves
    assert!((reference[2] - reference[0]).abs() > 1e-4, "{reference:?}");
    let mut others = vec![(
        "flex",
        three_step_losses::<Autodiff<Flex>>(&cfg, &record, &items, Default::default()),
    )];
    #[cfg(feature = "libtorch")]
    others.push((
        "libtorch",
        three_step_losses::<Autodiff<burn::backend::LibTorch<f32>>>(
            &cfg,
            &record,
            &items,
            burn::backend::libtorch::LibTorchDevice::Cpu,
        ),
    ));
    for (name, losses) in others {
        for (a, b) in reference.iter().zip(&losses) {
            assert!(
                (a - b).abs() <= 1e-3 * a.abs().max(1.0),
                "{name}: {losses:?} vs ndarray {reference:?}"
            );
        }
    }
}

#[test]
fn bench_step_times_a_backend_and_fit_trains_on_the_pure_rust_one() {
    use mammo_edge::train::backend::{BackendKind, Device, Precision};
    use mammo_edge::train::bench::{bench_step, StepBench};
    let b = StepBench {
        model: MtlConfig::new().with_height(64).with_width(32).with_base(4),
        batch: 4,
        warmup: 1,
        steps: 2,
        backend: BackendKind::Flex,
        device: Device::Cpu,
        precision: Precision::F32,
    };
    let t = bench_step(&b).unwrap();
    assert_eq!((t.backend, t.height, t.width, t.batch), ("flex", 64, 32, 4));
    assert!(t.loss.is_finite() && t.images_per_s > 0.0, "{t:?}");
    assert!(
        (t.images_per_s - 4.0 / (t.ms_per_step / 1e3)).abs() < 1e-6 * t.images_per_s,
        "{t:?}"
    );
    // a GPU-only backend is refused on the CPU by name, without running
    let refused = bench_step(&StepBench {
        backend: BackendKind::BurnCuda,
        ..b.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(refused.contains("burn-cuda"), "{refused}");

    let d = phantoms(16);
    let cfg = FitConfig {
        epochs: 2,
        backend: BackendKind::Flex,
        ..tiny()
    };
    let r = fit(
        &d.path().join("manifest.csv"),
        &cfg,
        &d.path().join("run"),
        false,
    )
    .unwrap();
    assert_eq!(r.epochs.len(), 2);
    assert!(r
        .epochs
        .iter()
        .all(|e| e.train_loss.is_finite() && e.data_wait_s >= 0.0 && e.data_wait_s < e.seconds));
    let saved: FitConfig = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("run/fit_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved.backend, BackendKind::Flex);
}

#[test]
fn a_data_parallel_step_over_two_devices_averages_the_gradients_of_its_shards() {
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Param;
    use burn::optim::{AdamWConfig, Optimizer};
    use burn::prelude::*;
    use mammo_edge::train::fit::TrainModel;
    use mammo_edge::train::parallel::{devices, train_step, Replicas};
    // NdArray: one thread, so sums are in a fixed order and the two paths agree exactly
    type B = Autodiff<NdArray<f32>>;
    let d = phantoms(4);
    let rows = manifest::read(&d.path().join("manifest.csv")).unwrap();
    let cfg = tiny();
    let indexed: Vec<_> = rows.iter().enumerate().take(2).collect();
    let two = data::load(d.path(), &indexed, &cfg.preprocess(), None, 2).unwrap();
    let device = Default::default();
    let model = TrainModel {
        net: cfg.model.init::<B>(&device),
        log_vars: Param::from_tensor(Tensor::zeros([8], &device)),
    };
    let adamw = || {
        AdamWConfig::new()
            .with_weight_decay(cfg.weight_decay)
            .init::<B, TrainModel<B>>()
    };
    let mut opt = adamw();
    let (model, replicas) =
        Replicas::start(model, opt.to_record(), &devices::<B>(&device, 2), &cfg).unwrap();
    assert_eq!(replicas.peers(), 2);
    // one device, the batch [a, b]
    let mut alone = adamw();
    let (single, single_losses) =
        train_step(model.clone(), &mut alone, &two, &cfg, &device, 1e-2, None).unwrap();
    // two peers, the batch [a, b, a, b]: each shard is [a, b], so the mean of their gradients
    // is the gradient of [a, b] and the update must equal the single device's
    let batch: Vec<_> = two.iter().chain(&two).cloned().collect();
    let shard = replicas.scatter(batch, 1e-2).unwrap();
    assert_eq!(shard.iter().map(|s| s.row).collect::<Vec<_>>(), vec![0, 1]);
    let (parallel, losses) = train_step(
        model.clone(),
        &mut opt,
        &shard,
        &cfg,
        &device,
        1e-2,
        Some(burn::collective::PeerId::from(0usize)),
    )
    .unwrap();
    replicas.finish::<NdArray<f32>>().unwrap();
    assert!(
        (losses[8] - single_losses[8]).abs() < 1e-6,
        "{losses:?} vs {single_losses:?}"
    );
    let w = |m: &TrainModel<B>| {
        m.net
            .stem
            .conv
            .weight
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let (before, a, b) = (w(&model), w(&single), w(&parallel));
    let moved = before
        .iter()
        .zip(&a)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let apart = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 1e-4,
        "the step did not change the weights ({moved})"
    );
    assert!(apart < 1e-6, "data-parallel update differs by {apart}");
}
