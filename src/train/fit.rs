//! `mammo-train fit`: masked multi-task training on a manifest with AdamW and a cosine learning-rate
//! schedule, on the NdArray CPU backend or (feature `cuda`) Burn's CUDA backend in f32, f16 or
//! bf16, chosen at run time; validation every epoch; a checkpoint (model + optimizer + epoch)
//! every epoch and resume from it; early stopping on the primary task.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::backend::NdArray;
use burn::module::{AutodiffModule, Module, Param};
use burn::optim::{AdamWConfig, Optimizer};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::data::{self, Sample};
use super::loss::{self, LossWeights, TASKS};
use super::metrics;
use super::model::{MtlConfig, MtlNet};
use super::parallel::{self, train_step, ParallelError, Replicas};
use crate::dataset::manifest;
use crate::ingest::preprocess::{PreprocessConfig, Standardize};
use crate::model::labels::Split;
use crate::synth::SplitMix64;

use super::backend::{dispatch, OnBackend};
pub use super::backend::{BackendKind, Device, Precision};

/// Backend of export, evaluation and the tests' reference forward passes: NdArray (pure Rust,
/// f32; BatchNorm uses running statistics). Weights trained on any backend load into it.
pub type InferBackend = NdArray<f32>;

/// Augmented batches prepared ahead of the training step.
const PREFETCH: usize = 3;

/// Errors of training.
#[derive(Debug, Error)]
pub enum FitError {
    #[error("invalid training config: {0}")]
    Config(String),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error("{path}: {detail}")]
    Io { path: String, detail: String },
    #[error("checkpoint {path}: {detail}")]
    Checkpoint { path: String, detail: String },
    #[error(transparent)]
    Parallel(#[from] ParallelError),
}

/// Everything that defines a training run (written to `fit_config.json` and the ONNX metadata).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FitConfig {
    pub model: MtlConfig,
    /// Normalisation of the input (grey levels), part of the preprocessing contract.
    pub mean: f32,
    pub std: f32,
    /// Per-image intensity standardisation of the breast (`preprocess::standardize`): `false`,
    /// `true` (window and gamma) or `"window"`.
    pub standardize: Standardize,
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate of the cosine schedule.
    pub lr: f64,
    pub weight_decay: f32,
    pub seed: u64,
    pub weights: LossWeights,
    /// Learned uncertainty weighting (Kendall et al. 2018) on top of `weights`.
    pub uncertainty: bool,
    /// Epochs without improvement of the primary metric before stopping.
    pub patience: usize,
    pub augment: bool,
    /// Source-balanced sampling: each training image of a named source (the manifest's
    /// `source`, e.g. `rsna-m29`) is drawn this many times per epoch (≥ 1; others once), so a
    /// machine with few images weighs more than its share (an epoch then has more steps).
    pub oversample: std::collections::BTreeMap<String, usize>,
    /// Threads for decoding and preprocessing.
    pub threads: usize,
    /// Backend, device and float type of training.
    pub backend: BackendKind,
    pub device: Device,
    /// Devices of a data-parallel run (`--devices N`: CUDA 0..N−1; src/train/parallel.rs).
    pub devices: usize,
    pub precision: Precision,
    /// Stop (after checkpointing) once this epoch is done, to continue later with `--resume`
    /// (time-boxed runs). Not part of the run's definition.
    #[serde(skip)]
    pub stop_after: Option<usize>,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            model: MtlConfig::new(),
            mean: 0.2,
            std: 0.25,
            standardize: Standardize::Off,
            epochs: 20,
            batch_size: 16,
            lr: 2e-3,
            weight_decay: 1e-4,
            seed: 1,
            weights: LossWeights::default(),
            uncertainty: false,
            patience: 6,
            augment: true,
            oversample: Default::default(),
            threads: 2,
            backend: BackendKind::default(),
            device: Device::Cpu,
            devices: 1,
            precision: Precision::F32,
            stop_after: None,
        }
    }
}

