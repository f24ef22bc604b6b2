//! Operating the daemon: SIGHUP reload of configuration and model (a refused one keeps the
//! running model), the retained `<prefix>/health` snapshot, intake paused by a low state folder
//! (a configured floor, and a real full file system on tmpfs when run as root), TLS with client
//! certificates against mosquitto, and quarantine of a file that crashes the daemon. Same harness
//! as mod.rs: the `mammo-edge` binary, real mosquitto, a real subscriber, real SQLite.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::Value;
use tract_onnx::pb;

use super::harness::*;
use crate::util::tmp;

/// Set `key = value` (TOML text) in `[section]` of the config file, replacing the key's line or
/// adding it under the section header.
fn set_key(config: &Path, section: &str, key: &str, value: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let header = format!("[{section}]");
    let mut out = Vec::new();
    let (mut inside, mut done) = (false, false);
    for line in text.lines() {
        if line.trim_start().starts_with('[') {
            if inside && !done {
                out.push(format!("{key} = {value}"));
                done = true;
            }
            inside = line.trim() == header;
            out.push(line.to_string());
            continue;
        }
        if inside && !done && line.split('=').next().map(str::trim) == Some(key) {
            out.push(format!("{key} = {value}"));
            done = true;
            continue;
        }
        out.push(line.to_string());
    }
    if !done {
        if !inside {
            out.push(header);
        }
        out.push(format!("{key} = {value}"));
    }
    std::fs::write(config, out.join("\n") + "\n").unwrap();
}

fn last_health(sub: &Subscriber) -> Option<Value> {
    sub.on("health").pop()
}

fn sha256_file(p: &Path) -> String {
    mammo_edge::ingest::files::sha256_hex(&std::fs::read(p).unwrap())
}

/// Copy an ONNX model with `mammo.model_version` set to `version` (a different file, hence a
/// different sha256, following the same contract).
fn retag_model(src: &Path, dst: &Path, version: &str) {
    let mut m = pb::ModelProto::decode(std::fs::read(src).unwrap().as_slice()).unwrap();
    let entry = m
        .metadata_props
        .iter_mut()
        .find(|p| p.key == "mammo.model_version")
        .expect("model has mammo.model_version");
    entry.value = version.into();
    std::fs::write(dst, m.encode_to_vec()).unwrap();
}

/// A fake systemd notify socket collecting the lines of its datagrams.
struct Notify {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sock: std::os::unix::net::UnixDatagram,
    lines: Vec<String>,
}

impl Notify {
    fn bind() -> Notify {
        let dir = tmp();
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Notify {
            _dir: dir,
            path,
            sock,
            lines: Vec::new(),
        }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.lines.extend(text.lines().map(str::to_string));
        }
    }

    /// Index of the first line equal to `line` at or after `from`, waiting up to `secs`.
    fn wait(&mut self, line: &str, from: usize, secs: u64) -> usize {
        let t0 = Instant::now();
        loop {
            if let Some(i) = self.lines.iter().skip(from).position(|l| l == line) {
                return from + i;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "no {line} within {secs} s; received {:?}",
                self.lines
            );
            self.drain();
        }
    }
}

/// Each `sd_notify` RELOADING=1 must come with MONOTONIC_USEC (systemd ≥ 253) in the same
/// datagram; the datagram lines are contiguous in `lines`.
fn assert_reloading_then_ready(n: &mut Notify, from: usize) -> usize {
    let r = n.wait("RELOADING=1", from, 30);
    let usec = n.lines.get(r + 1).cloned().unwrap_or_default();
    let v: u64 = usec
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("MONOTONIC_USEC must follow RELOADING=1: {:?}", n.lines))
        .parse()
        .unwrap();
    assert!(v > 0);
    n.wait("READY=1", r, 30) + 1
}

fn hup(d: &Daemon) {
    signal(d.child.as_ref().unwrap(), "HUP");
}

fn images_with(sub: &Subscriber, sha: &str) -> usize {
    sub.on("image")
        .iter()
        .filter(|m| m["model"]["sha256"] == sha)
        .count()
}

#[test]
fn sighup_refuses_a_corrupt_model_keeps_the_running_one_and_applies_a_new_one() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    // this test's own model file: it is overwritten below
    let model = s.config.parent().unwrap().join("hup-model.onnx");
    std::fs::copy(&s.model, &model).unwrap();
    let text = std::fs::read_to_string(&s.config).unwrap();
    let old = format!("path = {:?}", s.model);
    assert!(text.contains(&old));
    std::fs::write(&s.config, text.replace(&old, &format!("path = {model:?}"))).unwrap();
    let sha_a = sha256_file(&model);
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-hup", Arc::default());
    let mut notify = Notify::bind();
    let mut d = s.start_with(&[("NOTIFY_SOCKET", notify.path.as_os_str())]);
    let mut at = notify.wait("READY=1", 0, 60) + 1;
    sub.wait(30, "health", |s| last_health(s).is_some());
    let src = tmp();
    let files = exam(src.path(), 31);
    drop_in(&s.watch, &files[0], "a.dcm");
    sub.wait(30, "1 image", |s| s.on("image").len() == 1);
    assert_eq!(images_with(&sub, &sha_a), 1);

    // a corrupt model: refused, the running one stays
    std::fs::write(&model, b"this is not an ONNX model").unwrap();
    hup(&d);
    sub.wait(30, "health with a refused reload", |s| {
        last_health(s).is_some_and(|h| h["last_reload"]["ok"] == false)
    });
    at = assert_reloading_then_ready(&mut notify, at);
    let h = last_health(&sub).unwrap();
    assert_valid(&schema("health"), &h);
    assert_eq!(h["model"]["sha256"], sha_a.as_str());
    let why = h["last_reload"]["message"].as_str().unwrap();
    assert!(why.starts_with("model refused: model.path"), "{why}");
    assert!(s.log_text().contains("reload refused: model refused"));
    assert!(d.alive(), "a refused reload must not stop the daemon");
    drop_in(&s.watch, &files[1], "b.dcm");
    sub.wait(30, "2 images", |s| s.on("image").len() == 2);
    assert_eq!(images_with(&sub, &sha_a), 2, "the old model scores on");

    // a valid model of another version, and a broker setting that needs a restart
    retag_model(&s.model, &model, "9.9.9-hup");
    let sha_b = sha256_file(&model);
    assert_ne!(sha_a, sha_b);
    set_key(&s.config, "mqtt", "client_id", "\"edge-renamed\"");
    hup(&d);
    sub.wait(30, "health with the new model", |s| {
        last_health(s).is_some_and(|h| h["model"]["sha256"] == sha_b.as_str())
    });
    assert_reloading_then_ready(&mut notify, at);
    let h = last_health(&sub).unwrap();
    assert_valid(&schema("health"), &h);
    assert_eq!(h["last_reload"]["ok"], true);
    assert_eq!(h["model"]["version"], "9.9.9-hup");
    assert_eq!(
        h["last_reload"]["needs_restart"],
        serde_json::json!(["mqtt.client_id"])
    );
    assert!(s.log_text().contains("mqtt.client_id changed"));
    // the retained status/info follows the model
    sub.wait(10, "status/info with the new model", |s| {
        s.all().iter().any(|r| {
            r.topic.ends_with("/status/info")
                && serde_json::from_str::<Value>(&r.payload).unwrap()["model"]["sha256"]
                    == sha_b.as_str()
        })
    });
    drop_in(&s.watch, &files[2], "c.dcm");
    sub.wait(30, "3 images", |s| s.on("image").len() == 3);
    let third = sub.on("image").pop().unwrap();
    assert_eq!(third["model"]["sha256"], sha_b.as_str());
    assert_eq!(third["model"]["version"], "9.9.9-hup");
    assert_valid(&schema("image"), &third);
    // a configuration that fails its check: refused as well, the daemon goes on
    set_key(&s.config, "ingest", "max_attempts", "0");
    hup(&d);
    sub.wait(30, "health with a refused configuration", |s| {
        last_health(s).is_some_and(|h| h["last_reload"]["ok"] == false)
    });
    let h = last_health(&sub).unwrap();
    let why = h["last_reload"]["message"].as_str().unwrap();
    assert!(
        why.starts_with("configuration refused: ingest.max_attempts: must be greater than 0"),
        "{why}"
    );
    assert_eq!(h["model"]["sha256"], sha_b.as_str());
    for h in sub.on("health") {
        assert_valid(&schema("health"), &h);
    }
    assert!(d.alive());
    assert!(d.stop().success());
    assert_eq!(
        s.count("SELECT COUNT(*) FROM ledger WHERE status = 'done'"),
        3
    );
}

