//! mammo-train: the host trainer for the mammo-edge multi-task CNN (cargo feature `train`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mammo_edge::ingest::dicom::{read_mammogram, IngestOptions};
use mammo_edge::ingest::preprocess::{preprocess, PreprocessConfig, PREPROCESS_VERSION};
use mammo_edge::train::backend::{BackendKind, Device, Precision};
use mammo_edge::train::bench::{bench_step, StepBench};
use mammo_edge::train::export::{export_run, ExportOptions};
use mammo_edge::train::fit::{fit, FitConfig};
use mammo_edge::train::loss::LossWeights;
use mammo_edge::train::model::MtlConfig;

/// The folder of manifest `out` (created), where its relative paths start.
fn out_dir(out: &std::path::Path) -> anyhow::Result<&std::path::Path> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("--out {}", out.display()))?;
    Ok(dir)
}

/// Write a manifest and say how many rows went to each split.
fn write_manifest(
    out: &std::path::Path,
    rows: &[mammo_edge::dataset::manifest::ManifestRow],
    what: &str,
) -> anyhow::Result<()> {
    use mammo_edge::model::labels::Split;
    mammo_edge::dataset::manifest::write(out, rows)?;
    let count = |s: Split| rows.iter().filter(|r| r.split == s).count();
    eprintln!(
        "{what}: {} images ({} train, {} val, {} test) -> {}",
        rows.len(),
        count(Split::Train),
        count(Split::Val),
        count(Split::Test),
        out.display()
    );
    Ok(())
}

/// `--device` value (clap has checked it is cpu or cuda).
fn parse_device(d: &str) -> Device {
    if d == "cuda" {
        Device::Cuda
    } else {
        Device::Cpu
    }
}

/// `--precision` value (clap has checked it).
fn parse_precision(p: &str) -> Precision {
    match p {
        "f16" => Precision::F16,
        "bf16" => Precision::Bf16,
        _ => Precision::F32,
    }
}

