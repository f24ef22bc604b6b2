//! Model contract: input `image` f32 `[N, 1, H, W]`; outputs (probabilities, not logits)
//! `cancer [N,1]`, `normal [N,1]`, `density [N,4]` (A..D), `percent_density [N,1]` (0–100 %),
//! `vendor [N,V]`, `view [N,2]` (CC, MLO), `dense_mask [N,1,h,w]` (0–1), `reconstruction
//! [N,1,h,w]`, `recon_error [N,1]`, optionally `ood_score [N,1]`; `metadata_props` with keys prefixed `mammo.` (DESIGN.md,
//! "Model contract"). A model exported elsewhere (e.g. PyTorch) that follows it runs here too.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ingest::preprocess::{PreprocessConfig, Standardize, PREPROCESS_VERSION};
use crate::model::reference::DriftReference;

/// Version of this contract (`mammo.schema_version`).
pub const SCHEMA_VERSION: u32 = 1;

/// Optional output: `ood_score [N,1]`, the out-of-distribution score (feature-space distance to
/// the training images; compared with `mammo.ood_threshold`).
pub const OOD_OUTPUT: &str = "ood_score";

/// Output names, in the order the exporter writes them.
pub const OUTPUTS: [&str; 9] = [
    "cancer",
    "normal",
    "density",
    "percent_density",
    "vendor",
    "view",
    "dense_mask",
    "reconstruction",
    "recon_error",
];

/// Why a model is refused.
#[derive(Debug, Error)]
pub enum ContractError {
    #[error("cannot read model {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("model metadata: {0}")]
    Metadata(String),
    #[error("model contract: {0}")]
    Shape(String),
    #[error("tract: {0}")]
    Tract(String),
    /// An output holds NaN or ±infinity: the model gives no usable result for this input (a NaN
    /// compares false with every threshold, so it must never reach a flag).
    #[error("output {output} is not finite (NaN or infinite): no result for this input")]
    NonFinite { output: &'static str },
}

/// The `mammo.*` metadata of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub schema_version: u32,
    pub model_name: String,
    pub model_version: String,
    /// Input size, pixels.
    pub input_height: usize,
    pub input_width: usize,
    /// Normalisation applied after preprocessing: `(x − mean) / std`.
    pub mean: f32,
    pub std: f32,
    pub preprocess_version: u32,
    /// Per-image intensity standardisation of the breast (`mammo.standardize_intensity`:
    /// `false`, `window` or `true` = window and gamma; absent means `false`).
    pub standardize: Standardize,
    /// Class names of the density (A–D), vendor and view heads.
    pub density_classes: Vec<String>,
    pub vendor_classes: Vec<String>,
    pub view_classes: Vec<String>,
    /// What the model may be used for, e.g. "research only, not for clinical use".
    pub intended_use: String,
    pub training_data: String,
    pub git_hash: String,
    /// Training configuration (JSON) and seed.
    pub config: String,
    pub seed: u64,
    /// Cancer probability at or above which an image/exam is flagged, and the validation
    /// sensitivity it was chosen for.
    pub cancer_threshold: f32,
    pub cancer_threshold_sensitivity: f32,
    /// `recon_error` above which an image is out of distribution (models without `ood_score`).
    pub recon_error_threshold: f32,
    /// `ood_score` above which an image is out of distribution (`mammo.ood_threshold`); `None`
    /// for a model without the optional `ood_score` output, whose flag is then `recon_error`'s.
    pub ood_threshold: Option<f32>,
    /// How the weights are stored: `float32`, or the int8 scheme (`mammo-train quantize`).
    /// Optional key; absent means `float32`.
    pub quantization: String,
    /// Output distributions on the validation images per source, for the drift monitor
    /// (`mammo.drift_reference`, JSON of [`DriftReference`]); optional.
    pub drift_reference: Option<DriftReference>,
}

const P: &str = "mammo.";

impl ModelMeta {
    /// The preprocessing this model expects.
    pub fn preprocess(&self) -> PreprocessConfig {
        PreprocessConfig {
            height: self.input_height,
            width: self.input_width,
            mean: self.mean,
            std: self.std,
            standardize: self.standardize,
            ..Default::default()
        }
    }

    /// As `metadata_props` key/value pairs (lists as JSON arrays).
    pub fn to_props(&self) -> Vec<(String, String)> {
        let j = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_default();
        [
            ("schema_version", self.schema_version.to_string()),
            ("model_name", self.model_name.clone()),
            ("model_version", self.model_version.clone()),
            ("input_height", self.input_height.to_string()),
            ("input_width", self.input_width.to_string()),
            ("mean", self.mean.to_string()),
            ("std", self.std.to_string()),
            ("preprocess_version", self.preprocess_version.to_string()),
            (
                "standardize_intensity",
                self.standardize.as_meta().to_string(),
            ),
            ("classes.density", j(&self.density_classes)),
            ("classes.vendor", j(&self.vendor_classes)),
            ("classes.view", j(&self.view_classes)),
            ("intended_use", self.intended_use.clone()),
            ("training_data", self.training_data.clone()),
            ("git_hash", self.git_hash.clone()),
            ("config", self.config.clone()),
            ("seed", self.seed.to_string()),
            ("cancer_threshold", self.cancer_threshold.to_string()),
            (
                "cancer_threshold_sensitivity",
                self.cancer_threshold_sensitivity.to_string(),
            ),
            (
                "recon_error_threshold",
                self.recon_error_threshold.to_string(),
            ),
            ("quantization", self.quantization.clone()),
        ]
        .into_iter()
        .chain(self.ood_threshold.map(|t| ("ood_threshold", t.to_string())))
        .chain(
            self.drift_reference
                .as_ref()
                .and_then(|r| serde_json::to_string(r).ok())
                .map(|j| ("drift_reference", j)),
        )
        .map(|(k, v)| (format!("{P}{k}"), v))
        .collect()
    }

