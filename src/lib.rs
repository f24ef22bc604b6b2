//! mammo-edge: the edge appliance that scores mammograms as a modality exports them, and the
//! library its host trainer shares. Folders by role (docs/ARCHITECTURE.md has the map):
//! `ingest` (one image in, one `Mammogram` out; THE preprocessing), `model` (ONNX contract, tract
//! runner, per-image scoring and result types), `edge` (the daemon: config, watch, store, exam
//! rule, messages, MQTT), `dashboard` (feature `dashboard`: the hospital-side subscriber, database
//! and web page), `dataset` (manifests and the research sets' importers), `synth`
//! (phantoms), `cli` (what the commands print), `train` (feature `train`).

pub mod cli;
#[cfg(feature = "dashboard")]
pub mod dashboard;
pub mod dataset;
pub mod edge;
pub mod ingest;
pub mod model;
pub mod synth;
#[cfg(feature = "train")]
pub mod train;
