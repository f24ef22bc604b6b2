//! The edge daemon's run loop (DESIGN.md, "Data flow (edge)"): load config and model once, then
//! watched folder → stable file → `Store::claim` → decode + preprocess + tract in a blocking
//! worker thread (bounded queue, per-file time limit, panics caught) → result / skip / error row
//! and its outbox messages in ONE transaction → the publisher drains the outbox → the exam rule
//! publishes `exam` messages. [`run`] takes its shutdown as a future; [`run_with`] also
//! reloads the configuration file and the model on SIGHUP. Intake pauses while the state folder
//! is short of space or the state database cannot be written, and the retained `health`
//! snapshot says so ([`crate::edge::health`]). [`check`] backs `mammo-edge check`. Main items:
//! [`run`], [`run_with`], [`check`], [`DaemonError`], [`RunStats`].

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};

use crate::edge::config::{Config, FilesAfter, Precision, Settle};
use crate::edge::dicom_scp::{received_dir, Received, Scp, ScpError, ScpSettings};
use crate::edge::drift::Monitor;
use crate::edge::exam::{aggregate, next_revision};
use crate::edge::health::{
    free_bytes, Counters, Health, HealthModel, Intake, PauseCode, StateSpace,
};
use crate::edge::message::{Messages, ModelInfo, Privacy, StoredScore};
use crate::edge::publish::{probe, PublishError, Publisher, Retained, Topics};
use crate::edge::service::{Liveness, Notifier};
use crate::edge::sr::{self, SourceImage};
use crate::edge::sr_delivery::SrSender;
use crate::edge::store::{
    result_id, Claim, Committed, ImageKey, SrOutgoing, StateLock, Status, Store, StoreError,
    Ticket, IO_REASON,
};
use crate::edge::watch::{scan, FsEvents, Stability, WatchError};
use crate::ingest::dicom::{Category, IngestOptions, MammoMeta};
use crate::ingest::files::sha256_hex;
use crate::model::precision::{self, Candidate, Choice};
use crate::model::score::{infer_file_detailed, Scored};
use crate::model::{ContractError, ModelRunner};

/// How often stability is checked, ms.
const STABILITY_TICK: Duration = Duration::from_millis(250);
/// How often quiet exams are looked for.
const EXAM_TICK: Duration = Duration::from_secs(1);
/// How often delivered rows past `state.retention_days` are purged.
const PURGE_TICK: Duration = Duration::from_secs(3600);
/// At shutdown, how long an image being scored may still take before it is left to recovery.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Files claimed per loop turn at most (keeps the loop responsive during a burst).
const CLAIMS_PER_TURN: usize = 64;
/// While state database writes fail for lack of storage, how long before the next try.
const DB_RETRY: Duration = Duration::from_secs(5);
/// Worker threads abandoned at their time limit and still running at which the daemon exits
/// (for systemd to restart it): memory and CPU stay bounded by this many decodes plus one.
const MAX_ABANDONED: usize = 2;

/// Why the daemon (or `check`) stopped.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The model file could not be read or does not follow docs/model-contract.md.
    #[error("model.path {path}: {source}")]
    Model {
        path: PathBuf,
        source: ContractError,
    },
    /// The state database could not be opened or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A watched folder could not be watched.
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// `privacy.key_file` unusable.
    #[error(transparent)]
    Privacy(#[from] crate::edge::message::MessageError),
    /// Broker settings unusable, or (in `check`) the broker unreachable.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The DICOM receiver (`[dicom]`) could not start.
    #[error(transparent)]
    Scp(#[from] ScpError),
    /// The DICOM TLS files of an `[[sr.destination]]` are unusable.
    #[error(transparent)]
    Tls(#[from] crate::edge::tls::TlsError),
    /// (In `check`) an `[[sr.destination]]` did not answer C-ECHO.
    #[error("sr.destination {key}: {reason}")]
    SrDestination { key: String, reason: String },
    /// A thread could not be started or a task failed.
    #[error("runtime: {0}")]
    Runtime(String),
}

/// Counters of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub scored: u64,
    pub skipped: u64,
    pub errors: u64,
    pub duplicates: u64,
    pub quarantined: u64,
    /// Files given back for a retry after a time-out or a panic.
    pub retries: u64,
    pub exams_published: u64,
}

/// A loaded model with the sha256 of its file.
pub struct LoadedModel {
    pub runner: ModelRunner,
    /// SHA-256 of the model file, lower-case hex.
    pub sha256: String,
    /// With `model.precision = "auto"` and both precisions present: which file was chosen over
    /// which, with their times on this CPU (logged at start-up and reload).
    pub choice: Option<Choice>,
}

/// Load `model.path`, check the contract (`ModelRunner::load`, which also runs one warm-up
/// pass) and hash the file; with `model.precision = "auto"`, also its other precision beside
/// it and keep the faster ([`load_model_if_changed`]). Errors: `Model`.
pub fn load_model(config: &Config) -> Result<LoadedModel, DaemonError> {
    let m = &config.model;
    load_model_if_changed(&m.path, m.threads as usize, m.precision, ("", 0))?
        .ok_or_else(|| DaemonError::Runtime("model load reported no change on first load".into()))
}

/// Read `path` and, unless its sha256 (or, with `Precision::Auto`, that of its other-precision
/// file beside it) is `running.0` and `threads` is `running.1`, check it as a model (contract
/// and warm-up pass) on `threads` inference threads. With `Precision::Auto` and the other
/// precision of the same model beside it ([`precision::sibling`], [`precision::same_model`]),
/// both are timed on this CPU and the faster is kept; a sibling that is not the same model, or
/// does not load, is ignored with a warning. `Ok(None)`: the running model and threads.
/// Errors: `Model` (of `path`).
fn load_model_if_changed(
    path: &Path,
    threads: usize,
    mode: Precision,
    running: (&str, usize),
) -> Result<Option<LoadedModel>, DaemonError> {
    let (bytes, sha256) = read_model(path)?;
    let other = match (mode, precision::sibling(path)) {
        (Precision::Auto, Some(p)) if p.is_file() => Some((read_model(&p), p)),
        _ => None,
    };
    let unchanged = |sha: &str| sha == running.0 && threads.max(1) == running.1;
    if unchanged(&sha256) || matches!(&other, Some((Ok((_, sha)), _)) if unchanged(sha)) {
        return Ok(None);
    }
    let load = |bytes: &[u8], label: String, sha256: String| {
        ModelRunner::from_bytes(bytes, &label).map(|r| Candidate {
            runner: r.with_threads(threads),
            label,
            sha256,
        })
    };
    let configured = load(&bytes, path.display().to_string(), sha256).map_err(model_err(path))?;
    let other = other.map(|(read, p)| {
        read.map_err(|e| e.to_string())
            .and_then(|(b, sha)| load(&b, p.display().to_string(), sha).map_err(|e| e.to_string()))
    });
    let (kept, choice) = precision::faster(configured, other).map_err(model_err(path))?;
    Ok(Some(LoadedModel {
        runner: kept.runner,
        sha256: kept.sha256,
        choice,
    }))
}

/// The bytes of the model file at `path` and their sha256 (hex). Errors: `Model` (`Read`).
fn read_model(path: &Path) -> Result<(Vec<u8>, String), DaemonError> {
    let bytes = std::fs::read(path).map_err(|e| {
        model_err(path)(ContractError::Read {
            path: path.display().to_string(),
            detail: e.to_string(),
        })
    })?;
    let sha256 = sha256_hex(&bytes);
    Ok((bytes, sha256))
}

/// `DaemonError::Model` for the model file at `path`.
fn model_err(path: &Path) -> impl Fn(ContractError) -> DaemonError + '_ {
    move |source| DaemonError::Model {
        path: path.to_path_buf(),
        source,
    }
}

/// What `check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub model_name: String,
    pub model_version: String,
    pub model_sha256: String,
    /// False with `--no-broker`.
    pub broker_checked: bool,
    /// The `[[sr.destination]]`s that answered C-ECHO (`AE@host:port`).
    pub sr_echoed: Vec<String>,
}