#[test]
fn health_is_retained_counts_what_was_published_and_follows_its_schema() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    set_key(&s.config, "mqtt", "health_secs", "1");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-health", Arc::default());
    let mut d = s.start();
    let src = tmp();
    for f in exam(src.path(), 32) {
        drop_in(&s.watch, &f, f.file_name().unwrap().to_str().unwrap());
    }
    std::fs::write(s.watch.join("junk.bin"), b"not a DICOM file").unwrap();
    sub.wait(
        60,
        "health counting 4 images, 1 error, 1 exam, nothing waiting",
        |s| {
            last_health(s).is_some_and(|h| {
                h["counters"]["images_scored"] == 4
                    && h["counters"]["errors"] == 1
                    && h["counters"]["exams_published"] == 1
                    && h["outbox_backlog"] == 0
            })
        },
    );
    let v = schema("health");
    let all = sub.on("health");
    for h in &all {
        assert_valid(&v, h);
    }
    let h = all.last().unwrap();
    assert_eq!(h["schema"], "mammo-edge.health/1");
    assert_eq!(h["intake"], serde_json::json!({"state": "running"}));
    assert_eq!(h["counters"]["skipped"], 0);
    assert_eq!(h["counters"]["quarantined"], 0);
    assert_eq!(h["state_dir"]["min_free_bytes"], 256u64 * 1024 * 1024);
    assert!(h["state_dir"]["free_bytes"].as_u64().unwrap() > 0);
    assert_eq!(h["last_reload"], Value::Null);
    let meta = mammo_edge::model::ModelRunner::load(&s.model).unwrap().meta;
    assert_eq!(h["model"]["name"], meta.model_name.as_str());
    assert_eq!(h["model"]["intended_use"], meta.intended_use.as_str());
    assert_eq!(h["model"]["sha256"], sha256_file(&s.model).as_str());
    assert_eq!(
        h["model"]["sha256"],
        sub.on("image")[0]["model"]["sha256"],
        "health names the model of the results"
    );
    // periodic: new snapshots keep coming (health_secs = 1)
    let n = all.len();
    sub.wait(10, "2 more health messages", |s| {
        s.on("health").len() >= n + 2
    });
    let times: Vec<String> = sub
        .on("health")
        .iter()
        .map(|h| h["produced_at"].as_str().unwrap().to_string())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_ne!(times.first(), times.last());
    // retained: a subscriber arriving now gets the last snapshot at once
    let late = Subscriber::start(broker.port, &s.prefix, "sub-health-late", Arc::default());
    late.wait(5, "the retained health", |s| last_health(s).is_some());
    assert_eq!(last_health(&late).unwrap()["counters"]["images_scored"], 4);
    assert!(d.stop().success());
}

#[test]
fn state_folder_below_min_free_pauses_intake_until_a_reload_lowers_the_floor() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    // a floor of 1 EiB: no file system here has that much free
    set_key(&s.config, "state", "min_free_mb", "1099511627776");
    set_key(&s.config, "mqtt", "health_secs", "1");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-floor", Arc::default());
    let mut d = s.start();
    sub.wait(30, "health saying paused", |s| {
        last_health(s).is_some_and(|h| h["intake"]["state"] == "paused")
    });
    let h = last_health(&sub).unwrap();
    assert_valid(&schema("health"), &h);
    assert_eq!(h["intake"]["reason_code"], "disk_low");
    assert!(h["intake"]["reason"]
        .as_str()
        .unwrap()
        .contains("state.min_free_mb = 1099511627776"));
    let src = tmp();
    let files = exam(src.path(), 33);
    let mut dropped = Vec::new();
    for f in &files {
        dropped.push(drop_in(
            &s.watch,
            f,
            f.file_name().unwrap().to_str().unwrap(),
        ));
    }
    // stable after 1 s, rescanned every 2 s: give it 5 s to (not) claim them
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(s.count("SELECT COUNT(*) FROM ledger"), 0, "nothing claimed");
    assert!(dropped.iter().all(|p| p.is_file()), "files left in place");
    assert!(sub.on("image").is_empty());
    assert_eq!(last_health(&sub).unwrap()["intake"]["state"], "paused");
    assert!(s.log_text().contains("intake paused: state folder has"));
    assert!(d.alive());

    set_key(&s.config, "state", "min_free_mb", "1");
    hup(&d);
    sub.wait(60, "4 images after the floor was lowered", |s| {
        s.on("image").len() >= 4
    });
    sub.wait(10, "health saying running", |s| {
        last_health(s).is_some_and(|h| {
            h["intake"]["state"] == "running" && h["state_dir"]["min_free_bytes"] == 1048576
        })
    });
    assert_valid(&schema("health"), &last_health(&sub).unwrap());
    assert!(s.log_text().contains("intake resumed"));
    assert!(d.stop().success());
    assert_eq!(
        s.count("SELECT COUNT(*) FROM ledger WHERE status = 'done'"),
        4
    );
}

/// A tmpfs mounted for one test; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with the reason printed) when mounting is not permitted.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tmp();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: mount -t tmpfs not permitted ({}); run as root to test a full state file system",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: mount not runnable ({e})");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Write zeros into `path` until the file system refuses (ENOSPC).
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [64 * 1024, 4096, 512] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    let _ = f.sync_all();
}

