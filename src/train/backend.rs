//! The training backends and one place that turns (backend, device, precision) into a concrete
//! Burn backend type: [`dispatch`] runs a [`OnBackend`] job generic over `AutodiffBackend`, so
//! `fit` and `bench-step` share one mapping. Speeds are in docs/bench-train.md.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use burn::tensor::backend::AutodiffBackend;

/// Which Burn backend trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Burn on LibTorch (PyTorch's C++ library, cargo feature `libtorch`): CPU or CUDA. The
    /// default where it is built in: the fastest on both (docs/bench-train.md).
    Libtorch,
    /// Burn Flex: pure Rust, SIMD + rayon over all cores. The default without `libtorch`.
    Flex,
    /// Burn NdArray as the trainer first used it: pure Rust, one thread. For comparison.
    Ndarray,
    /// Burn on Candle (pure Rust; cargo feature `candle`), CPU. For comparison.
    Candle,
    /// Burn's own CUDA backend (CubeCL; cargo feature `cuda`), GPU only.
    BurnCuda,
}

impl Default for BackendKind {
    fn default() -> Self {
        if cfg!(feature = "libtorch") {
            BackendKind::Libtorch
        } else {
            BackendKind::Flex
        }
    }
}

impl BackendKind {
    /// The backend used when none is named: libtorch where built; otherwise flex on the CPU and
    /// burn-cuda on the GPU.
    pub fn default_for(device: Device) -> Self {
        match device {
            Device::Cuda if !cfg!(feature = "libtorch") => BackendKind::BurnCuda,
            _ => BackendKind::default(),
        }
    }

    /// The names `--backend` takes.
    pub const NAMES: [&'static str; 5] = ["libtorch", "flex", "ndarray", "candle", "burn-cuda"];

    /// Parse a `--backend` value.
    pub fn parse(name: &str) -> Result<Self, BackendError> {
        match name {
            "libtorch" => Ok(BackendKind::Libtorch),
            "flex" => Ok(BackendKind::Flex),
            "ndarray" => Ok(BackendKind::Ndarray),
            "candle" => Ok(BackendKind::Candle),
            "burn-cuda" => Ok(BackendKind::BurnCuda),
            other => Err(BackendError::Unknown(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Libtorch => "libtorch",
            BackendKind::Flex => "flex",
            BackendKind::Ndarray => "ndarray",
            BackendKind::Candle => "candle",
            BackendKind::BurnCuda => "burn-cuda",
        }
    }
}

/// Where training runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU (all cores for libtorch and flex).
    #[default]
    Cpu,
    /// The first NVIDIA GPU (libtorch from PyPI's wheel, or burn-cuda).
    Cuda,
}

/// Float type of the whole network during training. Burn 0.21 has no automatic mixed precision
/// (autocast with f32 master weights and loss scaling), so `f16` / `bf16` train the whole network
/// in half precision on the GPU; `bf16` keeps f32's exponent range and needs no loss scaling.
/// Checkpoints and `best.mpk` are always stored in f32, so export is the same for all three.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

/// A combination that cannot train in this build or at all.
#[derive(Debug, Error)]
pub enum BackendError {
    #[error("unknown backend {0:?} (one of libtorch, flex, ndarray, candle, burn-cuda)")]
    Unknown(String),
    #[error(
        "backend {0}: this mammo-train was built without the `{1}` cargo feature \
         (cargo build --release --features {1})"
    )]
    NotBuilt(&'static str, &'static str),
    #[error("backend {backend} does not run on device {device:?}")]
    WrongDevice {
        backend: &'static str,
        device: Device,
    },
    #[error("precision {0:?} needs device cuda: the CPU backends train in f32")]
    HalfOnCpu(Precision),
}

