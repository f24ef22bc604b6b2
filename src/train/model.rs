//! The multi-task network of Tardy & Mateus (MIDL 2022): an autoencoder-like CNN without skip
//! connections. The encoder's bottleneck feeds one classification/regression head per task (a
//! 64-unit hidden layer, the seed's extension, optional) and a decoder that predicts the
//! dense-tissue mask and reconstructs the input, both at a quarter of the input resolution.
//!
//! Shapes: input `[N, 1, H, W]` with H, W multiples of 32; encoder stem 4×4/4 (a patchify conv,
//! cheaper in tract than a full-resolution 3×3) then three stages of (3×3/2, 3×3/1) to
//! `[N, 8c, H/32, W/32]`; decoder three 2×2/2 transposed convs to `[N, c, H/4, W/4]`.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::avg_pool2d;

/// Architecture hyper-parameters (stored in the ONNX metadata as `mammo.config`).
#[derive(Config, Debug, PartialEq)]
pub struct MtlConfig {
    /// Input height H (multiple of 32), pixels.
    #[config(default = 256)]
    pub height: usize,
    /// Input width W (multiple of 32), pixels.
    #[config(default = 160)]
    pub width: usize,
    /// Channels of the first stage `c`; stages have c, 2c, 4c, 8c.
    #[config(default = 16)]
    pub base: usize,
    /// Number of classes of the source head (the seed's vendor head).
    #[config(default = 11)]
    pub vendors: usize,
    /// Class names of the source head, `vendors` of them: the manifest's `source` values of the
    /// training rows (RSNA machine, data set, phantom vendor). Empty: the first `vendors` DICOM
    /// vendors of `Vendor::ALL` (models trained on DICOM only).
    #[config(default = "Vec::new()")]
    pub sources: Vec<String>,
    /// Hidden units of each head (0 = a single dense layer per head, as in the paper).
    #[config(default = 64)]
    pub hidden: usize,
}

/// Conv (no bias) + BatchNorm + ReLU.
#[derive(Module, Debug)]
pub struct ConvBn<B: Backend> {
    pub conv: Conv2d<B>,
    pub bn: BatchNorm<B>,
}

impl<B: Backend> ConvBn<B> {
    fn new(cin: usize, cout: usize, k: usize, stride: usize, device: &B::Device) -> Self {
        let pad = if k == 3 { 1 } else { 0 };
        ConvBn {
            conv: Conv2dConfig::new([cin, cout], [k, k])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(cout).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        relu(self.bn.forward(self.conv.forward(x)))
    }
}

/// 2×2 stride-2 transposed conv (no bias) + BatchNorm + ReLU.
#[derive(Module, Debug)]
pub struct UpBn<B: Backend> {
    pub up: ConvTranspose2d<B>,
    pub bn: BatchNorm<B>,
}

impl<B: Backend> UpBn<B> {
    fn new(cin: usize, cout: usize, device: &B::Device) -> Self {
        UpBn {
            up: ConvTranspose2dConfig::new([cin, cout], [2, 2])
                .with_stride([2, 2])
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(cout).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        relu(self.bn.forward(self.up.forward(x)))
    }
}

/// One task head on the pooled bottleneck: optional hidden layer + ReLU, then a dense layer.
#[derive(Module, Debug)]
pub struct Head<B: Backend> {
    pub hidden: Option<Linear<B>>,
    pub out: Linear<B>,
}

impl<B: Backend> Head<B> {
    fn new(d_in: usize, hidden: usize, d_out: usize, device: &B::Device) -> Self {
        let (hidden, d) = if hidden > 0 {
            (Some(LinearConfig::new(d_in, hidden).init(device)), hidden)
        } else {
            (None, d_in)
        };
        Head {
            hidden,
            out: LinearConfig::new(d, d_out).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = match &self.hidden {
            Some(h) => relu(h.forward(x)),
            None => x,
        };
        self.out.forward(x)
    }
}

/// The network. Field order is the ONNX export's order.
#[derive(Module, Debug)]
pub struct MtlNet<B: Backend> {
    pub stem: ConvBn<B>,
    pub encoder: Vec<ConvBn<B>>,
    pub cancer: Head<B>,
    pub normal: Head<B>,
    pub density: Head<B>,
    pub percent: Head<B>,
    pub vendor: Head<B>,
    pub view: Head<B>,
    pub decoder: Vec<UpBn<B>>,
    pub mask: Conv2d<B>,
    pub recon: Conv2d<B>,
}

/// Raw outputs (logits), shapes for batch N and decoder size h × w = H/4 × W/4.
#[derive(Debug, Clone)]
pub struct MtlOutput<B: Backend> {
    /// `[N, 1]` cancer logit.
    pub cancer: Tensor<B, 2>,
    /// `[N, 1]` normal logit.
    pub normal: Tensor<B, 2>,
    /// `[N, 4]` density logits (A–D).
    pub density: Tensor<B, 2>,
    /// `[N, 1]` percent density logit (sigmoid · 100 = %).
    pub percent: Tensor<B, 2>,
    /// `[N, V]` vendor logits.
    pub vendor: Tensor<B, 2>,
    /// `[N, 2]` view logits (CC, MLO).
    pub view: Tensor<B, 2>,
    /// `[N, 1, h, w]` dense-mask logits.
    pub mask: Tensor<B, 4>,
    /// `[N, 1, h, w]` reconstruction, in the normalised input space.
    pub recon: Tensor<B, 4>,
    /// `[N, 1, h, w]` the input averaged over 4 × 4 blocks: the reconstruction target.
    pub recon_target: Tensor<B, 4>,
}

impl MtlConfig {
    /// Decoder output size (h, w) = (H/4, W/4).
    pub fn decoder_size(&self) -> (usize, usize) {
        (self.height / 4, self.width / 4)
    }

