//! `mammo-train export`: write the trained network as ONNX (opset 13) following the model
//! contract, mirroring [`MtlNet::forward`] node by node. Burn has no ONNX export, so the graph is
//! built with tract-onnx's protobuf types (`tract_onnx::pb`) and encoded with prost. BatchNorm is
//! folded into the preceding (transposed) convolution: W' = W·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε).
//! Heads end in Sigmoid / Softmax (probabilities); `recon_error` = mean((reconstruction −
//! AveragePool₄(image))²) is computed in the graph so trainer and daemon cannot drift.
//! Optionally ([`OodStats`]) the graph also computes `ood_score`: a Mahalanobis distance of the
//! encoder's channel statistics to those of the training images, summed over three depths
//! (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples",
//! NeurIPS; here on per-channel mean and standard deviation, with a shrunk covariance).

use std::path::Path;

use burn::prelude::*;
use prost::Message;
use thiserror::Error;
use tract_onnx::pb;

use super::model::{ConvBn, Head, MtlNet, UpBn, OOD_LAYERS};
use crate::model::contract::{ModelMeta, OOD_OUTPUT};

/// Errors of export.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("writing {path}: {detail}")]
    Write { path: String, detail: String },
    #[error("tensor data: {0}")]
    Data(String),
    #[error("reading {path}: {detail}")]
    Read { path: String, detail: String },
    #[error(transparent)]
    Model(#[from] crate::model::ContractError),
    #[error(transparent)]
    Fit(#[from] super::fit::FitError),
    #[error(transparent)]
    Manifest(#[from] crate::dataset::manifest::ManifestError),
    #[error(transparent)]
    Samples(#[from] super::data::DataError),
    /// The training features' covariance could not be inverted.
    #[error("out-of-distribution statistics: {0}")]
    Ood(String),
}

/// One depth of the out-of-distribution score: `scale · mean_j((f − mean) · P)_j (f − mean)_j`
/// for the `[d]` channel statistics `f` of that encoder layer ([`MtlNet::stage_stats`]).
#[derive(Debug, Clone)]
pub struct OodLayer {
    /// `[d]` mean of the training images' features.
    pub mean: Vec<f32>,
    /// `[d · d]` row-major inverse of their shrunk covariance.
    pub precision: Vec<f32>,
    /// `1 / (depths · median training distance)`, so a typical training image scores about 1.
    pub scale: f32,
}

/// The out-of-distribution score's parameters, one [`OodLayer`] per entry of [`OOD_LAYERS`].
#[derive(Debug, Clone)]
pub struct OodStats {
    pub layers: Vec<OodLayer>,
}

/// Shrinkage of the covariance towards its mean variance: `C + λ·tr(C)/d · I`.
pub const OOD_SHRINKAGE: f64 = 1e-3;

/// Fit [`OodStats`] from per-layer features of the training images (`features[l]` = one `[d]`
/// vector per image, as [`MtlNet::stage_stats`] gives them). Errors when there are fewer than two
/// images or a covariance is not positive definite even after shrinkage.
pub fn fit_ood(features: &[Vec<Vec<f32>>]) -> Result<OodStats, ExportError> {
    use nalgebra::{DMatrix, DVector};
    let depths = features.len() as f64;
    let mut layers = Vec::new();
    for (l, rows) in features.iter().enumerate() {
        let n = rows.len();
        if n < 2 {
            return Err(ExportError::Ood(format!("{n} training images (need 2)")));
        }
        let d = rows[0].len();
        let x = DMatrix::<f64>::from_fn(n, d, |i, j| rows[i][j] as f64);
        let mean: DVector<f64> = x.row_mean().transpose();
        let centred = DMatrix::<f64>::from_fn(n, d, |i, j| x[(i, j)] - mean[j]);
        let mut cov = centred.transpose() * &centred / (n as f64 - 1.0);
        let ridge = OOD_SHRINKAGE * cov.trace() / d as f64;
        for j in 0..d {
            cov[(j, j)] += ridge.max(1e-12);
        }
        let precision = cov
            .cholesky()
            .ok_or_else(|| {
                ExportError::Ood(format!("layer {l}: covariance not positive definite"))
            })?
            .inverse();
        let mut dist: Vec<f64> = (0..n)
            .map(|i| {
                let c = centred.row(i).transpose();
                (c.transpose() * &precision * &c)[(0, 0)] / d as f64
            })
            .collect();
        dist.sort_by(f64::total_cmp);
        let median = dist[n / 2].max(1e-12);
        layers.push(OodLayer {
            mean: mean.iter().map(|&v| v as f32).collect(),
            precision: precision.transpose().iter().map(|&v| v as f32).collect(),
            scale: (1.0 / (depths * median)) as f32,
        });
    }
    Ok(OodStats { layers })
}

struct Graph {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    n: usize,
}

fn floats<B: Backend, const D: usize>(
    t: Tensor<B, D>,
) -> Result<(Vec<usize>, Vec<f32>), ExportError> {
    let dims = t.dims().to_vec();
    let v = t
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| ExportError::Data(format!("{e:?}")))?;
    Ok((dims, v))
}

fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

impl Graph {
    fn name(&mut self, base: &str) -> String {
        self.n += 1;
        format!("{base}_{}", self.n)
    }

    fn init(&mut self, base: &str, dims: &[usize], data: &[f32]) -> String {
        let name = self.name(base);
        self.inits.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// Add a node; `out` = Some(name) for graph outputs, else a fresh name. Returns the output name.
    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        out: Option<&str>,
        attrs: Vec<pb::AttributeProto>,
    ) -> String {
        let o = out
            .map(String::from)
            .unwrap_or_else(|| self.name(&op.to_lowercase()));
        let name = self.name(op);
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![o.clone()],
            name,
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
        o
    }

    /// Fold BatchNorm into a conv weight whose output channel is axis `axis` (0: Conv, 1: ConvTranspose).
    fn folded<B: Backend>(
        &mut self,
        weight: Tensor<B, 4>,
        bn: &burn::nn::BatchNorm<B>,
        axis: usize,
    ) -> Result<(String, String), ExportError> {
        let (dims, mut w) = floats(weight)?;
        let (_, gamma) = floats(bn.gamma.val())?;
        let (_, beta) = floats(bn.beta.val())?;
        let (_, mean) = floats(bn.running_mean.value())?;
        let (_, var) = floats(bn.running_var.value())?;
        let scale: Vec<f32> = gamma
            .iter()
            .zip(&var)
            .map(|(g, v)| g / (v + bn.epsilon as f32).sqrt())
            .collect();
        let inner: usize = dims[2] * dims[3];
        for (i, x) in w.iter_mut().enumerate() {
            let c = if axis == 0 {
                i / (dims[1] * inner)
            } else {
                (i / inner) % dims[1]
            };
            *x *= scale[c];
        }
        let bias: Vec<f32> = (0..scale.len())
            .map(|c| beta[c] - mean[c] * scale[c])
            .collect();
        let wn = self.init("w", &dims, &w);
        let bn_ = self.init("b", &[bias.len()], &bias);
        Ok((wn, bn_))
    }

    fn conv_bn<B: Backend>(&mut self, x: &str, m: &ConvBn<B>) -> Result<String, ExportError> {
        let (w, b) = self.folded(m.conv.weight.val(), &m.bn, 0)?;
        let k = m.conv.kernel_size;
        let s = m.conv.stride;
        let p = if k[0] == 3 { 1 } else { 0 };
        let y = self.node(
            "Conv",
            &[x, &w, &b],
            None,
            vec![
                attr_ints("kernel_shape", &[k[0] as i64, k[1] as i64]),
                attr_ints("strides", &[s[0] as i64, s[1] as i64]),
                attr_ints("pads", &[p, p, p, p]),
            ],
        );
        Ok(self.node("Relu", &[&y], None, vec![]))
    }

    fn up_bn<B: Backend>(&mut self, x: &str, m: &UpBn<B>) -> Result<String, ExportError> {
        let (w, b) = self.folded(m.up.weight.val(), &m.bn, 1)?;
        let y = self.node(
            "ConvTranspose",
            &[x, &w, &b],
            None,
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
            ],
        );
        Ok(self.node("Relu", &[&y], None, vec![]))
    }

    fn linear<B: Backend>(
        &mut self,
        x: &str,
        l: &burn::nn::Linear<B>,
    ) -> Result<String, ExportError> {
        // Burn stores Linear weights as [d_in, d_out]: Gemm with transB = 0.
        let (dims, w) = floats(l.weight.val())?;
        let wn = self.init("gemm_w", &dims, &w);
        let b = match &l.bias {
            Some(b) => floats(b.val())?.1,
            None => vec![0.0; dims[1]],
        };
        let bn = self.init("gemm_b", &[b.len()], &b);
        Ok(self.node("Gemm", &[x, &wn, &bn], None, vec![attr_int("transB", 0)]))
    }

    fn head<B: Backend>(&mut self, x: &str, h: &Head<B>) -> Result<String, ExportError> {
        let x = match &h.hidden {
            Some(l) => {
                let y = self.linear(x, l)?;
                self.node("Relu", &[&y], None, vec![])
            }
            None => x.to_string(),
        };
        self.linear(&x, &h.out)
    }

    /// One depth of the out-of-distribution score ([`OodLayer`]) on the activation `x`
    /// `[N, C, h, w]`: mean and standard deviation per channel → `[N, 2C]` → centred → Gemm with
    /// the precision matrix (Gemm stays float in the int8 export) → mean of the product → × scale.
    fn ood_depth(&mut self, x: &str, l: &OodLayer) -> Result<String, ExportError> {
        let d = l.mean.len();
        if l.precision.len() != d * d {
            return Err(ExportError::Ood(format!(
                "precision has {} values for {d} features",
                l.precision.len()
            )));
        }
        let m = self.node("GlobalAveragePool", &[x], None, vec![]);
        let xx = self.node("Mul", &[x, x], None, vec![]);
        let m2 = self.node("GlobalAveragePool", &[&xx], None, vec![]);
        let mm = self.node("Mul", &[&m, &m], None, vec![]);
        let var = self.node("Sub", &[&m2, &mm], None, vec![]);
        let var = self.node("Relu", &[&var], None, vec![]);
        let sd = self.node("Sqrt", &[&var], None, vec![]);
        let stats = self.node("Concat", &[&m, &sd], None, vec![attr_int("axis", 1)]);
        let f = self.node("Flatten", &[&stats], None, vec![attr_int("axis", 1)]);
        let mean = self.init("ood_mean", &[d], &l.mean);
        let centred = self.node("Sub", &[&f, &mean], None, vec![]);
        let p = self.init("ood_precision", &[d, d], &l.precision);
        let y = self.node("Gemm", &[&centred, &p], None, vec![]);
        let prod = self.node("Mul", &[&y, &centred], None, vec![]);
        let avg = self.node(
            "ReduceMean",
            &[&prod],
            None,
            vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)],
        );
        let scale = self.init("ood_scale", &[], &[l.scale]);
        Ok(self.node("Mul", &[&avg, &scale], None, vec![]))
    }

    fn conv1x1<B: Backend>(
        &mut self,
        x: &str,
        c: &burn::nn::conv::Conv2d<B>,
    ) -> Result<String, ExportError> {
        let (dims, w) = floats(c.weight.val())?;
        let wn = self.init("w", &dims, &w);
        let b = match &c.bias {
            Some(b) => floats(b.val())?.1,
            None => vec![0.0; dims[0]],
        };
        let bn = self.init("b", &[b.len()], &b);
        Ok(self.node(
            "Conv",
            &[x, &wn, &bn],
            None,
            vec![attr_ints("kernel_shape", &[1, 1])],
        ))
    }
}

