//! `mammo-edge demo`: the daemon end to end on inputs the program makes itself. Starts an MQTT
//! broker on loopback (the embedded rumqttd of [`crate::cli::broker`], or `--broker URL`), runs the
//! daemon ([`crate::edge::daemon::run`], in this process) on a fresh export folder and state folder
//! with the bundled model (or `--model`), subscribes to its topics, drops in a four-view phantom
//! exam and a few files it must refuse (not DICOM, truncated, CT, For Processing), hands each
//! message that arrives to the caller, and stops the daemon once the exam and every refusal
//! have arrived. Main items: [`run`], [`DemoOptions`], [`DemoError`], [`Arrived`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use thiserror::Error;

use crate::edge::config::{Config, ConfigError};
use crate::edge::daemon::{DaemonError, RunStats};
use crate::ingest::dicom::sop;
use crate::ingest::dicom::Laterality;
use crate::model::bundled;
use crate::synth::generator::{generate, SynthConfig};
use crate::synth::{DicomSpec, GeometricPhantom, SynthError};

/// Marker file of a folder made by `demo --keep` (such a folder may be reused).
const MARKER: &str = ".mammo-edge-demo";
/// Matrix scale of the phantom exam (1 = full detector size).
const EXAM_SCALE: f64 = 0.25;

/// Why the demo failed.
#[derive(Debug, Error)]
pub enum DemoError {
    /// A file or folder of the demo could not be written or read.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// `--keep DIR` holds other files.
    #[error("--keep {0}: folder is not empty and was not made by an earlier demo; choose a new or empty folder")]
    KeepNotEmpty(PathBuf),
    /// The phantoms could not be generated.
    #[error(transparent)]
    Synth(#[from] SynthError),
    /// The phantom generation task ended without a result (panic).
    #[error("generating the phantoms: {0}")]
    Generate(String),
    /// No broker: built without the embedded one and no `--broker` given.
    #[error(
        "this mammo-edge was built without the embedded MQTT broker (cargo feature \
         `embedded-broker`, in the default features); pass --broker mqtt://HOST:PORT of a running \
         broker (e.g. mosquitto), or build with the default features"
    )]
    NoBroker,
    /// The embedded broker did not start.
    #[cfg(feature = "embedded-broker")]
    #[error(transparent)]
    Broker(#[from] crate::cli::broker::BrokerError),
    /// The daemon configuration the demo built was refused (`--broker` URL, usually).
    #[error("--broker: {0}")]
    Config(#[from] ConfigError),
    /// The daemon stopped with an error (model refused, state folder, …).
    #[error("daemon: {0}")]
    Daemon(#[from] DaemonError),
    /// The daemon task ended without a result (panic).
    #[error("daemon: {0}")]
    DaemonTask(String),
    /// The demo's subscriber lost the broker.
    #[error("subscriber: broker {url}: {detail}")]
    Subscriber { url: String, detail: String },
    /// `--dicom`: the exam could not be sent to the daemon's C-STORE receiver.
    #[error("C-STORE to the daemon: {0}")]
    Store(String),
    /// Not everything arrived in time.
    #[error("timed out after {secs} s; still waiting for: {missing}")]
    Timeout { secs: u64, missing: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DemoError {
    let path = path.to_path_buf();
    move |source| DemoError::Io { what, path, source }
}

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// ONNX model; `None` = the bundled int8 demo model.
    pub model: Option<PathBuf>,
    /// `mqtt://host:port` of a running broker; `None` = start the embedded one.
    pub broker: Option<String>,
    /// Folder for the export, state, phantom and model files, kept afterwards; `None` = a
    /// temporary folder removed at the end.
    pub keep: Option<PathBuf>,
    /// Seed of the phantom exam.
    pub seed: u64,
    /// How long to wait for all messages.
    pub timeout: Duration,
    /// Send the exam to the daemon's C-STORE receiver (`[dicom]` on a loopback port), and have
    /// its Mammography CAD SR written to `<folder>/sr` (`[sr] folder`), instead
    /// of dropping it into the export folder; the refusals still go to the folder.
    pub dicom: bool,
}

/// The calling AE title of `demo --dicom`.
pub const DEMO_CALLING_AE: &str = "MAMMO_DEMO";

/// A message from the daemon: `leaf` is the topic's last level (`image`, `exam`, `skipped`,
/// `error`), `payload` the text as received, `json` its parse.
#[derive(Debug, Clone, Copy)]
pub struct Arrived<'a> {
    pub leaf: &'a str,
    pub payload: &'a str,
    pub json: &'a Value,
}

/// What the demo saw.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub images: usize,
    pub exams: usize,
    pub skipped: usize,
    pub errors: usize,
    /// The daemon's counters.
    pub stats: RunStats,
    /// The broker used (`mqtt://…`) and whether it was the embedded one.
    pub broker_url: String,
    pub embedded_broker: bool,
    /// The topic prefix of the run.
    pub topic_prefix: String,
    /// The kept folder (`--keep`), if any.
    pub kept: Option<PathBuf>,
    /// Model name, version and the start of its sha256, and its intended use.
    pub model: String,
    pub intended_use: String,
    pub elapsed: Duration,
    /// `--dicom`: the Mammography CAD SR files the daemon wrote to its `sr.folder`.
    pub sr_files: usize,
}

/// A file the demo drops into the export folder and what the daemon must make of it.
#[derive(Debug, Clone)]
pub struct Input {
    /// Where it was generated (outside the watched folder).
    pub source: PathBuf,
    /// Its name in the export folder (published: the demo sets `privacy.publish_file_names`).
    pub name: String,
    /// `image`, or the topic leaf (`skipped` / `error`) and `reason_code` of its refusal.
    pub expect: Expect,
}

/// What the daemon must publish for an [`Input`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Image,
    Refused {
        leaf: &'static str,
        code: &'static str,
    },
}