impl FitConfig {
    /// The preprocessing this run uses (model input size + normalisation).
    pub fn preprocess(&self) -> PreprocessConfig {
        PreprocessConfig {
            height: self.model.height,
            width: self.model.width,
            mean: self.mean,
            std: self.std,
            standardize: self.standardize,
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<(), FitError> {
        self.model.validate().map_err(FitError::Config)?;
        self.preprocess()
            .validate()
            .map_err(|e| FitError::Config(e.to_string()))?;
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(FitError::Config("epochs and batch_size must be > 0".into()));
        }
        if let Some((source, _)) = self.oversample.iter().find(|(_, &n)| n == 0) {
            return Err(FitError::Config(format!(
                "oversample.{source} = 0: a factor is at least 1"
            )));
        }
        if self.devices == 0 || self.devices > self.batch_size {
            return Err(FitError::Config(format!(
                "devices = {} must be between 1 and batch_size = {}",
                self.devices, self.batch_size
            )));
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return Err(FitError::Config(format!("lr = {} must be > 0", self.lr)));
        }
        let w = self.weights.as_array();
        if let Some(i) = w.iter().position(|x| !x.is_finite() || *x < 0.0) {
            return Err(FitError::Config(format!(
                "weights.{} = {} must be >= 0",
                loss::TASKS[i],
                w[i]
            )));
        }
        if w.iter().all(|x| *x == 0.0) {
            return Err(FitError::Config("all loss weights are 0".into()));
        }
        Ok(())
    }
}

/// The trained parameters: the network plus the learned log-variances of the uncertainty weighting.
#[derive(Module, Debug)]
pub struct TrainModel<B: Backend> {
    pub net: MtlNet<B>,
    /// `[8]` s_t = log σ_t², one per task.
    pub log_vars: Param<Tensor<B, 1>>,
}

/// Validation metrics of one epoch (`None` when the labels are absent).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ValMetrics {
    pub loss: f64,
    pub cancer_auc: Option<f64>,
    pub normal_auc: Option<f64>,
    pub density_kappa: Option<f64>,
    pub density_f1: Option<f64>,
    /// Percent-density mean absolute error, percentage points.
    pub percent_mae: Option<f64>,
    pub vendor_accuracy: Option<f64>,
    pub view_accuracy: Option<f64>,
    pub mask_dice: Option<f64>,
}

/// One line of `train_log.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    /// Mean training loss per task (TASKS order) and total.
    pub train_task_loss: Vec<f64>,
    pub train_loss: f64,
    pub val: ValMetrics,
    pub seconds: f64,
    /// Seconds the training step waited for augmented batches (the rest of `seconds` is
    /// compute and validation).
    #[serde(default)]
    pub data_wait_s: f64,
    pub lr: f64,
}

