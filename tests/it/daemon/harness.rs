//! Harness of the daemon tests: the tiny contract model, mosquitto on a free loopback port, a
//! real subscriber, and the daemon binary on temporary folders.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mammo_edge::ingest::preprocess::PREPROCESS_VERSION;
use mammo_edge::model::contract::ModelMeta;
use mammo_edge::synth::generator::{generate, SynthConfig};
use prost::Message;
use serde_json::Value;
use tract_onnx::pb;

use crate::util::tmp;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_mammo-edge");
// ---------------------------------------------------------------- the test model

pub(crate) fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub(crate) fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

pub(crate) fn node(
    op: &str,
    inputs: &[&str],
    out: &str,
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        name: format!("{op}_{out}"),
        op_type: op.into(),
        attribute: attrs,
        ..Default::default()
    }
}

pub(crate) fn tensor(name: &str, dims: &[i64], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

pub(crate) fn value_info(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
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
                                Some(v) => dimension::Value::DimValue(*v),
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

/// Intended-use statement of the test model.
pub(crate) const TEST_INTENDED_USE: &str = "test model: research only, not for clinical use";

/// A contract-following ONNX model (opset 13) of 128×80 input: heads are Sigmoid / Softmax of
/// the image mean (f), `dense_mask` = Sigmoid(AveragePool₄), `reconstruction` = AveragePool₄ so
/// `recon_error` = 0; cancer threshold 0.5, OOD threshold 0.1.
pub(crate) fn tiny_model(path: &Path) {
    tiny_model_variant(path, Tiny::Plain)
}

/// Variants of the tiny model for the finiteness checks (review #24, issue 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tiny {
    Plain,
    /// `cancer` = Sigmoid(mean) + 10⁻³⁰ · √(0.01 − (max − mean)): finite on the blank
    /// load-time probe, NaN on any image with contrast.
    NanOnImages,
    /// `cancer` = Sigmoid(f) + √−1: NaN on every input, the load-time probe included.
    NanAlways,
    /// `cancer` = Sigmoid(f) + 10⁻³⁰ · mean(x_steps), x_0 = P·image·Q (2048 × 2048),
    /// x_k+1 = tanh(x_k · W): `steps` products of two 2048 × 2048 matrices (17 GFLOP each), a model
    /// slow on purpose for the time-limit tests (review #11).
    Slow {
        steps: usize,
    },
}

/// The matrices of [`Tiny::Slow`] (none for the other variants): P (2048 × h), Q (w × 2048),
/// W (2048 × 2048), small deterministic values so that tanh does not saturate.
fn slow_weights(variant: Tiny, h: usize, w: usize) -> Vec<pb::TensorProto> {
    if !matches!(variant, Tiny::Slow { .. }) {
        return Vec::new();
    }
    const N: usize = 2048;
    let fill = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * scale)
            .collect()
    };
    vec![
        tensor("slow_p", &[N as i64, h as i64], &fill(N * h, 0.1)),
        tensor("slow_q", &[w as i64, N as i64], &fill(w * N, 0.1)),
        tensor("slow_w", &[N as i64, N as i64], &fill(N * N, 0.05)),
    ]
}

