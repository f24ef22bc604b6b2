//! mammo-edge: DICOM mammogram ingest, the shared preprocessing, and (in later modules) the
//! model runner, exam aggregation and MQTT publishing of the edge appliance.
//! See docs/ARCHITECTURE.md for the map of modules and the data flow.

pub mod bench;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dicom;
pub mod exam;
pub mod files;
pub mod health;
pub mod image_file;
pub mod import;
pub mod infer;
pub mod inspect;
pub mod labels;
pub mod logging;
pub mod manifest;
pub mod message;
pub mod model;
pub mod preprocess;
pub mod publish;
pub mod service;
pub mod store;
pub mod synth;
#[cfg(feature = "train")]
pub mod train;
pub mod watch;
