//! mammo-train: the host trainer. For now it preprocesses files with the shared module (the same
//! code path the daemon uses) and reports the tensors; training arrives with the trainer issue.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mammo_edge::dicom::{read_mammogram, IngestOptions};
use mammo_edge::preprocess::{preprocess, PreprocessConfig, PREPROCESS_VERSION};

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
    /// Preprocess DICOM files exactly as the daemon does and print tensor statistics.
    Preprocess {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,jpeg2k=warn"))
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
