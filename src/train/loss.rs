//! Masked multi-task loss: Σ_t w_t · L_t where each sample contributes to task t only when its
//! label is present (mask 1). BCE for binary tasks, cross-entropy for classes, Huber for percent
//! density, Dice + BCE for the dense-tissue mask, MSE for the reconstruction (always present).
//! Optional learned uncertainty weighting (Kendall, Gal & Cipolla, "Multi-task learning using
//! uncertainty to weigh losses", CVPR 2018): Σ_t exp(−s_t) · L_t + s_t with s_t = log σ_t² learned.

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, sigmoid};
use serde::{Deserialize, Serialize};

use super::model::MtlOutput;

/// Task names in loss-vector order.
pub const TASKS: [&str; 8] = [
    "cancer", "normal", "density", "percent", "vendor", "view", "mask", "recon",
];

/// Fixed task weights (config `loss.weights`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossWeights {
    pub cancer: f32,
    pub normal: f32,
    pub density: f32,
    pub percent: f32,
    pub vendor: f32,
    pub view: f32,
    pub mask: f32,
    pub recon: f32,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            cancer: 1.0,
            normal: 0.5,
            density: 0.5,
            percent: 0.5,
            vendor: 0.2,
            view: 0.2,
            mask: 0.5,
            recon: 0.2,
        }
    }
}

impl LossWeights {
    pub fn as_array(&self) -> [f32; 8] {
        [
            self.cancer,
            self.normal,
            self.density,
            self.percent,
            self.vendor,
            self.view,
            self.mask,
            self.recon,
        ]
    }

    /// Only the cancer task (the single-task baseline of the ablation).
    pub fn cancer_only() -> Self {
        LossWeights {
            cancer: 1.0,
            normal: 0.0,
            density: 0.0,
            percent: 0.0,
            vendor: 0.0,
            view: 0.0,
            mask: 0.0,
            recon: 0.0,
        }
    }
}

/// Targets of one batch; every `*_present` is 1.0 where the label exists, 0.0 where it is missing.
#[derive(Debug, Clone)]
pub struct Targets<B: Backend> {
    /// `[N, 1]` 0/1.
    pub cancer: Tensor<B, 2>,
    pub cancer_present: Tensor<B, 2>,
    pub normal: Tensor<B, 2>,
    pub normal_present: Tensor<B, 2>,
    /// `[N]` class index 0–3 (0 where missing).
    pub density: Tensor<B, 1, Int>,
    pub density_present: Tensor<B, 1>,
    /// `[N, 1]` percent density / 100.
    pub percent: Tensor<B, 2>,
    pub percent_present: Tensor<B, 2>,
    /// `[N]` vendor class index.
    pub vendor: Tensor<B, 1, Int>,
    pub vendor_present: Tensor<B, 1>,
    /// `[N]` 0 = CC, 1 = MLO.
    pub view: Tensor<B, 1, Int>,
    pub view_present: Tensor<B, 1>,
    /// `[N, 1, h, w]` dense-tissue fraction per decoder pixel.
    pub mask: Tensor<B, 4>,
    /// `[N]`.
    pub mask_present: Tensor<B, 1>,
}

/// Numerically stable BCE with logits, per element.
fn bce_logits<B: Backend, const D: usize>(x: Tensor<B, D>, y: Tensor<B, D>) -> Tensor<B, D> {
    // max(x, 0) − x·y + log(1 + e^(−|x|))
    x.clone().clamp_min(0.0) - x.clone() * y + (x.abs().neg().exp() + 1.0).log()
}

/// Mean over present samples (0 when none is present).
fn masked_mean<B: Backend>(per_sample: Tensor<B, 1>, present: Tensor<B, 1>) -> Tensor<B, 1> {
    let n = present.clone().sum().clamp_min(1.0);
    (per_sample * present).sum() / n
}

fn masked_ce<B: Backend>(
    logits: Tensor<B, 2>,
    target: Tensor<B, 1, Int>,
    present: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let n = target.dims()[0];
    let lp = log_softmax(logits, 1).gather(1, target.reshape([n, 1]));
    masked_mean(lp.reshape([n]).neg(), present)
}

/// The eight task losses (each a scalar `[1]`), in [`TASKS`] order.
pub fn task_losses<B: Backend>(out: &MtlOutput<B>, t: &Targets<B>) -> Vec<Tensor<B, 1>> {
    let n = t.cancer.dims()[0];
    let flat = |x: Tensor<B, 2>| x.reshape([n]);
    let cancer = masked_mean(
        flat(bce_logits(out.cancer.clone(), t.cancer.clone())),
        flat(t.cancer_present.clone()),
    );
    let normal = masked_mean(
        flat(bce_logits(out.normal.clone(), t.normal.clone())),
        flat(t.normal_present.clone()),
    );
    let density = masked_ce(
        out.density.clone(),
        t.density.clone(),
        t.density_present.clone(),
    );
    // Huber (δ = 0.05, i.e. 5 percentage points) on the 0–1 scale
    let diff = (sigmoid(out.percent.clone()) - t.percent.clone()).abs();
    let delta = 0.05;
    let quad = diff.clone().clamp_max(delta);
    let huber = quad.clone().powf_scalar(2.0) * 0.5 + (diff - quad) * delta;
    let percent = masked_mean(flat(huber) / delta, flat(t.percent_present.clone()));
    let vendor = masked_ce(
        out.vendor.clone(),
        t.vendor.clone(),
        t.vendor_present.clone(),
    );
    let view = masked_ce(out.view.clone(), t.view.clone(), t.view_present.clone());
    // Dice + BCE per sample over the decoder pixels
    let [_, _, h, w] = out.mask.dims();
    let p = sigmoid(out.mask.clone()).reshape([n, h * w]);
    let y = t.mask.clone().reshape([n, h * w]);
    let inter = (p.clone() * y.clone()).sum_dim(1).reshape([n]);
    let denom = (p.sum_dim(1) + y.clone().sum_dim(1)).reshape([n]);
    let dice = (inter * 2.0 + 1.0) / (denom + 1.0);
    let bce = bce_logits(out.mask.clone().reshape([n, h * w]), y)
        .mean_dim(1)
        .reshape([n]);
    let mask = masked_mean(dice.neg() + 1.0 + bce, t.mask_present.clone());
    let recon = (out.recon.clone() - out.recon_target.clone())
        .powf_scalar(2.0)
        .mean()
        .reshape([1]);
    vec![cancer, normal, density, percent, vendor, view, mask, recon]
}

/// Σ w_t L_t, or with `log_vars` (learned s_t = log σ_t², `[8]`) Σ w_t (exp(−s_t) L_t + s_t) over
/// tasks with w_t > 0.
pub fn total<B: Backend>(
    losses: &[Tensor<B, 1>],
    weights: &LossWeights,
    log_vars: Option<Tensor<B, 1>>,
) -> Tensor<B, 1> {
    let w = weights.as_array();
    let mut sum: Option<Tensor<B, 1>> = None;
    for (i, l) in losses.iter().enumerate() {
        if w[i] == 0.0 {
            continue;
        }
        let term = match &log_vars {
            Some(s) => {
                let si = s.clone().narrow(0, i, 1);
                (si.clone().neg().exp() * l.clone() + si) * w[i]
            }
            None => l.clone() * w[i],
        };
        sum = Some(match sum {
            Some(acc) => acc + term,
            None => term,
        });
    }
    sum.expect("at least one task has a positive weight")
}
