//! Integration tests: real DICOM files written by our synth module or by Debian's dcmtk / GDCM
//! encoders, the real mammograms of `MAMMO_TEST_DATA`, and the `mammo-edge` binary.

mod cli;
mod codecs;
mod config;
mod daemon;
#[cfg(feature = "dashboard")]
mod dashboard;
mod exam;
#[cfg(feature = "train")]
mod export;
mod grey_pipeline;
mod hostile;
mod image_file;
mod import;
mod model;
mod real_data;
mod rejections;
mod reported_cases;
mod sr;
mod store;
mod synth;
#[cfg(feature = "train")]
mod train;
mod util;
