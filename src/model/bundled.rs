//! The demo model compiled into the binary (`models/mammo-mtl-demo.int8.onnx` and its float32
//! `models/mammo-mtl-demo.onnx`, model 0.3.0, see
//! `models/MODEL_CARD.md`): trained on real research mammograms and phantoms — research use, not
//! for clinical use.

use super::{ContractError, ModelRunner};

/// Bytes of `models/mammo-mtl-demo.int8.onnx`.
pub const DEMO_MODEL_INT8: &[u8] = include_bytes!("../../models/mammo-mtl-demo.int8.onnx");

/// Name under which the bundled model appears in logs and errors.
pub const DEMO_MODEL_NAME: &str = "bundled models/mammo-mtl-demo.int8.onnx";

/// Bytes of `models/mammo-mtl-demo.onnx`, the same model in float32: `infer` and `demo` time
/// both on this CPU and score with the faster (`model::precision`).
pub const DEMO_MODEL_F32: &[u8] = include_bytes!("../../models/mammo-mtl-demo.onnx");

/// Name of the bundled float32 model in logs and errors.
pub const DEMO_MODEL_F32_NAME: &str = "bundled models/mammo-mtl-demo.onnx";

/// Load the bundled demo model (contract checked like any other model).
pub fn demo_model() -> Result<ModelRunner, ContractError> {
    ModelRunner::from_bytes(DEMO_MODEL_INT8, DEMO_MODEL_NAME)
}
