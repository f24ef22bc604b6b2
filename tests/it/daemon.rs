//! The daemon end to end: the `mammo-edge` binary (`run`, `check`) on a temporary watched folder
//! and state folder, a real mosquitto on loopback and a real subscriber (rumqttc's client);
//! phantom exams from the synth generator, payloads checked against docs/schemas/*.json.
//! The model is `MAMMO_TEST_MODEL` when set, else a tiny ONNX model that follows the contract,
//! built here with tract-onnx's protobuf types (its outputs are simple functions of the image).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mammo_edge::model::contract::ModelMeta;
use mammo_edge::preprocess::PREPROCESS_VERSION;
use mammo_edge::synth::generator::{generate, SynthConfig};
use prost::Message;
use serde_json::Value;
use tract_onnx::pb;

use crate::util::tmp;

const BIN: &str = env!("CARGO_BIN_EXE_mammo-edge");

// ---------------------------------------------------------------- the test model

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

fn node(op: &str, inputs: &[&str], out: &str, attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        name: format!("{op}_{out}"),
        op_type: op.into(),
        attribute: attrs,
        ..Default::default()
    }
}

fn tensor(name: &str, dims: &[i64], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
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
const TEST_INTENDED_USE: &str = "test model: research only, not for clinical use";

/// A contract-following ONNX model (opset 13) of 128×80 input: heads are Sigmoid / Softmax of
/// the image mean (f), `dense_mask` = Sigmoid(AveragePool₄), `reconstruction` = AveragePool₄ so
/// `recon_error` = 0; cancer threshold 0.5, OOD threshold 0.1.
fn tiny_model(path: &Path) {
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
        quantization: "float32".into(),
    };
    let nodes = vec![
        node("GlobalAveragePool", &["image"], "gap", vec![]),
        node("Flatten", &["gap"], "f", vec![attr_int("axis", 1)]),
        node("Sigmoid", &["f"], "cancer", vec![]),
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
    ];
    let (mh, mw) = (Some((h / 4) as i64), Some((w / 4) as i64));
    let graph = pb::GraphProto {
        name: "tiny".into(),
        node: nodes,
        initializer: vec![
            tensor("wd", &[1, 4], &[-1.0, 0.0, 0.5, 1.0]),
            tensor("wv", &[1, 4], &[1.0, 0.5, 0.0, -1.0]),
            tensor("ww", &[1, 2], &[0.5, -0.5]),
            tensor("hundred", &[], &[100.0]),
        ],
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
fn test_model(dir: &Path) -> PathBuf {
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, up: bool) {
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

/// mosquitto on 127.0.0.1:`port` with persistence in its own folder (sessions of the
/// subscriber survive a restart). Killed on drop.
struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    fn start() -> Broker {
        let mut b = Broker {
            port: free_port(),
            dir: tmp(),
            child: None,
        };
        b.up();
        b
    }

    fn up(&mut self) {
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
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto not runnable (apt-get install mosquitto)");
        self.child = Some(child);
        wait_port(self.port, true);
    }

    /// SIGTERM (mosquitto saves its persistence file) and wait.
    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, "TERM");
            let _ = c.wait();
        }
        wait_port(self.port, false);
    }

    fn url(&self) -> String {
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

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

/// One received message.
#[derive(Debug, Clone)]
struct Received {
    topic: String,
    payload: String,
}

/// A real MQTT subscriber (rumqttc's blocking client) on `<prefix>/#` at QoS 1 with a
/// persistent session (clean session off, fixed client id): the broker keeps what arrives while
/// it is away. Messages are collected by a thread.
struct Subscriber {
    client: rumqttc::Client,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Subscriber {
    fn start(port: u16, prefix: &str, id: &str, got: Arc<Mutex<Vec<Received>>>) -> Subscriber {
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

    fn on(&self, leaf: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.topic.ends_with(&format!("/{leaf}")))
            .map(|r| serde_json::from_str(&r.payload).expect("payload is JSON"))
            .collect()
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Wait until `pred` holds (at most `secs`), else panic with what arrived.
    fn wait(&self, secs: u64, what: &str, pred: impl Fn(&Subscriber) -> bool) {
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
struct Setup {
    _root: tempfile::TempDir,
    model: PathBuf,
    watch: PathBuf,
    state: PathBuf,
    config: PathBuf,
    prefix: String,
    log: PathBuf,
}

impl Setup {
    fn new(broker_url: &str, extra: &str) -> Setup {
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

    fn start(&self) -> Daemon {
        self.start_with(&[])
    }

    /// Start with extra environment variables; the systemd ones the test process may have
    /// inherited (a CI job run as a unit) are removed first.
    fn start_with(&self, env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
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

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.state.join("state.sqlite")).unwrap()
    }

    fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }
}

struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    /// SIGTERM, and the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        signal(&c, "TERM");
        c.wait().unwrap()
    }

    fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        signal(&c, "KILL");
        let _ = c.wait();
    }

    fn alive(&mut self) -> bool {
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
fn exam(dir: &Path, seed: u64) -> Vec<PathBuf> {
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
fn drop_in(watch: &Path, src: &Path, name: &str) -> PathBuf {
    let part = watch.join(format!("{name}.part"));
    std::fs::copy(src, &part).unwrap();
    let to = watch.join(name);
    std::fs::rename(&part, &to).unwrap();
    to
}

/// PatientName and PatientID of a DICOM file.
fn patient(path: &Path) -> (String, String) {
    let obj = dicom_object::open_file(path).unwrap();
    let get = |t| obj.element(t).unwrap().to_str().unwrap().trim().to_string();
    (
        get(dicom_dictionary_std::tags::PATIENT_NAME),
        get(dicom_dictionary_std::tags::PATIENT_ID),
    )
}

fn schema(name: &str) -> jsonschema::Validator {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/schemas")
        .join(format!("{name}.json"));
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    jsonschema::validator_for(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn assert_valid(v: &jsonschema::Validator, payload: &Value) {
    let errors: Vec<String> = v.iter_errors(payload).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?} in {payload}");
}

fn distinct_result_ids(msgs: &[Value]) -> Vec<String> {
    let mut seen = Vec::new();
    for m in msgs {
        let id = m["result_id"].as_str().unwrap().to_string();
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    seen
}

// ---------------------------------------------------------------- scenarios

#[test]
fn four_view_exam_gives_four_images_and_one_complete_exam_without_patient_data() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let got = Arc::new(Mutex::new(Vec::new()));
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-exam", got);
    let mut d = s.start();
    let src = tmp();
    let files = exam(src.path(), 11);
    let patients: Vec<(String, String)> = files.iter().map(|f| patient(f)).collect();
    for f in &files {
        drop_in(&s.watch, f, f.file_name().unwrap().to_str().unwrap());
    }
    sub.wait(60, "4 images and 1 exam", |s| {
        s.on("image").len() >= 4 && !s.on("exam").is_empty()
    });
    let images = sub.on("image");
    let exams = sub.on("exam");
    let meta = mammo_edge::model::ModelRunner::load(&s.model).unwrap().meta;
    let tiny = meta.model_name == "tiny-test";
    assert_eq!(images.len(), 4, "{images:?}");
    assert_eq!(exams.len(), 1, "{exams:?}");
    let (vi, ve) = (schema("image"), schema("exam"));
    let study = exams[0]["study_instance_uid"].as_str().unwrap().to_string();
    let mut views = Vec::new();
    for m in &images {
        assert_valid(&vi, m);
        assert_eq!(m["schema"], "mammo-edge.image/1");
        assert_eq!(m["model"]["name"], meta.model_name.as_str());
        assert_eq!(m["model"]["intended_use"], meta.intended_use.as_str());
        assert_eq!(m["model"]["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(m["study_instance_uid"], study.as_str());
        assert_eq!(m["uid_mode"], "plain");
        assert!(m.get("file").is_none() && m.get("accession_number").is_none());
        assert_eq!(m["file_hash"].as_str().unwrap().len(), 64);
        let c = m["cancer_probability"].as_f64().unwrap();
        let score = m["ood_score"].as_f64().unwrap();
        assert_eq!(m["ood"], score > f64::from(meta.recon_error_threshold));
        assert_eq!(m["cancer_flag"], c >= f64::from(meta.cancer_threshold));
        if tiny {
            // cancer = sigmoid(f), normal = sigmoid(-f), percent = 100 sigmoid(f), recon error 0
            let n = m["normal_probability"].as_f64().unwrap();
            let pd = m["percent_density"].as_f64().unwrap();
            assert!((c + n - 1.0).abs() < 2e-3, "{c} + {n}");
            assert!((pd - 100.0 * c).abs() < 0.05, "{pd} vs {c}");
            assert_eq!(m["ood"], false);
            assert_eq!(m["model"]["intended_use"], TEST_INTENDED_USE);
        }
        let p: f64 = m["density_probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((p - 1.0).abs() < 2e-3);
        views.push(format!(
            "{}-{}",
            m["laterality"].as_str().unwrap(),
            m["view"].as_str().unwrap()
        ));
    }
    views.sort();
    assert_eq!(views, ["L-CC", "L-MLO", "R-CC", "R-MLO"]);
    let e = &exams[0];
    assert_valid(&ve, e);
    assert_eq!(e["schema"], "mammo-edge.exam/1");
    assert_eq!(e["revision"], 1);
    assert_eq!(e["complete"], true);
    assert_eq!(e["images"], 4);
    assert_eq!(e["views_missing"].as_array().unwrap().len(), 0);
    let max_cancer = images
        .iter()
        .map(|m| m["cancer_probability"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!((e["cancer_probability"].as_f64().unwrap() - max_cancer).abs() < 1e-3);
    let any_ood = images.iter().any(|m| m["ood"] == true);
    let triage = if max_cancer >= f64::from(meta.cancer_threshold) {
        "priority"
    } else if any_ood {
        "review"
    } else {
        "routine"
    };
    assert_eq!(e["triage"], triage);
    let mut ids = distinct_result_ids(&images);
    ids.sort();
    let mut in_exam: Vec<String> = e["image_result_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    in_exam.sort();
    assert_eq!(ids, in_exam);
    // retained status
    assert!(sub
        .all()
        .iter()
        .any(|r| r.topic == format!("{}/status", s.prefix) && r.payload == "online"));
    // no patient data, no file names, anywhere
    for r in sub.all() {
        for (name, id) in &patients {
            assert!(
                !r.payload.contains(name.as_str()),
                "PatientName in {}",
                r.topic
            );
            assert!(!r.payload.contains(id.as_str()), "PatientID in {}", r.topic);
            assert!(!r.topic.contains(id.as_str()));
        }
        for f in &files {
            let stem = f.file_stem().unwrap().to_str().unwrap();
            assert!(!r.payload.contains(stem), "file name in {}", r.topic);
        }
    }
    for (name, id) in &patients {
        let log = s.log_text();
        assert!(!log.contains(name.as_str()) && !log.contains(id.as_str()));
    }
    assert!(d.stop().success());
    assert_eq!(
        s.count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL"),
        0
    );
    assert_eq!(s.count("SELECT COUNT(*) FROM results"), 4);
}

#[test]
fn non_dicom_and_truncated_files_give_errors_and_the_daemon_goes_on() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-err", Arc::default());
    let mut d = s.start();
    std::fs::write(
        s.watch.join("notes.txt"),
        b"this is not a DICOM file at all\n",
    )
    .unwrap();
    let src = tmp();
    let files = exam(src.path(), 12);
    let bytes = std::fs::read(&files[0]).unwrap();
    std::fs::write(s.watch.join("cut.dcm"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    // ignored names
    std::fs::write(s.watch.join("x.dcm.tmp"), b"partial").unwrap();
    std::fs::write(s.watch.join(".hidden"), b"x").unwrap();
    std::fs::write(s.watch.join("DICOMDIR"), b"x").unwrap();
    sub.wait(30, "2 error messages", |s| s.on("error").len() >= 2);
    let ve = schema("error");
    let errors = sub.on("error");
    let mut codes: Vec<String> = errors
        .iter()
        .map(|m| {
            assert_valid(&ve, m);
            assert_eq!(m["schema"], "mammo-edge.error/1");
            assert!(!m["reason"].as_str().unwrap().contains("cut.dcm"));
            m["reason_code"].as_str().unwrap().to_string()
        })
        .collect();
    codes.sort();
    assert_eq!(codes, ["not_dicom", "truncated"], "{errors:?}");
    assert!(d.alive(), "the daemon must go on after bad files");
    // and still scores a good exam
    for f in &files {
        drop_in(&s.watch, f, f.file_name().unwrap().to_str().unwrap());
    }
    sub.wait(60, "4 images", |s| s.on("image").len() >= 4);
    assert_eq!(sub.on("error").len(), 2, "ignored names produce nothing");
    assert_eq!(
        s.count("SELECT COUNT(*) FROM ledger WHERE path LIKE '%DICOMDIR' OR path LIKE '%.tmp' OR path LIKE '%.hidden'"),
        0
    );
    assert!(d.stop().success());
}

#[test]
fn broker_down_while_files_arrive_loses_nothing_and_keeps_the_outbox_order() {
    let mut broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    // a persistent session: the broker keeps what arrives while this subscriber is away
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-outage", got.clone());
    let mut d = s.start();
    sub.wait(30, "status online", |s| {
        s.all()
            .iter()
            .any(|r| r.topic.ends_with("/status") && r.payload == "online")
    });
    drop(sub);
    broker.down();
    let src = tmp();
    let files = exam(src.path(), 13);
    for f in &files {
        drop_in(&s.watch, f, f.file_name().unwrap().to_str().unwrap());
    }
    std::fs::write(s.watch.join("junk.bin"), b"not dicom").unwrap();
    // all processed while the broker is down: 4 images + 1 error + 1 exam waiting in the outbox
    let t0 = Instant::now();
    while s.count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL") < 6 {
        assert!(t0.elapsed() < Duration::from_secs(60), "{}", s.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d.alive());
    broker.up();
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-outage", got);
    sub.wait(60, "4 images, 1 error, 1 exam", |s| {
        s.on("image").len() >= 4 && !s.on("error").is_empty() && !s.on("exam").is_empty()
    });
    // in outbox order: the received result messages, first occurrences, follow the outbox ids
    let db = s.db();
    let mut st = db
        .prepare("SELECT payload FROM outbox ORDER BY id")
        .unwrap();
    let outbox: Vec<String> = st
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| {
            let v: Value = serde_json::from_str(&r.unwrap()).unwrap();
            format!("{}/{}", v["schema"], v["result_id"])
        })
        .collect();
    let mut received: Vec<String> = Vec::new();
    for r in sub.all() {
        if let Ok(v) = serde_json::from_str::<Value>(&r.payload) {
            if v.get("schema").is_some() {
                let k = format!("{}/{}", v["schema"], v["result_id"]);
                if !received.contains(&k) {
                    received.push(k);
                }
            }
        }
    }
    assert_eq!(received, outbox);
    let t0 = Instant::now();
    while s.count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL") > 0 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(d.stop().success());
}

#[test]
fn killed_and_restarted_daemon_processes_no_file_twice_and_delivers_everything() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-kill", Arc::default());
    let mut d = s.start();
    let src = tmp();
    let mut files = exam(src.path(), 14);
    let src2 = tmp();
    files.extend(exam(src2.path(), 15));
    for (i, f) in files.iter().enumerate() {
        drop_in(&s.watch, f, &format!("img{i}.dcm"));
    }
    // kill -9 as soon as the first result is committed
    let t0 = Instant::now();
    while s.count("SELECT COUNT(*) FROM ledger WHERE status = 'done'") < 1 {
        assert!(t0.elapsed() < Duration::from_secs(60), "{}", s.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    d.kill9();
    let mut d = s.start();
    sub.wait(90, "8 distinct images and 2 exams", |s| {
        distinct_result_ids(&s.on("image")).len() >= 8
            && distinct_result_ids(&s.on("exam")).len() >= 2
    });
    assert!(d.stop().success());
    assert_eq!(s.count("SELECT COUNT(*) FROM ledger"), 8);
    assert_eq!(
        s.count("SELECT COUNT(*) FROM ledger WHERE status = 'done'"),
        8
    );
    assert_eq!(s.count("SELECT COUNT(*) FROM results"), 8);
    assert_eq!(
        s.count("SELECT COUNT(*) FROM outbox WHERE topic LIKE '%/image'"),
        8,
        "one image message per file"
    );
    assert_eq!(
        s.count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL"),
        0
    );
    assert_eq!(distinct_result_ids(&sub.on("image")).len(), 8);
}

#[test]
fn re_exported_sop_instance_is_not_processed_twice() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-dup", Arc::default());
    let mut d = s.start();
    let src = tmp();
    let files = exam(src.path(), 16);
    drop_in(&s.watch, &files[0], "first.dcm");
    sub.wait(30, "1 image", |s| s.on("image").len() == 1);
    drop_in(&s.watch, &files[0], "again-under-another-name.dcm");
    let t0 = Instant::now();
    while s.count("SELECT COUNT(*) FROM ledger WHERE reason = 'duplicate_sop'") < 1 {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", s.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // the quiet exam (1 image, incomplete) is published after exam.quiet_secs
    sub.wait(30, "incomplete exam", |s| !s.on("exam").is_empty());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sub.on("image").len(), 1);
    let e = &sub.on("exam")[0];
    assert_eq!(e["complete"], false);
    let threshold = mammo_edge::model::ModelRunner::load(&s.model)
        .unwrap()
        .meta
        .cancer_threshold;
    let c = sub.on("image")[0]["cancer_probability"].as_f64().unwrap();
    let want = if c >= f64::from(threshold) {
        "priority"
    } else {
        "review"
    };
    assert_eq!(
        e["triage"], want,
        "incomplete exam below the threshold is review"
    );
    assert_eq!(e["views_missing"].as_array().unwrap().len(), 3);
    assert_eq!(s.count("SELECT COUNT(*) FROM results"), 1);
    assert!(d.stop().success());
}

#[test]
fn hashed_uids_and_moved_files() {
    let broker = Broker::start();
    let key = tmp();
    let key_file = key.path().join("uid.key");
    std::fs::write(&key_file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let s = Setup::new(
        &broker.url(),
        &format!(
            "[files]\nafter = \"move\"\n[privacy]\nuids = \"hashed\"\nkey_file = {key_file:?}\n"
        ),
    );
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-hash", Arc::default());
    let mut d = s.start();
    let src = tmp();
    let files = exam(src.path(), 17);
    let obj = dicom_object::open_file(&files[0]).unwrap();
    let sop = obj
        .element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .trim()
        .to_string();
    drop_in(&s.watch, &files[0], "one.dcm");
    std::fs::write(s.watch.join("bad.dcm"), b"garbage").unwrap();
    sub.wait(30, "1 image and 1 error", |s| {
        s.on("image").len() == 1 && s.on("error").len() == 1
    });
    let m = &sub.on("image")[0];
    assert_eq!(m["uid_mode"], "hashed");
    let want = format!(
        "hmac-sha256:{}",
        mammo_edge::message::hmac_hex(b"0123456789abcdef0123456789abcdef", sop.as_bytes())
    );
    assert_eq!(m["sop_instance_uid"], want.as_str());
    assert!(!sub.all().iter().any(|r| r.payload.contains(&sop)));
    let parent = s.watch.parent().unwrap();
    let t0 = Instant::now();
    while !(parent.join("done/one.dcm").is_file() && parent.join("failed/bad.dcm").is_file()) {
        assert!(t0.elapsed() < Duration::from_secs(10), "files not moved");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!s.watch.join("one.dcm").exists());
    assert!(d.stop().success());
}

#[test]
fn check_exit_codes_name_what_failed() {
    let root = tmp();
    let model = test_model(root.path());
    let write = |name: &str, text: String| {
        let p = root.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let base = |model: &Path, url: &str| {
        format!(
            "[state]\ndir = {:?}\n[model]\npath = {model:?}\n[mqtt]\nurl = {url:?}\n",
            root.path().join("state")
        )
    };
    let run = |cfg: &Path, extra: &[&str]| {
        Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(cfg)
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = write("ok.toml", base(&model, "mqtt://127.0.0.1:1"));
    let out = run(&ok, &["--no-broker"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = mammo_edge::model::ModelRunner::load(&model)
        .unwrap()
        .meta
        .model_name;
    assert!(String::from_utf8_lossy(&out.stdout).contains(&name));
    let out = run(&ok, &[]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "broker on port 1 is unreachable"
    );
    let bad = write("bad.toml", "[mqtt]\nurl = \"http://x\"\n".into());
    let out = run(&bad, &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mqtt.url"));
    let junk_model = write("junk.onnx", "not a model".into());
    let nomodel = write("nomodel.toml", base(&junk_model, "mqtt://127.0.0.1:1"));
    let out = run(&nomodel, &["--no-broker"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("model.path"));
    let broker = Broker::start();
    let good = write("good.toml", base(&model, &broker.url()));
    let out = run(&good, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // print-default-config parses back
    let out = Command::new(BIN)
        .arg("print-default-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        mammo_edge::config::Config::parse(&text, "(default)").unwrap(),
        mammo_edge::config::Config::default()
    );
}

/// Datagrams of a fake systemd notify socket, split into lines (`READY=1`, `STATUS=…`, …).
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sock: std::os::unix::net::UnixDatagram,
    lines: Vec<String>,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tmp();
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            _dir: dir,
            path,
            sock,
            lines: Vec::new(),
        }
    }

    /// Read one datagram if one comes within 200 ms.
    fn read(&mut self) {
        let mut buf = [0u8; 4096];
        if let Ok(n) = self.sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.lines.extend(text.lines().map(str::to_string));
        }
    }

    /// Read datagrams until a line equal to `line` has arrived (at most `secs`); its index.
    fn wait(&mut self, line: &str, secs: u64) -> usize {
        let t0 = Instant::now();
        loop {
            if let Some(i) = self.lines.iter().position(|l| l == line) {
                return i;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "no {line} within {secs} s; received {:?}",
                self.lines
            );
            self.read();
        }
    }

    fn count(&self, line: &str) -> usize {
        self.lines.iter().filter(|l| *l == line).count()
    }
}

#[test]
fn systemd_notify_ready_then_watchdog_pings_then_stopping_on_sigterm() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let mut notify = NotifySocket::bind();
    let journald = Path::new("/run/systemd/journal/socket").exists();
    let mut env: Vec<(&str, &std::ffi::OsStr)> = vec![
        ("NOTIFY_SOCKET", notify.path.as_os_str()),
        // 1 s: a ping every 0.5 s
        ("WATCHDOG_USEC", "1000000".as_ref()),
    ];
    if !journald {
        // "started by systemd" without a journal: the log must fall back to stderr
        env.push(("INVOCATION_ID", "0123456789abcdef0123456789abcdef".as_ref()));
    }
    let mut d = s.start_with(&env);
    let ready = notify.wait("READY=1", 60);
    assert!(
        notify
            .lines
            .iter()
            .any(|l| l.starts_with("STATUS=watching")),
        "{:?}",
        notify.lines
    );
    let first_ping = notify.wait("WATCHDOG=1", 10);
    assert!(ready < first_ping, "READY=1 before the first WATCHDOG=1");
    // pings go on while the daemon idles
    let t0 = Instant::now();
    let pings_before = notify.count("WATCHDOG=1");
    while t0.elapsed() < Duration::from_secs(3) {
        notify.read();
    }
    let pings = notify.count("WATCHDOG=1");
    assert!(
        pings >= pings_before + 3,
        "about 6 pings in 3 s, got {}",
        pings - pings_before
    );
    assert!(!notify.lines.iter().any(|l| l == "STOPPING=1"));
    assert!(d.stop().success());
    let stopping = notify.wait("STOPPING=1", 5);
    assert!(stopping > first_ping);
    if !journald {
        let log = s.log_text();
        assert!(
            log.contains("journald unreachable") && log.contains("systemd: READY=1"),
            "{log}"
        );
    }
}

#[test]
fn systemd_example_config_is_the_default_config() {
    let out = Command::new(BIN)
        .arg("print-default-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/config.toml"))
            .unwrap();
    assert_eq!(
        shipped,
        String::from_utf8(out.stdout).unwrap(),
        "systemd/config.toml: regenerate with `mammo-edge print-default-config > systemd/config.toml`"
    );
}
