//! `mammo-edge demo`: the main job as far as it exists, on inputs the program makes itself —
//! generates a four-view phantom exam (one woman, one study) as DICOM with the phantom generator,
//! then ingests and preprocesses each file exactly as the daemon will, printing the inspection
//! reports and writing preview PNGs.

use std::path::Path;

use thiserror::Error;

use crate::dicom::IngestOptions;
use crate::inspect::{self, Outputs, Report};
use crate::preprocess::PreprocessConfig;
use crate::synth::generator::{generate, SynthConfig};
use crate::synth::SynthError;

/// Errors of the demo.
#[derive(Debug, Error)]
pub enum DemoError {
    #[error(transparent)]
    Synth(#[from] SynthError),
    #[error(transparent)]
    Inspect(#[from] inspect::InspectError),
}

/// Write the exam into `out/exam/` (DICOM, masks, manifest.csv), previews into `out/preview/`,
/// and return one report per image (L-CC, L-MLO, R-CC, R-MLO).
pub fn run(out: &Path, seed: u64) -> Result<Vec<Report>, DemoError> {
    let exam = out.join("exam");
    let cfg = SynthConfig {
        count: 4,
        seed,
        scale: 0.25,
        ..Default::default()
    };
    let rows = generate(&cfg, &exam)?;
    let outputs = Outputs {
        preview_dir: Some(out.join("preview")),
        grey_dir: None,
    };
    let (pre, opts) = (PreprocessConfig::default(), IngestOptions::default());
    rows.iter()
        .map(|g| {
            inspect::inspect_file(&exam.join(&g.row.path), &opts, &pre, &outputs)
                .map_err(DemoError::from)
        })
        .collect()
}