/// `mammo-edge check`: model contract, state folder, privacy key, TLS / credential files and,
/// when `broker` is true, a CONNACK from the broker within `broker_timeout` and a C-ECHO
/// answered by each `[[sr.destination]]` (within its `timeout_secs`).
/// Errors: `Model`, `Store`, `Privacy`, `Publish`, `SrDestination`.
pub async fn check(
    config: &Config,
    broker: bool,
    broker_timeout: Duration,
) -> Result<CheckReport, DaemonError> {
    let model = load_model(config)?;
    Privacy::from_config(config)?;
    crate::edge::publish::mqtt_options(&config.mqtt)?;
    crate::edge::watch::check_dirs(&config.watch.dirs)?;
    Store::open(&config.state.dir, config.ingest.max_attempts)?;
    // the receiver's TLS files
    ScpSettings::from_config(config)?;
    let mut sr_echoed = Vec::new();
    if broker {
        probe(&config.mqtt, broker_timeout).await?;
        for d in crate::edge::sr_delivery::Destination::from_config(&config.sr)? {
            if let crate::edge::sr_delivery::Destination::Scu { key, peer } = d {
                crate::edge::dicom_scu::echo(&peer).await.map_err(|e| {
                    DaemonError::SrDestination {
                        key: key.clone(),
                        reason: e.to_string(),
                    }
                })?;
                sr_echoed.push(key);
            }
        }
    }
    Ok(CheckReport {
        sr_echoed,
        model_name: model.runner.meta.model_name.clone(),
        model_version: model.runner.meta.model_version.clone(),
        model_sha256: model.sha256,
        broker_checked: broker,
    })
}

/// Resolves on SIGTERM or SIGINT (the shutdown future of the `run` command).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM: shutting down"),
                _ = tokio::signal::ctrl_c() => log::info!("SIGINT: shutting down"),
            }
        }
        Err(e) => {
            log::warn!("SIGTERM handler not installed ({e}); only SIGINT stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// What the worker made of one file.
enum Outcome {
    Scored(Box<Scored>),
    Rejected {
        meta: Option<Box<MammoMeta>>,
        category: Category,
        code: &'static str,
        reason: String,
    },
    /// The SOPInstanceUID was scored already (a re-exported copy). UIDs as kept at rest.
    Duplicate {
        sop: String,
        study: Option<String>,
    },
    Panicked(String),
    /// The file's content (sha256) was quarantined before, under this reason (review #10).
    QuarantinedContent(String),
    /// The file's content was finished with this status before its rows were purged past
    /// `state.retention_days` (a file left in the watched folder; review #13).
    PurgedBefore(Status),
}

struct Job {
    seq: u64,
    path: PathBuf,
    ticket: Ticket,
}

struct Reply {
    seq: u64,
    outcome: Outcome,
}

/// The blocking worker: one thread, a job queue of one, its own read connection for `seen_sop`.
struct Worker {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

fn spawn_worker(
    runner: Arc<ModelRunner>,
    opts: IngestOptions,
    mut store: Store,
    privacy: Privacy,
    replies: mpsc::UnboundedSender<Reply>,
    n: u64,
) -> Result<Worker, DaemonError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(1);
    // the decode resolution of this worker's model, once
    let opts = crate::model::score::for_model(&runner, &opts).into_owned();
    std::thread::Builder::new()
        .name(format!("mammo-worker-{n}"))
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    work(&runner, &opts, &mut store, &privacy, &job)
                }))
                .unwrap_or_else(|p| {
                    let what = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into());
                    Outcome::Panicked(what)
                });
                if replies
                    .send(Reply {
                        seq: job.seq,
                        outcome,
                    })
                    .is_err()
                {
                    break;
                }
            }
        })
        .map_err(|e| DaemonError::Runtime(format!("worker thread: {e}")))?;
    Ok(Worker { jobs: tx })
}

/// The content's sha256 first (a copy of a quarantined file is not decoded again; otherwise the
/// hash is recorded on the ledger row before decoding, so a crash now quarantines the content;
/// a content finished before its rows were purged is finished again as it was), then the header
/// (a re-exported SOPInstanceUID is not decoded again), then the whole pipeline.
fn work(
    runner: &ModelRunner,
    opts: &IngestOptions,
    store: &mut Store,
    privacy: &Privacy,
    job: &Job,
) -> Outcome {
    let path = job.path.as_path();
    // an unreadable file is left to the pipeline below, which names the read error
    if let Ok(sha256) = crate::ingest::files::sha256_file(path) {
        match store.quarantined_content(&sha256) {
            Ok(Some(reason)) => return Outcome::QuarantinedContent(reason),
            Ok(None) => {}
            Err(e) => log::warn!("quarantine lookup failed ({e}); decoding anyway"),
        }
        if let Err(e) = store.record_content(&job.ticket, &sha256) {
            log::warn!("content hash not recorded ({e}); decoding anyway");
        }
        match store.purged_content(&sha256) {
            Ok(Some(status)) => return Outcome::PurgedBefore(status),
            Ok(None) => {}
            Err(e) => log::warn!("purged-content lookup failed ({e}); decoding anyway"),
        }
    }
    if let Ok(obj) = crate::ingest::dicom::open_header(path) {
        if let Ok(meta) = MammoMeta::from_object(&obj) {
            if !meta.sop_instance_uid.is_empty() {
                let sop = privacy.uid(&meta.sop_instance_uid);
                match store.seen_sop(&sop) {
                    Ok(true) => {
                        return Outcome::Duplicate {
                            sop,
                            study: Some(&meta.study_instance_uid)
                                .filter(|s| !s.is_empty())
                                .map(|s| privacy.uid(s)),
                        }
                    }
                    Ok(false) => {}
                    Err(e) => log::warn!("ledger lookup failed ({e}); decoding anyway"),
                }
            }
        }
    }
    match infer_file_detailed(runner, path, opts) {
        Ok(s) => Outcome::Scored(Box::new(s)),
        Err((meta, e)) => Outcome::Rejected {
            meta,
            category: e.category(),
            code: e.code(),
            reason: e.to_string(),
        },
    }
}

struct InFlight {
    seq: u64,
    ticket: Ticket,
    path: PathBuf,
    deadline: tokio::time::Instant,
}

/// A claimed file whose ledger update failed for lack of storage: given back once the
/// database can be written again (`count_attempt`: through `retry_later`, else `release`).
struct Stalled {
    path: PathBuf,
    ticket: Ticket,
    count_attempt: bool,
    reason: &'static str,
}

/// A configuration and model read again on SIGHUP (in a blocking task), or why not.
struct Reloaded {
    result: Result<(Config, Option<LoadedModel>, Privacy), String>,
}

/// Read the configuration file and, if its file or `model.threads` changed, the model
/// (SIGHUP). `running`: the running model's sha256 and threads.
fn load_for_reload(path: &Path, running: (&str, usize)) -> Reloaded {
    let result = (|| {
        let config = Config::load(path).map_err(|e| format!("configuration refused: {e}"))?;
        let privacy = Privacy::from_config(&config).map_err(|e| e.to_string())?;
        let model = load_model_if_changed(
            &config.model.path,
            config.model.threads as usize,
            config.model.precision,
            running,
        )
        .map_err(|e| format!("model refused: {e}"))?;
        Ok((config, model, privacy))
    })();
    Reloaded { result }
}