#[test]
fn full_state_file_system_pauses_intake_and_loses_no_file() {
    let Some(fs) = Tmpfs::mount("8m") else {
        return;
    };
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let state = fs.dir.path().join("state");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let old = format!("dir = {:?}", s.state);
    assert!(text.contains(&old));
    std::fs::write(&s.config, text.replace(&old, &format!("dir = {state:?}"))).unwrap();
    // no floor: the database itself must run into the full file system
    set_key(&s.config, "state", "min_free_mb", "0");
    set_key(&s.config, "mqtt", "health_secs", "1");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-enospc", Arc::default());
    let mut d = s.start();
    sub.wait(30, "health", |s| last_health(s).is_some());
    let filler = fs.dir.path().join("filler");
    fill(&filler);
    let src = tmp();
    let files = exam(src.path(), 34);
    let mut dropped = Vec::new();
    for f in &files {
        dropped.push(drop_in(
            &s.watch,
            f,
            f.file_name().unwrap().to_str().unwrap(),
        ));
    }
    sub.wait(30, "health saying paused (state_db)", |s| {
        last_health(s).is_some_and(|h| h["intake"]["reason_code"] == "state_db")
    });
    let h = last_health(&sub).unwrap();
    assert_valid(&schema("health"), &h);
    assert_eq!(h["intake"]["state"], "paused");
    assert!(sub.on("image").is_empty());
    assert!(dropped.iter().all(|p| p.is_file()), "files left in place");
    assert!(d.alive());
    std::fs::remove_file(&filler).unwrap();
    sub.wait(60, "4 images once space returned", |s| {
        s.on("image").len() >= 4
    });
    sub.wait(15, "health saying running", |s| {
        last_health(s).is_some_and(|h| h["intake"]["state"] == "running")
    });
    assert!(d.stop().success());
    let log = s.log_text();
    assert!(
        log.contains("not claimed (state database: database or disk is full); retried later")
            && log.contains("intake paused: state database not writable")
            && log.contains("intake resumed"),
        "{log}"
    );
    let db = rusqlite::Connection::open(state.join("state.sqlite")).unwrap();
    let done: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM ledger WHERE status = 'done' AND attempts = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        done, 4,
        "each file scored once, no attempt counted against it"
    );
    drop(db);
    drop(d);
    drop(fs);
}

#[test]
fn tls_with_client_certificates_delivers_and_a_wrong_ca_is_named() {
    let pki = Pki::generate();
    let tb = TlsBroker::start(&pki);
    let s = Setup::new(&tb.url(), "");
    for (key, path) in [
        ("ca_file", &pki.ca),
        ("client_cert", &pki.client_cert),
        ("client_key", &pki.client_key),
    ] {
        set_key(&s.config, "mqtt", key, &format!("{path:?}"));
    }
    let check = |cfg: &Path| {
        Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(cfg)
            .output()
            .unwrap()
    };
    let out = check(&s.config);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the subscriber uses the plaintext listener of the same broker
    let sub = Subscriber::start(tb.broker.port, &s.prefix, "sub-tls", Arc::default());
    let mut d = s.start();
    let src = tmp();
    let files = exam(src.path(), 35);
    drop_in(&s.watch, &files[0], "tls.dcm");
    sub.wait(30, "1 image over TLS", |s| s.on("image").len() == 1);
    assert_valid(&schema("image"), &sub.on("image")[0]);
    assert!(sub
        .all()
        .iter()
        .any(|r| r.topic.ends_with("/status") && r.payload == "online"));
    assert!(s
        .log_text()
        .contains(&format!("broker {}: connected", tb.url())));

    // the broker's certificate is not signed by this CA
    let wrong = s.config.with_file_name("wrong-ca.toml");
    std::fs::copy(&s.config, &wrong).unwrap();
    set_key(&wrong, "mqtt", "ca_file", &format!("{:?}", pki.other_ca));
    let out = check(&wrong);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains(&tb.url()), "{err}");
    assert!(
        err.contains("certificate") && err.contains("mqtt.ca_file"),
        "the message names the certificate problem: {err}"
    );
    // no client certificate: the broker refuses the handshake
    let nocert = s.config.with_file_name("no-client-cert.toml");
    std::fs::copy(&s.config, &nocert).unwrap();
    set_key(&nocert, "mqtt", "client_cert", "\"\"");
    set_key(&nocert, "mqtt", "client_key", "\"\"");
    let out = check(&nocert);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("mqtt.client_cert"), "{err}");

    // a running daemon with the wrong CA logs the problem and keeps trying
    let s2 = Setup::new(&tb.url(), "");
    for (key, path) in [
        ("ca_file", &pki.other_ca),
        ("client_cert", &pki.client_cert),
        ("client_key", &pki.client_key),
    ] {
        set_key(&s2.config, "mqtt", key, &format!("{path:?}"));
    }
    let mut d2 = s2.start();
    wait_for(30, "the certificate problem in the log", &s2, || {
        s2.log_text().contains("cannot connect") && s2.log_text().contains("mqtt.ca_file")
    });
    assert!(d2.alive(), "a broker problem never stops the daemon");
    assert!(d2.stop().success());
    assert!(d.stop().success());
}

