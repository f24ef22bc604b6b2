//! Runs a contract-conforming ONNX model with tract: load once, check the contract (input, the nine
//! outputs and their shapes, metadata), optimise for a batch of one, then one forward pass per
//! image gives every head.

use std::collections::HashMap;
use std::path::Path;

use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use super::contract::{ContractError, ModelMeta, OOD_OUTPUT, OUTPUTS};

/// All heads for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelOutputs {
    /// Probability, 0–1.
    pub cancer: f32,
    pub normal: f32,
    /// Probabilities of A–D.
    pub density: [f32; 4],
    /// Percent density, 0–100 %.
    pub percent_density: f32,
    /// Probabilities over `ModelMeta::vendor_classes`.
    pub vendor: Vec<f32>,
    /// Probabilities of CC, MLO.
    pub view: [f32; 2],
    /// `[h · w]` dense-tissue probability, and its size (h, w).
    pub dense_mask: Vec<f32>,
    pub mask_size: (usize, usize),
    /// `[h · w]` reconstruction in the normalised input space.
    pub reconstruction: Vec<f32>,
    /// Mean squared reconstruction error (computed in the graph).
    pub recon_error: f32,
    /// The optional `ood_score` output (feature-space distance), when the model has it.
    pub ood_score: Option<f32>,
}

impl ModelOutputs {
    /// The out-of-distribution score and the threshold it is compared with: `ood_score` and
    /// `mammo.ood_threshold` when the model exports them, else `recon_error` and its threshold.
    pub fn ood(&self, meta: &ModelMeta) -> (f32, f32) {
        match (self.ood_score, meta.ood_threshold) {
            (Some(s), Some(t)) => (s, t),
            _ => (self.recon_error, meta.recon_error_threshold),
        }
    }

    /// What the drift monitor keeps of this pass ([`crate::model::reference`]): the cancer
    /// probability, the most probable density class, the percent density, the OOD flag.
    pub fn observation(&self, meta: &ModelMeta) -> crate::model::reference::Observation {
        let (score, threshold) = self.ood(meta);
        crate::model::reference::Observation {
            cancer: self.cancer,
            density: argmax(&self.density),
            percent_density: self.percent_density,
            ood: score > threshold,
        }
    }
}

/// Index of the largest value (the first of equals; 0 when empty).
fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// One node of tract's optimised plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOp {
    /// Node name (from the ONNX graph, with tract's suffixes).
    pub name: String,
    /// Tract operator, e.g. `OptMatMul`, `Conv`.
    pub op: String,
    /// Tract's description of the operator (kernels chosen, packing).
    pub info: String,
    /// Datum type of each input and of the first output, e.g. `F32`, `I8`, `U8`.
    pub inputs: Vec<String>,
    pub output: String,
    /// Shape of the first output, e.g. `1,32,64,40`.
    pub shape: String,
}

/// The kernel names tract chose for a node, e.g. `avx512vnni_mmm_i32_8x8` (from its description).
pub fn kernels(op: &PlanOp) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = op.info.as_str();
    while let Some(i) = rest.find("with [") {
        rest = &rest[i + 6..];
        if let Some(j) = rest.find(']') {
            out.extend(rest[..j].split(',').map(|k| k.trim().to_string()));
            rest = &rest[j..];
        }
    }
    out
}

type Plan = std::sync::Arc<TypedRunnableModel>;

/// A loaded, checked model.
pub struct ModelRunner {
    pub meta: ModelMeta,
    plan: Plan,
    /// Output index of each name of [`OUTPUTS`].
    index: [usize; 9],
    /// Output index of [`OOD_OUTPUT`], when the model has it.
    ood_index: Option<usize>,
    /// Tract's executor for matrix products: single-threaded, or a pool of `threads`.
    executor: Executor,
    threads: usize,
}

fn tract_err(e: impl std::fmt::Display) -> ContractError {
    ContractError::Tract(format!("{e:#}"))
}

