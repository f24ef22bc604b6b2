//! mammo-train: the host trainer for the mammo-edge multi-task CNN (cargo feature `train`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mammo_edge::dicom::{read_mammogram, IngestOptions};
use mammo_edge::preprocess::{preprocess, PreprocessConfig, PREPROCESS_VERSION};
use mammo_edge::train::data;
use mammo_edge::train::export::{export, meta_for, thresholds};
use mammo_edge::train::fit::{fit, load_net, FitConfig};
use mammo_edge::train::loss::LossWeights;

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
    },
    /// Export a trained run (best.mpk) as an ONNX model following docs/model-contract.md, with the
    /// operating thresholds chosen on the manifest's validation split.
    Export {
        /// The folder `fit --out` wrote.
        #[arg(long)]
        run: PathBuf,
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
        /// Output folder of the report.
        #[arg(long)]
        out: PathBuf,
    },
    /// Convert a public dataset's metadata to our manifest (docs/manifest.md).
    Import {
        /// rsna (train.csv), vindr (breast-level_annotations.csv), cbis-ddsm (mass/calc case
        /// description CSVs), cmmd (clinical sheet as CSV; images found by DICOM header),
        /// inbreast (INbreast.csv, ';'-separated).
        #[arg(value_parser = ["rsna", "vindr", "cbis-ddsm", "cmmd", "inbreast"])]
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
            cfg.uncertainty |= uncertainty;
            cfg.stop_after = stop_after;
            if cancer_only {
                cfg.weights = LossWeights::cancer_only();
            }
            let report = fit(&manifest, &cfg, &out, resume)?;
            let last = report.epochs.last();
            eprintln!(
                "fit: {} epochs on {} images (val {}); best epoch {} -> {}; last train loss {:.4}",
                report.epochs.len(),
                report.train_samples,
                report.val_samples,
                report.best_epoch,
                report.best.display(),
                last.map(|l| l.train_loss).unwrap_or(f64::NAN)
            );
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
            let cfg_path = run.join("fit_config.json");
            let cfg: FitConfig = serde_json::from_str(
                &std::fs::read_to_string(&cfg_path)
                    .with_context(|| format!("{}", cfg_path.display()))?,
            )
            .with_context(|| format!("{}", cfg_path.display()))?;
            let net = load_net(&run.join("best.mpk"), &cfg.model)?;
            let rows = mammo_edge::manifest::read(&manifest)?;
            let root = manifest.parent().unwrap_or(std::path::Path::new("."));
            let pick = |split| -> Vec<_> {
                rows.iter()
                    .enumerate()
                    .filter(|(_, r)| r.split == split)
                    .collect()
            };
            let mut val = pick(mammo_edge::labels::Split::Val);
            if val.is_empty() {
                log::warn!(
                    "no validation rows in {}: thresholds set on the training rows",
                    manifest.display()
                );
                val = pick(mammo_edge::labels::Split::Train);
            }
            let samples = data::load(
                root,
                &val,
                &cfg.preprocess(),
                Some(&run.join("cache")),
                cfg.threads,
            )?;
            // Write the file, then set both thresholds from what tract computes on that very file
            // (the daemon's runner), and write it again with them.
            let meta = |cancer_thr, recon_thr| {
                meta_for(
                    &cfg,
                    &name,
                    &version,
                    &intended_use,
                    &training_data,
                    cancer_thr,
                    sensitivity as f32,
                    recon_thr,
                )
            };
            export(&net, &meta(0.5, f32::INFINITY), &out)?;
            let runner = mammo_edge::model::ModelRunner::load(&out)?;
            let mut scored = Vec::new();
            let mut recon = Vec::new();
            for s in &samples {
                let o = runner.run(&s.input)?;
                recon.push(o.recon_error as f64);
                if let Some(l) = s.labels.cancer {
                    scored.push((o.cancer as f64, l));
                }
            }
            if !scored.iter().any(|(_, l)| *l) {
                log::warn!("no cancer-positive validation image: cancer threshold left at 0.5");
            }
            let (cancer_thr, recon_thr) = thresholds(&scored, &recon, sensitivity);
            export(&net, &meta(cancer_thr, recon_thr), &out)?;
            let runner = mammo_edge::model::ModelRunner::load(&out)?;
            eprintln!(
                "export: {} ({} {}): cancer threshold {cancer_thr:.4} at sensitivity {sensitivity} on {} validation images (tract), recon_error threshold {recon_thr:.5}",
                out.display(),
                runner.meta.model_name,
                runner.meta.model_version,
                samples.len()
            );
            Ok(())
        }
        Command::Eval {
            model,
            manifest,
            split,
            out,
        } => {
            use mammo_edge::labels::Split;
            let sp = match split.as_str() {
                "train" => Split::Train,
                "val" => Split::Val,
                _ => Split::Test,
            };
            let r = mammo_edge::train::eval::evaluate(&model, &manifest, sp, &out)?;
            println!("{}", mammo_edge::train::eval::markdown(&r));
            Ok(())
        }
        Command::Import {
            format,
            csvs,
            root,
            out,
        } => {
            use mammo_edge::import::{import, Format};
            let f = match format.as_str() {
                "rsna" => Format::Rsna,
                "vindr" => Format::Vindr,
                "cbis-ddsm" => Format::CbisDdsm,
                "cmmd" => Format::Cmmd,
                _ => Format::Inbreast,
            };
            let dir = out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            std::fs::create_dir_all(dir).with_context(|| format!("--out {}", out.display()))?;
            let abs =
                |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
            let rows = import(f, &csvs, &abs(&root), &abs(dir))?;
            mammo_edge::manifest::write(&out, &rows)?;
            let count = |s: mammo_edge::labels::Split| rows.iter().filter(|r| r.split == s).count();
            eprintln!(
                "import {format}: {} images ({} train, {} val, {} test) -> {}",
                rows.len(),
                count(mammo_edge::labels::Split::Train),
                count(mammo_edge::labels::Split::Val),
                count(mammo_edge::labels::Split::Test),
                out.display()
            );
            Ok(())
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
