//! The ONNX model contract (docs/model-contract.md) and its tract runner: what any model the
//! appliance runs must look like — input, outputs, `mammo.*` metadata — checked at load time.

pub mod bundled;
pub mod contract;
pub mod labels;
pub mod precision;
pub mod reference;
pub mod runner;
pub mod score;

pub use contract::{ContractError, ModelMeta, OUTPUTS};
pub use runner::{ModelOutputs, ModelRunner, PlanOp};