/// SIGKILL the daemon while the file named `name` is being decoded for attempt `attempt` (the
/// crash systemd's Restart=on-failure recovers from): `in_progress` with its content hash
/// recorded (the worker's first step); polls the ledger every 2 ms. A row left `in_progress` by
/// the previous kill (before this start's recovery) has fewer attempts.
fn kill_while_in_progress(s: &Setup, d: &mut Daemon, name: &str, attempt: i64) {
    let db = s.db();
    let sql = format!(
        "SELECT CASE WHEN status = 'in_progress' AND content_sha256 IS NULL THEN 'claimed'
         ELSE status END, attempts FROM ledger WHERE path LIKE '%{name}'"
    );
    let t0 = Instant::now();
    loop {
        let row: Option<(String, i64)> =
            db.query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?))).ok();
        match row.as_ref().map(|(st, n)| (st.as_str(), *n)) {
            Some(("in_progress", n)) if n == attempt => {
                d.kill9();
                return;
            }
            None | Some(("in_progress" | "claimed" | "new", _)) => {}
            Some(other) => panic!(
                "{name} reached {other:?} before it could be killed mid-decode:\n{}",
                s.log_text()
            ),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{name} was never claimed:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_file_that_kills_the_daemon_is_quarantined_after_max_attempts_and_reported_once() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    set_key(&s.config, "ingest", "max_attempts", "2");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-poison", Arc::default());
    let src = tmp();
    // a 14-megapixel image: its decode and preprocessing take long enough (about a second in
    // a debug build) to kill the daemon while the claim is in progress
    let poison = crate::util::write(
        &crate::util::phantom(4096, 3328, mammo_edge::ingest::dicom::Laterality::L),
        src.path(),
        "poison.dcm",
    );
    drop_in(&s.watch, &poison, "poison.dcm");
    // each attempt dies mid-decode (an out-of-memory kill, a power cut); systemd's
    // Restart=on-failure restarts it
    for attempt in 1..=2 {
        let mut d = s.start();
        kill_while_in_progress(&s, &mut d, "poison.dcm", attempt);
        assert_eq!(
            s.count("SELECT attempts FROM ledger WHERE path LIKE '%poison.dcm'"),
            attempt
        );
        assert_eq!(
            s.count("SELECT COUNT(*) FROM ledger WHERE status = 'in_progress'"),
            1,
            "the crash left the claim in progress"
        );
    }
    // third start: attempts reached max_attempts, the file is quarantined without decoding
    let mut d = s.start();
    sub.wait(30, "the quarantine error", |s| !s.on("error").is_empty());
    let e = &sub.on("error")[0];
    assert_valid(&schema("error"), e);
    assert_eq!(e["reason_code"], "quarantined");
    assert!(e["reason"]
        .as_str()
        .unwrap()
        .contains("quarantined after 2 attempt(s)"));
    assert!(!e["reason"].as_str().unwrap().contains("poison.dcm"));
    assert_eq!(
        s.count("SELECT COUNT(*) FROM ledger WHERE path LIKE '%poison.dcm' AND status = 'quarantined' AND attempts = 2"),
        1
    );
    // review #10: a renamed copy and the touched original are quarantined by their content,
    // without being decoded again (decoded, the valid phantom would be scored `done`)
    drop_in(&s.watch, &poison, "poison-resent.dcm");
    std::fs::File::options()
        .write(true)
        .open(s.watch.join("poison.dcm"))
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    sub.wait(30, "two more quarantine errors", |s| {
        s.on("error").len() >= 3
    });
    for e in &sub.on("error")[1..] {
        assert_valid(&schema("error"), e);
        assert_eq!(e["reason_code"], "quarantined");
        let reason = e["reason"].as_str().unwrap();
        assert!(reason.contains("same content (sha256)"), "{reason}");
        assert!(!reason.contains("poison"), "{reason}");
    }
    assert_eq!(
        s.count("SELECT COUNT(*) FROM ledger WHERE path LIKE '%poison%.dcm' AND status = 'quarantined' AND attempts = 1"),
        2
    );
    assert_eq!(s.count("SELECT COUNT(*) FROM quarantine"), 1);
    // other files still go through, and a file that used to abort the process (20 000 nested
    // sequences, a stack overflow in dicom-object) is now one `damaged` error
    let files = exam(src.path(), 36);
    for f in &files {
        drop_in(&s.watch, f, f.file_name().unwrap().to_str().unwrap());
    }
    let nested = src.path().join("nested.dcm");
    crate::hostile::deeply_nested_dicom(&nested, 20_000);
    drop_in(&s.watch, &nested, "nested.dcm");
    sub.wait(60, "4 images, 1 exam and the nested file's error", |s| {
        s.on("image").len() >= 4 && !s.on("exam").is_empty() && s.on("error").len() >= 4
    });
    let e = sub
        .on("error")
        .into_iter()
        .find(|e| e["reason_code"] == "damaged");
    let e = e.expect("the nested file's error");
    assert!(e["reason"]
        .as_str()
        .unwrap()
        .contains("nested deeper than 32"));
    assert!(d.alive());
    assert!(d.stop().success());
    // a restart neither retries nor reports it again
    let before = last_health(&sub).unwrap()["started_at"].clone();
    let mut d = s.start();
    sub.wait(30, "health of the restarted daemon", |s| {
        last_health(s).is_some_and(|h| h["started_at"] != before)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(d.alive());
    assert!(d.stop().success());
    let errors = sub.on("error");
    assert_eq!(
        distinct_result_ids(&errors).len(),
        4,
        "three quarantines and the nesting each reported exactly once: {errors:?}"
    );
    assert_eq!(
        s.count("SELECT COUNT(*) FROM outbox WHERE topic LIKE '%/error'"),
        4
    );
    assert_eq!(
        s.count("SELECT COUNT(*) FROM ledger WHERE status = 'done'"),
        4
    );
    // the original's row (quarantined again after the touch) and the copy's
    assert_eq!(
        s.count("SELECT COUNT(*) FROM ledger WHERE status = 'quarantined'"),
        2
    );
}

#[test]
fn a_result_not_committed_on_a_full_disk_is_released_without_counting_the_attempt() {
    use mammo_edge::edge::store::{Claim, ImageKey, OutboxMessage, Status, Store};
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    let dir = fs.dir.path().join("state");
    let mut st = Store::open(&dir, 2).unwrap();
    let path = Path::new("/srv/dicom-export/x.dcm");
    let mtime = std::time::SystemTime::now();
    let Claim::Process(t) = st.claim(path, 10, mtime).unwrap() else {
        panic!("a new file is processed")
    };
    let key = ImageKey {
        sop_instance_uid: "1.2.3.4".into(),
        study_instance_uid: "1.2.3".into(),
        model_sha256: "ab".repeat(32),
        result_id: mammo_edge::edge::store::result_id("1.2.3.4", &"ab".repeat(32)),
    };
    let payload = serde_json::json!({"x": "y".repeat(2000)});
    let msg = OutboxMessage {
        topic: "t/image".into(),
        payload: payload.clone(),
        retain: false,
    };
    let filler = fs.dir.path().join("filler");
    fill(&filler);
    let e = st
        .commit_result(&t, &key, &payload, std::slice::from_ref(&msg))
        .unwrap_err();
    assert!(
        e.is_storage_failure(),
        "SQLITE_FULL is a storage failure: {e}"
    );
    std::fs::remove_file(&filler).unwrap();
    st.release(&t, "state_db").unwrap();
    let row = st.ledger_entry(path).unwrap().unwrap();
    assert_eq!((row.status, row.attempts), (Status::New, 0));
    assert_eq!(row.reason.as_deref(), Some("state_db"));
    let Claim::Process(t) = st.claim(path, 10, mtime).unwrap() else {
        panic!("a released file is processed again")
    };
    assert_eq!(t.attempts, 1, "the failed commit did not count");
    st.commit_result(&t, &key, &payload, &[msg]).unwrap();
    assert_eq!(st.undelivered_count().unwrap(), 1);
    drop(st);
    drop(fs);
}

/// Review #2 (issue 13): a file rejected while half written (its header readable, its pixel
/// data cut) and scored once complete gives an `error` and then an `image` for one
/// SOPInstanceUID; they must carry different `result_id`s, or a consumer de-duplicating by
/// `result_id` (docs/daemon.md) drops the real result.
#[test]
fn an_error_then_the_image_of_one_sop_instance_have_different_result_ids() {
    use std::io::Write;
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-rid", Arc::default());
    let mut d = s.start();
    let src = tmp();
    let files = exam(src.path(), 23);
    let bytes = std::fs::read(&files[0]).unwrap();
    let cut = bytes.len() * 6 / 10;
    let mut f = std::fs::File::create(s.watch.join("paused.dcm")).unwrap();
    f.write_all(&bytes[..cut]).unwrap();
    f.flush().unwrap();
    // the writer pauses longer than stable_secs = 1: the daemon reads the partial file
    sub.wait(30, "1 error", |s| s.on("error").len() == 1);
    f.write_all(&bytes[cut..]).unwrap();
    drop(f);
    sub.wait(30, "1 image", |s| s.on("image").len() == 1);
    let (err, img) = (&sub.on("error")[0], &sub.on("image")[0]);
    assert_eq!(
        err["sop_instance_uid"], img["sop_instance_uid"],
        "the error was about the same SOPInstanceUID: {err}"
    );
    assert_ne!(err["result_id"], img["result_id"], "{err}\n{img}");
    assert!(d.stop().success());
}

/// Review #21 (issue 13): a second `run` on the same state folder exits at once with a clear
/// error (status 6, "in use", the first one's pid) and touches nothing; the first keeps scoring.
#[test]
fn a_second_daemon_on_the_same_state_folder_is_refused_and_the_first_goes_on() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-two", Arc::default());
    let mut first = s.start();
    let pid = first.child.as_ref().unwrap().id();
    // the first is up once its state database has its tables
    assert_eq!(s.count("SELECT COUNT(*) FROM ledger"), 0);
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&s.config)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("in use") && err.contains(&format!("pid {pid}")),
        "{err}"
    );
    let src = tmp();
    let files = exam(src.path(), 24);
    drop_in(&s.watch, &files[0], "one.dcm");
    sub.wait(30, "1 image", |s| s.on("image").len() == 1);
    assert!(first.alive());
    assert!(first.stop().success());
}

