//! Training data as files: the manifest (one row per image with its labels and split) and the
//! importers of the research sets. Outside `train` because `synth` writes manifests without the
//! trainer's feature.

pub mod import;
pub mod manifest;
pub mod rng;