/// Build a module with `init` right after seeding the backend's random generator with `seed`,
/// and draw all its random weights before any other thread of this process draws.
///
/// Burn's backends keep one generator per process (LibTorch's is torch's global one) and Burn
/// initialises parameters lazily, on first use; so a network built in one thread while another
/// thread builds or trains one would take numbers from the other's sequence, and the same seed
/// would stop giving the same weights. Every random initialisation of a network — `fit`,
/// `bench-step`, loading a checkpoint, tests — goes through here.
pub fn seeded<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(
    device: &B::Device,
    seed: u64,
    init: impl FnOnce() -> M,
) -> M {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    B::seed(device, seed);
    let module = init();
    // taking the record initialises every lazy parameter, here, under the lock
    let values = module.clone().into_record();
    module.load_record(values)
}

/// A job that runs on whichever Burn autodiff backend [`dispatch`] picks.
pub trait OnBackend {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Run `job` on the backend type for (backend, device, precision), or say why it cannot run.
pub fn dispatch<J: OnBackend>(
    backend: BackendKind,
    device: Device,
    precision: Precision,
    job: J,
) -> Result<J::Output, BackendError> {
    use burn::backend::Autodiff;
    if device == Device::Cpu && precision != Precision::F32 {
        return Err(BackendError::HalfOnCpu(precision));
    }
    let wrong = || BackendError::WrongDevice {
        backend: backend.name(),
        device,
    };
    match backend {
        BackendKind::Ndarray if device == Device::Cpu => {
            Ok(job.run::<Autodiff<burn::backend::NdArray<f32>>>(Default::default()))
        }
        BackendKind::Flex if device == Device::Cpu => {
            Ok(job.run::<Autodiff<burn::backend::Flex>>(Default::default()))
        }
        BackendKind::Ndarray | BackendKind::Flex => Err(wrong()),
        // burn-candle is deprecated in Burn 0.21 (for burn-flex / burn-tch); kept to measure it
        #[cfg(feature = "candle")]
        #[allow(deprecated)]
        BackendKind::Candle if device == Device::Cpu => {
            Ok(job.run::<Autodiff<burn::backend::Candle<f32, i64>>>(Default::default()))
        }
        #[cfg(feature = "candle")]
        BackendKind::Candle => Err(wrong()),
        #[cfg(not(feature = "candle"))]
        BackendKind::Candle => Err(BackendError::NotBuilt("candle", "candle")),
        #[cfg(feature = "libtorch")]
        BackendKind::Libtorch => {
            use burn::backend::libtorch::LibTorchDevice;
            use burn::backend::LibTorch;
            let dev = match device {
                Device::Cpu => LibTorchDevice::Cpu,
                Device::Cuda => LibTorchDevice::Cuda(0),
            };
            Ok(match precision {
                Precision::F32 => job.run::<Autodiff<LibTorch<f32>>>(dev),
                Precision::F16 => job.run::<Autodiff<LibTorch<burn::tensor::f16>>>(dev),
                Precision::Bf16 => job.run::<Autodiff<LibTorch<burn::tensor::bf16>>>(dev),
            })
        }
        #[cfg(not(feature = "libtorch"))]
        BackendKind::Libtorch => Err(BackendError::NotBuilt("libtorch", "libtorch")),
        #[cfg(feature = "cuda")]
        BackendKind::BurnCuda if device == Device::Cuda => {
            use burn::backend::cuda::CudaDevice;
            use burn::backend::Cuda;
            let dev = CudaDevice::default();
            Ok(match precision {
                Precision::F32 => job.run::<Autodiff<Cuda<f32>>>(dev),
                Precision::F16 => job.run::<Autodiff<Cuda<burn::tensor::f16>>>(dev),
                Precision::Bf16 => job.run::<Autodiff<Cuda<burn::tensor::bf16>>>(dev),
            })
        }
        #[cfg(feature = "cuda")]
        BackendKind::BurnCuda => Err(wrong()),
        #[cfg(not(feature = "cuda"))]
        BackendKind::BurnCuda => Err(BackendError::NotBuilt("burn-cuda", "cuda")),
    }
}