/// Review #25 (issue 13): a SIGHUP that arrives while the daemon is still starting (here: blocked
/// reading its configuration from a FIFO, before any tokio handler exists) must not kill it: the
/// default action of SIGHUP is to terminate, and systemd does not restart a daemon that died of
/// it. The daemon then starts, runs, and stops cleanly on SIGTERM.
#[test]
fn a_sighup_during_start_up_does_not_kill_the_daemon() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let fifo = s.config.with_extension("fifo");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&fifo)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // opening the FIFO blocks until a writer comes. Wait (at most 10 s: loading the
    // LibTorch-linked test build can take seconds) until the process catches SIGHUP, i.e. has
    // run the first lines of main; without the start-up handler that never happens while it
    // waits on the FIFO, and the SIGHUP sent then kills it
    let status = format!("/proc/{}/status", child.id());
    let t0 = Instant::now();
    let catches_hup = || {
        std::fs::read_to_string(&status)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & 1 != 0)
    };
    while !catches_hup() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&child, "HUP");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "killed by the early SIGHUP: {:?}",
        child.try_wait()
    );
    std::fs::write(&fifo, text).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(matches!(child.try_wait(), Ok(None)), "died after start-up");
    signal(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Review #1 (issue 13): a header string far past its VR's limit (here a Manufacturer LO of
/// 65 000 control characters, 390 kB once JSON escapes them, over the 256 KiB MQTT packet
/// limit) must not block the outbox: the file is reported with a bounded message and the exam
/// dropped after it is delivered in full.
#[test]
fn a_huge_header_string_does_not_block_the_outbox() {
    use dicom_core::value::PrimitiveValue;
    use dicom_core::VR;
    use dicom_dictionary_std::tags;
    use dicom_object::mem::InMemElement;
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-huge", Arc::default());
    let mut d = s.start();
    let src = tmp();
    let files = exam(src.path(), 25);
    let mut o = dicom_object::open_file(&files[0]).unwrap();
    o.put(InMemElement::new(
        tags::MODALITY,
        VR::CS,
        PrimitiveValue::from("CT"),
    ));
    o.put(InMemElement::new(
        tags::MANUFACTURER,
        VR::LO,
        PrimitiveValue::from("\u{1}".repeat(65_000)),
    ));
    o.put(InMemElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from("1.2.826.0.1.3680043.9.9999.77"),
    ));
    let huge = src.path().join("huge.dcm");
    mammo_edge::synth::write_object(&o, &huge).unwrap();
    drop_in(&s.watch, &huge, "huge.dcm");
    std::thread::sleep(Duration::from_secs(2));
    for (i, f) in files.iter().enumerate() {
        drop_in(&s.watch, f, &format!("v{i}.dcm"));
    }
    sub.wait(60, "4 images and the exam", |s| {
        s.on("image").len() == 4 && !s.on("exam").is_empty()
    });
    let skipped = sub.on("skipped");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    let text = skipped[0].to_string();
    assert!(text.len() < 8 * 1024, "{} bytes", text.len());
    assert_eq!(skipped[0]["reason_code"], "not_mammogram");
    wait_for(10, "an empty outbox", &s, || {
        s.count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL") == 0
    });
    assert!(d.stop().success());
}

/// Review #6 (issue 13): with `files.after = "move"`, a link in the watched folder to a folder
/// outside it must not make the daemon read or move the files behind it; a real file beside
/// the link is scored and moved as usual.
#[test]
fn a_link_out_of_the_watched_folder_is_not_followed() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "[files]\nafter = \"move\"\n");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-link", Arc::default());
    let src = tmp();
    let files = exam(src.path(), 26);
    let outside = src.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(&files[1], outside.join("y.dcm")).unwrap();
    std::os::unix::fs::symlink(&outside, s.watch.join("ext")).unwrap();
    std::os::unix::fs::symlink(outside.join("y.dcm"), s.watch.join("z.dcm")).unwrap();
    let mut d = s.start();
    drop_in(&s.watch, &files[0], "real.dcm");
    sub.wait(30, "1 image", |s| s.on("image").len() == 1);
    // two more rescans (rescan_secs = 2)
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(sub.on("image").len(), 1);
    assert!(sub.on("skipped").is_empty() && sub.on("error").is_empty());
    assert!(outside.join("y.dcm").is_file(), "the linked file was moved");
    assert_eq!(s.count("SELECT COUNT(*) FROM ledger"), 1);
    assert!(d.stop().success());
}

/// `chmod MODE PATH` (as the test user, root in CI).
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Review #8 (issue 13), the daemon unprivileged: a file it cannot read is reported once as
/// `error` `io`, stays in place, and is scored once its permissions are fixed (its size and
/// mtime unchanged), without a second error message.
#[test]
fn an_unreadable_file_is_scored_once_its_permissions_are_fixed() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-io", Arc::default());
    let src = tmp();
    let files = exam(src.path(), 27);
    s.hand_over();
    let mut d = s.start_unprivileged();
    let (part, locked) = (s.watch.join("locked.dcm.part"), s.watch.join("locked.dcm"));
    std::fs::copy(&files[0], &part).unwrap();
    chmod(&part, 0o000);
    std::fs::rename(&part, &locked).unwrap();
    sub.wait(30, "1 error", |s| s.on("error").len() == 1);
    assert_eq!(sub.on("error")[0]["reason_code"], "io");
    chmod(&locked, 0o644);
    sub.wait(30, "the image after chmod", |s| s.on("image").len() == 1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sub.on("error").len(), 1, "{:?}", sub.on("error"));
    assert!(d.stop().success());
}