    /// Check the sizes; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.height.is_multiple_of(32) || self.height == 0 {
            return Err(format!(
                "height = {} must be a positive multiple of 32",
                self.height
            ));
        }
        if !self.width.is_multiple_of(32) || self.width == 0 {
            return Err(format!(
                "width = {} must be a positive multiple of 32",
                self.width
            ));
        }
        if self.base == 0 || self.vendors < 2 {
            return Err("base must be > 0 and vendors at least 2".into());
        }
        if self.sources.is_empty() && self.vendors > crate::ingest::dicom::Vendor::ALL.len() {
            return Err(format!(
                "vendors = {} without source names: at most the {} DICOM vendors",
                self.vendors,
                crate::ingest::dicom::Vendor::ALL.len()
            ));
        }
        if !self.sources.is_empty() && self.sources.len() != self.vendors {
            return Err(format!(
                "{} source names for vendors = {}",
                self.sources.len(),
                self.vendors
            ));
        }
        Ok(())
    }

    /// Class names of the source head, in output order: `sources`, or the first `vendors` DICOM
    /// vendor names when it is empty.
    pub fn source_classes(&self) -> Vec<String> {
        if self.sources.is_empty() {
            crate::ingest::dicom::Vendor::ALL
                .iter()
                .take(self.vendors)
                .map(|v| v.as_str().to_string())
                .collect()
        } else {
            self.sources.clone()
        }
    }

    /// Multiply-accumulates of one forward pass for one image (convolutions, transposed convolutions
    /// and dense layers; activations, pooling and BatchNorm not counted).
    pub fn macs(&self) -> u64 {
        let c = self.base as u64;
        let (h, w) = (self.height as u64, self.width as u64);
        let mut total = (h / 4) * (w / 4) * 16 * c; // stem 4x4, 1 -> c
        let chans = [c, 2 * c, 4 * c, 8 * c];
        for i in 0..3 {
            let pos = (h >> (3 + i)) * (w >> (3 + i));
            total += pos * 9 * chans[i] * chans[i + 1] + pos * 9 * chans[i + 1] * chans[i + 1];
        }
        let d = 8 * c;
        let hid = self.hidden as u64;
        let outs = [1, 1, 4, 1, self.vendors as u64, 2];
        for o in outs {
            total += if hid > 0 { d * hid + hid * o } else { d * o };
        }
        for (i, (a, b)) in [(8 * c, 4 * c), (4 * c, 2 * c), (2 * c, c)]
            .iter()
            .enumerate()
        {
            let pos_in = (h >> (5 - i)) * (w >> (5 - i));
            total += pos_in * 4 * a * b;
        }
        total + 2 * (h / 4) * (w / 4) * c
    }