/// SIGHUP, when a configuration file can be re-read; pending forever otherwise.
async fn hangup(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

fn status_info(info: &ModelInfo, started_at: &str) -> serde_json::Value {
    serde_json::json!({
        "appliance": "mammo-edge",
        "version": env!("CARGO_PKG_VERSION"),
        "model": info,
        "started_at": started_at,
    })
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

struct Pipeline {
    config: Config,
    /// The configuration file, re-read on SIGHUP (`None`: no reload).
    config_path: Option<PathBuf>,
    store: Store,
    msgs: Messages,
    runner: Arc<ModelRunner>,
    opts: IngestOptions,
    stability: Stability,
    queue: VecDeque<PathBuf>,
    busy: Option<InFlight>,
    worker: Worker,
    workers_started: u64,
    /// Jobs whose worker thread was abandoned at its time limit and has not replied yet (a
    /// thread cannot be cancelled): their files are not started again beside them, and at
    /// [`MAX_ABANDONED`] the daemon exits for systemd to restart it (review #11).
    abandoned: Vec<(u64, PathBuf)>,
    /// Why the loop must end with an error (the process exits non-zero; systemd restarts it).
    fatal: Option<String>,
    replies_tx: mpsc::UnboundedSender<Reply>,
    seq: u64,
    waker: Arc<Notify>,
    /// Studies whose aggregation failed, with the image time it failed for (no retry loop).
    exam_failed: HashMap<String, i64>,
    stats: RunStats,
    notifier: Notifier,
    retained: Retained,
    started: SystemTime,
    /// Intake state last reported (log + health on change).
    intake: Intake,
    /// Free bytes of the state folder at the last check.
    free: Option<u64>,
    /// Why the free space is too low, while it is.
    disk_low: Option<String>,
    /// The last state database failure, while writes fail; retried at `db_retry_at`.
    db_failure: Option<String>,
    db_retry_at: Option<tokio::time::Instant>,
    stalled: Vec<Stalled>,
    reload_tx: mpsc::UnboundedSender<Reloaded>,
    /// A reload is being read / waits to be applied / was asked for again meanwhile.
    reloading: bool,
    reload_pending: Option<Reloaded>,
    reload_again: bool,
    last_reload: Option<crate::edge::health::Reload>,
    /// The tick periods changed (reload): the loop rebuilds its intervals.
    ticks_changed: bool,
    /// While `[sr]` is on (SRs are made only then): the SR sender's waker and its destination
    /// keys (each SR is queued once per key).
    sr: Option<(Arc<Notify>, Vec<String>)>,
    /// The drift monitor of the running model (`None` with `drift.enabled = false`).
    drift: Option<Monitor>,
}

/// The drift monitor for `meta` (its `mammo.drift_reference`) resuming the windows the state
/// database holds for the model `sha256`; `None` when `[drift]` is off. Errors: `Store`.
fn drift_monitor(
    config: &Config,
    store: &mut Store,
    meta: &crate::model::ModelMeta,
    sha256: &str,
) -> Result<Option<Monitor>, DaemonError> {
    if !config.drift.enabled {
        return Ok(None);
    }
    let stored = store.drift_windows(sha256, config.drift.window)?;
    let m = Monitor::new(config.drift.clone(), meta.drift_reference.clone(), stored);
    log::info!(
        "drift monitor: {} source window(s) resumed; {}",
        m.sources(),
        match &meta.drift_reference {
            Some(r) => format!("reference of {} source(s) ({})", r.sources.len(), r.images),
            None => "the model has no drift reference: only the out-of-distribution rate is judged"
                .into(),
        }
    );
    Ok(Some(m))
}

/// Run the daemon until `shutdown` resolves: recover the ledger, start the publisher, watch,
/// score, publish. Returns the counters of the run. Under systemd (`NOTIFY_SOCKET`), sends
/// `READY=1` once the model is loaded and the watcher, worker and publisher are started,
/// `WATCHDOG=1` while the loops make progress ([`crate::edge::service`]), and `STOPPING=1` when
/// `shutdown` resolves. SIGHUP is not handled (see [`run_with`]).
///
/// Errors (all at start-up; later failures of one file or of the broker are logged and the
/// daemon goes on): `Model`, `Store`, `Watch`, `Privacy`, `Publish` (TLS / credential files),
/// `Runtime`.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<RunStats, DaemonError> {
    run_with(config, None, shutdown).await
}

/// [`run`], and with `config_path` (the file `config` was read from) a SIGHUP reload: the file
/// and the model are read again; a configuration or model that fails its checks is refused
/// (logged, reported in `health.last_reload`) and the running ones are kept; otherwise the new
/// values apply from the next file (the file being scored finishes with the model it started
/// with), except `watch.dirs`, `state.dir` and the broker settings, which are reported as
/// needing a restart ([`Config::reloaded`]). Under systemd: `RELOADING=1` + `MONOTONIC_USEC`,
/// then `READY=1`. The SIGHUP handler is installed before the model is loaded, so an early
/// SIGHUP does not end the process. Errors: as [`run`].
pub async fn run_with(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunStats, DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match &config_path {
        Some(_) => match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("SIGHUP handler not installed ({e}); reload needs a restart");
                None
            }
        },
        None => None,
    };
    if crate::edge::service::early_sighup_seen() {
        log::info!(
            "SIGHUP during start-up: the configuration and model being loaded now are the ones in use"
        );
    }
    let started = SystemTime::now();
    let cfg = config.clone();
    let model = tokio::task::spawn_blocking(move || load_model(&cfg))
        .await
        .map_err(|e| DaemonError::Runtime(e.to_string()))??;
    let privacy = Privacy::from_config(&config)?;
    // read the TLS / credential files now: a bad path stops the start, not the first connection
    crate::edge::publish::mqtt_options(&config.mqtt)?;
    // one daemon per state folder, before recovery touches another one's claims (review #21)
    let _state_lock = StateLock::acquire(&config.state.dir)?;
    let mut store = Store::open(&config.state.dir, config.ingest.max_attempts)?;
    if let Some(key) = privacy.at_rest_key() {
        let n = store.hash_at_rest(key, |uid| privacy.uid(uid))?;
        if n > 0 {
            log::info!("{n} state row(s) kept plain by an earlier run now hashed");
        }
    }
    let recovered = store.recover()?;
    if recovered > 0 {
        log::warn!("{recovered} file(s) interrupted by the last stop will be retried");
    }
    let info = ModelInfo::new(&model.runner.meta, &model.sha256);
    let msgs = Messages {
        topics: Topics::new(&config.mqtt.topic_prefix),
        model: info.clone(),
        privacy,
    };
    // the DICOM receiver, bound before the publisher announces `online` (a sender waiting for
    // it finds the port open); objects it stored are recorded and queued by this loop
    let (received_tx, mut received_rx) = mpsc::channel::<Received>(16);
    let scp = match ScpSettings::from_config(&config)? {
        Some(settings) => {
            let scp = Scp::bind(settings).await?;
            log::info!(
                "DICOM receiver on {} as {}",
                scp.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                config
                    .dicom
                    .as_ref()
                    .map(|d| d.ae_title.as_str())
                    .unwrap_or("")
            );
            Some(tokio::spawn(scp.serve(received_tx)))
        }
        None => {
            drop(received_tx);
            None
        }
    };
    let publisher = Publisher::new(
        config.mqtt.clone(),
        Store::open(&config.state.dir, config.ingest.max_attempts)?,
        status_info(&info, &rfc3339(started)),
    );
    let liveness = Arc::new(Liveness::default());
    let mut publisher = publisher.with_liveness(liveness.clone());
    let waker = publisher.waker();
    let retained = publisher
        .retained()
        .ok_or_else(|| DaemonError::Runtime("publisher handles taken".into()))?;
    let health_request = retained.health_request.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut publisher = tokio::spawn(publisher.run(stop_rx.clone()));
    // the publisher's end, once seen in the loop (it ends early only on a database error other
    // than lack of storage: results would pile up unpublished, so the daemon stops; review #23)
    let mut publisher_ended = None;

    // the Mammography CAD SR sender, when [sr] names a destination
    let (mut sr_task, sr) = if config.sr.is_off() {
        (None, None)
    } else {
        let sender = SrSender::new(
            Store::open(&config.state.dir, config.ingest.max_attempts)?,
            &config.sr,
        )?;
        let handles = (sender.waker(), sender.keys());
        log::info!(
            "SR on: {} destination(s){}",
            config.sr.destination.len(),
            if config.sr.folder.as_os_str().is_empty() {
                ""
            } else {
                " and a folder"
            }
        );
        (
            Some(tokio::spawn(sender.run(stop_rx.clone()))),
            Some(handles),
        )
    };
    let mut sr_ended = None;

    let (_fs, mut fs_rx) = FsEvents::start(&config.watch.dirs)?;
    let drift = drift_monitor(&config, &mut store, &model.runner.meta, &model.sha256)?;
    let runner = Arc::new(model.runner);
    let opts = config.ingest_options();
    let (replies_tx, mut replies_rx) = mpsc::unbounded_channel();
    let (reload_tx, mut reload_rx) = mpsc::unbounded_channel();
    // the full rescan walks the tree in a blocking task (tens of thousands of folders on NFS
    // take minutes; the loop, its watchdog beat and SIGTERM must not wait: review #15)
    let (rescan_tx, mut rescan_rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut rescanning = false;
    let worker = spawn_worker(
        runner.clone(),
        opts.clone(),
        Store::open(&config.state.dir, config.ingest.max_attempts)?,
        msgs.privacy.clone(),
        replies_tx.clone(),
        1,
    )?;
    let notifier = Notifier::from_env();
    let mut p = Pipeline {
        stability: Stability::new(Duration::from_secs(config.watch.stable_secs)),
        config,
        config_path,
        store,
        msgs,
        runner,
        opts,
        queue: VecDeque::new(),
        busy: None,
        worker,
        workers_started: 1,
        abandoned: Vec::new(),
        fatal: None,
        replies_tx,
        seq: 0,
        waker,
        exam_failed: HashMap::new(),
        stats: RunStats::default(),
        notifier: notifier.clone(),
        retained,
        started,
        intake: Intake::Running,
        free: None,
        disk_low: None,
        db_failure: None,
        db_retry_at: None,
        stalled: Vec::new(),
        reload_tx,
        reloading: false,
        reload_pending: None,
        reload_again: false,
        last_reload: None,
        ticks_changed: false,
        sr,
        drift,
    };
    log::info!(
        "watching {} folder(s); broker {}; topics {}/…",
        p.config.watch.dirs.len(),
        p.config.mqtt.url,
        p.config.mqtt.topic_prefix
    );
    p.check_space();

    liveness.pipeline();
    notifier.ready(&p.status_line());
    let watchdog = tokio::spawn(notifier.clone().watchdog(liveness.clone()));

    let ticks = |c: &Config| {
        let mut t = [
            tokio::time::interval(STABILITY_TICK),
            tokio::time::interval(Duration::from_secs(c.watch.rescan_secs)),
            tokio::time::interval(EXAM_TICK),
            tokio::time::interval(PURGE_TICK),
            tokio::time::interval(Duration::from_secs(c.mqtt.health_secs)),
        ];
        for i in &mut t {
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        t
    };
    let [mut stable_tick, mut rescan_tick, mut exam_tick, mut purge_tick, mut health_tick] =
        ticks(&p.config);
    tokio::pin!(shutdown);
    loop {
        // an idle turn is progress; a worker past its file time limit is not
        if p.busy
            .as_ref()
            .is_none_or(|b| tokio::time::Instant::now() < b.deadline)
        {
            liveness.pipeline();
        }
        if p.busy.is_none() {
            // a reload applies between files: the image in the worker keeps its model
            p.apply_reload();
        }
        if std::mem::take(&mut p.ticks_changed) {
            let [_, r, _, _, h] = ticks(&p.config);
            (rescan_tick, health_tick) = (r, h);
        }
        p.retry_stalled();
        if p.busy.is_none() {
            p.start_next();
        }
        let deadline = p.busy.as_ref().map(|b| b.deadline);
        tokio::select! {
            _ = &mut shutdown => break,
            Some(path) = fs_rx.recv() => {
                // a close-write or moved-to event: complete (watch.settle = "events")
                let now = Instant::now();
                if p.config.watch.settle == Settle::Events {
                    p.stability.observe_closed(path, now);
                    let ready = p.stability.ready(now);
                    p.queue.extend(ready);
                } else {
                    p.stability.observe(path, now);
                }
            }
            _ = stable_tick.tick() => {
                let ready = p.stability.ready(Instant::now());
                p.queue.extend(ready);
                p.check_space();
            }
            _ = rescan_tick.tick(), if !rescanning => {
                rescanning = true;
                let (dirs, tx) = (p.scan_dirs(), rescan_tx.clone());
                // a thread of its own, not spawn_blocking: the runtime would wait for a long
                // walk at shutdown, this thread ends with the process
                let walk = std::thread::Builder::new()
                    .name("mammo-rescan".into())
                    .spawn(move || {
                        let _ = tx.send(scan(&dirs));
                    });
                if let Err(e) = walk {
                    log::error!("rescan not started ({e}); tried again at the next tick");
                    rescanning = false;
                }
            }
            Some(found) = rescan_rx.recv() => {
                rescanning = false;
                let now = Instant::now();
                for path in found {
                    p.stability.observe(path, now);
                }
            }
            _ = exam_tick.tick() => p.quiet_exams(),
            _ = purge_tick.tick() => p.purge(),
            _ = health_tick.tick() => p.publish_health(),
            _ = health_request.notified() => p.publish_health(),
            Some(()) = hangup(&mut hup) => p.begin_reload(),
            Some(r) = reload_rx.recv() => p.reload_pending = Some(r),
            Some(reply) = replies_rx.recv() => p.reply(reply),
            Some(r) = received_rx.recv() => p.received(r),
            ended = &mut publisher, if publisher_ended.is_none() => {
                let why = match &ended {
                    Ok(Ok(_)) => "the publisher stopped".to_string(),
                    Ok(Err(e)) => format!("the publisher stopped: {e}"),
                    Err(e) => format!("the publisher task failed: {e}"),
                };
                log::error!("{why}; stopping, for systemd to restart the daemon (results are kept in the outbox)");
                p.fatal = Some(why);
                publisher_ended = Some(ended);
            }
            ended = async { sr_task.as_mut().expect("guarded").await },
                if sr_task.is_some() && sr_ended.is_none() => {
                let why = match &ended {
                    Ok(Ok(_)) => "the SR sender stopped".to_string(),
                    Ok(Err(e)) => format!("the SR sender stopped: {e}"),
                    Err(e) => format!("the SR sender task failed: {e}"),
                };
                log::error!("{why}; stopping, for systemd to restart the daemon (SRs are kept in the state database)");
                p.fatal = Some(why);
                sr_ended = Some(());
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                if deadline.is_some() => p.timed_out(),
        }
        if p.fatal.is_some() {
            break;
        }
    }
    notifier.stopping();
    watchdog.abort();
    if let Some(scp) = scp {
        // no new association; one in progress gets no success for an object not yet recorded
        scp.abort();
    }
    if let Some(b) = &p.busy {
        let grace = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let until = b.deadline.min(grace);
        log::info!(
            "shutdown: waiting up to {:?} for the image being scored",
            until - tokio::time::Instant::now()
        );
        match tokio::time::timeout_at(until, replies_rx.recv()).await {
            Ok(Some(reply)) => p.reply(reply),
            _ => log::info!("shutdown: image left in progress; it is retried at the next start"),
        }
    }
    let _ = stop_tx.send(true);
    let ended = match publisher_ended {
        Some(ended) => Ok(ended),
        None => tokio::time::timeout(Duration::from_secs(5), publisher).await,
    };
    match ended {
        Ok(Ok(Ok(s))) => log::info!(
            "publisher stopped: {} connection(s), {} message(s) delivered",
            s.connections,
            s.delivered
        ),
        Ok(Ok(Err(e))) => log::error!("publisher stopped: {e}"),
        Ok(Err(e)) => log::error!("publisher task: {e}"),
        Err(_) => log::warn!("publisher did not stop within 5 s"),
    }
    if let (Some(task), None) = (sr_task, sr_ended) {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(s))) => log::info!(
                "SR sender stopped: {} delivered, {} failed tries",
                s.delivered,
                s.failures
            ),
            Ok(Ok(Err(e))) => log::error!("SR sender stopped: {e}"),
            Ok(Err(e)) => log::error!("SR sender task: {e}"),
            Err(_) => log::warn!("SR sender did not stop within 5 s"),
        }
    }
    log::info!("stopped: {:?}", p.stats);
    match p.fatal {
        Some(why) => Err(DaemonError::Runtime(why)),
        None => Ok(p.stats),
    }
}