fn value_info(name: &str, dims: &[Option<usize>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(v) => dimension::Value::DimValue(*v as i64),
                                None => dimension::Value::DimParam("N".into()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Build the ONNX model of `net` with `meta` as `mammo.*` metadata.
pub fn to_onnx<B: Backend>(
    net: &MtlNet<B>,
    meta: &ModelMeta,
    ood: Option<&OodStats>,
) -> Result<pb::ModelProto, ExportError> {
    to_onnx_ensemble(&[(net, ood)], meta)
}

/// Build the ONNX model of an ensemble: every member network reads the one `image` input and
/// each output of the contract is the members' mean (ONNX `Mean`; `ood_score` and `recon_error`
/// too: the mean of the members' scores). One member gives the plain network's graph. The
/// members must share the input size and the class lists (`meta`); all or none have `ood`.
pub fn to_onnx_ensemble<B: Backend>(
    members: &[(&MtlNet<B>, Option<&OodStats>)],
    meta: &ModelMeta,
) -> Result<pb::ModelProto, ExportError> {
    let with_ood = members.first().is_some_and(|(_, o)| o.is_some());
    if members.is_empty() || members.iter().any(|(_, o)| o.is_some() != with_ood) {
        return Err(ExportError::Ood(
            "an ensemble needs at least one member, and ood statistics for all or none".into(),
        ));
    }
    if with_ood != meta.ood_threshold.is_some() {
        return Err(ExportError::Ood(
            "the ood_score output and mammo.ood_threshold come together".into(),
        ));
    }
    let mut g = Graph {
        nodes: vec![],
        inits: vec![],
        n: 0,
    };
    let (hh, ww) = (meta.input_height, meta.input_width);
    let (h, w) = (hh / 4, ww / 4);
    let target = g.node(
        "AveragePool",
        &["image"],
        None,
        vec![
            attr_ints("kernel_shape", &[4, 4]),
            attr_ints("strides", &[4, 4]),
        ],
    );
    let single = members.len() == 1;
    for (k, (net, ood)) in members.iter().enumerate() {
        let name = |n: &str| {
            if single {
                n.to_string()
            } else {
                format!("member{k}_{n}")
            }
        };
        member_graph(&mut g, net, *ood, &target, &name)?;
    }
    // the contract's outputs in order, `ood_score` last when present
    let ood = with_ood.then_some(OOD_OUTPUT);
    if !single {
        for out in crate::model::contract::OUTPUTS.iter().copied().chain(ood) {
            let inputs: Vec<String> = (0..members.len())
                .map(|k| format!("member{k}_{out}"))
                .collect();
            let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            g.node("Mean", &refs, Some(out), vec![]);
        }
    }

    let v = meta.vendor_classes.len();
    let mut outputs = vec![
        value_info("cancer", &[None, Some(1)]),
        value_info("normal", &[None, Some(1)]),
        value_info("density", &[None, Some(4)]),
        value_info("percent_density", &[None, Some(1)]),
        value_info("vendor", &[None, Some(v)]),
        value_info("view", &[None, Some(2)]),
        value_info("dense_mask", &[None, Some(1), Some(h), Some(w)]),
        value_info("reconstruction", &[None, Some(1), Some(h), Some(w)]),
        value_info("recon_error", &[None, Some(1)]),
    ];
    if with_ood {
        outputs.push(value_info(OOD_OUTPUT, &[None, Some(1)]));
    }
    Ok(pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "mammo-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "mammo-edge multi-task CNN. Intended use: {}",
            meta.intended_use
        ),
        graph: Some(pb::GraphProto {
            name: meta.model_name.clone(),
            node: g.nodes,
            initializer: g.inits,
            input: vec![value_info("image", &[None, Some(1), Some(hh), Some(ww)])],
            output: outputs,
            ..Default::default()
        }),
        metadata_props: meta
            .to_props()
            .into_iter()
            .map(|(key, value)| pb::StringStringEntryProto { key, value })
            .collect(),
        ..Default::default()
    })
}

/// One network's nodes, from the graph input `image` (and `target`, its 4×4 average pool) to
/// its outputs, named by `name` (the contract's names for a single network).
fn member_graph<B: Backend>(
    g: &mut Graph,
    net: &MtlNet<B>,
    ood: Option<&OodStats>,
    target: &str,
    name: &dyn Fn(&str) -> String,
) -> Result<(), ExportError> {
    let mut f = g.conv_bn("image", &net.stem)?;
    let mut depth_scores = Vec::new();
    for (i, layer) in net.encoder.iter().enumerate() {
        f = g.conv_bn(&f, layer)?;
        if let (Some(o), Some(k)) = (ood, OOD_LAYERS.iter().position(|&l| l == i)) {
            let l = o.layers.get(k).ok_or_else(|| {
                ExportError::Ood(format!(
                    "{} layers of statistics, need {}",
                    o.layers.len(),
                    OOD_LAYERS.len()
                ))
            })?;
            depth_scores.push(g.ood_depth(&f, l)?);
        }
    }
    if ood.is_some() {
        let mut total = depth_scores[0].clone();
        for s in &depth_scores[1..] {
            total = g.node("Add", &[&total, s], None, vec![]);
        }
        g.node(
            "Identity",
            &[&total],
            Some(name(OOD_OUTPUT).as_str()),
            vec![],
        );
    }
    let gap = g.node("GlobalAveragePool", &[&f], None, vec![]);
    let pooled = g.node("Flatten", &[&gap], None, vec![attr_int("axis", 1)]);
    let z = g.head(&pooled, &net.cancer)?;
    g.node("Sigmoid", &[&z], Some(name("cancer").as_str()), vec![]);
    let z = g.head(&pooled, &net.normal)?;
    g.node("Sigmoid", &[&z], Some(name("normal").as_str()), vec![]);
    let z = g.head(&pooled, &net.density)?;
    g.node(
        "Softmax",
        &[&z],
        Some(name("density").as_str()),
        vec![attr_int("axis", 1)],
    );
    let z = g.head(&pooled, &net.percent)?;
    let p = g.node("Sigmoid", &[&z], None, vec![]);
    let hundred = g.init("hundred", &[], &[100.0]);
    g.node(
        "Mul",
        &[&p, &hundred],
        Some(name("percent_density").as_str()),
        vec![],
    );
    let z = g.head(&pooled, &net.vendor)?;
    g.node(
        "Softmax",
        &[&z],
        Some(name("vendor").as_str()),
        vec![attr_int("axis", 1)],
    );
    let z = g.head(&pooled, &net.view)?;
    g.node(
        "Softmax",
        &[&z],
        Some(name("view").as_str()),
        vec![attr_int("axis", 1)],
    );
    let mut d = f;
    for layer in &net.decoder {
        d = g.up_bn(&d, layer)?;
    }
    let m = g.conv1x1(&d, &net.mask)?;
    g.node("Sigmoid", &[&m], Some(name("dense_mask").as_str()), vec![]);
    let r = g.conv1x1(&d, &net.recon)?;
    let recon = g.node(
        "Identity",
        &[&r],
        Some(name("reconstruction").as_str()),
        vec![],
    );
    let diff = g.node("Sub", &[&recon, target], None, vec![]);
    let sq = g.node("Mul", &[&diff, &diff], None, vec![]);
    let mean = g.node(
        "ReduceMean",
        &[&sq],
        None,
        vec![attr_ints("axes", &[1, 2, 3]), attr_int("keepdims", 1)],
    );
    g.node(
        "Flatten",
        &[&mean],
        Some(name("recon_error").as_str()),
        vec![attr_int("axis", 1)],
    );
    Ok(())
}

/// Export to `path` (no `ood_score` output).
pub fn export<B: Backend>(
    net: &MtlNet<B>,
    meta: &ModelMeta,
    path: &Path,
) -> Result<(), ExportError> {
    export_with(net, meta, None, path)
}

/// Export to `path`, with the `ood_score` output when `ood` is given (`meta.ood_threshold` must
/// then be set).
pub fn export_with<B: Backend>(
    net: &MtlNet<B>,
    meta: &ModelMeta,
    ood: Option<&OodStats>,
    path: &Path,
) -> Result<(), ExportError> {
    let proto = to_onnx(net, meta, ood)?;
    std::fs::write(path, proto.encode_to_vec()).map_err(|e| ExportError::Write {
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

/// Metadata of a model trained with `cfg`. Thresholds: the cancer operating point (probability)
/// and the validation sensitivity it was chosen at; the `recon_error` out-of-distribution threshold.
#[allow(clippy::too_many_arguments)]
pub fn meta_for(
    cfg: &super::fit::FitConfig,
    name: &str,
    version: &str,
    intended_use: &str,
    training_data: &str,
    cancer_threshold: f32,
    sensitivity: f32,
    recon_error_threshold: f32,
) -> ModelMeta {
    ModelMeta {
        schema_version: crate::model::contract::SCHEMA_VERSION,
        model_name: name.into(),
        model_version: version.into(),
        input_height: cfg.model.height,
        input_width: cfg.model.width,
        mean: cfg.mean,
        std: cfg.std,
        preprocess_version: crate::ingest::preprocess::PREPROCESS_VERSION,
        standardize: cfg.standardize,
        density_classes: ["A", "B", "C", "D"].map(String::from).to_vec(),
        vendor_classes: cfg.model.source_classes(),
        view_classes: vec!["CC".into(), "MLO".into()],
        intended_use: intended_use.into(),
        training_data: training_data.into(),
        // the commit the trainer was built from (build.rs); MAMMO_GIT_HASH at run time overrides
        git_hash: std::env::var("MAMMO_GIT_HASH")
            .ok()
            .or(option_env!("MAMMO_GIT_HASH").map(String::from))
            .unwrap_or_else(|| "unknown".into()),
        config: serde_json::to_string(cfg).unwrap_or_default(),
        seed: cfg.seed,
        cancer_threshold,
        cancer_threshold_sensitivity: sensitivity,
        recon_error_threshold,
        ood_threshold: None,
        quantization: "float32".into(),
        drift_reference: None,
    }
}

/// Operating points from validation predictions: the cancer probability threshold reaching
/// `sensitivity` on the positives (0.5 when there is no positive), and the 99th percentile of the
/// reconstruction error (the out-of-distribution threshold).
pub fn thresholds(cancer: &[(f64, bool)], recon_error: &[f64], sensitivity: f64) -> (f32, f32) {
    let mut pos: Vec<f64> = cancer.iter().filter(|(_, l)| *l).map(|(s, _)| *s).collect();
    pos.sort_by(|a, b| b.total_cmp(a));
    let cancer_thr = if pos.is_empty() {
        0.5
    } else {
        let k = ((sensitivity * pos.len() as f64).ceil() as usize).clamp(1, pos.len());
        pos[k - 1]
    };
    let mut e = recon_error.to_vec();
    e.sort_by(f64::total_cmp);
    let recon_thr = if e.is_empty() {
        f64::INFINITY
    } else {
        e[((0.99 * (e.len() - 1) as f64).round() as usize).min(e.len() - 1)]
    };
    (cancer_thr as f32, recon_thr as f32)
}

/// Replace the `mammo.*` entries of the ONNX file at `path` by `meta` (other entries, e.g. those
/// of other tools, are kept) and write the file again.
pub fn write_meta(path: &Path, meta: &ModelMeta) -> Result<(), ExportError> {
    let bytes = std::fs::read(path).map_err(|e| ExportError::Read {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    let mut proto = pb::ModelProto::decode(bytes.as_slice()).map_err(|e| ExportError::Read {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    proto
        .metadata_props
        .retain(|p| !p.key.starts_with("mammo."));
    proto.metadata_props.extend(
        meta.to_props()
            .into_iter()
            .map(|(key, value)| pb::StringStringEntryProto { key, value }),
    );
    let tmp = path.with_extension("onnx.tmp");
    std::fs::write(&tmp, proto.encode_to_vec())
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| ExportError::Write {
            path: path.display().to_string(),
            detail: e.to_string(),
        })
}

/// The operating thresholds set from validation images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Cancer probability at the chosen sensitivity.
    pub cancer: f32,
    /// 99th percentile of `recon_error`.
    pub recon_error: f32,
    /// 99th percentile of `ood_score`, when the model has that output.
    pub ood: Option<f32>,
}

/// 99th percentile (nearest rank on the sorted values); infinity when empty.
fn p99(v: &[f64]) -> f32 {
    let mut e = v.to_vec();
    e.sort_by(f64::total_cmp);
    if e.is_empty() {
        return f32::INFINITY;
    }
    e[((0.99 * (e.len() - 1) as f64).round() as usize).min(e.len() - 1)] as f32
}

/// Set the operating thresholds of the model file at `path` from what tract computes on that
/// very file (the daemon's runner) for `samples` (validation images): the cancer threshold at
/// `sensitivity`, the 99th percentile of `recon_error` ([`thresholds`]) and, when the model has
/// the `ood_score` output, its 99th percentile; and the drift monitor's reference of the same
/// outputs per source (`mammo.drift_reference`). Returns the thresholds.
pub fn calibrate_thresholds(
    path: &Path,
    samples: &[super::data::Sample],
    sensitivity: f64,
) -> Result<Thresholds, ExportError> {
    let runner = crate::model::ModelRunner::load(path)?;
    let mut scored = Vec::new();
    let mut recon = Vec::new();
    let mut ood = Vec::new();
    let mut outputs = Vec::with_capacity(samples.len());
    for s in samples {
        let o = runner.run(&s.input)?;
        recon.push(o.recon_error as f64);
        if let Some(v) = o.ood_score {
            ood.push(v as f64);
        }
        if let Some(l) = s.labels.cancer {
            scored.push((o.cancer as f64, l));
        }
        outputs.push((s.labels.source.clone().unwrap_or_default(), o));
    }
    if !scored.iter().any(|(_, l)| *l) {
        log::warn!("no cancer-positive validation image: cancer threshold left at 0.5");
    }
    let (cancer, recon_thr) = thresholds(&scored, &recon, sensitivity);
    let t = Thresholds {
        cancer,
        recon_error: recon_thr,
        ood: runner.meta.ood_threshold.map(|_| p99(&ood)),
    };
    let mut meta = runner.meta.clone();
    meta.cancer_threshold = cancer;
    meta.cancer_threshold_sensitivity = sensitivity as f32;
    meta.recon_error_threshold = recon_thr;
    meta.ood_threshold = t.ood;
    // the drift monitor's reference: these outputs with the thresholds just set
    let observed: Vec<_> = outputs
        .iter()
        .map(|(src, o)| (src.clone(), o.observation(&meta)))
        .collect();
    meta.drift_reference = crate::model::reference::DriftReference::build(
        &observed,
        &format!(
            "{} validation images, outputs of this file computed by tract",
            samples.len()
        ),
    );
    write_meta(path, &meta)?;
    Ok(t)
}

/// Write the drift monitor's reference (`mammo.drift_reference`) into the model file at
/// `manifest_path`'s `split` rows (e.g. validation): tract runs that very file on each image, the
/// thresholds already in it decide the OOD flag; nothing else of the metadata changes. For a
/// model exported before the reference existed. Returns the reference written. Errors: the
/// model, the manifest or its images unreadable, no image in the split (`Data`).
pub fn set_drift_reference(
    path: &Path,
    manifest_path: &Path,
    split: crate::model::labels::Split,
    threads: usize,
) -> Result<crate::model::reference::DriftReference, ExportError> {
    let runner = crate::model::ModelRunner::load(path)?;
    let rows = crate::dataset::manifest::read(manifest_path)?;
    let root = manifest_path.parent().unwrap_or(Path::new("."));
    let picked: Vec<_> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.split == split)
        .collect();
    let samples = super::data::load(root, &picked, &runner.meta.preprocess(), None, threads)?;
    let mut observed = Vec::with_capacity(samples.len());
    for s in &samples {
        let o = runner.run(&s.input)?;
        observed.push((
            s.labels.source.clone().unwrap_or_default(),
            o.observation(&runner.meta),
        ));
    }
    let reference = crate::model::reference::DriftReference::build(
        &observed,
        &format!(
            "{} {} images of {}, outputs of this file computed by tract",
            samples.len(),
            split.as_str(),
            manifest_path
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default()
        ),
    )
    .ok_or_else(|| ExportError::Data(format!("no {} image in the manifest", split.as_str())))?;
    let mut meta = runner.meta.clone();
    meta.drift_reference = Some(reference.clone());
    write_meta(path, &meta)?;
    Ok(reference)
}

/// The [`MtlNet::stage_stats`] features of `samples` (no augmentation), per depth one `[d]`
/// vector per image, computed in batches of 32 on the inference backend.
pub fn stage_features<B: Backend>(
    net: &MtlNet<B>,
    samples: &[super::data::Sample],
    height: usize,
    width: usize,
) -> Result<Vec<Vec<Vec<f32>>>, ExportError> {
    let device = Default::default();
    let mut out: Vec<Vec<Vec<f32>>> = vec![Vec::new(); OOD_LAYERS.len()];
    for chunk in samples.chunks(32) {
        let mut x = Vec::with_capacity(chunk.len() * height * width);
        for s in chunk {
            x.extend_from_slice(&s.input);
        }
        let t = Tensor::<B, 1>::from_floats(x.as_slice(), &device).reshape([
            chunk.len(),
            1,
            height,
            width,
        ]);
        for (l, f) in net.stage_stats(t).into_iter().enumerate() {
            let (dims, v) = floats(f)?;
            out[l].extend(v.chunks(dims[1]).map(|r| r.to_vec()));
        }
    }
    Ok(out)
}

/// Names and policy written into an exported model's metadata.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub name: String,
    pub version: String,
    /// Intended-use statement carried by every result.
    pub intended_use: String,
    /// Description of the training data.
    pub training_data: String,
    /// Validation sensitivity (0–1) at which the cancer operating threshold is chosen.
    pub sensitivity: f64,
}

/// Export the training run in folder `run` (its `fit_config.json` and `best.mpk`) to the ONNX
/// file `out` with the `ood_score` output fitted on the manifest's training rows, then set the
/// thresholds with tract on that file from the `manifest`'s validation rows (training rows when
/// there are none). Several runs make an ensemble ([`to_onnx_ensemble`]): they must share the
/// network shape, source classes and preprocessing (e.g. the same command with other seeds);
/// `mammo.config` is then `{"ensemble": [config, …]}` and `mammo.seed` the first run's. Returns
/// the metadata written.
pub fn export_run(
    runs: &[std::path::PathBuf],
    manifest_path: &Path,
    out: &Path,
    o: &ExportOptions,
) -> Result<ModelMeta, ExportError> {
    use crate::model::labels::Split;
    let first = runs
        .first()
        .ok_or_else(|| ExportError::Data("no run to export".into()))?;
    let cfg = super::fit::read_config(first)?;
    let rows = crate::dataset::manifest::read(manifest_path)?;
    let root = manifest_path.parent().unwrap_or(Path::new("."));
    let pick = |split| -> Vec<_> {
        rows.iter()
            .enumerate()
            .filter(|(_, r)| r.split == split)
            .collect()
    };
    let mut val = pick(Split::Val);
    if val.is_empty() {
        log::warn!(
            "no validation rows in {}: thresholds set on the training rows",
            manifest_path.display()
        );
        val = pick(Split::Train);
    }
    let cache = first.join("cache");
    let samples = super::data::load(root, &val, &cfg.preprocess(), Some(&cache), cfg.threads)?;
    let train = pick(Split::Train);
    let train_samples =
        super::data::load(root, &train, &cfg.preprocess(), Some(&cache), cfg.threads)?;
    let mut nets = Vec::new();
    let mut configs = Vec::new();
    for run in runs {
        let c = super::fit::read_config(run)?;
        if c.model != cfg.model || c.preprocess() != cfg.preprocess() {
            return Err(ExportError::Data(format!(
                "{} and {} differ in network or preprocessing: not one ensemble",
                first.display(),
                run.display()
            )));
        }
        let net = super::fit::load_net(&run.join("best.mpk"), &c.model)?;
        let features = stage_features(&net, &train_samples, cfg.model.height, cfg.model.width)?;
        nets.push((net, fit_ood(&features)?));
        configs.push(c);
    }
    let mut meta = meta_for(
        &cfg,
        &o.name,
        &o.version,
        &o.intended_use,
        &o.training_data,
        0.5,
        o.sensitivity as f32,
        f32::INFINITY,
    );
    if configs.len() > 1 {
        meta.config = serde_json::json!({ "ensemble": configs }).to_string();
    }
    meta.ood_threshold = Some(f32::INFINITY);
    let members: Vec<_> = nets.iter().map(|(n, ood)| (n, Some(ood))).collect();
    let proto = to_onnx_ensemble(&members, &meta)?;
    std::fs::write(out, proto.encode_to_vec()).map_err(|e| ExportError::Write {
        path: out.display().to_string(),
        detail: e.to_string(),
    })?;
    let t = calibrate_thresholds(out, &samples, o.sensitivity)?;
    log::info!(
        "export {} ({} member{}): cancer threshold {:.4} at sensitivity {} on {} validation images (tract), recon_error threshold {:.5}, ood_score threshold {:.3} (features of {} training images)",
        out.display(),
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        t.cancer,
        o.sensitivity,
        samples.len(),
        t.recon_error,
        t.ood.unwrap_or(f32::NAN),
        train_samples.len()
    );
    Ok(crate::model::ModelRunner::load(out)?.meta)
}