#[derive(Parser)]
#[command(
    name = "mammo-train",
    version,
    about = "Host trainer for the mammo-edge multi-task CNN"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the multi-task network on a manifest (split column: train / val).
    Fit {
        /// manifest.csv (docs/manifest.md); image paths are relative to its folder.
        #[arg(long)]
        manifest: PathBuf,
        /// Output folder: checkpoint/, best.mpk, fit_config.json, train_log.jsonl, cache/.
        #[arg(long)]
        out: PathBuf,
        /// JSON file with a FitConfig (any subset of its keys); flags below override it.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        epochs: Option<usize>,
        #[arg(long)]
        batch_size: Option<usize>,
        #[arg(long)]
        lr: Option<f64>,
        /// Model input height and width (multiples of 32).
        #[arg(long)]
        height: Option<usize>,
        #[arg(long)]
        width: Option<usize>,
        /// Channels of the first stage.
        #[arg(long)]
        base: Option<usize>,
        #[arg(long)]
        seed: Option<u64>,
        /// Learned uncertainty weighting of the task losses (Kendall et al. 2018).
        #[arg(long)]
        uncertainty: bool,
        /// Train the cancer task alone (single-task baseline).
        #[arg(long)]
        cancer_only: bool,
        /// Continue from out/checkpoint.
        #[arg(long)]
        resume: bool,
        /// Stop after this epoch (checkpointed); continue later with --resume.
        #[arg(long)]
        stop_after: Option<usize>,
        /// Device: cpu, or cuda (LibTorch from the PyTorch wheel with --features libtorch, or
        /// --backend burn-cuda with --features cuda).
        #[arg(long, value_parser = ["cpu", "cuda"])]
        device: Option<String>,
        /// Training backend (docs/bench-train.md): libtorch (default where built, CPU or cuda),
        /// flex (pure Rust, all cores), ndarray (pure Rust, one thread), candle (pure Rust,
        /// feature `candle`), burn-cuda (GPU, feature `cuda`).
        #[arg(long, value_parser = BackendKind::NAMES)]
        backend: Option<String>,
        /// Data-parallel training on this many devices of the box (CUDA 0..N−1; Burn's
        /// collective all-reduce; docs/training.md). The batch is split among them.
        #[arg(long)]
        devices: Option<usize>,
        /// Float type of training: f32, or f16 / bf16 on cuda (the whole network in half
        /// precision; Burn 0.21 has no autocast). Checkpoints are stored in f32.
        #[arg(long, value_parser = ["f32", "f16", "bf16"])]
        precision: Option<String>,
    },
    /// Time optimizer steps (forward + masked multi-task loss + backward + AdamW, batch of
    /// synthetic images with every label) on one backend; prints one JSON line
    /// (scripts/bench-train.sh).
    BenchStep {
        #[arg(long, value_parser = BackendKind::NAMES)]
        backend: Option<String>,
        #[arg(long, value_parser = ["cpu", "cuda"], default_value = "cpu")]
        device: String,
        #[arg(long, value_parser = ["f32", "f16", "bf16"], default_value = "f32")]
        precision: String,
        #[arg(long, default_value_t = 512)]
        height: usize,
        #[arg(long, default_value_t = 320)]
        width: usize,
        #[arg(long, default_value_t = 16)]
        base: usize,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
    },
    /// Export a trained run (best.mpk) as an ONNX model following docs/model-contract.md, with the
    /// operating thresholds chosen on the manifest's validation split.
    Export {
        /// The folder `fit --out` wrote. Repeated (`--run A --run B …`): an ensemble of runs of
        /// the same network and data, whose outputs are the members' mean.
        #[arg(long, required = true)]
        run: Vec<PathBuf>,
        /// The manifest the run was trained on (its `val` rows set the thresholds).
        #[arg(long)]
        manifest: PathBuf,
        /// Output ONNX file.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "mammo-mtl")]
        name: String,
        #[arg(long, default_value = "0.1.0")]
        version: String,
        /// Intended-use statement carried by every result.
        #[arg(long, default_value = "research only, not for clinical use")]
        intended_use: String,
        /// Description of the training data.
        #[arg(long, default_value = "synthetic phantoms (mammo-edge synth)")]
        training_data: String,
        /// Validation sensitivity at which the cancer operating threshold is chosen.
        #[arg(long, default_value_t = 0.9)]
        sensitivity: f64,
    },
    /// Quantise an exported model to int8 (QOperator: QLinearConv) with onnxruntime's quantizer,
    /// calibrated on the manifest's training rows; thresholds set again with tract on the result.
    Quantize {
        /// The float32 ONNX model (`export`).
        #[arg(long)]
        model: PathBuf,
        /// The manifest the model was trained on.
        #[arg(long)]
        manifest: PathBuf,
        /// Output int8 ONNX file.
        #[arg(long)]
        out: PathBuf,
        /// Calibration images, evenly spaced over the training rows.
        #[arg(long, default_value_t = 64)]
        samples: usize,
        /// Python interpreter with onnx and onnxruntime.
        #[arg(long, default_value = "python3")]
        python: String,
        /// A training run's folder: its tensor cache is reused.
        #[arg(long)]
        run: Option<PathBuf>,
        /// Print tract's whole optimised plan.
        #[arg(long)]
        show_plan: bool,
    },
    /// Write the drift monitor's reference distributions (`mammo.drift_reference`: cancer
    /// probability, density class, percent density, OOD rate per source) into a model, from
    /// tract's outputs on a manifest split; export and quantize write it themselves.
    Reference {
        /// The ONNX model (float32 or int8); rewritten in place.
        #[arg(long)]
        model: PathBuf,
        /// The manifest the model was trained on.
        #[arg(long)]
        manifest: PathBuf,
        /// Split whose images make the reference: val (default), train or test.
        #[arg(long, default_value = "val", value_parser = ["train", "val", "test"])]
        split: String,
    },
    /// Evaluate an ONNX model with tract on a manifest split, per vendor and overall
    /// (report.json, report.md).
    Eval {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        manifest: PathBuf,
        /// Split to evaluate: test (default), val or train.
        #[arg(long, default_value = "test", value_parser = ["train", "val", "test"])]
        split: String,
        /// Output folder of the report (report.json, report.md, PNG plots).
        #[arg(long)]
        out: PathBuf,
        /// Also train the cancer-only single-task baseline with the configuration of the
        /// multi-task run given by --run, and compare both per vendor (ablation.md in --out).
        #[arg(long, requires = "run")]
        ablation: bool,
        /// The multi-task model's training run (fit --out), for --ablation.
        #[arg(long)]
        run: Option<PathBuf>,
        /// Time box of the baseline: stop after this epoch; the same command continues it.
        #[arg(long, requires = "ablation")]
        stop_after: Option<usize>,
    },
    /// Convert a public dataset's metadata to our manifest (docs/manifest.md).
    Import {
        /// rsna (train.csv), vindr (breast-level_annotations.csv), cbis-ddsm (mass/calc case
        /// description CSVs), cmmd (clinical sheet as CSV; images found by DICOM header),
        /// inbreast (INbreast.csv, ';'-separated).
        /// mias (Info.txt), ddsm-tissue (tissue_fractions.csv; masks rewritten beside the
        /// manifest).
        #[arg(value_parser = ["rsna", "vindr", "cbis-ddsm", "cmmd", "inbreast", "mias", "ddsm-tissue"])]
        format: String,
        /// The dataset's metadata file(s).
        #[arg(long = "csv", required = true)]
        csvs: Vec<PathBuf>,
        /// The dataset's root folder (where its images are).
        #[arg(long)]
        root: PathBuf,
        /// Manifest to write; image paths in it are relative to its folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Merge manifests (e.g. phantoms and imported research sets) into one: paths re-based to
    /// the output's folder, extra columns unified; `--hold-out source=rsna-m21` puts a whole
    /// machine or data set in the test split.
    Merge {
        #[arg(required = true)]
        manifests: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// COLUMN=VALUE of an extra column: matching rows go to the test split.
        #[arg(long)]
        hold_out: Option<String>,
    },
    /// Preprocess DICOM files exactly as the daemon does and print tensor statistics.
    Preprocess {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,jpeg2k=warn,burn_core::record=error"),
    )
    .init();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Fit {
            manifest,
            out,
            config,
            epochs,
            batch_size,
            lr,
            height,
            width,
            base,
            seed,
            uncertainty,
            cancer_only,
            resume,
            stop_after,
            device,
            backend,
            devices,
            precision,
        } => {
            let mut cfg: FitConfig = match &config {
                Some(p) => serde_json::from_str(
                    &std::fs::read_to_string(p)
                        .with_context(|| format!("--config {}", p.display()))?,
                )
                .with_context(|| format!("--config {}", p.display()))?,
                None => FitConfig::default(),
            };
            if let Some(v) = epochs {
                cfg.epochs = v;
            }
            if let Some(v) = batch_size {
                cfg.batch_size = v;
            }
            if let Some(v) = lr {
                cfg.lr = v;
            }
            if let Some(v) = height {
                cfg.model.height = v;
            }
            if let Some(v) = width {
                cfg.model.width = v;
            }
            if let Some(v) = base {
                cfg.model.base = v;
            }
            if let Some(v) = seed {
                cfg.seed = v;
            }
            if let Some(d) = device.as_deref() {
                cfg.device = parse_device(d);
                // a device named without a backend gets that device's default backend
                cfg.backend = BackendKind::default_for(cfg.device);
            }
            if let Some(b) = backend.as_deref() {
                cfg.backend = BackendKind::parse(b)?;
            }
            if let Some(p) = precision.as_deref() {
                cfg.precision = parse_precision(p);
            }
            if let Some(n) = devices {
                cfg.devices = n;
            }
            cfg.uncertainty |= uncertainty;
            cfg.stop_after = stop_after;
            if cancer_only {
                cfg.weights = LossWeights::cancer_only();
            }
            let report = fit(&manifest, &cfg, &out, resume)?;
            let waited: f64 = report.epochs.iter().map(|e| e.data_wait_s).sum();
            let took: f64 = report.epochs.iter().map(|e| e.seconds).sum();
            let last = report.epochs.last();
            eprintln!(
                "fit: {} epochs on {} images (val {}) with {} on {:?}; best epoch {} -> {}; last train loss {:.4}; {:.1} s, of which {:.1} s waiting for data",
                report.epochs.len(),
                report.train_samples,
                report.val_samples,
                cfg.backend.name(),
                cfg.device,
                report.best_epoch,
                report.best.display(),
                last.map(|l| l.train_loss).unwrap_or(f64::NAN),
                took,
                waited
            );
            Ok(())
        }
        Command::BenchStep {
            backend,
            device,
            precision,
            height,
            width,
            base,
            batch,
            warmup,
            steps,
        } => {
            let device = parse_device(&device);
            let b = StepBench {
                model: MtlConfig::new()
                    .with_height(height)
                    .with_width(width)
                    .with_base(base),
                batch,
                warmup,
                steps,
                backend: match backend.as_deref() {
                    Some(b) => BackendKind::parse(b)?,
                    None => BackendKind::default_for(device),
                },
                device,
                precision: parse_precision(&precision),
            };
            b.model.validate().map_err(anyhow::Error::msg)?;
            let t = bench_step(&b)?;
            println!("{}", serde_json::to_string(&t)?);
            Ok(())
        }
        Command::Export {
            run,
            manifest,
            out,
            name,
            version,
            intended_use,
            training_data,
            sensitivity,
        } => {
            let meta = export_run(
                &run,
                &manifest,
                &out,
                &ExportOptions {
                    name,
                    version,
                    intended_use,
                    training_data,
                    sensitivity,
                },
            )?;
            eprintln!(
                "export: {} ({} {}): cancer threshold {:.4} at sensitivity {sensitivity}, recon_error threshold {:.5} (set with tract on the written file)",
                out.display(),
                meta.model_name,
                meta.model_version,
                meta.cancer_threshold,
                meta.recon_error_threshold
            );
            Ok(())
        }
        Command::Quantize {
            model,
            manifest,
            out,
            samples,
            python,
            run,
            show_plan,
        } => {
            use mammo_edge::train::quantize::{quantize, QuantizeOptions};
            let r = quantize(&QuantizeOptions {
                model,
                manifest,
                out: out.clone(),
                samples,
                python,
                cache: run.map(|r| r.join("cache")),
                threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            })?;
            if show_plan {
                for o in &r.plan {
                    println!(
                        "{:<14} {:<40} {:?} -> {}  {}",
                        o.op, o.name, o.inputs, o.output, o.info
                    );
                }
            }
            println!(
                "tract plan of {}: {} nodes; {} integer matrix products (int8 GEMM kernels):",
                out.display(),
                r.plan.len(),
                r.int8_nodes.len()
            );
            for o in &r.int8_nodes {
                let k = mammo_edge::train::quantize::kernels(o).join(", ");
                println!(
                    "  {:<28} {:?} -> {}  kernel {k}",
                    o.name, o.inputs, o.output
                );
            }
            eprintln!(
                "quantize: {} calibration images; thresholds from tract on {} validation images: cancer {:.4}, recon_error {:.5}, ood_score {}; {}",
                r.calibration_images, r.validation_images, r.cancer_threshold, r.recon_error_threshold,
                r.ood_threshold.map_or("-".into(), |t| format!("{t:.3}")), r.script_summary
            );
            Ok(())
        }
        Command::Reference {
            model,
            manifest,
            split,
        } => {
            use mammo_edge::model::labels::Split;
            let sp = match split.as_str() {
                "train" => Split::Train,
                "test" => Split::Test,
                _ => Split::Val,
            };
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let r = mammo_edge::train::export::set_drift_reference(&model, &manifest, sp, threads)?;
            println!(
                "drift reference of {}: {}; sources {}",
                model.display(),
                r.images,
                r.sources
                    .iter()
                    .map(|(k, v)| format!("{k} ({} images, OOD {:.3})", v.images, v.ood_rate))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        Command::Eval {
            model,
            manifest,
            split,
            out,
            ablation,
            run,
            stop_after,
        } => {
            use mammo_edge::model::labels::Split;
            use mammo_edge::train::ablation::{self as abl, AblationOptions};
            let sp = match split.as_str() {
                "train" => Split::Train,
                "val" => Split::Val,
                _ => Split::Test,
            };
            let r = mammo_edge::train::eval::evaluate(&model, &manifest, sp, &out)?;
            println!("{}", mammo_edge::train::eval::markdown(&r));
            if let (true, Some(run)) = (ablation, run) {
                let a = abl::ablation(&AblationOptions {
                    run,
                    model,
                    manifest,
                    split: sp,
                    out: out.join("ablation"),
                    stop_after,
                })?;
                println!("{}", abl::markdown(&a));
            }
            Ok(())
        }
        Command::Import {
            format,
            csvs,
            root,
            out,
        } => {
            use mammo_edge::dataset::import::{import, Format};
            let f = match format.as_str() {
                "rsna" => Format::Rsna,
                "vindr" => Format::Vindr,
                "cbis-ddsm" => Format::CbisDdsm,
                "cmmd" => Format::Cmmd,
                "mias" => Format::Mias,
                "ddsm-tissue" => Format::DdsmTissue,
                _ => Format::Inbreast,
            };
            let dir = out_dir(&out)?;
            let abs =
                |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
            let rows = import(f, &csvs, &abs(&root), &abs(dir))?;
            write_manifest(&out, &rows, &format!("import {format}"))
        }
        Command::Merge {
            manifests,
            out,
            hold_out,
        } => {
            let hold = match hold_out.as_deref() {
                Some(h) => Some(
                    h.split_once('=')
                        .context("--hold-out takes COLUMN=VALUE, e.g. source=rsna-m21")?,
                ),
                None => None,
            };
            let dir = out_dir(&out)?;
            let rows = mammo_edge::dataset::manifest::merge(&manifests, dir, hold)?;
            write_manifest(&out, &rows, "merge")
        }
        Command::Preprocess { files } => {
            let cfg = PreprocessConfig::default();
            let opts = IngestOptions::default();
            for f in files {
                let m = read_mammogram(&f, &opts).with_context(|| format!("{}", f.display()))?;
                let p = preprocess(&m, &cfg)?;
                let n = p.tensor.len() as f64;
                let mean = p.tensor.iter().map(|&v| v as f64).sum::<f64>() / n;
                println!(
                    "{}: preprocess v{PREPROCESS_VERSION} [1, {}, {}] mean {mean:.4} crop {:?} flipped {}",
                    f.display(),
                    p.height,
                    p.width,
                    p.geometry.crop,
                    p.geometry.flipped
                );
            }
            Ok(())
        }
    }
}