fn stat(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Intake, health and reload.
impl Pipeline {
    /// The `STATUS=` line of sd_notify.
    fn status_line(&self) -> String {
        match &self.intake {
            Intake::Running => format!("watching {} folder(s)", self.config.watch.dirs.len()),
            Intake::Paused { reason, .. } => format!("intake paused: {reason}"),
        }
    }

    /// Measure the state folder's free space against `state.min_free_mb`.
    fn check_space(&mut self) {
        let min = self.config.state.min_free_bytes();
        self.free = match free_bytes(&self.config.state.dir) {
            Ok(b) => Some(b),
            Err(e) => {
                if self.free.is_some() {
                    log::warn!("free space of the state folder unknown (statvfs: {e})");
                }
                None
            }
        };
        self.disk_low = match self.free {
            Some(free) if min > 0 && free < min => Some(format!(
                "state folder has {} MiB free, below state.min_free_mb = {}",
                free / (1024 * 1024),
                self.config.state.min_free_mb
            )),
            _ => None,
        };
        self.intake_changed();
    }

    /// Whether a file may be claimed now.
    fn intake_open(&mut self) -> bool {
        self.check_space();
        if self.disk_low.is_some() {
            return false;
        }
        self.db_retry_at
            .is_none_or(|t| tokio::time::Instant::now() >= t)
    }

    /// A state database write failed for lack of storage: pause intake, retry in [`DB_RETRY`].
    fn db_failed(&mut self, e: &StoreError) {
        self.db_failure = Some(format!("state database not writable: {e}"));
        self.db_retry_at = Some(tokio::time::Instant::now() + DB_RETRY);
        self.intake_changed();
    }

    /// A state database write succeeded.
    fn db_ok(&mut self) {
        if self.db_failure.is_some() && self.stalled.is_empty() {
            self.db_failure = None;
            self.db_retry_at = None;
            self.intake_changed();
        }
    }

    /// Recompute the intake state; on a change log it, tell systemd and publish health.
    fn intake_changed(&mut self) {
        let now = if let Some(r) = &self.disk_low {
            Intake::Paused {
                reason_code: PauseCode::DiskLow,
                reason: r.clone(),
            }
        } else if let Some(r) = &self.db_failure {
            Intake::Paused {
                reason_code: PauseCode::StateDb,
                reason: r.clone(),
            }
        } else {
            Intake::Running
        };
        if now == self.intake {
            return;
        }
        match &now {
            Intake::Paused { reason, .. } => log::warn!(
                "intake paused: {reason}; new files wait in the export folder ({} queued)",
                self.queue.len()
            ),
            Intake::Running => log::info!("intake resumed"),
        }
        self.intake = now;
        self.notifier.status(&self.status_line());
        self.publish_health();
    }

    /// Give stalled files back once the database takes writes again.
    fn retry_stalled(&mut self) {
        if self.stalled.is_empty()
            || self
                .db_retry_at
                .is_some_and(|t| tokio::time::Instant::now() < t)
        {
            return;
        }
        while let Some(s) = self.stalled.pop() {
            let r = if s.count_attempt {
                self.store.retry_later(&s.ticket, s.reason)
            } else {
                self.store.release(&s.ticket, s.reason)
            };
            match r {
                Ok(()) => {
                    log::info!("{}: given back for a new try", self.label(&s.path));
                    self.requeue(&s.path);
                }
                Err(e) if e.is_storage_failure() => {
                    self.stalled.push(s);
                    self.db_failed(&e);
                    return;
                }
                Err(e) => log::error!("{}: not given back: {e}", self.label(&s.path)),
            }
        }
        self.db_ok();
    }

    /// A ledger update of a claimed file failed. Storage failures stall the file (given back
    /// later, intake paused meanwhile); other errors are logged.
    fn update_failed(
        &mut self,
        path: &Path,
        ticket: Ticket,
        count_attempt: bool,
        reason: &'static str,
        what: &str,
        e: StoreError,
    ) {
        let label = self.label(path);
        if e.is_storage_failure() {
            log::warn!(
                "{label}: {what} not recorded ({e}); the file is tried again once the state database can be written"
            );
            self.stalled.push(Stalled {
                path: path.to_path_buf(),
                ticket,
                count_attempt,
                reason,
            });
            self.db_failed(&e);
        } else {
            log::error!("{label}: {what} not recorded: {e}");
        }
    }

    /// Build the health snapshot and hand it to the publisher (sent retained when connected).
    fn publish_health(&mut self) {
        let now = SystemTime::now();
        let s = self.stats;
        let h = Health {
            schema: crate::edge::health::SCHEMA,
            produced_at: rfc3339(now),
            started_at: rfc3339(self.started),
            uptime_s: now
                .duration_since(self.started)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            version: env!("CARGO_PKG_VERSION"),
            counters: Counters {
                images_scored: s.scored,
                skipped: s.skipped,
                errors: s.errors,
                quarantined: s.quarantined,
                exams_published: s.exams_published,
                duplicates: s.duplicates,
                retries: s.retries,
            },
            outbox_backlog: self.store.undelivered_count().ok(),
            intake: self.intake.clone(),
            state_dir: StateSpace {
                free_bytes: self.free,
                min_free_bytes: self.config.state.min_free_bytes(),
            },
            model: HealthModel::from(&self.msgs.model),
            last_reload: self.last_reload.clone(),
        };
        match serde_json::to_string(&h) {
            Ok(j) => {
                self.retained.health.send_replace(Some(j));
            }
            Err(e) => log::error!("health not serialised: {e}"),
        }
    }

    /// SIGHUP: read the configuration and the model again in a blocking task.
    fn begin_reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            return;
        };
        if self.reloading {
            log::info!("SIGHUP during a reload: another reload follows this one");
            self.reload_again = true;
            return;
        }
        self.reloading = true;
        log::info!("SIGHUP: reloading {} and the model", path.display());
        self.notifier
            .reloading("reloading the configuration and the model");
        let (tx, sha) = (self.reload_tx.clone(), self.msgs.model.sha256.clone());
        let threads = self.runner.threads();
        tokio::task::spawn_blocking(move || {
            let r = std::panic::catch_unwind(|| load_for_reload(&path, (&sha, threads)))
                .unwrap_or_else(|_| Reloaded {
                    result: Err("model refused: loading it panicked".into()),
                });
            let _ = tx.send(r);
        });
    }

    /// Apply (or refuse) a reload that was read, between files.
    fn apply_reload(&mut self) {
        let Some(r) = self.reload_pending.take() else {
            return;
        };
        let at = rfc3339(SystemTime::now());
        let report = match r.result {
            Err(why) => {
                log::error!(
                    "reload refused: {why}; still running with the previous configuration and model {} {} (sha256 {})",
                    self.msgs.model.name,
                    self.msgs.model.version,
                    self.msgs.model.sha256
                );
                crate::edge::health::Reload {
                    at,
                    ok: false,
                    message: why,
                    needs_restart: Vec::new(),
                }
            }
            Ok((new, model, privacy)) => self.apply_config(new, model, privacy, at),
        };
        self.last_reload = Some(report);
        self.reloading = false;
        self.check_space();
        self.notifier.ready(&self.status_line());
        self.publish_health();
        if std::mem::take(&mut self.reload_again) {
            self.begin_reload();
        }
    }

    fn apply_config(
        &mut self,
        new: Config,
        model: Option<LoadedModel>,
        privacy: Privacy,
        at: String,
    ) -> crate::edge::health::Reload {
        let (new, mut restart) = self.config.reloaded(new);
        let (privacy, rekeyed) = privacy.keeping_pseudonyms_of(&self.msgs.privacy);
        if rekeyed && !restart.contains(&"privacy.key_file") {
            restart.push("privacy.key_file");
        }
        let mut done = Vec::new();
        let drift_changed = new.drift != self.config.drift;
        let mut new_meta = None;
        if let Some(m) = model {
            new_meta = Some(m.runner.meta.clone());
            let info = ModelInfo::new(&m.runner.meta, &m.sha256);
            done.push(format!(
                "model {} {} (sha256 {}) replaces {} {} (sha256 {})",
                info.name,
                info.version,
                info.sha256,
                self.msgs.model.name,
                self.msgs.model.version,
                self.msgs.model.sha256
            ));
            self.runner = Arc::new(m.runner);
            self.msgs.model = info;
            let status = status_info(&self.msgs.model, &rfc3339(self.started));
            self.retained.info.send_replace(status.to_string());
        } else {
            done.push(format!(
                "model unchanged ({} {})",
                self.msgs.model.name, self.msgs.model.version
            ));
        }
        self.msgs.privacy = privacy;
        self.opts = new.ingest_options();
        self.store.set_max_attempts(new.ingest.max_attempts);
        self.stability
            .set_stable(Duration::from_secs(new.watch.stable_secs));
        self.ticks_changed = new.watch.rescan_secs != self.config.watch.rescan_secs
            || new.mqtt.health_secs != self.config.mqtt.health_secs;
        self.config = new;
        // the drift windows belong to one model and configuration: a new model starts new
        // windows (its outputs differ), a new [drift] section re-reads the stored ones
        if new_meta.is_some() || drift_changed {
            let meta = new_meta.unwrap_or_else(|| self.runner.meta.clone());
            match drift_monitor(
                &self.config,
                &mut self.store,
                &meta,
                &self.msgs.model.sha256,
            ) {
                Ok(m) => self.drift = m,
                Err(e) => {
                    log::error!("reload: drift windows not read ({e}); the monitor is off until the next start");
                    self.drift = None;
                }
            }
        }
        // a fresh worker with the new model and ingest options (the old one is idle: it ends)
        match self.start_worker(self.workers_started + 1) {
            Ok(w) => {
                self.workers_started += 1;
                self.worker = w;
            }
            Err(e) => log::error!("reload: new worker not started ({e}); the old one is kept"),
        }
        let mut message = format!("applied: {}", done.join("; "));
        if !restart.is_empty() {
            message.push_str(&format!(
                "; changed but needing a restart (the running values are kept): {}",
                restart.join(", ")
            ));
            log::warn!(
                "reload: {} changed in the configuration file; these take effect at the next start (systemctl restart mammo-edge)",
                restart.join(", ")
            );
        }
        log::info!("reload {message}");
        crate::edge::health::Reload {
            at,
            ok: true,
            message,
            needs_restart: restart.iter().map(|k| k.to_string()).collect(),
        }
    }
}

