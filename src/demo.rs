//! `mammo-edge demo`: the main job as far as it exists, on inputs the program makes itself —
//! writes a four-view geometric phantom exam as DICOM, then ingests and preprocesses each file
//! exactly as the daemon will, printing the inspection reports and writing preview PNGs.

use std::path::Path;

use crate::dicom::{IngestOptions, Laterality};
use crate::inspect::{self, Outputs, Report};
use crate::preprocess::PreprocessConfig;
use crate::synth::{DicomSpec, GeometricPhantom, SynthError};
use thiserror::Error;

/// Errors of the demo.
#[derive(Debug, Error)]
pub enum DemoError {
    #[error(transparent)]
    Synth(#[from] SynthError),
    #[error(transparent)]
    Inspect(#[from] inspect::InspectError),
    #[error("cannot create {0}: {1}")]
    Dir(String, std::io::Error),
}

/// Write the exam into `out/exam/`, previews into `out/preview/`, and return one report per image.
pub fn run(out: &Path, seed: u64) -> Result<Vec<Report>, DemoError> {
    let exam = out.join("exam");
    std::fs::create_dir_all(&exam).map_err(|e| DemoError::Dir(exam.display().to_string(), e))?;
    let views = [
        (Laterality::L, "CC", "399162004", "cranio-caudal"),
        (Laterality::L, "MLO", "399368009", "medio-lateral oblique"),
        (Laterality::R, "CC", "399162004", "cranio-caudal"),
        (Laterality::R, "MLO", "399368009", "medio-lateral oblique"),
    ];
    let mut files = Vec::new();
    for (i, (lat, view, code, meaning)) in views.iter().enumerate() {
        let mut ph = GeometricPhantom::new(832, 640, *lat);
        ph.background = 0.01;
        ph.background_noise = 0.002;
        ph.label_block = true;
        ph.seed = seed + i as u64;
        let pixels = DicomSpec::quantise(&ph.render(), 12, false);
        let mut spec = DicomSpec::mammogram(ph.rows, ph.columns, pixels);
        spec.seed = seed + i as u64;
        spec.image_laterality = Some(lat.to_string());
        spec.view_position = Some(view.to_string());
        spec.view_code = Some((code.to_string(), "SCT".into(), meaning.to_string()));
        let path = exam.join(format!("{lat}_{view}.dcm"));
        spec.write(&path)?;
        files.push(path);
    }
    let outputs = Outputs {
        preview_dir: Some(out.join("preview")),
        grey_dir: None,
    };
    let cfg = PreprocessConfig::default();
    let opts = IngestOptions::default();
    files
        .iter()
        .map(|f| inspect::inspect_file(f, &opts, &cfg, &outputs).map_err(DemoError::from))
        .collect()
}
