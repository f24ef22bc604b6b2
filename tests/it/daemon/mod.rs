//! The daemon end to end: the `mammo-edge` binary (`run`, `check`) on a temporary watched folder
//! and state folder, a real mosquitto on loopback and a real subscriber (rumqttc's client);
//! phantom exams from the synth generator, payloads checked against docs/schemas/*.json.
//! The model is `MAMMO_TEST_MODEL` when set, else a tiny ONNX model that follows the contract,
//! built here with tract-onnx's protobuf types (its outputs are simple functions of the image).

mod agree;
mod broker_faults;
mod demo;
mod dicom;
mod drift;
pub(crate) mod harness;
mod ops;
mod real;
mod soak;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::tmp;
use harness::*;

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
        // keyed by the appliance's own key without privacy.key_file: not the plain SHA-256 of
        // the path, which could be found by trying candidate names (review #13)
        for f in &files {
            let path = s.watch.join(f.file_name().unwrap());
            let plain = mammo_edge::ingest::files::sha256_hex(path.to_string_lossy().as_bytes());
            assert_ne!(m["file_hash"], plain.as_str());
        }
        let c = m["cancer_probability"].as_f64().unwrap();
        let score = m["ood_score"].as_f64().unwrap();
        let ood_thr = meta.ood_threshold.unwrap_or(meta.recon_error_threshold);
        assert_eq!(m["ood"], score > f64::from(ood_thr));
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
    let key = s.state.join(mammo_edge::edge::message::LABEL_KEY_FILE);
    let meta = std::fs::metadata(&key).expect("the appliance's file-label key");
    assert_eq!(meta.len(), 32);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    // the same key after a restart: the same file, the same hash
    let k1 = std::fs::read(&key).unwrap();
    let before = sub.on("health").last().unwrap()["started_at"].clone();
    let mut d = s.start();
    sub.wait(30, "health of the restarted daemon", |s| {
        s.on("health")
            .last()
            .is_some_and(|h| h["started_at"] != before)
    });
    assert!(d.stop().success());
    assert_eq!(std::fs::read(&key).unwrap(), k1);
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
    // (beside them, when the model carries a drift reference, the retained drift/<source> updates)
    let results =
        "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND topic NOT LIKE '%/drift/%'";
    let t0 = Instant::now();
    while s.count(results) < 6 {
        assert!(t0.elapsed() < Duration::from_secs(60), "{}", s.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d.alive());
    // files are now taken at their moved-to event (watch.settle = "events"), so the outbox is
    // full within a second of the shutdown; a mosquitto restarted that soon came back without
    // the subscriber's persistent session (3 of 3 local runs; not understood yet). Keep the
    // outage at least 3 s long, as it was when files waited stable_secs.
    std::thread::sleep(Duration::from_secs(3));
    broker.up();
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-outage", got);
    let t0 = Instant::now();
    while s.count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL") > 0 {
        assert!(t0.elapsed() < Duration::from_secs(60), "{}", s.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // in outbox order: the messages received, first occurrence of each result_id (a drift
    // message keeps one result_id per source; its retained copy comes again on subscribe),
    // follow the outbox ids
    let key = |payload: &str| -> Option<String> {
        let v: Value = serde_json::from_str(payload).ok()?;
        // results only (the retained health snapshot has a schema but no result_id)
        v.get("result_id")?;
        Some(format!("{}/{}", v["schema"], v["result_id"]))
    };
    let first_occurrences = |keys: Vec<String>| {
        let mut out: Vec<String> = Vec::new();
        for k in keys {
            if !out.contains(&k) {
                out.push(k);
            }
        }
        out
    };
    let db = s.db();
    let mut st = db
        .prepare("SELECT payload FROM outbox ORDER BY id")
        .unwrap();
    let outbox: Vec<String> = first_occurrences(
        st.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .filter_map(|r| key(&r.unwrap()))
            .collect(),
    );
    let received = |sub: &Subscriber| {
        first_occurrences(sub.all().iter().filter_map(|r| key(&r.payload)).collect())
    };
    sub.wait(30, "every outbox message", |s| {
        received(s).len() >= outbox.len()
    });
    let images = outbox.iter().filter(|k| k.contains(".image/")).count();
    assert_eq!(images, 4, "{outbox:?}");
    assert_eq!(received(&sub), outbox);
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
    let (_key, _, s) = hashed_setup(&broker.url(), "[files]\nafter = \"move\"\n");
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
        mammo_edge::edge::message::hmac_hex(b"0123456789abcdef0123456789abcdef", sop.as_bytes())
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
    let export = root.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    let base = |model: &Path, url: &str| {
        format!(
            "[watch]\ndirs = [{export:?}]\n[state]\ndir = {:?}\n[model]\npath = {model:?}\n\
             [mqtt]\nurl = {url:?}\n",
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
    // a watch.dirs folder that does not exist fails the check as it would fail `run` (review #4)
    let missing = write(
        "missing.toml",
        base(&model, "mqtt://127.0.0.1:1").replace("export", "no-such-export"),
    );
    let out = run(&missing, &["--no-broker"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("watch.dirs"));
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
        mammo_edge::edge::config::Config::parse(&text, "(default)").unwrap(),
        mammo_edge::edge::config::Config::default()
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

#[test]
fn half_written_file_is_scored_once_after_it_is_complete() {
    use std::io::Write;
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-slow", Arc::default());
    let mut d = s.start();
    let src = tmp();
    let files = exam(src.path(), 21);
    let bytes = std::fs::read(&files[0]).unwrap();
    // written in place in five pieces, 400 ms apart (below stable_secs = 1): never stable before
    // the last piece
    let mut f = std::fs::File::create(s.watch.join("slow.dcm")).unwrap();
    for piece in bytes.chunks(bytes.len().div_ceil(5)) {
        f.write_all(piece).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    drop(f);
    sub.wait(30, "1 image", |s| s.on("image").len() == 1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sub.on("image").len(), 1);
    assert!(sub.on("error").is_empty(), "{:?}", sub.on("error"));
    assert_eq!(s.count("SELECT COUNT(*) FROM ledger"), 1);
    assert_eq!(
        s.count("SELECT COUNT(*) FROM ledger WHERE status = 'done' AND attempts = 1"),
        1
    );
    assert!(d.stop().success());
}

/// Issue 15, `watch.settle`: with `events` (the default) a file closed after writing or moved in
/// is taken at once, even with `stable_secs = 30`; with `timer` the same file waits the 30 s
/// (not scored within 8 s, though the 2 s rescan has seen it).
#[test]
fn settle_events_take_a_closed_file_at_once_and_timer_waits_stable_secs() {
    let broker = Broker::start();
    let src = tmp();
    let files = exam(src.path(), 29);
    for (settle, scored_within) in [("events", Some(20)), ("timer", None)] {
        let s = Setup::new(&broker.url(), "");
        let text = std::fs::read_to_string(&s.config).unwrap().replace(
            "stable_secs = 1\n",
            &format!("stable_secs = 30\nsettle = \"{settle}\"\n"),
        );
        std::fs::write(&s.config, text).unwrap();
        let sub = Subscriber::start(broker.port, &s.prefix, "sub-settle", Arc::default());
        let mut d = s.start();
        // the watcher is started once the daemon logs "watching …" (before that a file would
        // be found by the rescan only)
        harness::wait_for(60, "the daemon watching", &s, || {
            s.log_text().contains("watching 1 folder")
        });
        let t0 = std::time::Instant::now();
        // copied in place (one open, write, close), not renamed
        std::fs::copy(&files[0], s.watch.join("one.dcm")).unwrap();
        match scored_within {
            Some(secs) => {
                sub.wait(secs, "1 image", |s| s.on("image").len() == 1);
                assert!(
                    t0.elapsed() < Duration::from_secs(secs),
                    "{settle}: {:?}",
                    t0.elapsed()
                );
            }
            None => {
                std::thread::sleep(Duration::from_secs(8));
                assert!(
                    sub.on("image").is_empty(),
                    "{settle}: scored before stable_secs"
                );
                assert_eq!(s.count("SELECT COUNT(*) FROM ledger"), 0, "{settle}");
            }
        }
        assert!(d.stop().success());
    }
}
