//! `mammo-train bench-step`: images per second of one optimizer step (forward through every head
//! and the decoder, the masked multi-task loss, backward, AdamW) on a fixed synthetic batch with
//! every label present, for any backend of [`super::backend`]. `scripts/bench-train.sh` runs it
//! beside the PyTorch anchor (`scripts/bench_train_torch.py`, the same network) and writes
//! docs/bench-train.md.

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use super::backend::{dispatch, BackendError, BackendKind, Device, OnBackend, Precision};
use super::data::{self, Labels, Sample};
use super::loss::{self, LossWeights};
use super::model::MtlConfig;
use crate::ingest::dicom::Vendor;
use crate::model::labels::Density;
use crate::synth::SplitMix64;

/// What one benchmark measures.
#[derive(Debug, Clone)]
pub struct StepBench {
    pub model: MtlConfig,
    pub batch: usize,
    /// Untimed steps first (allocator, kernel selection, thread pools).
    pub warmup: usize,
    pub steps: usize,
    pub backend: BackendKind,
    pub device: Device,
    pub precision: Precision,
}

/// Result: one JSON line of `bench-step`.
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    pub backend: &'static str,
    pub device: Device,
    pub height: usize,
    pub width: usize,
    pub base: usize,
    pub batch: usize,
    pub steps: usize,
    /// Mean wall time of one step, ms.
    pub ms_per_step: f64,
    pub images_per_s: f64,
    /// Floating-point operations per second of training, counting 2 per multiply-accumulate and
    /// the backward pass as twice the forward (3 × forward in all).
    pub gflops: f64,
    /// Final loss (a finite number shows the step computed something).
    pub loss: f64,
}

/// A synthetic batch: seeded noise images, every label present, mask = a thresholded input.
fn synthetic_batch(cfg: &MtlConfig, n: usize, seed: u64) -> Vec<Sample> {
    let mut rng = SplitMix64::new(seed);
    let (hh, ww) = (cfg.height, cfg.width);
    let (h, w) = cfg.decoder_size();
    (0..n)
        .map(|i| {
            let input: Vec<f32> = (0..hh * ww)
                .map(|_| (rng.next_u64() % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let mask: Vec<f32> = (0..h * w)
                .map(|k| (input[(k / w) * 4 * ww + (k % w) * 4] > 0.0) as u8 as f32)
                .collect();
            Sample {
                row: i,
                input,
                mask: Some(mask),
                labels: Labels {
                    cancer: Some(i % 2 == 0),
                    normal: Some(i % 3 == 0),
                    density: Some(Density::ALL[i % 4]),
                    percent: Some((i * 7 % 100) as f64),
                    source: cfg.source_classes().get(i % cfg.vendors).cloned(),
                    view: Some(i % 2),
                },
                dicom_vendor: Vendor::ALL[i % Vendor::ALL.len()],
            }
        })
        .collect()
}

impl OnBackend for &StepBench {
    type Output = StepTiming;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> StepTiming {
        let mut net = super::backend::seeded::<B, _>(&device, 1, || self.model.init::<B>(&device));
        let mut optim = AdamWConfig::new().init::<B, super::model::MtlNet<B>>();
        let samples = synthetic_batch(&self.model, self.batch, 7);
        let items: Vec<(&Sample, Vec<f32>)> =
            samples.iter().map(|s| (s, s.input.clone())).collect();
        let weights = LossWeights::default();
        let mut loss = f64::NAN;
        let mut t0 = Instant::now();
        for i in 0..self.warmup + self.steps {
            if i == self.warmup {
                t0 = Instant::now();
            }
            // the batch goes to the device every step, as in training
            let (x, t) = data::batch::<B>(&items, &self.model, &device);
            let out = net.forward(x);
            let total = loss::total(&loss::task_losses(&out, &t), &weights, None);
            // the read back of the loss waits for the device, as training's does
            loss = total
                .clone()
                .into_data()
                .convert::<f64>()
                .to_vec::<f64>()
                .ok()
                .and_then(|v| v.first().copied())
                .unwrap_or(f64::NAN);
            let grads = GradientsParams::from_grads(total.backward(), &net);
            net = optim.step(1e-3, net, grads);
        }
        // the last step's parameter update finishes before the clock stops
        let _ = B::sync(&device);
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        let per_step = secs / self.steps.max(1) as f64;
        let images_per_s = self.batch as f64 / per_step;
        StepTiming {
            backend: self.backend.name(),
            device: self.device,
            height: self.model.height,
            width: self.model.width,
            base: self.model.base,
            batch: self.batch,
            steps: self.steps,
            ms_per_step: per_step * 1e3,
            images_per_s,
            gflops: images_per_s * self.model.macs() as f64 * 2.0 * 3.0 / 1e9,
            loss,
        }
    }
}

/// Run the benchmark, or say why the backend cannot run here.
pub fn bench_step(b: &StepBench) -> Result<StepTiming, BackendError> {
    dispatch(b.backend, b.device, b.precision, b)
}