/// Review #4 (issue 13), the daemon unprivileged: a sub-folder it cannot read (a root-owned
/// `lost+found` of an export folder that is its own mount) must not stop it from starting;
/// files elsewhere in the tree are scored.
#[test]
fn an_unreadable_sub_folder_does_not_stop_the_daemon() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-lf", Arc::default());
    let lost = s.watch.join("lost+found");
    std::fs::create_dir_all(&lost).unwrap();
    s.hand_over();
    // root's 0700 lost+found (for a non-root test user: its own folder at 000)
    if is_root() {
        let st = Command::new("chown")
            .arg("0:0")
            .arg(&lost)
            .status()
            .unwrap();
        assert!(st.success());
    }
    chmod(&lost, if is_root() { 0o700 } else { 0o000 });
    let src = tmp();
    let files = exam(src.path(), 28);
    let mut d = s.start_unprivileged();
    std::thread::sleep(Duration::from_secs(2));
    assert!(d.alive(), "the daemon stopped:\n{}", s.log_text());
    std::fs::create_dir_all(s.watch.join("study1")).unwrap();
    drop_in(&s.watch.join("study1"), &files[0], "a.dcm");
    sub.wait(30, "1 image", |s| s.on("image").len() == 1);
    chmod(&lost, 0o755);
    assert!(d.stop().success());
}

/// Review #5 (issue 13), the daemon unprivileged: with `files.after = "move"` and an export
/// folder it may read but not write, a rejected file is reported once and left in place; the
/// rescans do not copy it into `failed/` again and again.
#[test]
fn a_file_that_cannot_be_moved_is_left_in_place_and_not_copied_again() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "[files]\nafter = \"move\"\n");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-mv", Arc::default());
    let junk = s.watch.join("junk.dcm");
    std::fs::write(&junk, b"not a DICOM file at all").unwrap();
    s.hand_over();
    // the export folder read-only for the daemon (root-owned when the daemon is nobody)
    if is_root() {
        let st = Command::new("chown")
            .arg("0:0")
            .arg(&s.watch)
            .status()
            .unwrap();
        assert!(st.success());
    }
    chmod(&s.watch, 0o555);
    let mut d = s.start_unprivileged();
    sub.wait(30, "1 error", |s| s.on("error").len() == 1);
    // five rescans (rescan_secs = 2)
    std::thread::sleep(Duration::from_secs(10));
    chmod(&s.watch, 0o755);
    let failed = s.watch.parent().unwrap().join("failed");
    let copies = std::fs::read_dir(&failed).map(|r| r.count()).unwrap_or(0);
    assert_eq!(copies, 0, "copies in failed/");
    assert!(junk.is_file());
    assert_eq!(sub.on("error").len(), 1);
    assert!(d.stop().success());
}

/// Review #16 (issue 13): names in a legacy code page (Latin-1 `M\xdcLLER^ANNA.dcm` from a
/// Windows modality; a folder named so) are not UTF-8; they were dropped without a message.
/// Both files are scored and have their ledger rows.
#[test]
fn files_with_non_utf8_names_are_scored() {
    use std::os::unix::ffi::OsStrExt;
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-latin1", Arc::default());
    let mut d = s.start();
    let src = tmp();
    let files = exam(src.path(), 29);
    let latin1 = std::ffi::OsStr::from_bytes(b"M\xdcLLER^ANNA.dcm");
    let folder = s.watch.join(std::ffi::OsStr::from_bytes(b"M\xdcLLER"));
    std::fs::create_dir_all(&folder).unwrap();
    for (dir, name, f) in [
        (s.watch.clone(), latin1, &files[0]),
        (folder, std::ffi::OsStr::new("img.dcm"), &files[1]),
    ] {
        let part = dir.join("incoming.part");
        std::fs::copy(f, &part).unwrap();
        std::fs::rename(&part, dir.join(name)).unwrap();
    }
    sub.wait(30, "2 images", |s| s.on("image").len() == 2);
    assert!(sub.on("error").is_empty(), "{:?}", sub.on("error"));
    assert_eq!(
        s.count("SELECT COUNT(*) FROM ledger WHERE path LIKE 'hex:%'"),
        2
    );
    assert!(d.stop().success());
}

/// Names of the worker threads of process `pid` (`/proc/<pid>/task/*/comm`).
fn worker_threads(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("mammo-worker"))
        .count()
}

/// A [`Tiny::Slow`] model whose one inference takes about `target` on this machine (measured
/// with one step), written to `path`.
fn slow_model(path: &Path, target: Duration) {
    tiny_model_variant(path, Tiny::Slow { steps: 1 });
    let runner = mammo_edge::model::ModelRunner::load(path).unwrap();
    let input = vec![0.5f32; 128 * 80];
    let t0 = Instant::now();
    runner.run(&input).unwrap();
    let one = t0.elapsed().max(Duration::from_millis(1));
    let steps = (target.as_secs_f64() / one.as_secs_f64())
        .ceil()
        .clamp(1.0, 200.0) as usize;
    eprintln!("slow model: one step {one:?}, {steps} steps for {target:?}");
    tiny_model_variant(path, Tiny::Slow { steps });
}