/// [`tiny_model`] with the `cancer` head of `variant`.
pub(crate) fn tiny_model_variant(path: &Path, variant: Tiny) {
    let (h, w) = (128usize, 80usize);
    let vendors = ["hologic", "ge", "siemens", "other"];
    let meta = ModelMeta {
        schema_version: mammo_edge::model::contract::SCHEMA_VERSION,
        model_name: "tiny-test".into(),
        model_version: "0.0.1".into(),
        input_height: h,
        input_width: w,
        mean: 0.2,
        std: 0.25,
        preprocess_version: PREPROCESS_VERSION,
        standardize: mammo_edge::ingest::preprocess::Standardize::Off,
        density_classes: ["A", "B", "C", "D"].map(String::from).to_vec(),
        vendor_classes: vendors.map(String::from).to_vec(),
        view_classes: ["CC", "MLO"].map(String::from).to_vec(),
        intended_use: TEST_INTENDED_USE.into(),
        training_data: "none".into(),
        git_hash: "test".into(),
        config: "{}".into(),
        seed: 0,
        cancer_threshold: 0.5,
        cancer_threshold_sensitivity: 0.9,
        recon_error_threshold: 0.1,
        ood_threshold: None,
        quantization: "float32".into(),
        drift_reference: None,
    };
    let cancer = match variant {
        Tiny::Plain => vec![node("Sigmoid", &["f"], "cancer", vec![])],
        Tiny::NanOnImages => vec![
            node("GlobalMaxPool", &["image"], "gmp", vec![]),
            node("Flatten", &["gmp"], "mx", vec![attr_int("axis", 1)]),
            node("Sub", &["mx", "f"], "spread", vec![]),
            node("Sub", &["c001", "spread"], "slack", vec![]),
            node("Sqrt", &["slack"], "root", vec![]),
            // tract's Sigmoid clamps its input, which turns NaN into a number: NaN · 1e-30
            // added after it keeps the NaN (a product with 0 tract would fold away)
            node("Mul", &["root", "tiny"], "zroot", vec![]),
            node("Sigmoid", &["f"], "cs", vec![]),
            node("Add", &["cs", "zroot"], "cancer", vec![]),
        ],
        Tiny::NanAlways => vec![
            node("Sqrt", &["minus_one"], "nan", vec![]),
            node("Sigmoid", &["f"], "cs", vec![]),
            node("Add", &["cs", "nan"], "cancer", vec![]),
        ],
        Tiny::Slow { steps } => {
            let mut v = vec![
                node("MatMul", &["slow_p", "image"], "x_pi", vec![]),
                node("MatMul", &["x_pi", "slow_q"], "x0", vec![]),
            ];
            for k in 0..steps {
                let (x, m, y) = (format!("x{k}"), format!("m{k}"), format!("x{}", k + 1));
                v.push(node("MatMul", &[&x, "slow_w"], &m, vec![]));
                v.push(node("Tanh", &[&m], &y, vec![]));
            }
            let last = format!("x{steps}");
            v.extend([
                node(
                    "ReduceMean",
                    &[&last],
                    "slow_mean",
                    vec![attr_ints("axes", &[2, 3]), attr_int("keepdims", 0)],
                ),
                node("Mul", &["slow_mean", "tiny"], "slow_tiny", vec![]),
                node("Sigmoid", &["f"], "cs", vec![]),
                node("Add", &["cs", "slow_tiny"], "cancer", vec![]),
            ]);
            v
        }
    };
    let mut nodes = vec![
        node("GlobalAveragePool", &["image"], "gap", vec![]),
        node("Flatten", &["gap"], "f", vec![attr_int("axis", 1)]),
    ];
    nodes.extend(cancer);
    nodes.extend([
        node("Neg", &["f"], "negf", vec![]),
        node("Sigmoid", &["negf"], "normal", vec![]),
        node("MatMul", &["f", "wd"], "dl", vec![]),
        node("Softmax", &["dl"], "density", vec![attr_int("axis", 1)]),
        node("Sigmoid", &["f"], "pd", vec![]),
        node("Mul", &["pd", "hundred"], "percent_density", vec![]),
        node("MatMul", &["f", "wv"], "vl", vec![]),
        node("Softmax", &["vl"], "vendor", vec![attr_int("axis", 1)]),
        node("MatMul", &["f", "ww"], "wl", vec![]),
        node("Softmax", &["wl"], "view", vec![attr_int("axis", 1)]),
        node(
            "AveragePool",
            &["image"],
            "pool",
            vec![
                attr_ints("kernel_shape", &[4, 4]),
                attr_ints("strides", &[4, 4]),
            ],
        ),
        node("Sigmoid", &["pool"], "dense_mask", vec![]),
        node("Identity", &["pool"], "reconstruction", vec![]),
        node("Sub", &["reconstruction", "pool"], "diff", vec![]),
        node("Mul", &["diff", "diff"], "sq", vec![]),
        node(
            "ReduceMean",
            &["sq"],
            "msq",
            vec![attr_ints("axes", &[1, 2, 3]), attr_int("keepdims", 1)],
        ),
        node(
            "Flatten",
            &["msq"],
            "recon_error",
            vec![attr_int("axis", 1)],
        ),
    ]);
    let (mh, mw) = (Some((h / 4) as i64), Some((w / 4) as i64));
    let graph = pb::GraphProto {
        name: "tiny".into(),
        node: nodes,
        initializer: [
            tensor("wd", &[1, 4], &[-1.0, 0.0, 0.5, 1.0]),
            tensor("wv", &[1, 4], &[1.0, 0.5, 0.0, -1.0]),
            tensor("ww", &[1, 2], &[0.5, -0.5]),
            tensor("hundred", &[], &[100.0]),
            tensor("c001", &[], &[0.01]),
            tensor("tiny", &[], &[1e-30]),
            tensor("minus_one", &[], &[-1.0]),
        ]
        .into_iter()
        .chain(slow_weights(variant, h, w))
        .collect(),
        input: vec![value_info(
            "image",
            &[None, Some(1), Some(h as i64), Some(w as i64)],
        )],
        output: vec![
            value_info("cancer", &[None, Some(1)]),
            value_info("normal", &[None, Some(1)]),
            value_info("density", &[None, Some(4)]),
            value_info("percent_density", &[None, Some(1)]),
            value_info("vendor", &[None, Some(vendors.len() as i64)]),
            value_info("view", &[None, Some(2)]),
            value_info("dense_mask", &[None, Some(1), mh, mw]),
            value_info("reconstruction", &[None, Some(1), mh, mw]),
            value_info("recon_error", &[None, Some(1)]),
        ],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "mammo-edge tests".into(),
        graph: Some(graph),
        metadata_props: meta
            .to_props()
            .into_iter()
            .map(|(key, value)| pb::StringStringEntryProto { key, value })
            .collect(),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).expect("write test model");
}