impl Pipeline {
    fn label(&self, path: &Path) -> String {
        self.msgs.privacy.file_label(path)
    }

    /// Claim queued files until one goes to the worker (or the turn's budget is used). Nothing
    /// is claimed while intake is paused (the paths stay queued, the files where they are).
    fn start_next(&mut self) {
        for _ in 0..CLAIMS_PER_TURN {
            if self.queue.is_empty() || !self.intake_open() {
                return;
            }
            let Some(path) = self.queue.pop_front() else {
                return;
            };
            if self.abandoned.iter().any(|(_, p)| *p == path) {
                // its abandoned worker still runs: not started a second time beside it
                log::debug!("{}: waits for its abandoned worker", self.label(&path));
                self.requeue(&path);
                continue;
            }
            let Some((size, mtime)) = stat(&path) else {
                continue;
            };
            let claim = match self.store.claim(&path, size, mtime) {
                Ok(c) => {
                    self.db_ok();
                    c
                }
                Err(e) if e.is_storage_failure() => {
                    log::warn!("{}: not claimed ({e}); retried later", self.label(&path));
                    self.queue.push_front(path);
                    self.db_failed(&e);
                    return;
                }
                Err(e) => {
                    log::error!("{}: claim failed: {e}", self.label(&path));
                    continue;
                }
            };
            match claim {
                Claim::Process(ticket) => {
                    self.seq += 1;
                    let job = Job {
                        seq: self.seq,
                        path: path.clone(),
                        ticket: ticket.clone(),
                    };
                    if self.worker.jobs.try_send(job).is_err() {
                        // cannot happen while one job at a time is sent; give the file back
                        log::error!(
                            "worker queue unavailable; {} retried later",
                            self.label(&path)
                        );
                        let _ = self.store.retry_later(&ticket, "worker_unavailable");
                        self.requeue(&path);
                        continue;
                    }
                    log::debug!(
                        "{}: scoring (attempt {})",
                        self.label(&path),
                        ticket.attempts
                    );
                    self.busy = Some(InFlight {
                        seq: self.seq,
                        ticket,
                        path,
                        deadline: tokio::time::Instant::now()
                            + Duration::from_secs(self.config.ingest.file_timeout_secs),
                    });
                    return;
                }
                Claim::Quarantine(ticket) => self.quarantine(&path, ticket, None),
                Claim::Finished(status) => self.after(&path, status),
                Claim::Busy => log::debug!("{}: in progress elsewhere", self.label(&path)),
                Claim::Later => self.stability.forget(&path),
            }
        }
    }

