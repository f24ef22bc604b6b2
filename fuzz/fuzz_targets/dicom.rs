//! DICOM reader + grey pipeline + THE preprocessing on arbitrary bytes: any input gives a
//! `Mammogram` or an `IngestError`, never a panic, abort or unbounded allocation. The parity of
//! the input's bytes XORed together picks the decode: full, or JPEG 2000 at reduced resolution
//! (OpenJPEG's `reduce`, the scorer's path), so both are fuzzed from one corpus (about half the
//! seeds each; a DICOM file's last byte is almost always an even padding byte) and a crasher
//! replays its own path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mammo_edge::ingest::dicom::{read_mammogram, IngestOptions, Resolution};
use mammo_edge::ingest::preprocess::{preprocess, PreprocessConfig};

fuzz_target!(|data: &[u8]| {
    // the reader takes a path: one file per process in a RAM folder
    let path = std::env::temp_dir().join(format!("mammo-fuzz-{}.dcm", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let resolution = if data.iter().fold(0u8, |a, b| a ^ b) & 1 == 1 {
        // small, so that the ~100-px JPEG 2000 seeds decode two wavelet levels down (the
        // scorer asks four times its model's input per side; the 26 MP files skip two levels)
        Resolution::AtLeast {
            rows: 24,
            columns: 16,
        }
    } else {
        Resolution::Full
    };
    let opts = IngestOptions {
        // a small budget keeps each run fast; the limit itself is what is tested
        max_pixel_bytes: 8 << 20,
        resolution,
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