/// The model of these tests: `MAMMO_TEST_MODEL` (e.g. models/mammo-mtl-demo.int8.onnx) when
/// set, else the tiny contract model written into `dir`.
pub(crate) fn test_model(dir: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("MAMMO_TEST_MODEL") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "MAMMO_TEST_MODEL={} is not a file (unset it to use the tiny test model)",
            p.display()
        );
        return p;
    }
    let p = dir.join("tiny.onnx");
    tiny_model(&p);
    p
}

// ---------------------------------------------------------------- broker and subscriber

/// True when the tests run as root (CI): permission tests then run the daemon as `nobody`.
pub(crate) fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn wait_port(port: u16, up: bool) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let open = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if open == up {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("port {port} not {}", if up { "open" } else { "closed" });
}

/// mosquitto started on a configuration file (quiet); the caller waits for its port.
pub(crate) fn mosquitto(conf: &Path) -> Child {
    Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto not runnable (apt-get install mosquitto)")
}

/// mosquitto on 127.0.0.1:`port` with persistence in its own folder (sessions of the
/// subscriber survive a restart). Killed on drop.
pub(crate) struct Broker {
    pub(crate) port: u16,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) child: Option<Child>,
}

impl Broker {
    pub(crate) fn start() -> Broker {
        let mut b = Broker {
            port: free_port(),
            dir: tmp(),
            child: None,
        };
        b.up();
        b
    }

    pub(crate) fn up(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nautosave_interval 1\n",
                self.port,
                self.dir.path().display()
            ),
        )
        .unwrap();
        self.child = Some(mosquitto(&conf));
        wait_port(self.port, true);
    }

    /// SIGTERM (mosquitto saves its persistence file) and wait.
    pub(crate) fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, "TERM");
            let _ = c.wait();
        }
        wait_port(self.port, false);
    }

    pub(crate) fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

/// One received message.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) topic: String,
    pub(crate) payload: String,
}

/// A real MQTT subscriber (rumqttc's blocking client) on `<prefix>/#` at QoS 1 with a
/// persistent session (clean session off, fixed client id): the broker keeps what arrives while
/// it is away. Messages are collected by a thread.
pub(crate) struct Subscriber {
    pub(crate) client: rumqttc::Client,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
    pub(crate) got: Arc<Mutex<Vec<Received>>>,
}