    /// Parse and check `metadata_props`; the error names the missing or bad key.
    pub fn from_props(props: &HashMap<String, String>) -> Result<ModelMeta, ContractError> {
        let get = |k: &str| {
            props
                .get(&format!("{P}{k}"))
                .cloned()
                .ok_or_else(|| ContractError::Metadata(format!("key {P}{k} is missing")))
        };
        fn num<T: std::str::FromStr>(k: &str, v: String) -> Result<T, ContractError> {
            v.trim()
                .parse()
                .map_err(|_| ContractError::Metadata(format!("key {P}{k} = {v:?} is not a number")))
        }
        let list = |k: &str| -> Result<Vec<String>, ContractError> {
            let v = get(k)?;
            serde_json::from_str(&v).map_err(|_| {
                ContractError::Metadata(format!("key {P}{k} = {v:?} is not a JSON list of strings"))
            })
        };
        let schema_version: u32 = num("schema_version", get("schema_version")?)?;
        if schema_version != SCHEMA_VERSION {
            return Err(ContractError::Metadata(format!(
                "schema version {schema_version} is not understood (this appliance reads {SCHEMA_VERSION})"
            )));
        }
        let preprocess_version: u32 = num("preprocess_version", get("preprocess_version")?)?;
        if preprocess_version != PREPROCESS_VERSION {
            return Err(ContractError::Metadata(format!(
                "preprocessing version {preprocess_version} differs from this appliance's {PREPROCESS_VERSION}"
            )));
        }
        let meta = ModelMeta {
            schema_version,
            model_name: get("model_name")?,
            model_version: get("model_version")?,
            input_height: num("input_height", get("input_height")?)?,
            input_width: num("input_width", get("input_width")?)?,
            mean: num("mean", get("mean")?)?,
            std: num("std", get("std")?)?,
            preprocess_version,
            standardize: match get("standardize_intensity").as_deref() {
                Err(_) => Standardize::Off,
                Ok(v) => [
                    Standardize::Off,
                    Standardize::Window,
                    Standardize::WindowGamma,
                ]
                .into_iter()
                .find(|s| s.as_meta() == v)
                .ok_or_else(|| {
                    ContractError::Metadata(format!(
                        "key {P}standardize_intensity = {v:?} is not false, window or true"
                    ))
                })?,
            },
            density_classes: list("classes.density")?,
            vendor_classes: list("classes.vendor")?,
            view_classes: list("classes.view")?,
            intended_use: get("intended_use")?,
            training_data: get("training_data").unwrap_or_default(),
            git_hash: get("git_hash").unwrap_or_default(),
            config: get("config").unwrap_or_default(),
            seed: get("seed").map(|v| num("seed", v)).unwrap_or(Ok(0))?,
            cancer_threshold: num("cancer_threshold", get("cancer_threshold")?)?,
            cancer_threshold_sensitivity: get("cancer_threshold_sensitivity")
                .map(|v| num("cancer_threshold_sensitivity", v))
                .unwrap_or(Ok(f32::NAN))?,
            recon_error_threshold: num("recon_error_threshold", get("recon_error_threshold")?)?,
            quantization: get("quantization").unwrap_or_else(|_| "float32".into()),
            ood_threshold: get("ood_threshold")
                .ok()
                .map(|v| num("ood_threshold", v))
                .transpose()?,
            drift_reference: match get("drift_reference") {
                Err(_) => None,
                Ok(v) => {
                    let r: DriftReference = serde_json::from_str(&v).map_err(|e| {
                        ContractError::Metadata(format!(
                            "key {P}drift_reference is not a drift reference: {e}"
                        ))
                    })?;
                    r.validate().map_err(|e| {
                        ContractError::Metadata(format!("key {P}drift_reference: {e}"))
                    })?;
                    Some(r)
                }
            },
        };
        if meta.intended_use.trim().is_empty() {
            return Err(ContractError::Metadata(format!(
                "key {P}intended_use is empty"
            )));
        }
        if meta.density_classes.len() != 4
            || meta.view_classes.len() != 2
            || meta.vendor_classes.len() < 2
        {
            return Err(ContractError::Metadata(
                "class lists must have 4 density, 2 view and at least 2 vendor classes".into(),
            ));
        }
        meta.preprocess()
            .validate()
            .map_err(|e| ContractError::Metadata(e.to_string()))?;
        Ok(meta)
    }
}
