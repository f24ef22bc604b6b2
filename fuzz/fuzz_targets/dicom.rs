//! DICOM reader + grey pipeline + THE preprocessing on arbitrary bytes: any input gives a
//! `Mammogram` or an `IngestError`, never a panic, abort or unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mammo_edge::ingest::dicom::{read_mammogram, IngestOptions};
use mammo_edge::ingest::preprocess::{preprocess, PreprocessConfig};

fuzz_target!(|data: &[u8]| {
    // the reader takes a path: one file per process in a RAM folder
    let path = std::env::temp_dir().join(format!("mammo-fuzz-{}.dcm", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let opts = IngestOptions {
        // a small budget keeps each run fast; the limit itself is what is tested
        max_pixel_bytes: 8 << 20,
        ..IngestOptions::any_image()
    };
    if let Ok(m) = read_mammogram(&path, &opts) {
        let cfg = PreprocessConfig {
            height: 64,
            width: 40,
            ..Default::default()
        };
        let _ = preprocess(&m, &cfg);
    }
});