impl Subscriber {
    pub(crate) fn start(
        port: u16,
        prefix: &str,
        id: &str,
        got: Arc<Mutex<Vec<Received>>>,
    ) -> Subscriber {
        use rumqttc::{Event, Outgoing, Packet, QoS};
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(false)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = rumqttc::Client::new(o, 64);
        client
            .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
        let (sink, halt) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for ev in conn.iter() {
                let halted = halt.load(Ordering::SeqCst);
                match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock().unwrap().push(Received {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) if halted => break,
                    Ok(_) => {}
                    Err(_) if halted => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        subscribed
            .recv_timeout(Duration::from_secs(10))
            .expect("no SUBACK from the broker");
        Subscriber {
            client,
            stop,
            thread: Some(thread),
            got,
        }
    }

    pub(crate) fn on(&self, leaf: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.topic.ends_with(&format!("/{leaf}")))
            .map(|r| serde_json::from_str(&r.payload).expect("payload is JSON"))
            .collect()
    }

    pub(crate) fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Wait until `pred` holds (at most `secs`), else panic with what arrived.
    pub(crate) fn wait(&self, secs: u64, what: &str, pred: impl Fn(&Subscriber) -> bool) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            if pred(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let topics: Vec<String> = self.all().into_iter().map(|r| r.topic).collect();
        panic!("timed out after {secs} s waiting for {what}; received topics: {topics:?}");
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.disconnect();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- the daemon

/// A watched folder, a state folder, a config, and the daemon binary.
pub(crate) struct Setup {
    pub(crate) _root: tempfile::TempDir,
    pub(crate) model: PathBuf,
    pub(crate) watch: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) prefix: String,
    pub(crate) log: PathBuf,
}

impl Setup {
    pub(crate) fn new(broker_url: &str, extra: &str) -> Setup {
        let root = tmp();
        let watch = root.path().join("export");
        let state = root.path().join("state");
        std::fs::create_dir_all(&watch).unwrap();
        let model = test_model(root.path());
        let prefix = format!("mammo/test/edge-{}", free_port());
        let config = root.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[watch]\ndirs = [{watch:?}]\nstable_secs = 1\nrescan_secs = 2\n\
                 [state]\ndir = {state:?}\n[model]\npath = {model:?}\n\
                 [ingest]\nfile_timeout_secs = 60\n\
                 [mqtt]\nurl = {broker_url:?}\ntopic_prefix = {prefix:?}\nclient_id = \"edge-{p}\"\n\
                 [exam]\nquiet_secs = 3\n{extra}",
                p = free_port()
            ),
        )
        .unwrap();
        Setup {
            model,
            log: root.path().join("daemon.log"),
            _root: root,
            watch,
            state,
            config,
            prefix,
        }
    }

    pub(crate) fn start(&self) -> Daemon {
        self.start_with(&[])
    }

    /// Start the daemon as an unprivileged user, so file permissions apply to it: as root
    /// (CI) as `nobody` (65534) under `setpriv`, after [`Setup::hand_over`]; as any other user,
    /// as that user.
    pub(crate) fn start_unprivileged(&self) -> Daemon {
        if !is_root() {
            return self.start();
        }
        // the `libtorch` binary links LibTorch from root's Python, which nobody may not read:
        // the default-features build of the same source, which scripts/test-deps.sh leaves
        // beside the target's debug folder (or MAMMO_EDGE_DEFAULT_BIN)
        let bin = std::env::var("MAMMO_EDGE_DEFAULT_BIN").unwrap_or_else(|_| {
            let p = Path::new(BIN)
                .parent()
                .and_then(Path::parent)
                .map(|t| t.join("mammo-edge-default"));
            match p {
                Some(p) if p.is_file() => p.display().to_string(),
                _ => panic!(
                    "as root the permission tests run the daemon as nobody and need a \
                     default-features build at <target>/mammo-edge-default: run \
                     scripts/test-deps.sh first"
                ),
            }
        });
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", &bin]);
        self.spawn(cmd, &[])
    }