/// Review #11: a worker past `ingest.file_timeout_secs` is abandoned (a thread cannot be
/// stopped); its file is not started again beside it, and when a second worker is abandoned while
/// the first still runs, the daemon exits for systemd to restart it. Memory and CPU then hold at
/// most two decodes, whatever the inputs.
#[test]
fn timed_out_workers_are_waited_for_and_a_second_one_stops_the_daemon() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let model = s.config.parent().unwrap().join("slow.onnx");
    // about 4 s per image, four times the 1 s limit
    slow_model(&model, Duration::from_secs(4));
    let text = std::fs::read_to_string(&s.config).unwrap();
    let old = format!("path = {:?}", s.model);
    std::fs::write(&s.config, text.replace(&old, &format!("path = {model:?}"))).unwrap();
    set_key(&s.config, "ingest", "file_timeout_secs", "1");
    set_key(&s.config, "ingest", "max_attempts", "2");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-abandon", Arc::default());
    let src = tmp();
    let files = exam(src.path(), 44);
    let mut d = s.start();
    let pid = d.child.as_ref().unwrap().id();
    sub.wait(60, "health", |s| last_health(s).is_some());

    // one file: two time-outs, each waited for, then the quarantine
    drop_in(&s.watch, &files[0], "a.dcm");
    let t0 = Instant::now();
    let mut most = 0;
    while sub.on("error").is_empty() {
        most = most.max(worker_threads(pid));
        assert!(d.alive(), "the daemon stopped:\n{}", s.log_text());
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "no quarantine:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = &sub.on("error")[0];
    assert_eq!(e["reason_code"], "quarantined", "{e}");
    assert!(
        e["reason"].as_str().unwrap().contains("2 attempt(s)"),
        "{e}"
    );
    assert!(
        most <= 2,
        "{most} worker threads at once: the file was started beside its abandoned worker"
    );
    let log = s.log_text();
    assert_eq!(
        log.matches("no result within ingest.file_timeout_secs")
            .count(),
        2
    );
    assert!(log.contains("waits for its abandoned worker"), "{log}");
    assert_eq!(
        log.matches("the abandoned worker finished").count(),
        2,
        "{log}"
    );
    assert!(d.alive());

    // two files back to back: the second times out while the first's worker still runs
    drop_in(&s.watch, &files[1], "b.dcm");
    drop_in(&s.watch, &files[2], "c.dcm");
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
            d.child = None;
            break st;
        }
        assert!(worker_threads(pid) <= 3, "{}", s.log_text());
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the daemon did not stop:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "{status:?}");
    assert!(s
        .log_text()
        .contains("2 worker threads are past ingest.file_timeout_secs"));
    // both attempts are kept for the restart: quarantined after max_attempts as usual
    assert_eq!(
        s.count("SELECT COUNT(*) FROM ledger WHERE path LIKE '%/b.dcm' OR path LIKE '%/c.dcm'"),
        2
    );
    assert_eq!(
        s.count(
            "SELECT SUM(attempts) FROM ledger WHERE path LIKE '%/b.dcm' OR path LIKE '%/c.dcm'"
        ),
        2
    );
}

