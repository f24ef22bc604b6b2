//! Precision chosen per CPU at start-up: the float32 and the int8 file of one model are timed on
//! this machine (a one-off self-benchmark, a few tens of milliseconds) and the faster one scores.
//! An int8 file is not faster everywhere: tract's int8 kernels need AVX-512 VNNI on x86 or SDOT
//! on ARM, and even then the small demo model measured 2.4× slower in int8 than in float32 on
//! an AVX-512 VNNI Xeon (docs/bench-model.md), 31× on an AVX2 machine (issue 15). The two files
//! must be the same model (name, version, input, preprocessing, classes); otherwise the
//! configured file is used as it is.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{ContractError, ModelRunner};

/// Warm-up and timed passes of the self-benchmark (median of the timed ones).
const WARMUP: usize = 2;
const TIMED: usize = 7;

/// One candidate file, loaded and timed.
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    /// The file's label (path or bundled name).
    pub label: String,
    /// `float32` or the int8 scheme (`mammo.quantization`).
    pub quantization: String,
    /// Median of the timed passes, ms.
    pub median_ms: f64,
}

/// What was chosen and why (for the log and `status/info`).
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Index of the chosen candidate in `timed`.
    pub chosen: usize,
    pub timed: Vec<Timed>,
}

impl std::fmt::Display for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.timed[self.chosen];
        write!(
            f,
            "{} ({}, {:.2} ms per image)",
            c.label, c.quantization, c.median_ms
        )?;
        for (i, t) in self.timed.iter().enumerate() {
            if i != self.chosen {
                write!(
                    f,
                    " chosen over {} ({}, {:.2} ms) on this CPU",
                    t.label, t.quantization, t.median_ms
                )?;
            }
        }
        Ok(())
    }
}

/// The other precision's file beside `path`: `X.int8.onnx` ↔ `X.onnx`. `None` for another name.
pub fn sibling(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let other = if let Some(stem) = name.strip_suffix(".int8.onnx") {
        format!("{stem}.onnx")
    } else {
        format!("{}.int8.onnx", name.strip_suffix(".onnx")?)
    };
    Some(path.with_file_name(other))
}

/// Whether two loaded files are the same model in two precisions: same name, version, input,
/// preprocessing and classes, different quantization.
pub fn same_model(a: &ModelRunner, b: &ModelRunner) -> bool {
    let (a, b) = (&a.meta, &b.meta);
    a.model_name == b.model_name
        && a.model_version == b.model_version
        && a.preprocess() == b.preprocess()
        && a.preprocess_version == b.preprocess_version
        && a.density_classes == b.density_classes
        && a.vendor_classes == b.vendor_classes
        && a.view_classes == b.view_classes
        && a.quantization != b.quantization
}

/// Median time of one forward pass of `runner` on a fixed input (mid-grey breast on a black
/// background), ms. Errors: the runner's.
pub fn time_one(runner: &ModelRunner) -> Result<f64, ContractError> {
    let (h, w) = (runner.meta.input_height, runner.meta.input_width);
    let pre = runner.meta.preprocess();
    let bg = (0.0 - pre.mean) / pre.std;
    let fg = (0.5 - pre.mean) / pre.std;
    let input: Vec<f32> = (0..h * w)
        .map(|i| if i % w < w * 2 / 3 { fg } else { bg })
        .collect();
    let t = pass_times(runner, &input, WARMUP, TIMED)?;
    Ok(t[TIMED / 2])
}

/// `runs` timed forward passes of `runner` on `input` after `warmup` untimed ones, in ms,
/// sorted (also `mammo-edge bench`). Errors: the runner's.
pub fn pass_times(
    runner: &ModelRunner,
    input: &[f32],
    warmup: usize,
    runs: usize,
) -> Result<Vec<f64>, ContractError> {
    for _ in 0..warmup {
        runner.run(input)?;
    }
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t0 = Instant::now();
            runner.run(input).map(|_| t0.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_, _>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t)
}

/// Time the candidates (each already checked against the contract, same model) and return the
/// index of the fastest with the timings. Ties go to the first. Errors: a failed pass.
pub fn choose(candidates: &[(&ModelRunner, String)]) -> Result<Choice, ContractError> {
    let mut timed = Vec::new();
    for (runner, label) in candidates {
        timed.push(Timed {
            label: label.clone(),
            quantization: runner.meta.quantization.clone(),
            median_ms: time_one(runner)?,
        });
    }
    let chosen = (0..timed.len())
        .min_by(|&i, &j| timed[i].median_ms.total_cmp(&timed[j].median_ms))
        .unwrap_or(0);
    Ok(Choice { chosen, timed })
}

/// A loaded file that may score: its runner, label (path or bundled name) and SHA-256.
pub struct Candidate {
    pub runner: ModelRunner,
    pub label: String,
    pub sha256: String,
}

/// Keep the faster of the `configured` file and the `other` precision's file beside it on this
/// CPU. `other`: `None` when there is none; an error (it did not load) or a file that is not the
/// same model ([`same_model`]) is logged as a warning and the configured file kept. Returns the
/// kept candidate and, when both were timed, the [`Choice`] (logged at info). Errors: a failed
/// timing pass.
pub fn faster(
    configured: Candidate,
    other: Option<Result<Candidate, String>>,
) -> Result<(Candidate, Option<Choice>), ContractError> {
    let other = match other {
        None => return Ok((configured, None)),
        Some(Err(e)) => {
            log::warn!(
                "model precision: the other precision's file was refused ({e}); using {}",
                configured.label
            );
            return Ok((configured, None));
        }
        Some(Ok(o)) if !same_model(&configured.runner, &o.runner) => {
            log::warn!(
                "model precision: {} is not the other precision of {} (name, version, input or classes differ); using {}",
                o.label,
                configured.label,
                configured.label
            );
            return Ok((configured, None));
        }
        Some(Ok(o)) => o,
    };
    let choice = choose(&[
        (&configured.runner, configured.label.clone()),
        (&other.runner, other.label.clone()),
    ])?;
    log::info!("model precision: {choice}");
    let kept = if choice.chosen == 0 {
        configured
    } else {
        other
    };
    Ok((kept, Some(choice)))
}

#[cfg(test)]
mod tests {
    use super::sibling;
    use std::path::{Path, PathBuf};

    #[test]
    fn siblings_pair_the_two_precisions() {
        assert_eq!(
            sibling(Path::new("/m/demo.int8.onnx")),
            Some(PathBuf::from("/m/demo.onnx"))
        );
        assert_eq!(
            sibling(Path::new("/m/demo.onnx")),
            Some(PathBuf::from("/m/demo.int8.onnx"))
        );
        assert_eq!(sibling(Path::new("/m/demo.bin")), None);
    }
}
