//! mammo-edge: the edge appliance's command line (inspect files, run the demo).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mammo_edge::dicom::IngestOptions;
use mammo_edge::inspect::{self, Outputs};
use mammo_edge::preprocess::PreprocessConfig;

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