impl ModelRunner {
    /// Load `path`, check the contract and optimise. Errors say what does not conform.
    pub fn load(path: &Path) -> Result<ModelRunner, ContractError> {
        let bytes = std::fs::read(path).map_err(|e| ContractError::Read {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Like [`ModelRunner::load`] for a model held in memory (the bundled demo model); `label`
    /// names it in errors.
    pub fn from_bytes(bytes: &[u8], label: &str) -> Result<ModelRunner, ContractError> {
        let onnx = tract_onnx::onnx();
        let mut proto = onnx
            .proto_model_for_read(&mut std::io::Cursor::new(bytes))
            .map_err(|e| ContractError::Read {
                path: label.to_string(),
                detail: format!("{e:#}"),
            })?;
        let props: HashMap<String, String> = proto
            .metadata_props
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        let meta = ModelMeta::from_props(&props)?;
        // Intermediate shape annotations are optional in ONNX and some tools (onnxruntime's
        // quantizer) write them for a fixed batch; tract infers every shape itself.
        if let Some(g) = proto.graph.as_mut() {
            g.value_info.clear();
        }
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| ContractError::Shape("no graph".into()))?;
        let inputs: Vec<&str> = graph
            .input
            .iter()
            .map(|i| i.name.as_str())
            .filter(|n| !graph.initializer.iter().any(|t| t.name == *n))
            .collect();
        if inputs != ["image"] {
            return Err(ContractError::Shape(format!(
                "the model must have one input named \"image\", it has {inputs:?}"
            )));
        }
        let names: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        let mut index = [0usize; 9];
        for (k, want) in OUTPUTS.iter().enumerate() {
            index[k] = names.iter().position(|n| n == want).ok_or_else(|| {
                ContractError::Shape(format!("output {want:?} is missing (outputs: {names:?})"))
            })?;
        }
        let ood_index = names.iter().position(|n| *n == OOD_OUTPUT);
        if ood_index.is_some() != meta.ood_threshold.is_some() {
            return Err(ContractError::Metadata(format!(
                "output {OOD_OUTPUT:?} and key mammo.ood_threshold come together (output {}, key {})",
                if ood_index.is_some() { "present" } else { "absent" },
                if meta.ood_threshold.is_some() { "present" } else { "absent" },
            )));
        }
        let (h, w) = (meta.input_height, meta.input_width);
        let plan = onnx
            .model_for_proto_model(&proto)
            .map_err(tract_err)?
            .with_input_fact(0, f32::fact([1, 1, h, w]).into())
            .map_err(tract_err)?
            .into_optimized()
            .map_err(tract_err)?
            .into_runnable()
            .map_err(tract_err)?;
        let runner = ModelRunner {
            meta,
            plan,
            index,
            ood_index,
            executor: Executor::SingleThread,
            threads: 1,
        };
        // one pass on a blank image checks every output shape against the contract
        let probe = runner.run(&vec![0.0; h * w])?;
        log::info!(
            "model {} {} loaded: input {h}x{w}, decoder {}x{}, {} vendor classes; intended use: {}",
            runner.meta.model_name,
            runner.meta.model_version,
            probe.mask_size.0,
            probe.mask_size.1,
            runner.meta.vendor_classes.len(),
            runner.meta.intended_use
        );
        Ok(runner)
    }

    /// Time spent per operator kind of the optimised plan (e.g. `OptMatMul`, `Im2col`), summed
    /// over its nodes, ms per forward pass, averaged over `runs` passes after one warm-up, on
    /// the calling thread; sorted by time, largest first. Shows where tract's time goes
    /// (`mammo-edge bench --profile`). Errors: tract's.
    pub fn profile(&self, input: &[f32], runs: usize) -> Result<Vec<(String, f64)>, ContractError> {
        let mut total: HashMap<String, f64> = HashMap::new();
        for (_, op, ms) in self.profile_nodes(input, runs)? {
            *total.entry(op).or_default() += ms;
        }
        let mut v: Vec<(String, f64)> = total.into_iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(v)
    }

    /// Time spent in each node of the optimised plan: `(node name, operator, ms per forward
    /// pass)` in evaluation order, averaged over `runs` passes after one warm-up, on the calling
    /// thread (`mammo-edge bench --kernels`). Errors: tract's.
    pub fn profile_nodes(
        &self,
        input: &[f32],
        runs: usize,
    ) -> Result<Vec<(String, String, f64)>, ContractError> {
        let (h, w) = (self.meta.input_height, self.meta.input_width);
        let x: Tensor = tract_ndarray::Array4::from_shape_vec((1, 1, h, w), input.to_vec())
            .map_err(tract_err)?
            .into();
        let runs = runs.max(1);
        let mut total: Vec<(String, String, f64)> = Vec::new();
        for k in 0..=runs {
            let mut state = self.plan.spawn().map_err(tract_err)?;
            let mut i = 0;
            state
                .run_plan_with_eval(tvec!(x.clone().into()), |ctx, op_state, node, inputs| {
                    let t0 = std::time::Instant::now();
                    let r = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                    let ms = t0.elapsed().as_secs_f64() * 1e3 / runs as f64;
                    if k == 0 {
                        total.push((node.name.clone(), node.op.name().to_string(), 0.0));
                    } else if let Some(t) = total.get_mut(i) {
                        t.2 += ms;
                    }
                    i += 1;
                    r
                })
                .map_err(tract_err)?;
        }
        Ok(total)
    }

    /// Tract's optimised plan, one entry per node in evaluation order: what actually runs. Used
    /// to prove that a quantised model runs integer kernels (`mammo-train quantize`).
    pub fn plan_ops(&self) -> Vec<PlanOp> {
        let model = self.plan.model();
        model
            .eval_order()
            .unwrap_or_default()
            .into_iter()
            .map(|id| {
                let node = model.node(id);
                let ty = |o: OutletId| {
                    model
                        .outlet_fact(o)
                        .map(|f| format!("{:?}", f.datum_type))
                        .unwrap_or_default()
                };
                PlanOp {
                    name: node.name.clone(),
                    op: node.op.name().to_string(),
                    info: node.op.info().unwrap_or_default().join("; "),
                    inputs: node.inputs.iter().map(|&o| ty(o)).collect(),
                    output: ty(OutletId::new(id, 0)),
                    shape: model
                        .outlet_fact(OutletId::new(id, 0))
                        .map(|f| {
                            f.shape
                                .iter()
                                .map(|d| d.to_string())
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Run tract's matrix products on `threads` threads (`model.threads`): a pool of that many
    /// threads named `mammo-infer-N`, owned by this runner; 1 (or 0) runs them on the calling
    /// thread. Outputs do not depend on it (tract splits work on whole rows and panels).
    pub fn with_threads(mut self, threads: usize) -> ModelRunner {
        self.threads = threads.max(1);
        self.executor = if self.threads > 1 {
            Executor::multithread_with_name(self.threads, "mammo-infer")
        } else {
            Executor::SingleThread
        };
        self
    }

    /// Threads of tract's matrix products ([`ModelRunner::with_threads`]).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// One forward pass. `input`: the preprocessed, normalised `[H · W]` tensor. Errors: a
    /// wrong input length or output shape, tract's own errors, and [`ContractError::NonFinite`]
    /// when any output holds NaN or ±infinity.
    pub fn run(&self, input: &[f32]) -> Result<ModelOutputs, ContractError> {
        let o = multithread_tract_scope(self.executor.clone(), || self.run_plan(input))?;
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        let heads: [(&'static str, bool); 10] = [
            (OUTPUTS[0], o.cancer.is_finite()),
            (OUTPUTS[1], o.normal.is_finite()),
            (OUTPUTS[2], finite(&o.density)),
            (OUTPUTS[3], o.percent_density.is_finite()),
            (OUTPUTS[4], finite(&o.vendor)),
            (OUTPUTS[5], finite(&o.view)),
            (OUTPUTS[6], finite(&o.dense_mask)),
            (OUTPUTS[7], finite(&o.reconstruction)),
            (OUTPUTS[8], o.recon_error.is_finite()),
            (OOD_OUTPUT, o.ood_score.is_none_or(f32::is_finite)),
        ];
        match heads.iter().find(|(_, ok)| !ok) {
            Some(&(output, _)) => Err(ContractError::NonFinite { output }),
            None => Ok(o),
        }
    }

    fn run_plan(&self, input: &[f32]) -> Result<ModelOutputs, ContractError> {
        let (h, w) = (self.meta.input_height, self.meta.input_width);
        if input.len() != h * w {
            return Err(ContractError::Shape(format!(
                "input has {} values, the model takes {h}x{w}",
                input.len()
            )));
        }
        let x: Tensor = tract_ndarray::Array4::from_shape_vec((1, 1, h, w), input.to_vec())
            .map_err(tract_err)?
            .into();
        let out = self.plan.run(tvec!(x.into())).map_err(tract_err)?;
        let get = |k: usize| -> Result<(Vec<usize>, Vec<f32>), ContractError> {
            let t = &out[self.index[k]];
            let view = t.to_plain_array_view::<f32>().map_err(tract_err)?;
            Ok((view.shape().to_vec(), view.iter().copied().collect()))
        };
        let check = |k: usize, shape: &[usize], want: &[usize]| {
            if shape == want {
                Ok(())
            } else {
                Err(ContractError::Shape(format!(
                    "output {} has shape {shape:?}, the contract says {want:?}",
                    OUTPUTS[k]
                )))
            }
        };
        let v = self.meta.vendor_classes.len();
        let (s, cancer) = get(0)?;
        check(0, &s, &[1, 1])?;
        let (s, normal) = get(1)?;
        check(1, &s, &[1, 1])?;
        let (s, density) = get(2)?;
        check(2, &s, &[1, 4])?;
        let (s, percent) = get(3)?;
        check(3, &s, &[1, 1])?;
        let (s, vendor) = get(4)?;
        check(4, &s, &[1, v])?;
        let (s, view) = get(5)?;
        check(5, &s, &[1, 2])?;
        let (ms, dense_mask) = get(6)?;
        if ms.len() != 4 || ms[0] != 1 || ms[1] != 1 {
            return Err(ContractError::Shape(format!(
                "output dense_mask has shape {ms:?}, the contract says [1, 1, h, w]"
            )));
        }
        let (s, reconstruction) = get(7)?;
        check(7, &s, &ms)?;
        let (s, recon_error) = get(8)?;
        check(8, &s, &[1, 1])?;
        let ood_score = match self.ood_index {
            Some(i) => {
                let t = &out[i];
                let view = t.to_plain_array_view::<f32>().map_err(tract_err)?;
                if view.shape() != [1, 1] {
                    return Err(ContractError::Shape(format!(
                        "output {OOD_OUTPUT} has shape {:?}, the contract says [1, 1]",
                        view.shape()
                    )));
                }
                Some(view.iter().copied().next().unwrap_or(f32::NAN))
            }
            None => None,
        };
        Ok(ModelOutputs {
            cancer: cancer[0],
            normal: normal[0],
            density: [density[0], density[1], density[2], density[3]],
            percent_density: percent[0],
            vendor,
            view: [view[0], view[1]],
            dense_mask,
            mask_size: (ms[2], ms[3]),
            reconstruction,
            recon_error: recon_error[0],
            ood_score,
        })
    }
}
