//! `mammo-train export`: write the trained network as ONNX (opset 13) following the model
//! contract, mirroring [`MtlNet::forward`] node by node. Burn has no ONNX export, so the graph is
//! built with tract-onnx's protobuf types (`tract_onnx::pb`) and encoded with prost. BatchNorm is
//! folded into the preceding (transposed) convolution: W' = W·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε).
//! Heads end in Sigmoid / Softmax (probabilities); `recon_error` = mean((reconstruction −
//! AveragePool₄(image))²) is computed in the graph so trainer and daemon cannot drift.

use std::path::Path;

use burn::prelude::*;
use prost::Message;
use thiserror::Error;
use tract_onnx::pb;

use super::model::{ConvBn, Head, MtlNet, UpBn};
use crate::model::contract::ModelMeta;

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
    Manifest(#[from] crate::manifest::ManifestError),
    #[error(transparent)]
    Samples(#[from] super::data::DataError),
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
) -> Result<pb::ModelProto, ExportError> {
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
    let mut f = g.conv_bn("image", &net.stem)?;
    for layer in &net.encoder {
        f = g.conv_bn(&f, layer)?;
    }
    let gap = g.node("GlobalAveragePool", &[&f], None, vec![]);
    let pooled = g.node("Flatten", &[&gap], None, vec![attr_int("axis", 1)]);
    let z = g.head(&pooled, &net.cancer)?;
    g.node("Sigmoid", &[&z], Some("cancer"), vec![]);
    let z = g.head(&pooled, &net.normal)?;
    g.node("Sigmoid", &[&z], Some("normal"), vec![]);
    let z = g.head(&pooled, &net.density)?;
    g.node("Softmax", &[&z], Some("density"), vec![attr_int("axis", 1)]);
    let z = g.head(&pooled, &net.percent)?;
    let p = g.node("Sigmoid", &[&z], None, vec![]);
    let hundred = g.init("hundred", &[], &[100.0]);
    g.node("Mul", &[&p, &hundred], Some("percent_density"), vec![]);
    let z = g.head(&pooled, &net.vendor)?;
    g.node("Softmax", &[&z], Some("vendor"), vec![attr_int("axis", 1)]);
    let z = g.head(&pooled, &net.view)?;
    g.node("Softmax", &[&z], Some("view"), vec![attr_int("axis", 1)]);
    let mut d = f;
    for layer in &net.decoder {
        d = g.up_bn(&d, layer)?;
    }
    let m = g.conv1x1(&d, &net.mask)?;
    g.node("Sigmoid", &[&m], Some("dense_mask"), vec![]);
    let r = g.conv1x1(&d, &net.recon)?;
    let recon = g.node("Identity", &[&r], Some("reconstruction"), vec![]);
    let diff = g.node("Sub", &[&recon, &target], None, vec![]);
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
        Some("recon_error"),
        vec![attr_int("axis", 1)],
    );

    let v = meta.vendor_classes.len();
    let outputs = vec![
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

/// Export to `path`.
pub fn export<B: Backend>(
    net: &MtlNet<B>,
    meta: &ModelMeta,
    path: &Path,
) -> Result<(), ExportError> {
    let proto = to_onnx(net, meta)?;
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
        preprocess_version: crate::preprocess::PREPROCESS_VERSION,
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
        quantization: "float32".into(),
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

/// Set both operating thresholds of the model file at `path` from what tract computes on that
/// very file (the daemon's runner) for `samples` (validation images): the cancer threshold at
/// `sensitivity` and the 99th percentile of `recon_error` ([`thresholds`]). Returns them.
pub fn calibrate_thresholds(
    path: &Path,
    samples: &[super::data::Sample],
    sensitivity: f64,
) -> Result<(f32, f32), ExportError> {
    let runner = crate::model::ModelRunner::load(path)?;
    let mut scored = Vec::new();
    let mut recon = Vec::new();
    for s in samples {
        let o = runner.run(&s.input)?;
        recon.push(o.recon_error as f64);
        if let Some(l) = s.labels.cancer {
            scored.push((o.cancer as f64, l));
        }
    }
    if !scored.iter().any(|(_, l)| *l) {
        log::warn!("no cancer-positive validation image: cancer threshold left at 0.5");
    }
    let (cancer, recon_thr) = thresholds(&scored, &recon, sensitivity);
    let mut meta = runner.meta.clone();
    meta.cancer_threshold = cancer;
    meta.cancer_threshold_sensitivity = sensitivity as f32;
    meta.recon_error_threshold = recon_thr;
    write_meta(path, &meta)?;
    Ok((cancer, recon_thr))
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
/// file `out`, then set both thresholds with tract on that file from the `manifest`'s validation
/// rows (training rows when there are none). Returns the metadata written.
pub fn export_run(
    run: &Path,
    manifest_path: &Path,
    out: &Path,
    o: &ExportOptions,
) -> Result<ModelMeta, ExportError> {
    use crate::labels::Split;
    let cfg = super::fit::read_config(run)?;
    let net = super::fit::load_net(&run.join("best.mpk"), &cfg.model)?;
    let rows = crate::manifest::read(manifest_path)?;
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
    let samples = super::data::load(
        root,
        &val,
        &cfg.preprocess(),
        Some(&run.join("cache")),
        cfg.threads,
    )?;
    let meta = meta_for(
        &cfg,
        &o.name,
        &o.version,
        &o.intended_use,
        &o.training_data,
        0.5,
        o.sensitivity as f32,
        f32::INFINITY,
    );
    export(&net, &meta, out)?;
    let (cancer, recon) = calibrate_thresholds(out, &samples, o.sensitivity)?;
    log::info!(
        "export {}: cancer threshold {cancer:.4} at sensitivity {} on {} validation images (tract), recon_error threshold {recon:.5}",
        out.display(),
        o.sensitivity,
        samples.len()
    );
    Ok(crate::model::ModelRunner::load(out)?.meta)
}