/// Result of [`fit`].
#[derive(Debug, Clone)]
pub struct FitReport {
    pub epochs: Vec<EpochLog>,
    /// Best model file (`best.mpk`) and its epoch.
    pub best: PathBuf,
    pub best_epoch: usize,
    pub train_samples: usize,
    pub val_samples: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct Progress {
    epoch: usize,
    best_epoch: usize,
    best_score: f64,
    /// State of the shuffling/augmentation random stream after `epoch`, so a resumed run sees
    /// the batches an uninterrupted one would.
    rng_state: u64,
}

fn io_err(path: &Path, e: impl ToString) -> FitError {
    FitError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// Score that early stopping maximises: validation cancer AUC when defined, else −loss.
fn primary(v: &ValMetrics) -> f64 {
    let s = v.cancer_auc.unwrap_or(-v.loss);
    if s.is_finite() {
        s
    } else {
        f64::NEG_INFINITY
    }
}

/// Predictions of the inference network for samples (in batches): per sample
/// (cancer p, normal p, density probs, percent %, vendor class, view class, mask probs).
pub struct Predictions {
    pub cancer: Vec<f64>,
    pub normal: Vec<f64>,
    pub density: Vec<[f64; 4]>,
    pub percent: Vec<f64>,
    pub vendor: Vec<usize>,
    pub view: Vec<usize>,
    pub mask: Vec<Vec<f32>>,
    /// Mean squared reconstruction error per sample (as the exported graph computes it).
    pub recon_error: Vec<f64>,
    pub loss: f64,
}

/// Run the inference network over samples.
pub fn predict<B: Backend>(
    net: &MtlNet<B>,
    samples: &[Sample],
    cfg: &FitConfig,
    device: &B::Device,
) -> Predictions {
    let mut p = Predictions {
        cancer: vec![],
        normal: vec![],
        density: vec![],
        percent: vec![],
        vendor: vec![],
        view: vec![],
        mask: vec![],
        recon_error: vec![],
        loss: 0.0,
    };
    let mut loss_sum = 0.0;
    let mut batches = 0;
    for chunk in samples.chunks(cfg.batch_size.max(1)) {
        let items: Vec<(&Sample, Vec<f32>)> = chunk.iter().map(|s| (s, s.input.clone())).collect();
        let (x, t) = data::batch::<B>(&items, &cfg.model, device);
        let out = net.forward(x);
        let losses = loss::task_losses(&out, &t);
        let total = loss::total(&losses, &cfg.weights, None);
        loss_sum += total.into_scalar().elem::<f64>();
        batches += 1;
        let v = |t: Tensor<B, 2>| {
            t.into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default()
        };
        let n = chunk.len();
        p.cancer
            .extend(v(sigmoid(out.cancer)).iter().map(|&x| x as f64));
        p.normal
            .extend(v(sigmoid(out.normal)).iter().map(|&x| x as f64));
        let d = v(softmax(out.density, 1));
        p.density
            .extend((0..n).map(|i| [0, 1, 2, 3].map(|k| d[i * 4 + k] as f64)));
        p.percent
            .extend(v(sigmoid(out.percent)).iter().map(|&x| x as f64 * 100.0));
        let argmax = |t: Tensor<B, 2>| {
            let k = t.dims()[1];
            let d = v(t);
            (0..n)
                .map(|i| {
                    (0..k)
                        .max_by(|&a, &b| d[i * k + a].total_cmp(&d[i * k + b]))
                        .unwrap_or(0)
                })
                .collect::<Vec<_>>()
        };
        p.vendor.extend(argmax(out.vendor));
        p.view.extend(argmax(out.view));
        let [_, _, h, w] = out.mask.dims();
        let sq: Vec<f32> = (out.recon.clone() - out.recon_target.clone())
            .powf_scalar(2.0)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        p.recon_error.extend(
            sq.chunks(h * w)
                .map(|c| c.iter().map(|&v| v as f64).sum::<f64>() / (h * w) as f64),
        );
        let m = sigmoid(out.mask)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default();
        p.mask.extend(m.chunks(h * w).map(|c| c.to_vec()));
    }
    p.loss = loss_sum / batches.max(1) as f64;
    p
}

/// Validation metrics of predictions against the samples' labels; `sources`: the source head's
/// class names (`MtlConfig::source_classes`).
pub fn evaluate(samples: &[Sample], p: &Predictions, sources: &[String]) -> ValMetrics {
    let pairs = |f: &dyn Fn(&Sample) -> Option<bool>, s: &[f64]| {
        let (mut sc, mut lb) = (vec![], vec![]);
        for (i, smp) in samples.iter().enumerate() {
            if let Some(l) = f(smp) {
                sc.push(s[i]);
                lb.push(l);
            }
        }
        metrics::auc(&sc, &lb)
    };
    let (mut dt, mut dp) = (vec![], vec![]);
    let (mut pt, mut pp) = (vec![], vec![]);
    let (mut vc, mut vn, mut wc, mut wn) = (0, 0, 0, 0);
    let (mut dice, mut dn) = (0.0, 0);
    for (i, s) in samples.iter().enumerate() {
        if let Some(d) = s.labels.density {
            dt.push(d.index());
            let probs = p.density[i];
            dp.push(
                (0..4)
                    .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
                    .unwrap_or(0),
            );
        }
        if let Some(pd) = s.labels.percent {
            pt.push(pd);
            pp.push(p.percent[i]);
        }
        if let Some(v) = s.labels.source.as_deref() {
            if let Some(v) = sources.iter().position(|c| c == v) {
                vn += 1;
                vc += (p.vendor[i] == v) as usize;
            }
        }
        if let Some(v) = s.labels.view {
            wn += 1;
            wc += (p.view[i] == v) as usize;
        }
        if let Some(m) = &s.mask {
            dice += metrics::dice(&p.mask[i], m);
            dn += 1;
        }
    }
    ValMetrics {
        loss: p.loss,
        cancer_auc: pairs(&|s| s.labels.cancer, &p.cancer),
        normal_auc: pairs(&|s| s.labels.normal, &p.normal),
        density_kappa: (!dt.is_empty()).then(|| metrics::weighted_kappa(&dt, &dp, 4)),
        density_f1: (!dt.is_empty()).then(|| metrics::macro_f1(&dt, &dp, 4)),
        percent_mae: (!pt.is_empty()).then(|| metrics::mae(&pt, &pp)),
        vendor_accuracy: (vn > 0).then(|| vc as f64 / vn as f64),
        view_accuracy: (wn > 0).then(|| wc as f64 / wn as f64),
        mask_dice: (dn > 0).then(|| dice / dn as f64),
    }
}

/// Train on `manifest` (rows with split `train`; validation on `val`), writing checkpoints,
/// `best.mpk`, `fit_config.json` and `train_log.jsonl` into `out`. With `resume`, continue from
/// `out/checkpoint` if present.
pub fn fit(
    manifest_path: &Path,
    cfg: &FitConfig,
    out: &Path,
    resume: bool,
) -> Result<FitReport, FitError> {
    cfg.validate()?;
    struct Job<'a> {
        manifest: &'a Path,
        cfg: &'a FitConfig,
        out: &'a Path,
        resume: bool,
    }
    impl OnBackend for Job<'_> {
        type Output = Result<FitReport, FitError>;
        fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
            fit_on::<B>(self.manifest, self.cfg, self.out, self.resume, device)
        }
    }
    let job = Job {
        manifest: manifest_path,
        cfg,
        out,
        resume,
    };
    dispatch(cfg.backend, cfg.device, cfg.precision, job)
        .map_err(|e| FitError::Config(e.to_string()))?
}