/// Generate the inputs into `dir`: the four views of one phantom exam (`seed`, scale 0.25) and
/// four refusals: a text file (`error` / `not_dicom`), a DICOM file cut short (`error` /
/// `truncated`), a CT image (`skipped` / `not_mammogram`) and a For Processing mammogram
/// (`skipped` / `for_processing`). Errors: `Synth`, `Io`.
pub fn inputs(dir: &Path, seed: u64) -> Result<Vec<Input>, DemoError> {
    let exam_dir = dir.join("exam");
    let rows = generate(
        &SynthConfig {
            count: 4,
            seed,
            scale: EXAM_SCALE,
            threads: 2,
            ..Default::default()
        },
        &exam_dir,
    )?;
    let mut out: Vec<Input> = rows
        .iter()
        .map(|g| {
            let source = exam_dir.join(&g.row.path);
            let name = source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| g.row.path.clone());
            Input {
                source,
                name,
                expect: Expect::Image,
            }
        })
        .collect();

    let refused = dir.join("refused");
    std::fs::create_dir_all(&refused).map_err(io("creating", &refused))?;
    let text = refused.join("notes.txt");
    std::fs::write(&text, "Exported worklist notes: not an image.\n".repeat(8))
        .map_err(io("writing", &text))?;
    out.push(Input {
        source: text,
        name: "notes.txt".into(),
        expect: Expect::Refused {
            leaf: "error",
            code: "not_dicom",
        },
    });

    // small geometric phantoms with their own UIDs (a cut copy of an exam image would share its
    // SOPInstanceUID and be taken for a re-export)
    let spec = |seed: u64| {
        let ph = GeometricPhantom::new(256, 200, Laterality::L);
        let mut s = DicomSpec::mammogram(256, 200, DicomSpec::quantise(&ph.render(), 12, false));
        s.seed = seed ^ 0x5eed_0000;
        s
    };
    let truncated = refused.join("truncated.dcm");
    spec(seed.wrapping_add(1)).write(&truncated)?;
    let bytes = std::fs::read(&truncated).map_err(io("reading", &truncated))?;
    std::fs::write(&truncated, &bytes[..bytes.len() * 6 / 10])
        .map_err(io("writing", &truncated))?;
    out.push(Input {
        source: truncated,
        name: "truncated.dcm".into(),
        expect: Expect::Refused {
            leaf: "error",
            code: "truncated",
        },
    });

    let ct = refused.join("ct-image.dcm");
    let mut s = spec(seed.wrapping_add(2));
    s.modality = Some("CT".into());
    s.sop_class_uid = "1.2.840.10008.5.1.4.1.1.2".into();
    s.write(&ct)?;
    out.push(Input {
        source: ct,
        name: "ct-image.dcm".into(),
        expect: Expect::Refused {
            leaf: "skipped",
            code: "not_mammogram",
        },
    });

    let raw = refused.join("for-processing.dcm");
    let mut s = spec(seed.wrapping_add(3));
    s.presentation_intent = Some("FOR PROCESSING".into());
    s.sop_class_uid = sop::MG_PROCESSING.into();
    s.write(&raw)?;
    out.push(Input {
        source: raw,
        name: "for-processing.dcm".into(),
        expect: Expect::Refused {
            leaf: "skipped",
            code: "for_processing",
        },
    });
    Ok(out)
}