    /// Before [`Setup::start_unprivileged`] as root: hand the setup's folders and files to
    /// `nobody`; a no-op for any other user.
    pub(crate) fn hand_over(&self) {
        if !is_root() {
            return;
        }
        let st = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(self._root.path())
            .status()
            .unwrap();
        assert!(st.success());
        let st = Command::new("chmod")
            .arg("755")
            .arg(self._root.path())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Start with extra environment variables; the systemd ones the test process may have
    /// inherited (a CI job run as a unit) are removed first.
    pub(crate) fn start_with(&self, env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        self.spawn(Command::new(BIN), env)
    }

    /// `cmd` (the binary, or a wrapper with the binary as its last argument) with `run --config`,
    /// debug logging into the setup's log file, and `env` after the systemd variables are removed.
    fn spawn(&self, mut cmd: Command, env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env_remove("INVOCATION_ID")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Daemon { child: Some(child) }
    }

    /// `mammo-edge <command> --config <this setup's config> ARGS` run to its end (`replay`,
    /// `purge`: the tools that work on the state folder beside the daemon).
    pub(crate) fn state_tool(&self, command: &str, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg(command)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's state database, once the daemon has created it (a daemon started a moment
    /// ago may not have made its state folder yet).
    pub(crate) fn db(&self) -> rusqlite::Connection {
        let path = self.state.join("state.sqlite");
        let t0 = std::time::Instant::now();
        while !path.exists() && t0.elapsed() < std::time::Duration::from_secs(30) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        rusqlite::Connection::open(path).unwrap()
    }

    /// One number from the state database. A daemon that has just created its state file may
    /// not have made its tables yet (or holds the write lock): such errors are retried for 30 s.
    pub(crate) fn count(&self, sql: &str) -> i64 {
        let t0 = std::time::Instant::now();
        loop {
            match self.db().query_row(sql, [], |r| r.get(0)) {
                Ok(n) => return n,
                Err(e) if t0.elapsed() < std::time::Duration::from_secs(30) => {
                    log_retry(sql, &e);
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("{sql}: {e}"),
            }
        }
    }
}

fn log_retry(sql: &str, e: &rusqlite::Error) {
    eprintln!("state database not ready for {sql:?}: {e}; retrying");
}

pub(crate) struct Daemon {
    pub(crate) child: Option<Child>,
}

impl Daemon {
    /// SIGTERM, and the exit status.
    pub(crate) fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        signal(&c, "TERM");
        c.wait().unwrap()
    }

    pub(crate) fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        signal(&c, "KILL");
        let _ = c.wait();
    }

    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One 4-view phantom exam (scale 0.06) generated in `dir`; returns the DICOM files.
pub(crate) fn exam(dir: &Path, seed: u64) -> Vec<PathBuf> {
    let rows = generate(
        &SynthConfig {
            count: 4,
            seed,
            scale: 0.06,
            threads: 1,
            ..Default::default()
        },
        dir,
    )
    .expect("synth");
    assert_eq!(rows.len(), 4);
    rows.iter().map(|g| dir.join(&g.row.path)).collect()
}

/// Copy into the watched folder as `<name>.part`, then rename (as an exporter does).
pub(crate) fn drop_in(watch: &Path, src: &Path, name: &str) -> PathBuf {
    let part = watch.join(format!("{name}.part"));
    std::fs::copy(src, &part).unwrap();
    let to = watch.join(name);
    std::fs::rename(&part, &to).unwrap();
    to
}

/// PatientName and PatientID of a DICOM file.
/// A data set element as text, trailing NUL padding and spaces removed (panics if absent).
pub(crate) fn element_text(obj: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

pub(crate) fn patient(path: &Path) -> (String, String) {
    let obj = dicom_object::open_file(path).unwrap();
    let get = |t| obj.element(t).unwrap().to_str().unwrap().trim().to_string();
    (
        get(dicom_dictionary_std::tags::PATIENT_NAME),
        get(dicom_dictionary_std::tags::PATIENT_ID),
    )
}

pub(crate) fn schema(name: &str) -> jsonschema::Validator {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/schemas")
        .join(format!("{name}.json"));
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    jsonschema::validator_for(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub(crate) fn assert_valid(v: &jsonschema::Validator, payload: &Value) {
    let errors: Vec<String> = v.iter_errors(payload).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?} in {payload}");
}

pub(crate) fn distinct_result_ids(msgs: &[Value]) -> Vec<String> {
    let mut seen = Vec::new();
    for m in msgs {
        let id = m["result_id"].as_str().unwrap().to_string();
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    seen
}

// ---------------------------------------------------------------- TLS (ops.rs)

/// A test PKI made with the `openssl` CLI (EC P-256): a CA, a server certificate for
/// 127.0.0.1 / localhost, two client certificates, and an unrelated second CA (the "wrong CA").
pub(crate) struct Pki {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) ca: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
    /// A second client certificate of the same CA (for allow-lists that name only the first).
    pub(crate) client2_cert: PathBuf,
    pub(crate) client2_key: PathBuf,
    pub(crate) other_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl CLI not runnable (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    pub(crate) fn generate() -> Pki {
        let dir = tmp();
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, cn) in [("ca", "mammo-test-ca"), ("other-ca", "mammo-other-ca")] {
            let (key, pem, subj) = (
                format!("{name}.key"),
                format!("{name}.pem"),
                format!("/CN={cn}"),
            );
            let mut a = vec!["req", "-x509", "-new"];
            a.extend(ec);
            a.extend([
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "2",
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(d, &a);
        }
        for (name, usage, san) in [
            (
                "server",
                "serverAuth",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
            ),
            ("client", "clientAuth", ""),
            ("client2", "clientAuth", ""),
        ] {
            let (key, csr, pem, ext, subj) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
                format!("/CN=mammo-test-{name}"),
            );
            std::fs::write(
                d.join(&ext),
                format!(
                    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                     extendedKeyUsage={usage}\n{san}"
                ),
            )
            .unwrap();
            let mut a = vec!["req", "-new"];
            a.extend(ec);
            a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(d, &a);
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-set_serial",
                    "2",
                    "-days",
                    "2",
                    "-out",
                    &pem,
                    "-extfile",
                    &ext,
                ],
            );
        }
        // mosquitto started as root drops to its own user: let it read the (test-only) keys
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for f in std::fs::read_dir(d).unwrap() {
            let f = f.unwrap().path();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        Pki {
            ca: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.key"),
            client2_cert: d.join("client2.pem"),
            client2_key: d.join("client2.key"),
            other_ca: d.join("other-ca.pem"),
            _dir: dir,
        }
    }
}

/// mosquitto with a plaintext loopback listener on `broker.port` (for the test's subscriber)
/// and a TLS listener on `tls_port` that requires a client certificate signed by the PKI's CA.
pub(crate) struct TlsBroker {
    pub(crate) broker: Broker,
    pub(crate) tls_port: u16,
}

impl TlsBroker {
    pub(crate) fn start(pki: &Pki) -> TlsBroker {
        let (port, tls_port, dir) = (free_port(), free_port(), tmp());
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\nallow_anonymous true\n\
                 listener {port} 127.0.0.1\n\
                 listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
                 require_certificate true\n",
                pki.ca.display(),
                pki.server_cert.display(),
                pki.server_key.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto not runnable (apt-get install mosquitto)");
        let broker = Broker {
            port,
            dir,
            child: Some(child),
        };
        wait_port(port, true);
        wait_port(tls_port, true);
        TlsBroker { broker, tls_port }
    }

    pub(crate) fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.tls_port)
    }
}

/// Poll `cond` every 100 ms until it holds; after `secs` fail with `what` and the daemon's log.
pub(crate) fn wait_for(secs: u64, what: &str, s: &Setup, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}; daemon log:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A key file (`0123456789abcdef0123456789abcdef`) in its own temporary folder, and a setup
/// with `privacy.uids = "hashed"` under it, `extra` TOML after that (a `[privacy]` table of its
/// own must not appear in `extra`). Keep the folder alive as long as the setup.
pub(crate) fn hashed_setup(broker_url: &str, extra: &str) -> (tempfile::TempDir, PathBuf, Setup) {
    let key = tmp();
    let key_file = key.path().join("uid.key");
    std::fs::write(&key_file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let s = Setup::new(
        broker_url,
        &format!("{extra}[privacy]\nuids = \"hashed\"\nkey_file = {key_file:?}\n"),
    );
    (key, key_file, s)
}