    fn requeue(&mut self, path: &Path) {
        self.stability.forget(path);
        self.stability.observe(path.to_path_buf(), Instant::now());
    }

    /// Quarantine a claimed file: after `max_attempts` crashes or time-outs, or (`copy_of`: the
    /// earlier quarantine's reason) because its content was quarantined under another name.
    fn quarantine(&mut self, path: &Path, ticket: Ticket, copy_of: Option<String>) {
        let reason = match copy_of {
            Some(earlier) => format!(
                "quarantined without decoding: the same content (sha256) was quarantined before ({earlier})"
            ),
            None => {
                let last = self
                    .store
                    .ledger_entry(path)
                    .ok()
                    .flatten()
                    .and_then(|e| e.reason)
                    .unwrap_or_default();
                format!(
                    "quarantined after {} attempt(s) that crashed or timed out (last: {last}); not retried until the file changes",
                    ticket.attempts
                )
            }
        };
        let msg = self.msgs.rejected(
            false,
            path,
            &file_key(path, &ticket),
            None,
            "quarantined",
            &reason,
        );
        match self.store.commit_quarantine(&ticket, &reason, &msg) {
            Ok(()) => {
                self.stats.quarantined += 1;
                log::warn!("{}: {reason}", self.label(path));
                self.waker.notify_one();
                self.after(path, Status::Quarantined);
            }
            // given back with its attempts: quarantined at the next claim
            Err(e) => self.update_failed(path, ticket, true, "state_db", "quarantine", e),
        }
    }

