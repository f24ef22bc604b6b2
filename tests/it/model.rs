//! The model runner on contract-following ONNX models built by the tests: non-finite outputs are
//! an error, never a result (review #24, issue 13), and `model.threads` runs tract on that many
//! threads with the same outputs (review #22).

use mammo_edge::ingest::dicom::{Category, IngestOptions};
use mammo_edge::model::score::infer_file;
use mammo_edge::model::ModelRunner;

use crate::daemon::harness::{exam, tiny_model_variant, Tiny};
use crate::util::tmp;

/// A model that gives NaN on the blank load-time probe is refused when it is loaded, with the
/// output named, so `run` and `check` stop with "model refused" instead of scoring.
#[test]
fn a_model_with_a_non_finite_output_on_the_load_probe_is_refused() {
    let d = tmp();
    let p = d.path().join("nan.onnx");
    tiny_model_variant(&p, Tiny::NanAlways);
    let e = ModelRunner::load(&p)
        .err()
        .expect("a NaN model must be refused");
    let text = e.to_string();
    assert!(
        text.contains("cancer") && text.contains("not finite"),
        "{text}"
    );
}

/// A model that is finite on the probe but NaN on a real image: the image is an `error` with
/// the reason code `non_finite_output`, never a result with `cancer_flag: false` (a NaN compares
/// false with every threshold, so it would read as "not flagged").
#[test]
fn a_non_finite_output_on_an_image_is_an_error_not_a_routine_result() {
    let d = tmp();
    let p = d.path().join("nan-on-images.onnx");
    tiny_model_variant(&p, Tiny::NanOnImages);
    let runner = ModelRunner::load(&p).expect("finite on the blank probe");
    let files = exam(d.path(), 31);
    let e = match infer_file(&runner, &files[0], &IngestOptions::default()) {
        Ok(r) => panic!("NaN must not give a result: {r:?}"),
        Err(e) => e,
    };
    assert_eq!(e.code(), "non_finite_output", "{e}");
    assert_eq!(e.category(), Category::Error);
    assert!(e.to_string().contains("cancer"), "{e}");
    let plain = d.path().join("plain.onnx");
    tiny_model_variant(&plain, Tiny::Plain);
    let ok = infer_file(
        &ModelRunner::load(&plain).unwrap(),
        &files[0],
        &IngestOptions::default(),
    )
    .expect("the plain model scores the same file");
    assert!(ok.cancer_probability.is_finite());
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

/// `model.threads = 3`: the runner owns a pool of three inference threads (seen in
/// /proc/self/task) and gives the same outputs as one thread; 1 starts no pool.
#[test]
fn model_threads_gives_tract_that_many_threads_and_the_same_outputs() {
    let d = tmp();
    let p = d.path().join("plain.onnx");
    tiny_model_variant(&p, Tiny::Plain);
    let files = exam(d.path(), 32);
    let one = ModelRunner::load(&p).unwrap();
    assert_eq!(one.threads(), 1);
    let three = ModelRunner::load(&p).unwrap().with_threads(3);
    assert_eq!(three.threads(), 3);
    // the pool's threads name themselves once they run: look for up to 2 s
    let t0 = std::time::Instant::now();
    let pool = loop {
        let pool: Vec<String> = thread_names()
            .into_iter()
            .filter(|n| n.starts_with("mammo-infer"))
            .collect();
        if pool.len() >= 3 || t0.elapsed() > std::time::Duration::from_secs(2) {
            break pool;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        pool.len() >= 3,
        "inference threads: {pool:?} of {:?}",
        thread_names()
    );
    let opts = IngestOptions::default();
    for f in &files {
        let a = infer_file(&one, f, &opts).unwrap();
        let b = infer_file(&three, f, &opts).unwrap();
        assert_eq!(a.cancer_probability, b.cancer_probability);
        assert_eq!(a.density_probabilities, b.density_probabilities);
        assert_eq!(a.percent_density, b.percent_density);
    }
}

/// `model.precision = "auto"` (issue 15): with the demo model's float32 file beside its int8
/// file, the daemon's loader times both on this CPU and keeps the faster (the choice names both
/// files with their times, and the kept file's SHA-256 is the one that scores); `file` keeps the
/// configured one; a file beside it that is not the same model (the tiny test model under the
/// demo's name) is ignored and the configured file kept. `infer --precision auto` does the same
/// with the bundled pair.
#[test]
fn precision_auto_keeps_the_faster_of_the_two_files_of_one_model() {
    use mammo_edge::edge::config::{Config, Precision};
    use mammo_edge::edge::daemon::load_model;
    use mammo_edge::ingest::files::sha256_file;
    use mammo_edge::model::bundled;

    let d = tmp();
    let int8 = d.path().join("demo.int8.onnx");
    let f32 = d.path().join("demo.onnx");
    std::fs::write(&int8, bundled::DEMO_MODEL_INT8).unwrap();
    std::fs::write(&f32, bundled::DEMO_MODEL_F32).unwrap();
    let mut config = Config::default();
    config.model.path = int8.clone();
    let m = load_model(&config).unwrap();
    let choice = m.choice.expect("both precisions present: a choice");
    assert_eq!(choice.timed.len(), 2);
    assert_eq!(choice.timed[0].label, int8.display().to_string());
    assert_eq!(choice.timed[1].label, f32.display().to_string());
    assert_eq!(choice.timed[1].quantization, "float32");
    assert_ne!(choice.timed[0].quantization, "float32");
    assert!(choice.timed.iter().all(|t| t.median_ms > 0.0));
    let fastest = if choice.timed[0].median_ms <= choice.timed[1].median_ms {
        0
    } else {
        1
    };
    assert_eq!(choice.chosen, fastest, "{choice}");
    let kept = [&int8, &f32][choice.chosen];
    assert_eq!(m.sha256, sha256_file(kept).unwrap());
    assert_eq!(
        m.runner.meta.quantization,
        choice.timed[choice.chosen].quantization
    );
    assert!(choice.to_string().contains("chosen over"), "{choice}");

    config.model.precision = Precision::File;
    let m = load_model(&config).unwrap();
    assert!(m.choice.is_none());
    assert_eq!(m.sha256, sha256_file(&int8).unwrap());

    // not the same model beside it: ignored
    crate::daemon::harness::tiny_model(&f32);
    config.model.precision = Precision::Auto;
    let m = load_model(&config).unwrap();
    assert!(m.choice.is_none());
    assert_eq!(m.sha256, sha256_file(&int8).unwrap());

    // infer: the bundled pair, the choice logged
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mammo-edge"))
        .args(["infer", "--json"])
        .arg(d.path().join("nothing-here"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("model precision: bundled models/mammo-mtl-demo"),
        "{log}"
    );
}

/// `mammo-edge bench --profile` (issue 15): tract's time per operator kind of the shipped float32
/// model; the convolutions' matrix products are there, the list is sorted, largest first, and
/// the table names the model and every share.
#[test]
fn bench_profile_says_where_tracts_time_goes() {
    let runner = ModelRunner::from_bytes(
        mammo_edge::model::bundled::DEMO_MODEL_F32,
        mammo_edge::model::bundled::DEMO_MODEL_F32_NAME,
    )
    .unwrap();
    let (h, w) = (runner.meta.input_height, runner.meta.input_width);
    let ops = runner.profile(&vec![0.1; h * w], 3).unwrap();
    assert!(ops.iter().any(|(op, _)| op.contains("MatMul")), "{ops:?}");
    assert!(ops.windows(2).all(|p| p[0].1 >= p[1].1), "{ops:?}");
    assert!(ops.iter().map(|(_, ms)| ms).sum::<f64>() > 0.0);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mammo-edge"))
        .args(["bench", "--runs", "3", "--profile"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mammo-mtl-demo.onnx"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("(float32):") && text.contains("| operator | ms per pass | share |"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("| OptMatMul |")),
        "{text}"
    );
}

#[test]
fn bench_kernels_names_the_kernel_of_every_matrix_product() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mammo-edge"))
        .args(["bench", "--runs", "3", "--kernels"])
        .arg(dir.join("mammo-mtl-demo.onnx"))
        .arg(dir.join("mammo-mtl-demo.int8.onnx"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // one node table and one kernel table per model
    let sections: Vec<&str> = text.split(": matrix products of tract's plan").collect();
    assert_eq!(sections.len(), 3, "{text}");
    for (section, want) in [(sections[1], "_mmm_f32_"), (sections[2], "_mmm_i32_")] {
        let nodes: Vec<&str> = section
            .lines()
            .filter(|l| l.starts_with("| ") && l.contains(" → ") && !l.starts_with("| node |"))
            .collect();
        // the network's 7 encoder convolutions at least; every node is a product with its
        // kernel or the packing of a product's operand, each with a share of the pass
        let mut products = 0;
        for l in &nodes {
            let cells: Vec<&str> = l.split(" | ").collect();
            if cells[3] == "–" {
                assert!(cells[0].contains(".pack_"), "no kernel: {l}");
            } else {
                assert!(cells[3].contains("_mmm_"), "not a kernel name: {l}");
                products += 1;
            }
            let share: f64 = cells[5].trim_end_matches(" % |").parse().unwrap();
            assert!((0.0..=100.0).contains(&share), "{l}");
        }
        assert!(products >= 7, "{section}");
        assert!(nodes.iter().any(|l| l.contains(want)), "{want}: {section}");
        let per_kernel = section
            .split("| kernel | nodes | ms per pass | share |")
            .nth(1)
            .unwrap();
        let counted: usize = per_kernel
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("|---"))
            .map(|l| l.split(" | ").nth(1).unwrap().parse::<usize>().unwrap())
            .sum();
        assert_eq!(counted, nodes.len(), "{section}");
    }
}