/// Review #12: a PUBACK is not a delivery to every consumer; `mammo-edge replay` queues the
/// delivered results of a time range again, and the running daemon publishes them with their
/// original `result_id`s, in their original order.
#[test]
fn replay_publishes_a_time_range_again_with_the_same_result_ids() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-replay", Arc::default());
    let mut d = s.start();
    let since = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let src = tmp();
    for f in exam(src.path(), 46) {
        drop_in(&s.watch, &f, f.file_name().unwrap().to_str().unwrap());
    }
    std::fs::write(s.watch.join("junk.bin"), b"not a DICOM file").unwrap();
    sub.wait(60, "4 images, 1 error, 1 exam", |s| {
        s.on("image").len() >= 4 && !s.on("exam").is_empty() && !s.on("error").is_empty()
    });
    wait_for(10, "everything delivered", &s, || {
        s.count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL") == 0
    });
    let replay = |args: &[&str]| s.state_tool("replay", args);
    // a range after everything: nothing
    let later =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3600))
            .to_string();
    let out = replay(&["--since", &later]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("replay: 0 message(s)"));
    let out = replay(&["--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "not RFC 3339: a usage error");
    // the range of the exam: 4 images, 1 error, 1 exam again
    let out = replay(&["--since", &since]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("replay: 6 message(s)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    sub.wait(30, "the replayed messages", |s| {
        s.on("image").len() >= 8 && s.on("exam").len() >= 2 && s.on("error").len() >= 2
    });
    for kind in ["image", "exam", "error"] {
        let all = sub.on(kind);
        let n = all.len() / 2;
        assert_eq!(
            distinct_result_ids(&all[..n]),
            distinct_result_ids(&all[n..]),
            "{kind}: the same result_ids in the same order"
        );
    }
    // the copies are marked delivered on their PUBACKs (which may follow the subscriber's copy)
    wait_for(10, "the replayed rows delivered", &s, || {
        s.count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL") == 0
    });
    assert!(d.alive());
    assert!(d.stop().success());
}

/// Review #14: with hashed UIDs and no file names published, nothing in the log names a patient:
/// not a folder named after one, not a non-UTF-8 folder name, not the SOPInstanceUID of a file
/// whose VOILUTFunction is unknown (a WARN that used to start with the plain UID).
#[test]
fn the_log_names_no_folder_and_no_uid_with_hashed_uids() {
    use dicom_core::value::PrimitiveValue;
    use dicom_core::VR;
    use dicom_dictionary_std::tags;
    use dicom_object::mem::InMemElement;
    use std::os::unix::ffi::OsStrExt;
    let broker = Broker::start();
    let (_key, _, s) = hashed_setup(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-phi-log", Arc::default());
    // the level a service runs at (the debug log may name files, for a technician who asks)
    let mut d = s.start_with(&[("RUST_LOG", "info".as_ref())]);
    let src = tmp();
    let files = exam(src.path(), 47);
    let mut obj = dicom_object::open_file(&files[0]).unwrap();
    let sop = obj
        .element(tags::SOP_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_string();
    for (tag, vr, v) in [
        (tags::WINDOW_CENTER, VR::DS, "2048"),
        (tags::WINDOW_WIDTH, VR::DS, "4096"),
        (tags::VOILUT_FUNCTION, VR::CS, "SIGMOXD"),
    ] {
        obj.put(InMemElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    let named = s.watch.join("DOE^JANE_1970-01-01");
    std::fs::create_dir(&named).unwrap();
    mammo_edge::synth::write_object(&obj, &named.join("IMG0001.dcm")).unwrap();
    let latin1 = s.watch.join(std::ffi::OsStr::from_bytes(b"M\xdcLLER^HANS"));
    std::fs::create_dir(&latin1).unwrap();
    drop_in(&latin1, &files[1], "IMG0002.dcm");
    std::fs::write(latin1.join("junk.dcm"), b"not DICOM").unwrap();
    sub.wait(60, "2 images and 1 error", |s| {
        s.on("image").len() >= 2 && !s.on("error").is_empty()
    });
    assert!(d.stop().success());
    let log = s.log_text();
    assert!(
        log.contains("unknown VOILUTFunction"),
        "the VOI warning was logged:\n{log}"
    );
    for secret in ["DOE^JANE", "1970-01-01", "LLER^HANS", sop.as_str()] {
        assert!(!log.contains(secret), "{secret:?} in the log:\n{log}");
    }
    for r in sub.all() {
        assert!(!r.payload.contains("DOE^JANE") && !r.payload.contains(sop.as_str()));
    }
    // review #13: nor does the state database: no path, no folder name, no plain UID
    let study = element_text(&obj, tags::STUDY_INSTANCE_UID);
    let db = crate::util::database_text(&s.state.join("state.sqlite"));
    assert!(db.contains("hmac-sha256:"), "{db}");
    let watch = s.watch.to_string_lossy().into_owned();
    // M\xdcLLER as the hex of a non-UTF-8 path key
    for secret in [
        "DOE^JANE",
        "1970-01-01",
        "LLER",
        "4ddc4c4c4552",
        &watch,
        &sop,
        &study,
    ] {
        assert!(
            !db.contains(secret),
            "{secret:?} kept in the state database:\n{db}"
        );
    }
}

/// Review #13: past retention the results, exams and finished ledger rows go
/// (`mammo-edge purge`, the daemon's hourly purge run now). The images left in the watched
/// folder, claimed again after a restart, are finished from their remembered content: not
/// decoded, scored or published a second time.
#[test]
fn images_left_in_the_folder_are_not_published_again_after_their_rows_are_purged() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-purge", Arc::default());
    let mut d = s.start();
    let src = tmp();
    for f in exam(src.path(), 49) {
        drop_in(&s.watch, &f, f.file_name().unwrap().to_str().unwrap());
    }
    sub.wait(60, "4 images and the exam", |s| {
        s.on("image").len() >= 4 && !s.on("exam").is_empty()
    });
    wait_for(10, "everything delivered", &s, || {
        s.count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL") == 0
    });
    let results = |sub: &Subscriber| {
        ["image", "exam", "skipped", "error"]
            .iter()
            .map(|t| sub.on(t).len())
            .sum::<usize>()
    };
    let before = results(&sub);
    assert_eq!(before, 5);
    let purge = |args: &[&str]| s.state_tool("purge", args);
    // within retention (30 days by default): nothing
    let out = purge(&[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("0 ledger row(s), 0 result(s), 0 exam(s)"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(20));
    let out = purge(&["--older-than", "0s"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("4 ledger row(s), 4 result(s), 1 exam(s)"),
        "{text}"
    );
    assert_eq!(s.count("SELECT COUNT(*) FROM results"), 0);
    assert_eq!(s.count("SELECT COUNT(*) FROM exams"), 0);
    // the running daemon does not hand an unchanged file on twice; after a restart its first
    // scan claims the four files again, and their content is remembered
    assert!(d.stop().success());
    let mut d = s.start();
    wait_for(20, "the four files finished again", &s, || {
        s.count(
            "SELECT COUNT(*) FROM ledger WHERE status = 'done' AND reason = 'handled_before_purge'",
        ) == 4
    });
    // quiet_secs = 3: an exam would have been published by now
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(results(&sub), before, "nothing published again");
    assert_eq!(s.count("SELECT COUNT(*) FROM results"), 0);
    assert_eq!(s.count("SELECT COUNT(*) FROM exams"), 0);
    assert!(d.alive());
    assert!(d.stop().success());
    assert!(s
        .log_text()
        .contains("before its rows were purged; not processed again"));
}

/// Review #9 at the daemon: two images with a blank SOPInstanceUID and StudyInstanceUID are two
/// `error` messages (`missing_attribute`), with two result_ids; neither is taken for a duplicate
/// of the other and no exam merges them.
#[test]
fn two_images_with_blank_uids_are_two_errors_and_no_exam() {
    use dicom_core::value::PrimitiveValue;
    use dicom_core::VR;
    use dicom_dictionary_std::tags;
    use dicom_object::mem::InMemElement;
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-blank-uids", Arc::default());
    let mut d = s.start();
    let src = tmp();
    let files = exam(src.path(), 48);
    for (i, f) in files[..2].iter().enumerate() {
        let mut obj = dicom_object::open_file(f).unwrap();
        for tag in [tags::SOP_INSTANCE_UID, tags::STUDY_INSTANCE_UID] {
            obj.put(InMemElement::new(tag, VR::UI, PrimitiveValue::from("")));
        }
        let p = src.path().join(format!("blank{i}.dcm"));
        mammo_edge::synth::write_object(&obj, &p).unwrap();
        drop_in(&s.watch, &p, &format!("blank{i}.dcm"));
    }
    sub.wait(30, "2 errors", |s| s.on("error").len() >= 2);
    // quiet_secs = 3: an exam would have been published by now
    std::thread::sleep(Duration::from_secs(5));
    let errors = sub.on("error");
    assert_eq!(distinct_result_ids(&errors).len(), 2, "{errors:?}");
    for e in &errors {
        assert_valid(&schema("error"), e);
        assert_eq!(e["reason_code"], "missing_attribute", "{e}");
    }
    assert!(sub.on("image").is_empty() && sub.on("exam").is_empty());
    assert_eq!(s.count("SELECT COUNT(*) FROM results"), 0);
    assert!(d.stop().success());
}

/// Review #28: a SIGHUP after the key of the hashed UIDs changed (same path, new content) keeps
/// the running key: the four images and the exam of one study carry one hashed
/// StudyInstanceUID, and the reload names `privacy.key_file` as needing a restart.
#[test]
fn a_reload_never_rekeys_the_hashed_uids_of_open_studies() {
    let broker = Broker::start();
    let (_key, key_file, s) = hashed_setup(&broker.url(), "");
    // one exam, published when complete (not after a quiet period mid-test)
    set_key(&s.config, "exam", "quiet_secs", "600");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-rekey", Arc::default());
    let mut d = s.start();
    sub.wait(30, "health", |s| last_health(s).is_some());
    let src = tmp();
    let files = exam(src.path(), 49);
    for f in &files[..2] {
        drop_in(&s.watch, f, f.file_name().unwrap().to_str().unwrap());
    }
    sub.wait(30, "2 images", |s| s.on("image").len() >= 2);
    std::fs::write(&key_file, "fedcba9876543210fedcba9876543210\n").unwrap();
    hup(&d);
    sub.wait(30, "the reload in health", |s| {
        last_health(s).is_some_and(|h| h["last_reload"]["ok"] == true)
    });
    let h = last_health(&sub).unwrap();
    assert_eq!(
        h["last_reload"]["needs_restart"],
        serde_json::json!(["privacy.key_file"])
    );
    for f in &files[2..] {
        drop_in(&s.watch, f, f.file_name().unwrap().to_str().unwrap());
    }
    sub.wait(30, "4 images and the exam", |s| {
        s.on("image").len() >= 4 && !s.on("exam").is_empty()
    });
    let mut studies: Vec<String> = sub
        .on("image")
        .iter()
        .chain(sub.on("exam").iter())
        .map(|m| m["study_instance_uid"].as_str().unwrap().to_string())
        .collect();
    studies.dedup();
    assert_eq!(studies.len(), 1, "{studies:?}");
    assert!(studies[0].starts_with("hmac-sha256:"));
    assert!(d.stop().success());
}

/// Review #23: a database error other than lack of storage ends the publisher (here a damaged
/// outbox row it cannot read); the daemon then stops with an error, for systemd to restart it,
/// instead of scoring on into an outbox nobody drains.
#[test]
fn a_publisher_database_error_stops_the_daemon() {
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-pub-error", Arc::default());
    let mut d = s.start();
    sub.wait(30, "health", |s| last_health(s).is_some());
    // `retain` holds text where the publisher reads a boolean: a damaged row
    s.db()
        .execute(
            "INSERT INTO outbox (topic, payload, retain, created_at)
             VALUES ('mammo/x/image', '{}', 'damaged', 0)",
            [],
        )
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
            d.child = None;
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the daemon went on without its publisher:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "{status:?}");
    let log = s.log_text();
    assert!(log.contains("the publisher stopped: "), "{log}");
    assert!(log.contains("for systemd to restart the daemon"), "{log}");
}
