//! The research sets' image-file reader (PNG, JPEG, PGM/PNM) and the preprocessing of what it
//! reads: any bytes give an image or an `ImageFileError`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mammo_edge::ingest::image_file::read_image_bytes;
use mammo_edge::ingest::preprocess::{preprocess_image, PreprocessConfig};

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = read_image_bytes(data) {
        let cfg = PreprocessConfig {
            height: 64,
            width: 40,
            ..Default::default()
        };
        let _ = preprocess_image(&f.image, None, &cfg);
    }
});