/// Prepare the `--keep` folder: created if missing; an earlier demo's folder is emptied;
/// any other non-empty folder is refused.
fn prepare_keep(dir: &Path) -> Result<(), DemoError> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io("reading", dir))?;
        if entries.next().is_some() {
            if !dir.join(MARKER).is_file() {
                return Err(DemoError::KeepNotEmpty(dir.to_path_buf()));
            }
            for sub in [
                "export",
                "state",
                "phantoms",
                "model",
                "config.toml",
                MARKER,
            ] {
                let p = dir.join(sub);
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else if p.exists() {
                    std::fs::remove_file(&p)
                } else {
                    Ok(())
                };
                r.map_err(io("clearing", &p))?;
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    std::fs::write(dir.join(MARKER), "made by mammo-edge demo\n")
        .map_err(io("writing", &dir.join(MARKER)))
}

/// The daemon configuration of the demo: watch `root/export`, state in `root/state`, a 1 s
/// stability time, file names published (the inputs are phantoms), the broker at `url`.
pub fn daemon_config(root: &Path, model: &Path, url: &str) -> Result<Config, ConfigError> {
    let mut c = Config::default();
    c.watch.dirs = vec![root.join("export")];
    c.watch.stable_secs = 1;
    c.watch.rescan_secs = 5;
    c.state.dir = root.join("state");
    c.model.path = model.to_path_buf();
    c.mqtt.url = url.to_string();
    let id = std::process::id();
    c.mqtt.topic_prefix = format!("mammo/demo/edge-{id}");
    c.mqtt.client_id = format!("mammo-edge-demo-{id}");
    // only phantom results travel; a plain connection to a site broker is acceptable here
    c.mqtt.allow_insecure = true;
    c.privacy.publish_file_names = true;
    c.validate()?;
    Ok(c)
}

/// Copy into the watched folder as `<name>.part`, then rename (as an exporter does).
fn drop_in(export: &Path, input: &Input) -> Result<(), DemoError> {
    let part = export.join(format!("{}.part", input.name));
    std::fs::copy(&input.source, &part).map_err(io("copying to", &part))?;
    let to = export.join(&input.name);
    std::fs::rename(&part, &to).map_err(io("renaming", &to))
}

/// `--dicom`: the exam's images to the daemon's receiver in one association (C-STORE SCU).
async fn send_exam(
    d: &crate::edge::config::DicomConfig,
    inputs: &[Input],
) -> Result<(), DemoError> {
    let files: Vec<PathBuf> = inputs
        .iter()
        .filter(|i| i.expect == Expect::Image)
        .map(|i| i.source.clone())
        .collect();
    let peer = crate::edge::dicom_scu::Peer {
        address: d.listen.clone(),
        calling_ae: DEMO_CALLING_AE.into(),
        called_ae: d.ae_title.clone(),
        timeout: Duration::from_secs(30),
        tls: None,
    };
    log::info!(
        "sending {} images by C-STORE to {} ({})",
        files.len(),
        peer.address,
        peer.called_ae
    );
    let statuses = crate::edge::dicom_scu::store_files(&peer, &files)
        .await
        .map_err(|e| DemoError::Store(e.to_string()))?;
    match statuses.iter().find(|s| **s != 0) {
        Some(s) => Err(DemoError::Store(format!(
            "C-STORE answered status 0x{s:04X}"
        ))),
        None => Ok(()),
    }
}

/// Run the demo; `on_message` sees each `image`, `exam`, `skipped` and `error` message as it
/// arrives. Returns once the exam message and the message of every refused input have arrived
/// (the daemon is then stopped), or `Timeout` after `opts.timeout`.
/// Errors: every [`DemoError`].
pub async fn run(
    opts: &DemoOptions,
    mut on_message: impl FnMut(Arrived<'_>),
) -> Result<DemoSummary, DemoError> {
    let t0 = Instant::now();
    // ---- broker first: without one, nothing else is worth doing
    let (url, embedded) = match &opts.broker {
        Some(u) => (u.clone(), false),
        None => (start_embedded()?, true),
    };
    // ---- folders, model, inputs
    let tmp;
    let root: PathBuf = match &opts.keep {
        Some(d) => {
            prepare_keep(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("mammo-edge-demo-")
                .tempdir()
                .map_err(io("creating a temporary folder in", &std::env::temp_dir()))?;
            tmp.path().to_path_buf()
        }
    };
    let export = root.join("export");
    std::fs::create_dir_all(&export).map_err(io("creating", &export))?;
    let model = match &opts.model {
        Some(p) => p.clone(),
        None => {
            let dir = root.join("model");
            std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
            let p = dir.join("mammo-mtl-demo.int8.onnx");
            std::fs::write(&p, bundled::DEMO_MODEL_INT8).map_err(io("writing", &p))?;
            // its float32 twin beside it: the daemon keeps the faster on this CPU
            let f = dir.join("mammo-mtl-demo.onnx");
            std::fs::write(&f, bundled::DEMO_MODEL_F32).map_err(io("writing", &f))?;
            p
        }
    };
    let phantoms = root.join("phantoms");
    let seed = opts.seed;
    let inputs = {
        let dir = phantoms.clone();
        tokio::task::spawn_blocking(move || inputs(&dir, seed))
            .await
            .map_err(|e| DemoError::Generate(e.to_string()))??
    };

    // ---- the daemon's configuration
    let mut config = daemon_config(&root, &model, &url)?;
    if opts.dicom {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port for", Path::new("[dicom] listen")))?
            .port();
        config.dicom = Some(crate::edge::config::DicomConfig {
            listen: format!("127.0.0.1:{port}"),
            calling_ae_allow: vec![DEMO_CALLING_AE.into()],
            ip_allow: vec!["127.0.0.1".into()],
            ..Default::default()
        });
        // and the exam's Mammography CAD SR comes back as a file (a PACS would get it by C-STORE)
        config.sr.folder = root.join("sr");
        config.validate()?;
    }
    let cfg_path = root.join("config.toml");
    if let Ok(text) = toml::to_string(&config) {
        std::fs::write(&cfg_path, text).map_err(io("writing", &cfg_path))?;
    }
    let prefix = config.mqtt.topic_prefix.clone();

    // ---- subscriber first, so nothing is missed
    let broker = config.mqtt.broker()?;
    let sub_err = |detail: String| DemoError::Subscriber {
        url: url.clone(),
        detail,
    };
    if broker.tls {
        return Err(sub_err(
            "the demo speaks plain mqtt:// only; for a TLS broker use `mammo-edge run` with a config".into(),
        ));
    }
    let mut mo = MqttOptions::new(
        format!("{}-sub", config.mqtt.client_id),
        broker.host.clone(),
        broker.port,
    );
    mo.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(mo, 64);
    client
        .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
        .await
        .map_err(|e| sub_err(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let timeout = |missing: &str| DemoError::Timeout {
        secs: opts.timeout.as_secs(),
        missing: missing.to_string(),
    };
    loop {
        let ev = tokio::time::timeout_at(deadline, events.poll())
            .await
            .map_err(|_| timeout("the broker's SUBACK"))?;
        match ev {
            Ok(Event::Incoming(Packet::SubAck(_))) => break,
            Ok(_) => {}
            Err(e) => return Err(sub_err(e.to_string())),
        }
    }

    // ---- the daemon, in this process
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut daemon = tokio::spawn(crate::edge::daemon::run(config.clone(), async move {
        let _ = stop_rx.await;
    }));
    let mut model_line = String::new();
    let mut intended_use = String::new();
    let mut dropped = false;
    let mut seen_images: Vec<String> = Vec::new();
    let mut seen_refused: Vec<String> = Vec::new();
    let (mut exams, mut skipped, mut errors) = (0usize, 0usize, 0usize);
    let status_topic = format!("{prefix}/status");
    let want_images = inputs.iter().filter(|i| i.expect == Expect::Image).count();
    let want_refused: Vec<&Input> = inputs
        .iter()
        .filter(|i| i.expect != Expect::Image)
        .collect();
    loop {
        let done = exams > 0
            && seen_images.len() >= want_images
            && want_refused.iter().all(|i| seen_refused.contains(&i.name));
        if done {
            break;
        }
        let ev = tokio::select! {
            ev = events.poll() => ev,
            r = &mut daemon => {
                return Err(match r {
                    Ok(Ok(_)) => DemoError::DaemonTask("stopped before the demo ended".into()),
                    Ok(Err(e)) => DemoError::Daemon(e),
                    Err(e) => DemoError::DaemonTask(e.to_string()),
                });
            }
            _ = tokio::time::sleep_until(deadline) => {
                let mut missing = Vec::new();
                if !dropped {
                    missing.push("the daemon's `online` status".to_string());
                }
                if seen_images.len() < want_images {
                    missing.push(format!("{} of {want_images} image messages", want_images - seen_images.len()));
                }
                if exams == 0 {
                    missing.push("the exam message".into());
                }
                for i in &want_refused {
                    if !seen_refused.contains(&i.name) {
                        if let Expect::Refused { leaf, .. } = i.expect {
                            missing.push(format!("the {leaf} message of {}", i.name));
                        }
                    }
                }
                let _ = stop_tx.send(());
                return Err(timeout(&missing.join(", ")));
            }
        };
        let p = match ev {
            Ok(Event::Incoming(Packet::Publish(p))) => p,
            Ok(_) => continue,
            Err(e) => return Err(sub_err(e.to_string())),
        };
        let text = String::from_utf8_lossy(&p.payload).into_owned();
        if p.topic == status_topic {
            if text == "online" && !dropped {
                // the daemon has loaded the model and its publisher is connected: drop the files
                log::info!(
                    "daemon online; dropping {} files into {}",
                    inputs.len(),
                    export.display()
                );
                for i in &inputs {
                    if !(opts.dicom && i.expect == Expect::Image) {
                        drop_in(&export, i)?;
                    }
                }
                if let Some(d) = config.dicom.as_ref().filter(|_| opts.dicom) {
                    send_exam(d, &inputs).await?;
                }
                dropped = true;
            }
            continue;
        }
        let leaf = p.topic.rsplit('/').next().unwrap_or("").to_string();
        if !matches!(leaf.as_str(), "image" | "exam" | "skipped" | "error") {
            continue;
        }
        let json: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                log::warn!("{}: payload is not JSON ({e})", p.topic);
                continue;
            }
        };
        let file = json["file"].as_str().unwrap_or("").to_string();
        match leaf.as_str() {
            "image" => {
                if !seen_images.contains(&file) {
                    seen_images.push(file);
                }
                if model_line.is_empty() {
                    let m = &json["model"];
                    let field = |k: &str| m[k].as_str().unwrap_or("?").to_string();
                    let sha = field("sha256");
                    model_line = format!(
                        "{} {} (sha256 {}…)",
                        field("name"),
                        field("version"),
                        sha.get(..12).unwrap_or(&sha)
                    );
                    intended_use = field("intended_use");
                }
            }
            "exam" => exams += 1,
            "skipped" | "error" => {
                if leaf == "skipped" {
                    skipped += 1;
                } else {
                    errors += 1;
                }
                if !seen_refused.contains(&file) {
                    seen_refused.push(file);
                }
            }
            _ => {}
        }
        on_message(Arrived {
            leaf: &leaf,
            payload: &text,
            json: &json,
        });
    }

    // ---- with --dicom, the SR the daemon queued with the exam (written within moments)
    let sr_files = if opts.dicom {
        let dir = config.sr.folder.clone();
        let count = || {
            std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".dcm"))
                        .count()
                })
                .unwrap_or(0)
        };
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while count() < exams && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let n = count();
        log::info!("{n} Mammography CAD SR file(s) in {}", dir.display());
        n
    } else {
        0
    };

    // ---- stop the daemon, let the subscriber go
    let _ = stop_tx.send(());
    let stats = match tokio::time::timeout(Duration::from_secs(30), &mut daemon).await {
        Ok(Ok(Ok(s))) => s,
        Ok(Ok(Err(e))) => return Err(DemoError::Daemon(e)),
        Ok(Err(e)) => return Err(DemoError::DaemonTask(e.to_string())),
        Err(_) => return Err(DemoError::DaemonTask("did not stop within 30 s".into())),
    };
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), events.poll()).await;
    Ok(DemoSummary {
        sr_files,
        images: seen_images.len(),
        exams,
        skipped,
        errors,
        stats,
        broker_url: url,
        embedded_broker: embedded,
        topic_prefix: prefix,
        kept: opts.keep.clone(),
        model: model_line,
        intended_use,
        elapsed: t0.elapsed(),
    })
}

#[cfg(feature = "embedded-broker")]
fn start_embedded() -> Result<String, DemoError> {
    Ok(crate::cli::broker::EmbeddedBroker::start()?.url())
}

#[cfg(not(feature = "embedded-broker"))]
fn start_embedded() -> Result<String, DemoError> {
    Err(DemoError::NoBroker)
}