    fn reply(&mut self, reply: Reply) {
        let Some(b) = self.busy.take_if(|b| b.seq == reply.seq) else {
            if let Some(i) = self.abandoned.iter().position(|(seq, _)| *seq == reply.seq) {
                let (_, path) = self.abandoned.swap_remove(i);
                log::info!(
                    "{}: the abandoned worker finished (its late result is ignored; {} still running)",
                    self.label(&path),
                    self.abandoned.len()
                );
            } else {
                log::debug!("late reply of an abandoned job ignored");
            }
            return;
        };
        let (path, ticket) = (b.path, b.ticket);
        let label = self.label(&path);
        let fkey = file_key(&path, &ticket);
        let result = match reply.outcome {
            Outcome::Scored(s) => {
                let msg = self.msgs.image(&path, &s.meta, &s.result);
                let key = ImageKey {
                    sop_instance_uid: self.msgs.privacy.uid(&s.meta.sop_instance_uid),
                    study_instance_uid: self.msgs.privacy.uid(&s.meta.study_instance_uid),
                    model_sha256: self.msgs.model.sha256.clone(),
                    result_id: result_id(&s.meta.sop_instance_uid, &self.msgs.model.sha256),
                };
                let payload = msg.payload.clone();
                let source = self.sr_source(&path, &label);
                let drift = self.drift.as_ref().map(|m| {
                    m.preview(
                        &s.meta.manufacturer,
                        &s.meta.model_name,
                        s.meta.vendor.as_str(),
                        crate::edge::drift::observation(&s.result),
                    )
                });
                let mut messages = vec![msg];
                if let Some(u) = &drift {
                    messages.push(self.msgs.drift(&u.status));
                    if let Some(raised) = u.change {
                        messages.push(self.msgs.alert(&u.status, raised));
                    }
                }
                match self.store.commit_result_with_source(
                    &ticket,
                    &key,
                    &payload,
                    &messages,
                    source.as_deref(),
                    drift.as_ref().map(|u| &u.record),
                ) {
                    Ok(Committed::Stored(id)) => {
                        if let (Some(m), Some(u)) = (self.drift.as_mut(), &drift) {
                            m.apply(u);
                            if let Some(raised) = u.change {
                                let what = if raised { "raised" } else { "cleared" };
                                log::warn!(
                                    "drift alert {what} for source {}: {}",
                                    u.status.source.id,
                                    if u.status.reasons.is_empty() {
                                        "every value back under its threshold".to_string()
                                    } else {
                                        u.status.reasons.join("; ")
                                    }
                                );
                            }
                        }
                        self.stats.scored += 1;
                        log::info!(
                            "{label}: scored {} {} cancer {:.3} density {} ood {} ({:.0} ms); result {id}",
                            s.result.laterality.map(|l| l.as_str()).unwrap_or("?"),
                            s.result.view,
                            s.result.cancer_probability,
                            s.result.density,
                            s.result.ood,
                            s.result.decode_ms + s.result.preprocess_ms + s.result.inference_ms
                        );
                        self.waker.notify_one();
                        self.exam_update(&key.study_instance_uid, false);
                        Ok(Status::Done)
                    }
                    Ok(Committed::Duplicate(_)) => {
                        self.stats.duplicates += 1;
                        log::info!("{label}: SOPInstanceUID scored already; not published again");
                        Ok(Status::Done)
                    }
                    Err(e) => Err(e),
                }
            }
            Outcome::Duplicate { sop, study } => {
                self.stats.duplicates += 1;
                log::info!("{label}: SOPInstanceUID scored already (re-exported copy); not processed again");
                self.store
                    .commit_duplicate(&ticket, &sop, study.as_deref())
                    .map(|_| Status::Done)
            }
            Outcome::Rejected {
                meta,
                category,
                code,
                reason,
            } => {
                let skipped = category == Category::Skipped;
                let meta = meta.as_deref();
                let msg = self
                    .msgs
                    .rejected(skipped, &path, &fkey, meta, code, &reason);
                let kept = |uid: &str| {
                    Some(uid)
                        .filter(|u| !u.is_empty())
                        .map(|u| self.msgs.privacy.uid(u))
                };
                let sop = meta.and_then(|m| kept(&m.sop_instance_uid));
                let study = meta.and_then(|m| kept(&m.study_instance_uid));
                let (sop, study) = (sop.as_deref(), study.as_deref());
                let scrubbed = self.msgs.privacy.scrub(&reason, &path);
                let transient = !skipped && code == IO_REASON;
                let r = if transient && ticket.io_retry {
                    log::debug!("{label}: still unreadable ({code}): {scrubbed}");
                    self.store
                        .commit_error_again(&ticket, code)
                        .map(|_| Status::Error)
                } else if skipped {
                    log::info!("{label}: skipped ({code}): {scrubbed}");
                    self.store
                        .commit_skip(&ticket, sop, study, code, &msg)
                        .map(|_| Status::Skipped)
                } else {
                    log::warn!("{label}: error ({code}): {scrubbed}");
                    self.store
                        .commit_error(&ticket, sop, study, code, &msg)
                        .map(|_| Status::Error)
                };
                match r {
                    Ok(Status::Skipped) => self.stats.skipped += 1,
                    Ok(_) if ticket.io_retry && transient => {}
                    Ok(_) => self.stats.errors += 1,
                    Err(_) => {}
                }
                self.waker.notify_one();
                if transient && r.is_ok() {
                    // a read error may pass (permissions fixed, NFS back): the file stays in
                    // place and a later rescan claims it again after the back-off (review #8)
                    self.db_ok();
                    self.stability.forget(&path);
                    return;
                }
                r
            }
            Outcome::QuarantinedContent(earlier) => {
                self.quarantine(&path, ticket, Some(earlier));
                return;
            }
            Outcome::PurgedBefore(status) => {
                log::info!(
                    "{label}: content finished ({}) before its rows were purged; not processed again",
                    status.as_str()
                );
                self.store
                    .commit_purged_before(&ticket, status)
                    .map(|_| status)
            }
            Outcome::Panicked(what) => {
                self.stats.retries += 1;
                log::error!(
                    "{label}: the worker panicked (attempt {} of {}): {}",
                    ticket.attempts,
                    self.config.ingest.max_attempts,
                    self.msgs.privacy.scrub(&what, &path)
                );
                match self.store.retry_later(&ticket, "panic") {
                    Ok(()) => self.requeue(&path),
                    Err(e) => self.update_failed(&path, ticket, true, "panic", "retry", e),
                }
                return;
            }
        };
        match result {
            Ok(status) => {
                self.db_ok();
                self.after(&path, status)
            }
            // not the file's fault: the attempt is not counted, the file is scored again
            Err(e) => self.update_failed(&path, ticket, false, "state_db", "result", e),
        }
    }

    fn timed_out(&mut self) {
        let Some(b) = self.busy.take() else { return };
        self.stats.retries += 1;
        log::error!(
            "{}: no result within ingest.file_timeout_secs = {} s (attempt {} of {}); worker replaced",
            self.label(&b.path),
            self.config.ingest.file_timeout_secs,
            b.ticket.attempts,
            self.config.ingest.max_attempts
        );
        let requeue = match self.store.retry_later(&b.ticket, "timeout") {
            Ok(()) => true,
            Err(e) => {
                self.update_failed(&b.path, b.ticket.clone(), true, "timeout", "retry", e);
                false
            }
        };
        // the stuck thread is abandoned (it ends when its job does; its reply is ignored); the
        // file waits for it, and too many of them end the process (memory, CPU: review #11)
        self.abandoned.push((b.seq, b.path.clone()));
        if self.abandoned.len() >= MAX_ABANDONED {
            self.fatal = Some(format!(
                "{} worker threads are past ingest.file_timeout_secs and cannot be stopped; \
                 exiting so that systemd restarts the daemon (attempts are kept: the files are \
                 quarantined after ingest.max_attempts)",
                self.abandoned.len()
            ));
            log::error!("{}", self.fatal.as_deref().unwrap_or_default());
            return;
        }
        self.workers_started += 1;
        match self.start_worker(self.workers_started) {
            Ok(w) => self.worker = w,
            Err(e) => log::error!("new worker not started ({e}); the old one is kept"),
        }
        if requeue {
            self.requeue(&b.path);
        }
    }

    /// A new worker thread number `n` with its own state connection, the current model and
    /// ingest options. Errors: `Store` (opening the database), `Worker` (spawning the thread).
    fn start_worker(&self, n: u64) -> Result<Worker, DaemonError> {
        let store = Store::open(&self.config.state.dir, self.config.ingest.max_attempts)?;
        spawn_worker(
            self.runner.clone(),
            self.opts.clone(),
            store,
            self.msgs.privacy.clone(),
            self.replies_tx.clone(),
            n,
        )
    }

    /// Publish the exam of `study` when it has unpublished images and is complete, or when
    /// `quiet_due` (quiet for `exam.quiet_secs`; then marked incomplete).
    fn exam_update(&mut self, study: &str, quiet_due: bool) {
        if let Err(e) = self.try_exam_update(study, quiet_due) {
            log::error!("exam aggregation failed: {e}");
        }
    }

