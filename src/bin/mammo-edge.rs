//! mammo-edge: the edge appliance's command line (inspect files, run the demo).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mammo_edge::dicom::{IngestOptions, Vendor, View};
use mammo_edge::inspect::{self, Outputs};
use mammo_edge::preprocess::PreprocessConfig;
use mammo_edge::synth::generator::{generate, SynthConfig};

#[derive(Parser)]
#[command(
    name = "mammo-edge",
    version,
    about = "Scores mammograms at the modality and publishes results over MQTT"
)]
struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read DICOM files as the daemon would and report what was found, one line (or JSON object) per file.
    Inspect {
        /// Print one JSON object per line (keys in docs/inspect.md).
        #[arg(long)]
        json: bool,
        /// Write the preprocessed model input of each accepted file as PNG into DIR.
        #[arg(long, value_name = "DIR")]
        preview: Option<PathBuf>,
        /// Write the grey-level pipeline output at source resolution as 16-bit PNG into DIR.
        #[arg(long, value_name = "DIR")]
        grey: Option<PathBuf>,
        /// Decode any single-frame greyscale image (any modality, view, For Processing).
        #[arg(long)]
        any: bool,
        /// Accept For Processing images (percentile window).
        #[arg(long)]
        accept_for_processing: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Generate synthetic mammograms (DICOM) with ground truth: masks and manifest.csv.
    Synth {
        /// Output folder (images/, masks/, manifest.csv).
        #[arg(long)]
        out: PathBuf,
        /// Number of images (4-view exams: L/R x CC/MLO).
        #[arg(long, default_value_t = 8)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Comma-separated vendors (default: all styled vendors).
        #[arg(long, value_delimiter = ',')]
        vendors: Vec<String>,
        /// Comma-separated views: CC, MLO.
        #[arg(long, value_delimiter = ',', default_value = "CC,MLO")]
        views: Vec<String>,
        /// Matrix scale (1 = full detector size).
        #[arg(long, default_value_t = 0.25)]
        scale: f64,
        /// Probability that an exam has a malignant finding.
        #[arg(long, default_value_t = 0.3)]
        prevalence: f64,
        /// Probability that a breast has a benign finding.
        #[arg(long, default_value_t = 0.15)]
        benign_rate: f64,
        /// Rate of adjacent-class flips of the density label.
        #[arg(long, default_value_t = 0.0)]
        label_noise: f64,
        /// Compress with the vendor's usual transfer syntax (needs dcmtk and libgdcm-tools).
        #[arg(long)]
        compress: bool,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Also write a contact sheet PNG (one tile per vendor and view).
        #[arg(long, value_name = "PNG")]
        contact_sheet: Option<PathBuf>,
    },
    /// Generate a four-view phantom exam and run ingest + preprocessing on it (no setup needed).
    Demo {
        /// Output folder (exam DICOM files and preview PNGs).
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(format!("{level},jpeg2k=warn")),
    )
    .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print(report: &inspect::Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", report.to_line());
    }
    Ok(())
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Inspect {
            json,
            preview,
            grey,
            any,
            accept_for_processing,
            files,
        } => {
            let mut opts = if any {
                IngestOptions::any_image()
            } else {
                IngestOptions::default()
            };
            opts.accept_for_processing |= accept_for_processing;
            let out = Outputs {
                preview_dir: preview,
                grey_dir: grey,
            };
            let cfg = PreprocessConfig::default();
            let mut rejected = 0;
            for f in &files {
                let r = inspect::inspect_file(f, &opts, &cfg, &out)
                    .with_context(|| format!("inspecting {}", f.display()))?;
                if r.status != "accepted" {
                    rejected += 1;
                }
                print(&r, json)?;
            }
            // Exit 0 when every file was accepted, 2 when some were rejected (reports printed).
            Ok(if rejected == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Synth {
            out,
            count,
            seed,
            vendors,
            views,
            scale,
            prevalence,
            benign_rate,
            label_noise,
            compress,
            threads,
            contact_sheet,
        } => {
            let parse_vendor = |v: &String| {
                serde_json::from_value::<Vendor>(serde_json::Value::String(v.trim().to_lowercase()))
                    .with_context(|| format!("--vendors: unknown vendor {v:?}"))
            };
            let parse_view = |v: &String| match View::from_view_position(v) {
                Some(v) if v.is_screening() => Ok(v),
                _ => Err(anyhow::anyhow!("--views: {v:?} is not CC or MLO")),
            };
            let defaults = SynthConfig::default();
            let cfg = SynthConfig {
                count,
                seed,
                vendors: if vendors.is_empty() {
                    defaults.vendors
                } else {
                    vendors
                        .iter()
                        .map(parse_vendor)
                        .collect::<anyhow::Result<_>>()?
                },
                views: views
                    .iter()
                    .map(parse_view)
                    .collect::<anyhow::Result<_>>()?,
                scale,
                prevalence,
                benign_rate,
                label_noise,
                compress,
                threads,
                ..defaults
            };
            let t0 = std::time::Instant::now();
            let rows = generate(&cfg, &out)?;
            let secs = t0.elapsed().as_secs_f64();
            eprintln!(
                "synth: {} images in {:.1} s ({:.2} images/s) -> {}",
                rows.len(),
                secs,
                rows.len() as f64 / secs,
                out.join("manifest.csv").display()
            );
            if let Some(png) = contact_sheet {
                mammo_edge::synth::sheet::contact_sheet(&out, &rows, &png)?;
                eprintln!("synth: contact sheet {}", png.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { out, seed, json } => {
            let reports = mammo_edge::demo::run(&out, seed).context("demo failed")?;
            for r in &reports {
                print(r, json)?;
            }
            eprintln!(
                "demo: {} phantom images in {}, previews in {}",
                reports.len(),
                out.join("exam").display(),
                out.join("preview").display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