    /// Build the network with freshly initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> MtlNet<B> {
        let c = self.base;
        let chans = [c, 2 * c, 4 * c, 8 * c];
        let mut encoder = Vec::new();
        for i in 0..3 {
            encoder.push(ConvBn::new(chans[i], chans[i + 1], 3, 2, device));
            encoder.push(ConvBn::new(chans[i + 1], chans[i + 1], 3, 1, device));
        }
        let d = 8 * c;
        let head = |n| Head::new(d, self.hidden, n, device);
        MtlNet {
            stem: ConvBn::new(1, c, 4, 4, device),
            encoder,
            cancer: head(1),
            normal: head(1),
            density: head(4),
            percent: head(1),
            vendor: head(self.vendors),
            view: head(2),
            decoder: vec![
                UpBn::new(8 * c, 4 * c, device),
                UpBn::new(4 * c, 2 * c, device),
                UpBn::new(2 * c, c, device),
            ],
            mask: Conv2dConfig::new([c, 1], [1, 1]).init(device),
            recon: Conv2dConfig::new([c, 1], [1, 1]).init(device),
        }
    }
}

/// Encoder layers (indices into [`MtlNet::encoder`]) whose outputs feed the out-of-distribution
/// score: the end of each of the three stages, `[N, 2c|4c|8c, H/8|H/16|H/32, …]`.
pub const OOD_LAYERS: [usize; 3] = [1, 3, 5];

/// Per-channel mean and standard deviation over positions of `[N, C, h, w]` → `[N, 2C]` (means
/// first).
fn channel_stats<B: Backend>(f: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, c, h, w] = f.dims();
    let flat = f.reshape([n, c, h * w]);
    let mean = flat.clone().mean_dim(2);
    let sq = (flat.clone() * flat).mean_dim(2);
    let sd = (sq - mean.clone() * mean.clone()).clamp_min(0.0).sqrt();
    Tensor::cat(vec![mean.reshape([n, c]), sd.reshape([n, c])], 1)
}

impl<B: Backend> MtlNet<B> {
    /// Channel statistics ([`channel_stats`]) of the encoder layers of [`OOD_LAYERS`], one
    /// `[N, 2C]` tensor each: the features of the out-of-distribution score (export mirrors it).
    pub fn stage_stats(&self, x: Tensor<B, 4>) -> Vec<Tensor<B, 2>> {
        let mut f = self.stem.forward(x);
        let mut out = Vec::new();
        for (i, layer) in self.encoder.iter().enumerate() {
            f = layer.forward(f);
            if OOD_LAYERS.contains(&i) {
                out.push(channel_stats(f.clone()));
            }
        }
        out
    }

    /// One forward pass for all heads. `x`: `[N, 1, H, W]` normalised input.
    pub fn forward(&self, x: Tensor<B, 4>) -> MtlOutput<B> {
        let recon_target = avg_pool2d(x.clone(), [4, 4], [4, 4], [0, 0], true, false);
        let mut f = self.stem.forward(x);
        for layer in &self.encoder {
            f = layer.forward(f);
        }
        let [n, ch, _, _] = f.dims();
        let pooled = f.clone().mean_dim(2).mean_dim(3).reshape([n, ch]);
        let mut d = f;
        for layer in &self.decoder {
            d = layer.forward(d);
        }
        MtlOutput {
            cancer: self.cancer.forward(pooled.clone()),
            normal: self.normal.forward(pooled.clone()),
            density: self.density.forward(pooled.clone()),
            percent: self.percent.forward(pooled.clone()),
            vendor: self.vendor.forward(pooled.clone()),
            view: self.view.forward(pooled),
            mask: self.mask.forward(d.clone()),
            recon: self.recon.forward(d),
            recon_target,
        }
    }
}