fn fit_on<B: AutodiffBackend>(
    manifest_path: &Path,
    cfg: &FitConfig,
    out: &Path,
    resume: bool,
    device: B::Device,
) -> Result<FitReport, FitError> {
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let root = manifest_path.parent().unwrap_or(Path::new("."));
    let rows = manifest::read(manifest_path)?;
    let pick = |split: Split| -> Vec<(usize, &manifest::ManifestRow)> {
        rows.iter()
            .enumerate()
            .filter(|(_, r)| r.split == split)
            .collect()
    };
    let pre = cfg.preprocess();
    let cache = out.join("cache");
    let train = data::load(root, &pick(Split::Train), &pre, Some(&cache), cfg.threads)?;
    // The source head's classes: the training rows' sources when the manifest names them (a
    // machine held out of training has no class; its images are scored as unseen).
    let derived;
    let cfg = if cfg.model.sources.is_empty() && rows.iter().any(|r| r.extra("source").is_some()) {
        let mut s: Vec<String> = train
            .iter()
            .filter_map(|x| x.labels.source.clone())
            .collect();
        s.sort();
        s.dedup();
        while s.len() < 2 {
            s.push(format!("none-{}", s.len()));
        }
        log::info!("source head: {} classes {s:?}", s.len());
        derived = FitConfig {
            model: MtlConfig {
                vendors: s.len(),
                sources: s,
                ..cfg.model.clone()
            },
            ..cfg.clone()
        };
        &derived
    } else {
        cfg
    };
    let classes = cfg.model.source_classes();
    let val = match data::load(root, &pick(Split::Val), &pre, Some(&cache), cfg.threads) {
        Ok(v) => v,
        Err(data::DataError::Empty { .. }) => {
            log::warn!("no validation rows: validating on the training set");
            train.clone()
        }
        Err(e) => return Err(e.into()),
    };
    log::info!(
        "training on {} images, validating on {}",
        train.len(),
        val.len()
    );
    std::fs::write(
        out.join("fit_config.json"),
        serde_json::to_string_pretty(cfg).unwrap_or_default(),
    )
    .map_err(|e| io_err(out, e))?;

    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let mut model = TrainModel {
        net: super::backend::seeded::<B, _>(&device, cfg.seed, || cfg.model.init::<B>(&device)),
        log_vars: Param::from_tensor(Tensor::zeros([TASKS.len()], &device)),
    };
    log::info!(
        "backend {} on {:?} in {:?} ({})",
        cfg.backend.name(),
        cfg.device,
        cfg.precision,
        std::any::type_name::<B>()
    );
    log::info!(
        "network: {} parameters, {:.1} M multiply-accumulates per {}x{} image",
        model.net.num_params(),
        cfg.model.macs() as f64 / 1e6,
        cfg.model.height,
        cfg.model.width
    );
    let mut optim = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay)
        .init::<B, TrainModel<B>>();
    let ckpt = out.join("checkpoint");
    let mut progress = Progress {
        epoch: 0,
        best_epoch: 0,
        best_score: f64::NEG_INFINITY,
        rng_state: SplitMix64::new(cfg.seed ^ 0x7a11).state(),
    };
    // A crash between removing the old checkpoint and renaming the new one leaves only the new.
    let ckpt_tmp = out.join("checkpoint.tmp");
    if !ckpt.join("progress.json").exists() && ckpt_tmp.join("progress.json").exists() {
        std::fs::rename(&ckpt_tmp, &ckpt).map_err(|e| io_err(&ckpt, e))?;
    }
    let mut logs: Vec<EpochLog> = Vec::new();
    if resume && ckpt.join("progress.json").exists() {
        let load_err = |e: &dyn std::fmt::Display| FitError::Checkpoint {
            path: ckpt.display().to_string(),
            detail: e.to_string(),
        };
        let text = std::fs::read_to_string(ckpt.join("progress.json")).map_err(|e| load_err(&e))?;
        progress = serde_json::from_str(&text).map_err(|e| load_err(&e))?;
        model = model
            .load_file(ckpt.join("model"), &recorder, &device)
            .map_err(|e| load_err(&e))?;
        let rec = recorder
            .load(ckpt.join("optim").with_extension("mpk"), &device)
            .map_err(|e| load_err(&e))?;
        optim = optim.load_record(rec);
        if let Ok(text) = std::fs::read_to_string(out.join("train_log.jsonl")) {
            logs = text
                .lines()
                .filter_map(|l| serde_json::from_str::<EpochLog>(l).ok())
                .filter(|l| l.epoch <= progress.epoch)
                .collect();
            // drop lines of epochs after the checkpoint (a crash after logging, before saving)
            let kept: String = logs
                .iter()
                .map(|l| serde_json::to_string(l).unwrap_or_default() + "\n")
                .collect();
            std::fs::write(out.join("train_log.jsonl"), kept).map_err(|e| io_err(out, e))?;
        }
        log::info!("resuming after epoch {}", progress.epoch);
    }

    let replicas = if cfg.devices > 1 {
        let devices = parallel::devices::<B>(&device, cfg.devices);
        log::info!("data-parallel over {devices:?} (burn-collective all-reduce)");
        let (m, r) = Replicas::start(model, optim.to_record(), &devices, cfg)?;
        model = m;
        Some(r)
    } else {
        None
    };
    let peer = replicas
        .as_ref()
        .map(|_| burn::collective::PeerId::from(0usize));

    // Each training image once per epoch, or `oversample[source]` times.
    let draws: Vec<usize> = train
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            let n = s
                .labels
                .source
                .as_ref()
                .and_then(|src| cfg.oversample.get(src))
                .copied()
                .unwrap_or(1);
            std::iter::repeat_n(i, n)
        })
        .collect();
    if draws.len() != train.len() {
        log::info!(
            "oversampling {:?}: {} draws per epoch from {} images",
            cfg.oversample,
            draws.len(),
            train.len()
        );
    }
    let steps_per_epoch = draws.len().div_ceil(cfg.batch_size);
    let total_steps = (steps_per_epoch * cfg.epochs).max(1);
    let mut rng = SplitMix64::from_state(progress.rng_state);
    for epoch in progress.epoch + 1..=cfg.epochs {
        let t0 = Instant::now();
        let mut order: Vec<usize> = draws.clone();
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let bar = ProgressBar::new(steps_per_epoch as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("{epoch}/{}", cfg.epochs));
        let mut sums = vec![0f64; TASKS.len()];
        let mut total_sum = 0.0;
        let mut lr = cfg.lr;
        let mut data_wait = Duration::ZERO;
        // Augmentation runs on a producer thread, PREFETCH batches ahead of the step, so the
        // step waits for data only when the producer falls behind (`data_wait_s` in the log).
        // The producer owns the random stream for the epoch and hands it back at the end, so the
        // batches are the same as with augmentation inline (and a resumed run sees them too).
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Sample>>(PREFETCH);
        let train_ref = &train;
        let pre_ref = &pre;
        let order_ref = &order;
        let augment = cfg.augment;
        let batch_size = cfg.batch_size;
        let stepped = std::thread::scope(|scope| -> Result<_, FitError> {
            let mut model = model;
            let producer = scope.spawn(move || {
                for chunk in order_ref.chunks(batch_size) {
                    let owned: Vec<Sample> = chunk
                        .iter()
                        .map(|&i| {
                            let s = &train_ref[i];
                            if !augment {
                                return s.clone();
                            }
                            // small affine (input and mask alike), then intensity
                            let a = data::AffineParams::random(&mut rng);
                            let (x, m) = data::affine(&s.input, s.mask.as_deref(), pre_ref, &a);
                            Sample {
                                input: data::augment(&x, pre_ref, &mut rng),
                                mask: m,
                                ..s.clone()
                            }
                        })
                        .collect();
                    if tx.send(owned).is_err() {
                        break;
                    }
                }
                rng
            });
            for b in 0..steps_per_epoch {
                let waited = Instant::now();
                let Ok(owned) = rx.recv() else { break };
                data_wait += waited.elapsed();
                let step = (epoch - 1) * steps_per_epoch + b;
                lr = cfg.lr
                    * 0.5
                    * (1.0 + (std::f64::consts::PI * step as f64 / total_steps as f64).cos());
                if replicas.as_ref().is_some_and(|r| owned.len() < r.peers()) {
                    log::debug!(
                        "a final batch of {} images is left out: fewer than the devices",
                        owned.len()
                    );
                    continue;
                }
                let shard = match &replicas {
                    Some(r) => r.scatter(owned, lr)?,
                    None => owned,
                };
                let (next, values) = train_step(model, &mut optim, &shard, cfg, &device, lr, peer)?;
                model = next;
                for (k, v) in values.iter().take(TASKS.len()).enumerate() {
                    sums[k] += v;
                }
                total_sum += values.get(TASKS.len()).copied().unwrap_or(f64::NAN);
                bar.inc(1);
                bar.set_message(format!(
                    "loss {:.3} (cancer {:.3} density {:.3} mask {:.3} recon {:.3})",
                    total_sum / (b + 1) as f64,
                    sums[0] / (b + 1) as f64,
                    sums[2] / (b + 1) as f64,
                    sums[6] / (b + 1) as f64,
                    sums[7] / (b + 1) as f64
                ));
            }
            drop(rx);
            match producer.join() {
                Ok(r) => Ok((model, r)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        });
        (model, rng) = stepped?;
        bar.finish_and_clear();
        let infer = model.valid();
        let preds = predict(&infer.net, &val, cfg, &device);
        let vm = evaluate(&val, &preds, &classes);
        let log_line = EpochLog {
            epoch,
            train_task_loss: sums.iter().map(|s| s / steps_per_epoch as f64).collect(),
            train_loss: total_sum / steps_per_epoch as f64,
            val: vm.clone(),
            seconds: t0.elapsed().as_secs_f64(),
            data_wait_s: data_wait.as_secs_f64(),
            lr,
        };
        log::info!(
            "epoch {epoch}: train loss {:.4}, val loss {:.4}, cancer AUC {:?}, density kappa {:?}, PD MAE {:?} ({:.1} s, {:.1} s waiting for data)",
            log_line.train_loss,
            vm.loss,
            vm.cancer_auc,
            vm.density_kappa,
            vm.percent_mae,
            log_line.seconds,
            log_line.data_wait_s
        );
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out.join("train_log.jsonl"))
            .map_err(|e| io_err(out, e))?;
        writeln!(
            f,
            "{}",
            serde_json::to_string(&log_line).unwrap_or_default()
        )
        .map_err(|e| io_err(out, e))?;
        logs.push(log_line);
        // Checkpoint: model, optimizer and progress go to checkpoint.tmp/, which then replaces
        // checkpoint/, so a crash leaves one complete checkpoint (old or new).
        let save_err = |e: &dyn std::fmt::Display| FitError::Checkpoint {
            path: ckpt.display().to_string(),
            detail: e.to_string(),
        };
        let score = primary(&vm);
        if score > progress.best_score {
            progress.best_score = score;
            progress.best_epoch = epoch;
            infer
                .net
                .clone()
                .save_file(out.join("best-next"), &recorder)
                .map_err(|e| save_err(&e))?;
            std::fs::rename(out.join("best-next.mpk"), out.join("best.mpk"))
                .map_err(|e| save_err(&e))?;
        }
        progress.epoch = epoch;
        progress.rng_state = rng.state();
        let _ = std::fs::remove_dir_all(&ckpt_tmp);
        std::fs::create_dir_all(&ckpt_tmp).map_err(|e| io_err(&ckpt_tmp, e))?;
        model
            .clone()
            .save_file(ckpt_tmp.join("model"), &recorder)
            .map_err(|e| save_err(&e))?;
        recorder
            .record(optim.to_record(), ckpt_tmp.join("optim"))
            .map_err(|e| save_err(&e))?;
        std::fs::write(
            ckpt_tmp.join("progress.json"),
            serde_json::to_string(&progress).unwrap_or_default(),
        )
        .map_err(|e| io_err(&ckpt_tmp, e))?;
        if ckpt.exists() {
            std::fs::remove_dir_all(&ckpt).map_err(|e| io_err(&ckpt, e))?;
        }
        std::fs::rename(&ckpt_tmp, &ckpt).map_err(|e| io_err(&ckpt, e))?;
        if cfg.stop_after == Some(epoch) {
            log::info!("stopping after epoch {epoch} as asked; continue with --resume");
            break;
        }
        if epoch - progress.best_epoch >= cfg.patience {
            log::info!(
                "early stop: no improvement since epoch {}",
                progress.best_epoch
            );
            break;
        }
    }
    if let Some(r) = replicas {
        r.finish::<B::InnerBackend>()?;
    }
    Ok(FitReport {
        epochs: logs,
        best: out.join("best.mpk"),
        best_epoch: progress.best_epoch,
        train_samples: train.len(),
        val_samples: val.len(),
    })
}

/// Load a network saved by [`fit`] (`best.mpk`) for inference.
/// The `fit_config.json` of the training run in folder `run`.
pub fn read_config(run: &Path) -> Result<FitConfig, FitError> {
    let path = run.join("fit_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    serde_json::from_str(&text).map_err(|e| io_err(&path, e))
}

pub fn load_net(path: &Path, model: &MtlConfig) -> Result<MtlNet<InferBackend>, FitError> {
    let device = Default::default();
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    super::backend::seeded::<InferBackend, _>(&device, 0, || model.init::<InferBackend>(&device))
        .load_file(path.with_extension(""), &recorder, &device)
        .map_err(|e| FitError::Checkpoint {
            path: path.display().to_string(),
            detail: e.to_string(),
        })
}
