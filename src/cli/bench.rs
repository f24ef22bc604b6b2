//! `mammo-edge bench`: inference speed of one or more models in tract on this machine, on the
//! same inputs (seeded normal noise of the model's input size), written as a Markdown table with
//! ratios to the first model measured in the same run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::model::{ContractError, ModelRunner};
use crate::synth::SplitMix64;

/// Timing of one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelTiming {
    pub model: PathBuf,
    /// `mammo.quantization` of the model (`float32` or the int8 scheme).
    pub quantization: String,
    pub input: (usize, usize),
    /// One forward pass (all heads), milliseconds: median and 90th percentile over `runs`.
    pub median_ms: f64,
    pub p90_ms: f64,
    pub runs: usize,
    /// Load + optimise + contract check, milliseconds.
    pub load_ms: f64,
}

/// The benchmark's input for `runner`: seeded standard normal noise of its input size, `[H·W]`.
fn noise_input(runner: &ModelRunner) -> Vec<f32> {
    let (h, w) = (runner.meta.input_height, runner.meta.input_width);
    let mut rng = SplitMix64::new(42);
    (0..h * w).map(|_| rng.normal() as f32).collect()
}

/// Where tract's time goes for each model: ms per forward pass by operator kind
/// ([`ModelRunner::profile`]), as a Markdown table per model with the share of the total.
/// Errors: a model that cannot be loaded.
pub fn profile_markdown(models: &[PathBuf], runs: usize) -> Result<String, ContractError> {
    use std::fmt::Write;
    let mut out = String::new();
    for m in models {
        let runner = ModelRunner::load(m)?;
        let input = noise_input(&runner);
        let ops = runner.profile(&input, runs)?;
        let sum: f64 = ops.iter().map(|(_, ms)| ms).sum();
        let _ = writeln!(
            out,
            "\n{} ({}): {sum:.2} ms per pass in its operators\n\n| operator | ms per pass | share |\n|---|---:|---:|",
            m.display(),
            runner.meta.quantization
        );
        for (op, ms) in ops {
            let _ = writeln!(
                out,
                "| {op} | {ms:.3} | {:.1} % |",
                100.0 * ms / sum.max(1e-9)
            );
        }
    }
    Ok(out)
}

/// The matrix products of tract's plan for each model, the kernels tract chose for them on this
/// CPU (e.g. `avx512_mmm_f32_16x12`, `arm64simd_mmm_f32_16x4`, `arm64simd_mmm_i32_8x8`) and their
/// time: a Markdown table per node (ms per pass, share of the pass) and one per kernel. Under
/// `qemu-aarch64 -cpu …` it names the ARM kernels an appliance would run (the times are the
/// emulator's, not the CPU's). Errors: a model that cannot be loaded.
pub fn kernels_markdown(models: &[PathBuf], runs: usize) -> Result<String, ContractError> {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let mut out = String::new();
    for m in models {
        let runner = ModelRunner::load(m)?;
        let input = noise_input(&runner);
        let times: std::collections::HashMap<String, f64> = runner
            .profile_nodes(&input, runs)?
            .into_iter()
            .map(|(name, _, ms)| (name, ms))
            .collect();
        let pass: f64 = times.values().sum();
        let _ = writeln!(
            out,
            "\n{} ({}): matrix products of tract's plan ({pass:.2} ms per pass in all its operators)\n\n| node | inputs → output | output shape | kernels | ms per pass | share |\n|---|---|---|---|---:|---:|",
            m.display(),
            runner.meta.quantization
        );
        let mut by_kernel: BTreeMap<String, (usize, f64)> = BTreeMap::new();
        for op in runner.plan_ops().iter().filter(|o| o.op.contains("MatMul")) {
            let ks = crate::model::runner::kernels(op);
            let ms = times.get(&op.name).copied().unwrap_or(0.0);
            let _ = writeln!(
                out,
                "| {} | {} → {} | {} | {} | {ms:.3} | {:.1} % |",
                op.name,
                op.inputs.join(", "),
                op.output,
                op.shape,
                if ks.is_empty() {
                    "–".into()
                } else {
                    ks.join(", ")
                },
                100.0 * ms / pass.max(1e-9)
            );
            let e = by_kernel
                .entry(if ks.is_empty() {
                    op.op.clone()
                } else {
                    ks.join(" + ")
                })
                .or_default();
            e.0 += 1;
            e.1 += ms;
        }
        let _ = writeln!(
            out,
            "\n| kernel | nodes | ms per pass | share |\n|---|---:|---:|---:|"
        );
        for (k, (n, ms)) in by_kernel {
            let _ = writeln!(
                out,
                "| {k} | {n} | {ms:.3} | {:.1} % |",
                100.0 * ms / pass.max(1e-9)
            );
        }
    }
    Ok(out)
}

/// Time `runs` forward passes of each model (after 3 warm-up passes), one model after the other.
/// Errors: a model that cannot be loaded or refuses the contract.
pub fn bench(models: &[PathBuf], runs: usize) -> Result<Vec<ModelTiming>, ContractError> {
    models.iter().map(|m| bench_one(m, runs.max(1))).collect()
}

fn bench_one(path: &Path, runs: usize) -> Result<ModelTiming, ContractError> {
    let t0 = Instant::now();
    let runner = ModelRunner::load(path)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (h, w) = (runner.meta.input_height, runner.meta.input_width);
    let input = noise_input(&runner);
    let t = crate::model::precision::pass_times(&runner, &input, 3, runs)?;
    Ok(ModelTiming {
        model: path.to_path_buf(),
        quantization: runner.meta.quantization.clone(),
        input: (h, w),
        median_ms: t[t.len() / 2],
        p90_ms: t[((t.len() - 1) as f64 * 0.9).round() as usize],
        runs,
        load_ms,
    })
}

/// Markdown table; the speed-up column is relative to the first model.
pub fn markdown(t: &[ModelTiming]) -> String {
    let mut s = String::from(
        "| model | weights | input | median ms | p90 ms | images/s | speed-up vs first | load ms |\n|---|---|---|---:|---:|---:|---:|---:|\n",
    );
    let base = t.first().map_or(f64::NAN, |b| b.median_ms);
    for m in t {
        s.push_str(&format!(
            "| {} | {} | {}x{} | {:.2} | {:.2} | {:.1} | {:.2}x | {:.0} |\n",
            m.model
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            m.quantization.split(':').next().unwrap_or(""),
            m.input.0,
            m.input.1,
            m.median_ms,
            m.p90_ms,
            1e3 / m.median_ms,
            base / m.median_ms,
            m.load_ms
        ));
    }
    s
}
