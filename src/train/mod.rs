//! Host trainer (cargo feature `train`): the multi-task network in Burn, masked multi-task loss,
//! data loading through the shared preprocessing, training loop and metrics.

pub mod ablation;
pub mod backend;
pub mod bench;
pub mod data;
pub mod eval;
pub mod export;
pub mod fit;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod parallel;
pub mod plots;
pub mod quantize;