    fn try_exam_update(&mut self, study: &str, quiet_due: bool) -> Result<(), StoreError> {
        let Some(state) = self.store.exam_state(study)? else {
            return Ok(());
        };
        if !state.pending || self.exam_failed.get(study) == Some(&state.last_image_at_ms) {
            return Ok(());
        }
        let rows = self.store.study_results(study, &self.msgs.model.sha256)?;
        let mut scores = Vec::new();
        let mut ids = Vec::new();
        for r in &rows {
            match serde_json::from_str::<StoredScore>(&r.result_json) {
                Ok(s) => {
                    ids.push(s.result_id.clone());
                    scores.push(s.score());
                }
                Err(e) => log::warn!("stored result {} unreadable: {e}", r.result_id),
            }
        }
        let revision = next_revision(Some(state.revision));
        let exam = match aggregate(&scores, self.msgs.model.cancer_threshold, revision) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("exam not aggregated: {e}");
                self.exam_failed
                    .insert(study.to_string(), state.last_image_at_ms);
                return Ok(());
            }
        };
        if !exam.complete && !quiet_due {
            return Ok(());
        }
        let msg = self.msgs.exam(study, &exam, &ids);
        let srs = self.exam_srs(study, revision, &msg.payload)?;
        self.store
            .commit_exam_with_srs(study, revision, &exam, &[msg], &srs)?;
        self.stats.exams_published += 1;
        log::info!(
            "exam published: revision {revision}, {} image(s), complete {}, triage {:?}{}",
            exam.images,
            exam.complete,
            exam.triage,
            match srs.first() {
                Some(sr) => format!(
                    "; SR {} queued for {} destination(s)",
                    sr.sop_instance_uid,
                    srs.len()
                ),
                None => String::new(),
            }
        );
        self.waker.notify_one();
        if let (Some((w, _)), false) = (&self.sr, srs.is_empty()) {
            w.notify_one();
        }
        Ok(())
    }

    /// The header attributes the SR copies from a scored file, as JSON, while `[sr]` is on.
    /// A header that cannot be read leaves the image out of the SR (logged without the path
    /// or the reason's text, which may name the patient).
    fn sr_source(&self, path: &Path, label: &str) -> Option<String> {
        self.sr.as_ref()?;
        match SourceImage::read(path) {
            Ok(s) => Some(s.to_json().to_string()),
            Err(_) => {
                log::warn!(
                    "{label}: header not readable again for the SR; the image is left out of it"
                );
                None
            }
        }
    }

    /// The SR of an exam revision, one copy per destination of `[sr]` (none when it is off or
    /// no image of the study has its SR source). `exam` is the exam message's payload. A
    /// failure to build it is logged and leaves the exam without SR (its MQTT message goes).
    fn exam_srs(
        &self,
        study: &str,
        revision: u32,
        exam: &serde_json::Value,
    ) -> Result<Vec<SrOutgoing>, StoreError> {
        let Some((_, keys)) = &self.sr else {
            return Ok(Vec::new());
        };
        let mut images = Vec::new();
        for (src, result) in self
            .store
            .study_sr_sources(study, &self.msgs.model.sha256)?
        {
            let parsed = serde_json::from_str::<serde_json::Value>(&src)
                .ok()
                .and_then(|v| SourceImage::from_json(&v).ok())
                .zip(serde_json::from_str::<serde_json::Value>(&result).ok());
            match parsed {
                Some(pair) => images.push(pair),
                None => log::warn!("an SR source or result in the state database is unreadable; left out of the SR"),
            }
        }
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let sources: Vec<&str> = images
            .iter()
            .map(|(s, _)| s.sop_instance_uid.as_str())
            .collect();
        let id = sr::identity(
            &images[0].0.study_instance_uid,
            &self.msgs.model.sha256,
            u64::from(revision),
            &sources,
            sr::ContentTime::at(SystemTime::now()),
        );
        let mut bytes = Vec::new();
        let built = sr::build(&images, exam, &id)
            .map_err(|e| e.to_string())
            .and_then(|o| o.write_all(&mut bytes).map_err(|e| e.to_string()));
        if let Err(e) = built {
            log::error!(
                "exam revision {revision}: SR not made ({e}); the exam is published without it"
            );
            return Ok(Vec::new());
        }
        Ok(keys
            .iter()
            .map(|destination| SrOutgoing {
                destination: destination.clone(),
                sop_instance_uid: id.sop_instance_uid.clone(),
                object: bytes.clone(),
            })
            .collect())
    }

    fn quiet_exams(&mut self) {
        let quiet = Duration::from_secs(self.config.exam.quiet_secs);
        match self.store.quiet_exams(quiet) {
            Ok(list) => {
                for s in list {
                    self.exam_update(&s.study_instance_uid, true);
                }
            }
            Err(e) => log::error!("quiet exams: {e}"),
        }
    }

    /// The folders rescanned: `watch.dirs` and, when it exists, the DICOM receiver's folder
    /// (objects received before a crash and not yet scored are found there at the next start).
    fn scan_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = self.config.watch.dirs.clone();
        let received = received_dir(&self.config.state.dir);
        if received.is_dir() {
            dirs.push(received);
        }
        dirs
    }

    /// An object the DICOM receiver stored: ledger row `new`, queued with no settle wait. The
    /// receiver answers the C-STORE from the outcome sent back.
    fn received(&mut self, r: Received) {
        let outcome = match stat(&r.path) {
            None => Err("the received file is gone".to_string()),
            Some((size, mtime)) => match self.store.register(&r.path, size, mtime) {
                Ok(()) => {
                    self.db_ok();
                    self.queue.push_back(r.path.clone());
                    Ok(())
                }
                Err(e) => {
                    if e.is_storage_failure() {
                        self.db_failed(&e);
                    }
                    log::error!("received object not recorded: {e}");
                    Err(format!("not recorded: {e}"))
                }
            },
        };
        let _ = r.recorded.send(outcome);
    }

    /// Remove received objects older than the retention period (those scored or skipped are
    /// removed at once; what is left failed or is waiting, and is kept that long for a look).
    fn purge_received(&self) {
        let dir = received_dir(&self.config.state.dir);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let cutoff = SystemTime::now()
            .checked_sub(self.config.state.retention())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut n = 0;
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if old && std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        if n > 0 {
            log::info!("purged {n} received object(s) past the retention period");
        }
    }

    fn purge(&mut self) {
        self.purge_received();
        let days = self.config.state.retention_days;
        match self.store.purge(self.config.state.retention()) {
            Ok(p) if p.outbox + p.ledger + p.results + p.exams > 0 => log::info!(
                "purged past {days} days: {} delivered message(s), {} ledger row(s), {} result(s), {} exam(s)",
                p.outbox,
                p.ledger,
                p.results,
                p.exams
            ),
            Ok(_) => {}
            Err(e) => log::error!("purge: {e}"),
        }
    }

    /// `files.after = move`: into `done/`, `skipped/` or `failed/` beside the watched folder,
    /// keeping the path below it; an existing name gets a numeric suffix.
    fn after(&mut self, path: &Path, status: Status) {
        if path.starts_with(received_dir(&self.config.state.dir)) {
            // a received object has done its work once scored or skipped (its result is
            // stored); one that failed stays until the retention period ends
            if matches!(status, Status::Done | Status::Skipped) {
                if let Err(e) = std::fs::remove_file(path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        log::warn!("received object not removed: {e}");
                    }
                }
            }
            self.stability.forget(path);
            return;
        }
        if self.config.files.after != FilesAfter::Move {
            return;
        }
        let sub = match status {
            Status::Done => "done",
            Status::Skipped => "skipped",
            Status::Error | Status::Quarantined => "failed",
            Status::New | Status::InProgress => return,
        };
        match move_file(&self.config.watch.dirs, path, sub) {
            Ok(Some(_)) => log::debug!("{} moved to {sub}/", self.label(path)),
            Ok(None) => {}
            Err(e) => {
                // left where it is and not handed on again until it changes: the next rescan
                // would otherwise try (and, before review #5, copy) it again every time
                log::warn!(
                    "{}: not moved to {sub}/: {e}; left in place",
                    self.label(path)
                );
                return;
            }
        }
        self.stability.forget(path);
    }
}

/// Stable key of a file version for ids of messages without a SOPInstanceUID.
fn file_key(path: &Path, ticket: &Ticket) -> String {
    let (size, mtime) = stat(path)
        .map(|(s, m)| {
            (
                s,
                m.duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            )
        })
        .unwrap_or((0, 0));
    format!("{}|{size}|{mtime}|{}", path.display(), ticket.ledger_id)
}

/// Move `path` (below one of `dirs`) to `<dir's parent>/<sub>/<path below dir>`. Returns the
/// new path, or `None` when the file is gone or not below a watched folder.
fn move_file(dirs: &[PathBuf], path: &Path, sub: &str) -> std::io::Result<Option<PathBuf>> {
    if !path.exists() {
        return Ok(None);
    }
    let Some((dir, rel)) = dirs
        .iter()
        .find_map(|d| path.strip_prefix(d).ok().map(|r| (d, r)))
    else {
        return Ok(None);
    };
    let base = dir.parent().unwrap_or(dir).join(sub);
    let mut to = base.join(rel);
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut n = 1;
    while to.exists() {
        let mut name = rel.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{n}"));
        to = base.join(rel).with_file_name(name);
        n += 1;
    }
    match std::fs::rename(path, &to) {
        Ok(()) => {}
        // another file system: copy under a temporary name, then into place, then remove the
        // source; if the source cannot be removed the copy goes again, so a retry never adds a
        // second copy (review #5) and no partial copy carries the final name (review #30)
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(to.file_name().unwrap_or_default());
            tmp_name.push(".partial");
            let tmp = to.with_file_name(tmp_name);
            let copied = std::fs::copy(path, &tmp).and_then(|_| std::fs::rename(&tmp, &to));
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            if let Err(e) = std::fs::remove_file(path) {
                let _ = std::fs::remove_file(&to);
                return Err(e);
            }
        }
        // the same file system refused (e.g. no write permission on the export folder): a
        // copy could not be followed by a removal either
        Err(e) => return Err(e),
    }
    Ok(Some(to))
}
