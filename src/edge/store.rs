//! The daemon's SQLite state (`<state.dir>/state.sqlite`, WAL, `synchronous=FULL`): the ledger of
//! input files, one result row per SOPInstanceUID and model, the outbox of MQTT messages drained
//! in order, the exam state used for aggregation, and the SR outbox of the Mammography CAD SRs
//! (with the header attributes they copy). Implements DESIGN.md, "Storage guarantees";
//! tables and guarantees are described in docs/daemon-store.md.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::Serialize;
use thiserror::Error;
use uuid::Uuid;

/// File name of the database inside the state folder.
pub const DB_FILE: &str = "state.sqlite";

/// Schema version this build writes (`PRAGMA user_version`), = number of migrations.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Migrations, applied in order; entry `i` brings the schema from version `i` to `i + 1`.
/// Never edit an entry that has shipped: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: ledger, results, outbox, exams. Times are Unix milliseconds (UTC); mtime in nanoseconds.
    "CREATE TABLE ledger (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sop_instance_uid TEXT,
        study_instance_uid TEXT,
        status TEXT NOT NULL CHECK (status IN
            ('new', 'in_progress', 'done', 'skipped', 'error', 'quarantined')),
        reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX ledger_sop ON ledger (sop_instance_uid);
    CREATE INDEX ledger_status ON ledger (status, updated_at);
    CREATE TABLE results (
        sop_instance_uid TEXT NOT NULL,
        model_sha256 TEXT NOT NULL,
        result_id TEXT NOT NULL UNIQUE,
        study_instance_uid TEXT NOT NULL,
        ledger_id INTEGER REFERENCES ledger (id) ON DELETE SET NULL,
        result_json TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (sop_instance_uid, model_sha256)
    );
    CREATE INDEX results_study ON results (study_instance_uid, model_sha256);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        payload TEXT NOT NULL,
        retain INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        delivered_at INTEGER
    );
    CREATE INDEX outbox_undelivered ON outbox (id) WHERE delivered_at IS NULL;
    CREATE TABLE exams (
        study_instance_uid TEXT PRIMARY KEY,
        revision INTEGER NOT NULL DEFAULT 0,
        pending INTEGER NOT NULL DEFAULT 1,
        last_image_at INTEGER NOT NULL,
        published_at INTEGER,
        published_json TEXT
    );",
    // 2: content hashes (review #10): the sha256 of each claimed file, recorded by the worker
    // before it decodes; the hashes of quarantined files, so a renamed or touched copy of a
    // poison file is quarantined without being decoded again.
    "ALTER TABLE ledger ADD COLUMN content_sha256 TEXT;
    CREATE TABLE quarantine (
        content_sha256 TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        quarantined_at INTEGER NOT NULL
    );",
    // 3: state at rest (review #13): `purge` deletes every finished row past retention; the
    // content hashes of the ledger rows it deletes are kept one retention period more, so a file
    // left in the watched folder is recognised when claimed again, not scored and published again.
    "CREATE TABLE purged_content (
        content_sha256 TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        purged_at INTEGER NOT NULL
    );",
    // 4: Mammography CAD SR (issue 14). `sr_sources`: the header attributes an SR copies from
    // each scored image (patient module: PHI, kept only while `[sr]` is on, deleted with the
    // result); `sr_outbox`: each SR to deliver, per destination, drained in order with a
    // doubling wait after a failure; the object is dropped once delivered.
    "CREATE TABLE sr_sources (
        result_id TEXT PRIMARY KEY,
        source_json TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE sr_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        object BLOB,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try_at INTEGER NOT NULL,
        last_error TEXT,
        created_at INTEGER NOT NULL,
        delivered_at INTEGER
    );
    CREATE INDEX sr_outbox_undelivered ON sr_outbox (destination, id)
        WHERE delivered_at IS NULL;",
    // 5: the drift monitor (issue 16): the rolling window of outputs per model and source
    // (Manufacturer, ManufacturerModelName), trimmed to `drift.window` rows in the transaction
    // that adds one, and whether each source is alerted, so a restart resumes both.
    "CREATE TABLE drift_obs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model_sha256 TEXT NOT NULL,
        manufacturer TEXT NOT NULL,
        model_name TEXT NOT NULL,
        cancer REAL NOT NULL,
        density INTEGER NOT NULL,
        percent_density REAL NOT NULL,
        ood INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX drift_obs_source ON drift_obs (model_sha256, manufacturer, model_name, id);
    CREATE TABLE drift_state (
        model_sha256 TEXT NOT NULL,
        manufacturer TEXT NOT NULL,
        model_name TEXT NOT NULL,
        alerting INTEGER NOT NULL,
        changed_at INTEGER NOT NULL,
        PRIMARY KEY (model_sha256, manufacturer, model_name)
    );",
];

/// Prefix of an identifier kept (and published) as a keyed hash: `hmac-sha256:<64 hex>`. No
/// DICOM UID (digits and dots) and no absolute path starts with it.
pub const HASHED_PREFIX: &str = "hmac-sha256:";

/// Ledger reason of a file whose content was handled before its rows were purged past
/// retention: finished again with the status it had, without decoding or a message.
pub const PURGED_BEFORE_REASON: &str = "handled_before_purge";

/// One image's entry in the drift monitor's window, written with its result
/// ([`Store::commit_result_with_source`]).
#[derive(Debug, Clone)]
pub struct DriftRecord {
    /// The source: DICOM Manufacturer and ManufacturerModelName as read (may be empty).
    pub manufacturer: String,
    pub model_name: String,
    pub observation: crate::model::reference::Observation,
    /// Rows kept per (model, source): the oldest beyond it are deleted.
    pub window: usize,
    /// Whether the source is alerted once this image is counted.
    pub alerting: bool,
}

/// A source's window as stored ([`Store::drift_windows`]), oldest first.
#[derive(Debug, Clone)]
pub struct DriftWindow {
    pub manufacturer: String,
    pub model_name: String,
    pub observations: Vec<crate::model::reference::Observation>,
    pub alerting: bool,
}

/// An SR to deliver, given to [`Store::commit_exam_with_srs`].
#[derive(Debug, Clone)]
pub struct SrOutgoing {
    /// The destination's key (`AE@host:port`, or `folder`).
    pub destination: String,
    /// The SR's SOPInstanceUID.
    pub sop_instance_uid: String,
    /// The Part 10 file's bytes.
    pub object: Vec<u8>,
}

/// An undelivered SR row ([`Store::sr_next`]).
#[derive(Debug, Clone)]
pub struct SrRow {
    pub id: i64,
    pub sop_instance_uid: String,
    pub object: Vec<u8>,
    /// Tries so far.
    pub attempts: u32,
    /// Not to be tried before this time, Unix ms.
    pub next_try_at_ms: i64,
}

/// Why a state operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The state folder could not be created.
    #[error("state folder {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Opening or configuring the database failed.
    #[error("state database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The database was written by a newer build.
    #[error("state database schema version {found} is newer than this build's {supported}")]
    SchemaTooNew { found: u32, supported: u32 },
    /// A query failed.
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A result or payload could not be serialised.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Paths are stored as text; this one is not UTF-8. The message does not name it (file
    /// names may name patients; review #14).
    #[error("a path that is not UTF-8")]
    NonUtf8Path(String),
    /// The ticket's ledger row is no longer in progress (recovered, or finished already).
    /// The message names the row, not the path (review #14).
    #[error("ledger row {ledger_id} is not in progress: ticket is stale")]
    StaleTicket { ledger_id: i64, path: String },
    /// An exam revision other than the stored one + 1. The message does not name the study
    /// (review #14).
    #[error("exam revision {got} given, {expected} expected")]
    RevisionConflict {
        study: String,
        expected: u32,
        got: u32,
    },
    /// A value in the database this build does not understand.
    #[error("state database: unexpected {what} {value:?}")]
    Corrupt { what: &'static str, value: String },
    /// Another process holds the state folder's lock ([`StateLock`]).
    #[error(
        "state.dir {path} is in use by another mammo-edge ({holder}); stop it first \
         (two daemons on one state folder publish twice and undo each other's claims)"
    )]
    InUse { path: PathBuf, holder: String },
}

impl StoreError {
    /// True for a failure of the storage under the database rather than of the data: disk full
    /// (`SQLITE_FULL`), I/O error, read-only or unopenable file, or a lock held too long. The
    /// daemon pauses intake and retries later on these (nothing is lost); other errors are bugs
    /// or damage and are reported as such.
    pub fn is_storage_failure(&self) -> bool {
        use rusqlite::ErrorCode as C;
        let code = match self {
            StoreError::Sqlite(e) | StoreError::Open { source: e, .. } => e.sqlite_error_code(),
            StoreError::Dir { .. } => return true,
            _ => None,
        };
        matches!(
            code,
            Some(
                C::DiskFull
                    | C::SystemIoFailure
                    | C::ReadOnly
                    | C::CannotOpen
                    | C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::OutOfMemory
            )
        )
    }
}

/// Status of a ledger row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Seen, waiting to be (re)tried.
    New,
    /// Claimed by a worker; left so by a crash until `recover`.
    InProgress,
    /// Scored: a result row exists (or the SOPInstanceUID was scored from another file).
    Done,
    /// Valid input not scored (reason given).
    Skipped,
    /// Invalid input (reason given).
    Error,
    /// Crashed or timed out `max_attempts` times; never retried (until the file changes).
    Quarantined,
}

impl Status {
    /// Name stored in the database and used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::InProgress => "in_progress",
            Status::Done => "done",
            Status::Skipped => "skipped",
            Status::Error => "error",
            Status::Quarantined => "quarantined",
        }
    }

    fn parse(s: &str) -> Result<Status, StoreError> {
        Ok(match s {
            "new" => Status::New,
            "in_progress" => Status::InProgress,
            "done" => Status::Done,
            "skipped" => Status::Skipped,
            "error" => Status::Error,
            "quarantined" => Status::Quarantined,
            _ => {
                return Err(StoreError::Corrupt {
                    what: "ledger status",
                    value: s.into(),
                })
            }
        })
    }
}

/// Permission to work on one file, from `Store::claim`; hand it to exactly one `commit_*` or
/// `retry_later`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub ledger_id: i64,
    pub path: String,
    /// Attempts made so far, this one included (1 for a first try).
    pub attempts: u32,
    /// This claim retries a file whose last attempt hit a transient read error ([`IO_REASON`]):
    /// the error was reported then, so the same error again is recorded without a message
    /// ([`Store::commit_error_again`]).
    pub io_retry: bool,
}

/// Reason code of a read error that may pass (permissions fixed later, NFS `ESTALE`, a
/// remount): such a row is claimed again after a back-off ([`io_retry_due`]) instead of being
/// final (review #8).
pub const IO_REASON: &str = "io";

/// Whether a row that failed with [`IO_REASON`] `attempts` times, last at `updated_ms`, may
/// be tried again at `now_ms`: after 1 s, then 2, 4 … doubling, at most 1 h.
pub fn io_retry_due(attempts: u32, updated_ms: i64, now_ms: i64) -> bool {
    let wait = 1000i64.saturating_mul(1i64 << attempts.saturating_sub(1).min(12));
    now_ms - updated_ms >= wait.min(3_600_000)
}

/// What `Store::claim` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// New or changed file, or a retry: the row is now `in_progress` and its attempts were
    /// incremented before any decoding. Process it, then commit.
    Process(Ticket),
    /// Same path, size and mtime already finished with this status: nothing to do.
    Finished(Status),
    /// Attempts reached `max_attempts`: the row is `in_progress` (attempts unchanged); do not
    /// decode, call `commit_quarantine` with its error message.
    Quarantine(Ticket),
    /// Another worker holds it (`in_progress` without a crash in between): leave it.
    Busy,
    /// Its last attempt hit a transient read error and the back-off has not passed: leave it
    /// where it is and look again at a later rescan.
    Later,
}

/// An MQTT message to put in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// Full topic (`<prefix>/image` …).
    pub topic: String,
    pub payload: serde_json::Value,
    pub retain: bool,
}

/// An outbox row waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Order of publication (AUTOINCREMENT: never reused).
    pub id: i64,
    pub topic: String,
    /// JSON text, published as is.
    pub payload: String,
    pub retain: bool,
    /// Unix time, ms.
    pub created_at_ms: i64,
}

/// The identifiers a result row is keyed by. UIDs as the database keeps them: as published
/// (`hmac-sha256:…` with hashed UIDs, review #13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageKey {
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    /// SHA-256 of the model file, hex (stored lower-case).
    pub model_sha256: String,
    /// [`result_id`] of the plain SOPInstanceUID and the model (the image message's).
    pub result_id: Uuid,
}

/// What `commit_result` stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Result row and messages stored; the ledger row is `done`.
    Stored(Uuid),
    /// A result for this SOPInstanceUID and model existed already: the ledger row is `done`
    /// (reason `duplicate_sop`), nothing else was written.
    Duplicate(Uuid),
}

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub id: i64,
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    pub sop_instance_uid: Option<String>,
    pub study_instance_uid: Option<String>,
    pub status: Status,
    pub reason: Option<String>,
    pub attempts: u32,
    /// Unix time, ms.
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A stored result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResult {
    pub sop_instance_uid: String,
    pub result_id: Uuid,
    /// The result as committed (JSON text).
    pub result_json: String,
}

/// Aggregation state of one study.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExamState {
    pub study_instance_uid: String,
    /// Last published revision; 0 = never published.
    pub revision: u32,
    /// True when an image arrived after the last publication.
    pub pending: bool,
    /// Unix time of the last image committed for the study, ms.
    pub last_image_at_ms: i64,
    /// Unix time of the last publication, ms.
    pub published_at_ms: Option<i64>,
    /// The last published exam state (JSON text).
    pub published_json: Option<String>,
}

/// Rows deleted by `purge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Purged {
    pub outbox: usize,
    pub ledger: usize,
    pub results: usize,
    pub exams: usize,
}

/// Exclusive ownership of a state folder by one daemon: an advisory `flock` on
/// `<state.dir>/lock`, which holds the owner's pid as text. Taken before recovery and held until
/// dropped; the kernel releases it when the process ends, however it ends (no stale lock after
/// a crash or kill -9). Readers (`check`, the tests' queries) do not take it.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

/// Name of the lock file in the state folder.
pub const LOCK_FILE: &str = "lock";

impl StateLock {
    /// Lock `dir` (created if needed) for this process, or [`StoreError::InUse`] naming the
    /// holder's pid when another process holds it; [`StoreError::Dir`] when the folder or the
    /// lock file cannot be made.
    pub fn acquire(dir: &Path) -> Result<StateLock, StoreError> {
        use std::io::{Read, Seek, Write};
        let dir_err = |source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(dir_err)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let holder = match pid.trim() {
                    "" => "pid unknown".to_string(),
                    p => format!("pid {p}"),
                };
                return Err(StoreError::InUse {
                    path: dir.to_path_buf(),
                    holder,
                });
            }
            Err(e) => return Err(dir_err(e.into())),
        }
        file.set_len(0).map_err(dir_err)?;
        file.rewind().map_err(dir_err)?;
        writeln!(file, "{}", std::process::id()).map_err(dir_err)?;
        Ok(StateLock { _file: file })
    }
}

/// `result_id`: UUIDv5 in the OID namespace of `"<SOPInstanceUID>/<model sha256, lower-case hex>"`,
/// stable across retries and restarts (DESIGN.md, "MQTT contract").
pub fn result_id(sop_instance_uid: &str, model_sha256: &str) -> Uuid {
    let name = format!(
        "{}/{}",
        sop_instance_uid.trim(),
        model_sha256.trim().to_ascii_lowercase()
    );
    Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes())
}

fn now_ms() -> i64 {
    unix_ns(SystemTime::now()) / 1_000_000
}

/// Nanoseconds since the Unix epoch (negative before it; saturating).
fn unix_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// The ledger's key of a path. With a key (hashed identifiers, review #13):
/// `hmac-sha256:` and the HMAC of its bytes. Without: the path itself when it is UTF-8, else
/// `hex:` and the hex of its bytes (a legacy code-page name such as Latin-1
/// `M\xdcLLER^ANNA.dcm`; review #16: such files were dropped without a word). Watched paths are
/// absolute, so no UTF-8 path starts with `hex:` or the hash prefix and keys stay unique.
fn path_text<'a>(p: &'a Path, key: Option<&[u8]>) -> std::borrow::Cow<'a, str> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = p.as_os_str().as_bytes();
    match (key, p.to_str()) {
        (Some(k), _) => std::borrow::Cow::Owned(hashed_path(k, bytes)),
        (None, Some(s)) => std::borrow::Cow::Borrowed(s),
        (None, None) => std::borrow::Cow::Owned(format!(
            "hex:{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )),
    }
}

fn hashed_path(key: &[u8], bytes: &[u8]) -> String {
    format!(
        "{HASHED_PREFIX}{}",
        crate::ingest::files::hmac_hex(key, bytes)
    )
}

/// The bytes of a plain ledger path key (`path_text` without a key), `None` if malformed.
fn path_bytes(text: &str) -> Option<Vec<u8>> {
    match text.strip_prefix("hex:") {
        None => Some(text.as_bytes().to_vec()),
        Some(h) if h.len().is_multiple_of(2) => (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
            .collect(),
        Some(_) => None,
    }
}

/// The daemon's state database. One `Store` per process; writes take `&mut self`.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    max_attempts: u32,
    /// Key of the ledger's path hashes ([`Store::hash_at_rest`]); `None`: paths kept plain.
    path_key: Option<Vec<u8>>,
}

impl Store {
    /// Open (creating the folder and file if needed) `<dir>/state.sqlite`, set WAL and
    /// `synchronous=FULL`, and migrate the schema to `SCHEMA_VERSION`. `max_attempts` is
    /// `ingest.max_attempts` (values below 1 count as 1).
    ///
    /// Errors: `Dir`, `Open`, `SchemaTooNew` (a newer build wrote it), `Sqlite` (migration).
    pub fn open(dir: &Path, max_attempts: u32) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_err(rusqlite::Error::InvalidParameterName(format!(
                "journal_mode is {mode}, WAL needed"
            ))));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let mut store = Store {
            conn,
            path,
            max_attempts: max_attempts.max(1),
            path_key: None,
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let found: u32 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Exclusive)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
            log::info!(
                "state database {}: schema migrated to version {}",
                self.path.display(),
                i + 1
            );
        }
        Ok(())
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Schema version of the open database (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn write_tx(&mut self) -> Result<Transaction<'_>, StoreError> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Decide what to do with a stable file of `size` bytes modified at `mtime`, in one
    /// transaction. A file not seen before, or whose size or mtime changed (attempts start again
    /// at 1), or one waiting for a retry, is marked `in_progress` with attempts incremented
    /// BEFORE the caller decodes it, so a crash while decoding counts. See `Claim`.
    pub fn claim(
        &mut self,
        path: &Path,
        size: u64,
        mtime: SystemTime,
    ) -> Result<Claim, StoreError> {
        let path_key = path_text(path, self.path_key.as_deref());
        let path: &str = &path_key;
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        let mtime_ns = unix_ns(mtime);
        let max_attempts = self.max_attempts;
        let now = now_ms();
        let tx = self.write_tx()?;
        type Row = (i64, i64, i64, String, u32, Option<String>, i64);
        let row: Option<Row> = tx
            .query_row(
                "SELECT id, size, mtime_ns, status, attempts, reason, updated_at
                 FROM ledger WHERE path = ?1",
                [path],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .optional()?;
        let claim = match row {
            None => {
                tx.execute(
                    "INSERT INTO ledger (path, size, mtime_ns, status, attempts, created_at, updated_at)
                     VALUES (?1, ?2, ?3, 'in_progress', 1, ?4, ?4)",
                    params![path, size, mtime_ns, now],
                )?;
                Claim::Process(Ticket {
                    ledger_id: tx.last_insert_rowid(),
                    path: path.into(),
                    attempts: 1,
                    io_retry: false,
                })
            }
            Some((id, old_size, old_mtime, status, attempts, reason, updated_at)) => {
                let status = Status::parse(&status)?;
                let ticket = |attempts| Ticket {
                    ledger_id: id,
                    path: path.into(),
                    attempts,
                    io_retry: false,
                };
                let transient = status == Status::Error && reason.as_deref() == Some(IO_REASON);
                if status == Status::InProgress {
                    Claim::Busy
                } else if old_size != size || old_mtime != mtime_ns {
                    tx.execute(
                        "UPDATE ledger SET size = ?2, mtime_ns = ?3, sop_instance_uid = NULL,
                         study_instance_uid = NULL, content_sha256 = NULL,
                         status = 'in_progress', reason = NULL, attempts = 1, updated_at = ?4
                         WHERE id = ?1",
                        params![id, size, mtime_ns, now],
                    )?;
                    Claim::Process(ticket(1))
                } else if transient && io_retry_due(attempts, updated_at, now) {
                    tx.execute(
                        "UPDATE ledger SET status = 'in_progress', attempts = attempts + 1,
                         updated_at = ?2 WHERE id = ?1",
                        params![id, now],
                    )?;
                    Claim::Process(Ticket {
                        io_retry: true,
                        ..ticket(attempts + 1)
                    })
                } else if transient {
                    Claim::Later
                } else if status != Status::New {
                    Claim::Finished(status)
                } else if attempts >= max_attempts {
                    tx.execute(
                        "UPDATE ledger SET status = 'in_progress', updated_at = ?2 WHERE id = ?1",
                        params![id, now],
                    )?;
                    Claim::Quarantine(ticket(attempts))
                } else {
                    tx.execute(
                        "UPDATE ledger SET status = 'in_progress', attempts = attempts + 1,
                         updated_at = ?2 WHERE id = ?1",
                        params![id, now],
                    )?;
                    Claim::Process(ticket(attempts + 1))
                }
            }
        };
        tx.commit()?;
        Ok(claim)
    }

    /// Record a file received over DICOM (`edge::dicom_scp`) before the C-STORE is answered:
    /// a ledger row `new` with no attempt yet, which the next claim takes like a watched file's.
    /// A row of the same path that is not in progress (an earlier copy of the same instance,
    /// scored and removed) is reset to `new` for this version; the worker then finds the
    /// instance scored already and records a duplicate. Errors: `Sqlite`.
    pub fn register(
        &mut self,
        path: &Path,
        size: u64,
        mtime: SystemTime,
    ) -> Result<(), StoreError> {
        let path_key = path_text(path, self.path_key.as_deref());
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        let now = now_ms();
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO ledger (path, size, mtime_ns, status, attempts, created_at, updated_at)
             VALUES (?1, ?2, ?3, 'new', 0, ?4, ?4)
             ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
               sop_instance_uid = NULL, study_instance_uid = NULL, content_sha256 = NULL,
               status = 'new', reason = NULL, attempts = 0, updated_at = excluded.updated_at
             WHERE ledger.status <> 'in_progress'",
            params![&*path_key, size, unix_ns(mtime), now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// True when a result exists for this SOPInstanceUID (any model; as kept, see
    /// [`ImageKey`]): a re-exported copy of an image already scored must not be processed again
    /// (DESIGN.md, "Storage guarantees").
    pub fn seen_sop(&self, sop_instance_uid: &str) -> Result<bool, StoreError> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM results WHERE sop_instance_uid = ?1)",
            [sop_instance_uid],
            |r| r.get(0),
        )?)
    }

    /// Store a scored image in ONE transaction: ledger row `done` with its UIDs, the result row
    /// (`result` serialised to JSON, keyed by SOPInstanceUID + model sha256, `result_id` from
    /// `result_id()`), the exam marked pending, and `messages` appended to the outbox in order.
    /// If that result row exists already, only the ledger row is finished (`Committed::Duplicate`).
    ///
    /// Errors: `StaleTicket` (row not in progress; nothing written), `Json`, `Sqlite`.
    pub fn commit_result<T: Serialize>(
        &mut self,
        ticket: &Ticket,
        key: &ImageKey,
        result: &T,
        messages: &[OutboxMessage],
    ) -> Result<Committed, StoreError> {
        self.commit_result_with_source(ticket, key, result, messages, None, None)
    }

    /// [`Store::commit_result`], and in the same transaction, when the result is new,
    /// `sr_source` (the image's header attributes an SR copies, JSON of
    /// [`crate::edge::sr::SourceImage::to_json`]) kept under its result id until the result
    /// is purged; and `drift`, the image's entry in the drift monitor's window of its model and
    /// source (the window trimmed to `drift.window` rows, the source's alert state set).
    /// `messages` then also carry the drift and alert messages. Errors: as `commit_result`.
    pub fn commit_result_with_source<T: Serialize>(
        &mut self,
        ticket: &Ticket,
        key: &ImageKey,
        result: &T,
        messages: &[OutboxMessage],
        sr_source: Option<&str>,
        drift: Option<&DriftRecord>,
    ) -> Result<Committed, StoreError> {
        let json = serde_json::to_string(result)?;
        let sha = key.model_sha256.trim().to_ascii_lowercase();
        let id = key.result_id;
        let now = now_ms();
        let tx = self.write_tx()?;
        let inserted = tx.execute(
            "INSERT INTO results (sop_instance_uid, model_sha256, result_id, study_instance_uid,
             ledger_id, result_json, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT DO NOTHING",
            params![
                key.sop_instance_uid,
                sha,
                id.to_string(),
                key.study_instance_uid,
                ticket.ledger_id,
                json,
                now
            ],
        )?;
        let reason = (inserted == 0).then_some("duplicate_sop");
        finish(
            &tx,
            ticket,
            Status::Done,
            Some(&key.sop_instance_uid),
            Some(&key.study_instance_uid),
            reason,
            now,
        )?;
        if inserted == 0 {
            tx.commit()?;
            return Ok(Committed::Duplicate(id));
        }
        tx.execute(
            "INSERT INTO exams (study_instance_uid, revision, pending, last_image_at)
             VALUES (?1, 0, 1, ?2)
             ON CONFLICT (study_instance_uid) DO UPDATE SET pending = 1,
             last_image_at = excluded.last_image_at",
            params![key.study_instance_uid, now],
        )?;
        if let Some(src) = sr_source {
            tx.execute(
                "INSERT OR REPLACE INTO sr_sources (result_id, source_json, created_at)
                 VALUES (?1, ?2, ?3)",
                params![id.to_string(), src, now],
            )?;
        }
        if let Some(d) = drift {
            record_drift(&tx, &sha, d, now)?;
        }
        push(&tx, messages, now)?;
        tx.commit()?;
        Ok(Committed::Stored(id))
    }

    /// Finish a valid input that is not scored (other modality, For Processing, view …): ledger
    /// row `skipped` with `reason` and the UIDs when known, plus its outbox message, in one
    /// transaction. Errors: `StaleTicket`, `Sqlite`.
    pub fn commit_skip(
        &mut self,
        ticket: &Ticket,
        sop_instance_uid: Option<&str>,
        study_instance_uid: Option<&str>,
        reason: &str,
        message: &OutboxMessage,
    ) -> Result<(), StoreError> {
        self.finish_with(
            ticket,
            Status::Skipped,
            sop_instance_uid,
            study_instance_uid,
            reason,
            std::slice::from_ref(message),
        )
    }

    /// Finish an invalid input (damaged, undecodable …): ledger row `error` with `reason`, plus
    /// its outbox message, in one transaction. Errors: `StaleTicket`, `Sqlite`.
    pub fn commit_error(
        &mut self,
        ticket: &Ticket,
        sop_instance_uid: Option<&str>,
        study_instance_uid: Option<&str>,
        reason: &str,
        message: &OutboxMessage,
    ) -> Result<(), StoreError> {
        self.finish_with(
            ticket,
            Status::Error,
            sop_instance_uid,
            study_instance_uid,
            reason,
            std::slice::from_ref(message),
        )
    }

    /// Finish a retry ([`Ticket::io_retry`]) that failed with the same transient error as
    /// before: ledger row `error` with `reason`, no message (it was reported the first time).
    /// Errors: `StaleTicket`, `Sqlite`.
    pub fn commit_error_again(&mut self, ticket: &Ticket, reason: &str) -> Result<(), StoreError> {
        self.finish_with(ticket, Status::Error, None, None, reason, &[])
    }

    /// Finish a `Claim::Quarantine`: ledger row `quarantined` with `reason`, plus its (error)
    /// outbox message, in one transaction. Errors: `StaleTicket`, `Sqlite`.
    pub fn commit_quarantine(
        &mut self,
        ticket: &Ticket,
        reason: &str,
        message: &OutboxMessage,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let tx = self.write_tx()?;
        finish(
            &tx,
            ticket,
            Status::Quarantined,
            None,
            None,
            Some(reason),
            now,
        )?;
        // the content, once known, stays quarantined under any name (review #10)
        tx.execute(
            "INSERT OR IGNORE INTO quarantine (content_sha256, reason, quarantined_at)
             SELECT content_sha256, ?2, ?3 FROM ledger WHERE id = ?1 AND content_sha256 IS NOT NULL",
            params![ticket.ledger_id, reason, now],
        )?;
        push(&tx, std::slice::from_ref(message), now)?;
        tx.commit()?;
        Ok(())
    }

    /// Record the sha256 (hex) of a claimed file's content on its ledger row, before it is
    /// decoded, so that a quarantine of the row also quarantines the content. Called by the
    /// worker on its own connection. Errors: `StaleTicket` (row not in progress), `Sqlite`.
    pub fn record_content(&mut self, ticket: &Ticket, sha256: &str) -> Result<(), StoreError> {
        let n = self.conn.execute(
            "UPDATE ledger SET content_sha256 = ?3
             WHERE id = ?1 AND attempts = ?2 AND status = 'in_progress'",
            params![ticket.ledger_id, ticket.attempts, sha256],
        )?;
        if n != 1 {
            return Err(stale(ticket));
        }
        Ok(())
    }

    /// The reason a file with this content (sha256, hex) was quarantined, if it was.
    pub fn quarantined_content(&self, sha256: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT reason FROM quarantine WHERE content_sha256 = ?1",
                [sha256],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Finish a file whose SOPInstanceUID was scored already (`seen_sop`): ledger row `done`,
    /// reason `duplicate_sop`, no message. Errors: `StaleTicket`, `Sqlite`.
    pub fn commit_duplicate(
        &mut self,
        ticket: &Ticket,
        sop_instance_uid: &str,
        study_instance_uid: Option<&str>,
    ) -> Result<(), StoreError> {
        self.finish_with(
            ticket,
            Status::Done,
            Some(sop_instance_uid),
            study_instance_uid,
            "duplicate_sop",
            &[],
        )
    }

    /// Give a claimed file back for a later retry (e.g. its decoding timed out): ledger row `new`
    /// with `reason`, attempts kept, so it is quarantined once they reach `max_attempts`.
    /// Errors: `StaleTicket`, `Sqlite`.
    pub fn retry_later(&mut self, ticket: &Ticket, reason: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let tx = self.write_tx()?;
        finish(&tx, ticket, Status::New, None, None, Some(reason), now)?;
        tx.commit()?;
        Ok(())
    }

    /// Give a claimed file back WITHOUT counting the attempt (the daemon, not the file, failed:
    /// e.g. its result could not be committed because the disk was full): ledger row `new` with
    /// `reason`, attempts one less. Errors: `StaleTicket`, `Sqlite`.
    pub fn release(&mut self, ticket: &Ticket, reason: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let tx = self.write_tx()?;
        finish(&tx, ticket, Status::New, None, None, Some(reason), now)?;
        tx.execute(
            "UPDATE ledger SET attempts = MAX(attempts - 1, 0) WHERE id = ?1",
            [ticket.ledger_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Change `ingest.max_attempts` (SIGHUP reload); values below 1 count as 1.
    pub fn set_max_attempts(&mut self, max_attempts: u32) {
        self.max_attempts = max_attempts.max(1);
    }

    fn finish_with(
        &mut self,
        ticket: &Ticket,
        status: Status,
        sop: Option<&str>,
        study: Option<&str>,
        reason: &str,
        messages: &[OutboxMessage],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let tx = self.write_tx()?;
        finish(&tx, ticket, status, sop, study, Some(reason), now)?;
        push(&tx, messages, now)?;
        tx.commit()?;
        Ok(())
    }

    /// Start-up recovery: rows left `in_progress` by a crash go back to `new` (reason
    /// `interrupted`), attempts kept, so a file that keeps crashing the daemon is eventually
    /// quarantined. Returns how many rows were recovered.
    pub fn recover(&mut self) -> Result<usize, StoreError> {
        let now = now_ms();
        let tx = self.write_tx()?;
        let n = tx.execute(
            "UPDATE ledger SET status = 'new', reason = 'interrupted', updated_at = ?1
             WHERE status = 'in_progress'",
            [now],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Up to `limit` undelivered outbox rows, oldest (lowest id) first.
    pub fn next_undelivered(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, topic, payload, retain, created_at FROM outbox
             WHERE delivered_at IS NULL ORDER BY id LIMIT ?1",
        )?;
        let rows = st.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(OutboxRow {
                id: r.get(0)?,
                topic: r.get(1)?,
                payload: r.get(2)?,
                retain: r.get(3)?,
                created_at_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Up to `limit` undelivered outbox rows with an id greater than `after`, oldest first: the
    /// publisher's next rows while earlier ones are in flight (`after` = last id handed to the
    /// client on this connection; 0 to start from the first undelivered row).
    pub fn undelivered_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, topic, payload, retain, created_at FROM outbox
             WHERE delivered_at IS NULL AND id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = st.query_map(
            params![after, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(OutboxRow {
                    id: r.get(0)?,
                    topic: r.get(1)?,
                    payload: r.get(2)?,
                    retain: r.get(3)?,
                    created_at_ms: r.get(4)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Mark an outbox row delivered (call on PUBACK). Returns false if it was delivered already
    /// or does not exist.
    pub fn mark_delivered(&mut self, id: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE outbox SET delivered_at = ?2 WHERE id = ?1 AND delivered_at IS NULL",
            params![id, now_ms()],
        )?;
        Ok(n == 1)
    }

    /// Number of outbox rows not yet delivered.
    pub fn undelivered_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Delete, in one transaction, everything finished at least `retention` ago
    /// (`state.retention_days`; review #13):
    /// - delivered outbox rows;
    /// - finished ledger rows (`done`, `skipped`, `error` other than a read error still being
    ///   retried, `quarantined`); their content hashes go to `purged_content` for one retention
    ///   period more, so a file left in a watched folder, claimed again, is finished again
    ///   without decoding or a message ([`Store::purged_content`]);
    /// - results, except those of a study whose exam is still pending, and the SR sources of
    ///   the results deleted;
    /// - published exams with no pending image;
    /// - delivered SR outbox rows.
    ///
    /// Undelivered messages, rows `new` or `in_progress` and the quarantine's content hashes are
    /// kept. An image of a study purged earlier starts its exam again (revision 1).
    pub fn purge(&mut self, retention: Duration) -> Result<Purged, StoreError> {
        let now = now_ms();
        let cutoff = now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let tx = self.write_tx()?;
        let outbox = tx.execute(
            "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at <= ?1",
            [cutoff],
        )?;
        const FINISHED: &str = "updated_at <= ?1 AND (status IN ('done', 'skipped', 'quarantined')
             OR (status = 'error' AND reason IS NOT ?2))";
        tx.execute("DELETE FROM purged_content WHERE purged_at <= ?1", [cutoff])?;
        tx.execute(
            &format!(
                "INSERT OR REPLACE INTO purged_content (content_sha256, status, purged_at)
                 SELECT content_sha256, status, ?3 FROM ledger
                 WHERE content_sha256 IS NOT NULL AND {FINISHED}"
            ),
            params![cutoff, IO_REASON, now],
        )?;
        let ledger = tx.execute(
            &format!("DELETE FROM ledger WHERE {FINISHED}"),
            params![cutoff, IO_REASON],
        )?;
        let results = tx.execute(
            "DELETE FROM results WHERE created_at <= ?1 AND study_instance_uid NOT IN
             (SELECT study_instance_uid FROM exams WHERE pending = 1)",
            [cutoff],
        )?;
        let exams = tx.execute(
            "DELETE FROM exams WHERE pending = 0 AND last_image_at <= ?1
             AND COALESCE(published_at, 0) <= ?1",
            [cutoff],
        )?;
        tx.execute(
            "DELETE FROM sr_sources WHERE result_id NOT IN (SELECT result_id FROM results)",
            [],
        )?;
        tx.execute(
            "DELETE FROM sr_outbox WHERE delivered_at IS NOT NULL AND delivered_at <= ?1",
            [cutoff],
        )?;
        tx.commit()?;
        Ok(Purged {
            outbox,
            ledger,
            results,
            exams,
        })
    }

    /// The status a file with this content (sha256, hex) had when its ledger row was purged
    /// past retention, within the retention period after that ([`Store::purge`]).
    pub fn purged_content(&self, sha256: &str) -> Result<Option<Status>, StoreError> {
        let status: Option<String> = self
            .conn
            .query_row(
                "SELECT status FROM purged_content WHERE content_sha256 = ?1",
                [sha256],
                |r| r.get(0),
            )
            .optional()?;
        status.map(|s| Status::parse(&s)).transpose()
    }

    /// Finish a file whose content was handled before its rows were purged
    /// ([`Store::purged_content`]): ledger row `status` again, reason
    /// [`PURGED_BEFORE_REASON`], no message. Errors: `StaleTicket`, `Sqlite`.
    pub fn commit_purged_before(
        &mut self,
        ticket: &Ticket,
        status: Status,
    ) -> Result<(), StoreError> {
        self.finish_with(ticket, status, None, None, PURGED_BEFORE_REASON, &[])
    }

    /// Keep identifiers hashed from now on (`privacy.uids = "hashed"`; review #13): ledger
    /// paths as `hmac-sha256:` + HMAC-SHA256 of their bytes under `path_key`, and rewrite in one
    /// transaction what an earlier run kept plain: paths, and the UIDs of the ledger, results
    /// and exams through `uid` (the published form, [`HASHED_PREFIX`]…). A plain row whose
    /// hashed form exists already is a stale duplicate and is deleted. UIDs passed to the other
    /// methods must then be in that form too. Returns the number of rows rewritten or deleted.
    /// Errors: `Sqlite`.
    pub fn hash_at_rest(
        &mut self,
        path_key: &[u8],
        uid: impl Fn(&str) -> String,
    ) -> Result<usize, StoreError> {
        self.path_key = Some(path_key.to_vec());
        let plain =
            |col: &str| format!("{col} IS NOT NULL AND NOT ({col} GLOB '{HASHED_PREFIX}*')");
        let tx = self.write_tx()?;
        let mut n = 0;
        let rows: Vec<(i64, String)> = tx
            .prepare(&format!(
                "SELECT id, path FROM ledger WHERE {}",
                plain("path")
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (id, text) in rows {
            let bytes = path_bytes(&text).unwrap_or_else(|| text.clone().into_bytes());
            n += tx.execute(
                "UPDATE OR IGNORE ledger SET path = ?2 WHERE id = ?1",
                params![id, hashed_path(path_key, &bytes)],
            )?;
        }
        for (table, col) in [
            ("ledger", "sop_instance_uid"),
            ("ledger", "study_instance_uid"),
            ("results", "sop_instance_uid"),
            ("results", "study_instance_uid"),
            ("exams", "study_instance_uid"),
        ] {
            let values: Vec<String> = tx
                .prepare(&format!(
                    "SELECT DISTINCT {col} FROM {table} WHERE {}",
                    plain(col)
                ))?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for v in values {
                n += tx.execute(
                    &format!("UPDATE OR IGNORE {table} SET {col} = ?2 WHERE {col} = ?1"),
                    params![v, uid(&v)],
                )?;
            }
        }
        for (table, col) in [
            ("ledger", "path"),
            ("results", "sop_instance_uid"),
            ("results", "study_instance_uid"),
            ("exams", "study_instance_uid"),
        ] {
            n += tx.execute(&format!("DELETE FROM {table} WHERE {}", plain(col)), [])?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Queue again, as new outbox rows in their original order, the delivered result messages
    /// (topics ending in `/image`, `/exam`, `/skipped`, `/error`) first committed in
    /// `[since_ms, until_ms)` (Unix ms): for consumers that missed them (a PUBACK is not a
    /// delivery to every subscriber, review #12). Payloads, and so `result_id`s, are unchanged;
    /// rows purged after `state.retention_days` are gone. Returns the number queued.
    /// Errors: `Sqlite`.
    pub fn replay(&mut self, since_ms: i64, until_ms: i64) -> Result<usize, StoreError> {
        let now = now_ms();
        let tx = self.write_tx()?;
        let n = tx.execute(
            "INSERT INTO outbox (topic, payload, retain, created_at)
             SELECT topic, payload, retain, ?3 FROM outbox
             WHERE delivered_at IS NOT NULL AND created_at >= ?1 AND created_at < ?2
               AND (topic LIKE '%/image' OR topic LIKE '%/exam'
                    OR topic LIKE '%/skipped' OR topic LIKE '%/error')
             ORDER BY id",
            params![since_ms, until_ms, now],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// The ledger row of `path`, if any.
    pub fn ledger_entry(&self, path: &Path) -> Result<Option<LedgerEntry>, StoreError> {
        let path_key = path_text(path, self.path_key.as_deref());
        let path: &str = &path_key;
        let row = self
            .conn
            .query_row(
                "SELECT id, path, size, mtime_ns, sop_instance_uid, study_instance_uid, status,
                 reason, attempts, created_at, updated_at FROM ledger WHERE path = ?1",
                [path],
                |r| {
                    Ok((
                        LedgerEntry {
                            id: r.get(0)?,
                            path: r.get(1)?,
                            size: r.get::<_, i64>(2)? as u64,
                            mtime_ns: r.get(3)?,
                            sop_instance_uid: r.get(4)?,
                            study_instance_uid: r.get(5)?,
                            status: Status::New,
                            reason: r.get(7)?,
                            attempts: r.get(8)?,
                            created_at_ms: r.get(9)?,
                            updated_at_ms: r.get(10)?,
                        },
                        r.get::<_, String>(6)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(mut e, status)| {
            e.status = Status::parse(&status)?;
            Ok(e)
        })
        .transpose()
    }

    /// The drift monitor's windows of the model `model_sha256` (at most `window` newest rows
    /// per source, oldest first) with each source's alert state; the rows of other models are
    /// deleted (a new model starts new windows). Errors: `Sqlite`.
    pub fn drift_windows(
        &mut self,
        model_sha256: &str,
        window: usize,
    ) -> Result<Vec<DriftWindow>, StoreError> {
        let sha = model_sha256.trim().to_ascii_lowercase();
        let tx = self.write_tx()?;
        tx.execute("DELETE FROM drift_obs WHERE model_sha256 != ?1", [&sha])?;
        tx.execute("DELETE FROM drift_state WHERE model_sha256 != ?1", [&sha])?;
        tx.commit()?;
        let mut out: Vec<DriftWindow> = Vec::new();
        let mut st = self.conn.prepare(
            "SELECT s.manufacturer, s.model_name, s.alerting FROM drift_state s
             WHERE s.model_sha256 = ?1
             UNION SELECT DISTINCT manufacturer, model_name, 0 FROM drift_obs
             WHERE model_sha256 = ?1 AND (manufacturer, model_name) NOT IN
             (SELECT manufacturer, model_name FROM drift_state WHERE model_sha256 = ?1)
             ORDER BY 1, 2",
        )?;
        let sources = st
            .query_map([&sha], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut obs = self.conn.prepare(
            "SELECT cancer, density, percent_density, ood FROM drift_obs
             WHERE model_sha256 = ?1 AND manufacturer = ?2 AND model_name = ?3
             ORDER BY id DESC LIMIT ?4",
        )?;
        for (manufacturer, model_name, alerting) in sources {
            let mut observations = obs
                .query_map(params![sha, manufacturer, model_name, window as i64], |r| {
                    Ok(crate::model::reference::Observation {
                        cancer: r.get::<_, f64>(0)? as f32,
                        density: r.get::<_, i64>(1)?.clamp(0, 3) as usize,
                        percent_density: r.get::<_, f64>(2)? as f32,
                        ood: r.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            observations.reverse();
            out.push(DriftWindow {
                manufacturer,
                model_name,
                observations,
                alerting,
            });
        }
        Ok(out)
    }

    /// Results of a study for one model, in commit order (the aggregator's input).
    pub fn study_results(
        &self,
        study_instance_uid: &str,
        model_sha256: &str,
    ) -> Result<Vec<StoredResult>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT sop_instance_uid, result_id, result_json FROM results
             WHERE study_instance_uid = ?1 AND model_sha256 = ?2 ORDER BY created_at, rowid",
        )?;
        let rows = st.query_map(
            params![study_instance_uid, model_sha256.trim().to_ascii_lowercase()],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )?;
        rows.map(|row| {
            let (sop_instance_uid, id, result_json) = row?;
            let result_id = Uuid::parse_str(&id).map_err(|_| StoreError::Corrupt {
                what: "result_id",
                value: id,
            })?;
            Ok(StoredResult {
                sop_instance_uid,
                result_id,
                result_json,
            })
        })
        .collect()
    }

    /// Aggregation state of a study (`None` before its first result).
    pub fn exam_state(&self, study_instance_uid: &str) -> Result<Option<ExamState>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT study_instance_uid, revision, pending, last_image_at, published_at,
                 published_json FROM exams WHERE study_instance_uid = ?1",
                [study_instance_uid],
                exam_row,
            )
            .optional()?)
    }

    /// Studies with unpublished images whose last image is at least `quiet` old
    /// (`exam.quiet_secs`): the incomplete exams due for publication, oldest first.
    pub fn quiet_exams(&self, quiet: Duration) -> Result<Vec<ExamState>, StoreError> {
        let cutoff = now_ms().saturating_sub(i64::try_from(quiet.as_millis()).unwrap_or(i64::MAX));
        let mut st = self.conn.prepare_cached(
            "SELECT study_instance_uid, revision, pending, last_image_at, published_at,
             published_json FROM exams WHERE pending = 1 AND last_image_at <= ?1
             ORDER BY last_image_at",
        )?;
        let rows = st.query_map([cutoff], exam_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Record a publication of the exam in ONE transaction with its outbox messages: revision
    /// (must be the stored revision + 1, see `exam::next_revision`), the published state
    /// (`exam` as JSON), pending cleared.
    ///
    /// Errors: `RevisionConflict` (nothing written), `Json`, `Sqlite`.
    pub fn commit_exam<T: Serialize>(
        &mut self,
        study_instance_uid: &str,
        revision: u32,
        exam: &T,
        messages: &[OutboxMessage],
    ) -> Result<(), StoreError> {
        self.commit_exam_with_srs(study_instance_uid, revision, exam, messages, &[])
    }

    /// [`Store::commit_exam`], and in the same transaction `srs` appended to the SR outbox
    /// (due now). Errors: as `commit_exam`.
    pub fn commit_exam_with_srs<T: Serialize>(
        &mut self,
        study_instance_uid: &str,
        revision: u32,
        exam: &T,
        messages: &[OutboxMessage],
        srs: &[SrOutgoing],
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(exam)?;
        let now = now_ms();
        let tx = self.write_tx()?;
        let stored: u32 = tx
            .query_row(
                "SELECT revision FROM exams WHERE study_instance_uid = ?1",
                [study_instance_uid],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        if revision != stored + 1 {
            return Err(StoreError::RevisionConflict {
                study: study_instance_uid.into(),
                expected: stored + 1,
                got: revision,
            });
        }
        tx.execute(
            "INSERT INTO exams (study_instance_uid, revision, pending, last_image_at,
             published_at, published_json) VALUES (?1, ?2, 0, ?3, ?3, ?4)
             ON CONFLICT (study_instance_uid) DO UPDATE SET revision = excluded.revision,
             pending = 0, published_at = excluded.published_at,
             published_json = excluded.published_json",
            params![study_instance_uid, revision, now, json],
        )?;
        push(&tx, messages, now)?;
        for sr in srs {
            tx.execute(
                "INSERT INTO sr_outbox (destination, sop_instance_uid, object, next_try_at,
                 created_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![sr.destination, sr.sop_instance_uid, sr.object, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The SR sources ([`Store::commit_result_with_source`]) of a study's results for one
    /// model, with each result's JSON, in commit order. Results kept without a source are left
    /// out.
    pub fn study_sr_sources(
        &self,
        study_instance_uid: &str,
        model_sha256: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT s.source_json, r.result_json FROM results r
             JOIN sr_sources s ON s.result_id = r.result_id
             WHERE r.study_instance_uid = ?1 AND r.model_sha256 = ?2
             ORDER BY r.created_at, r.rowid",
        )?;
        let rows = st.query_map(
            params![study_instance_uid, model_sha256.trim().to_ascii_lowercase()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The oldest undelivered SR of `destination` (due or not), if any.
    pub fn sr_next(&self, destination: &str) -> Result<Option<SrRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, sop_instance_uid, object, attempts, next_try_at FROM sr_outbox
                 WHERE destination = ?1 AND delivered_at IS NULL ORDER BY id LIMIT 1",
                [destination],
                |r| {
                    Ok(SrRow {
                        id: r.get(0)?,
                        sop_instance_uid: r.get(1)?,
                        object: r.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(),
                        attempts: r.get(3)?,
                        next_try_at_ms: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// Mark an SR delivered and drop its object (it holds patient data). False if it was
    /// delivered already or does not exist.
    pub fn sr_delivered(&mut self, id: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE sr_outbox SET delivered_at = ?2, object = NULL, last_error = NULL
             WHERE id = ?1 AND delivered_at IS NULL",
            params![id, now_ms()],
        )?;
        Ok(n == 1)
    }

    /// Record a failed try of an SR: one more attempt, not to be tried again before
    /// `next_try_at_ms`, and why (no patient data in `error`).
    pub fn sr_failed(
        &mut self,
        id: i64,
        next_try_at_ms: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE sr_outbox SET attempts = attempts + 1, next_try_at = ?2, last_error = ?3
             WHERE id = ?1 AND delivered_at IS NULL",
            params![id, next_try_at_ms, error],
        )?;
        Ok(())
    }

    /// Undelivered SRs, per destination key.
    pub fn sr_undelivered(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT destination, COUNT(*) FROM sr_outbox WHERE delivered_at IS NULL
             GROUP BY destination ORDER BY destination",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn exam_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExamState> {
    Ok(ExamState {
        study_instance_uid: r.get(0)?,
        revision: r.get(1)?,
        pending: r.get(2)?,
        last_image_at_ms: r.get(3)?,
        published_at_ms: r.get(4)?,
        published_json: r.get(5)?,
    })
}

/// Set the final (or retry) status of a claimed row; the row must still be in progress with the
/// ticket's attempts, else `StaleTicket` (the caller's transaction is then dropped: rolled back).
fn finish(
    tx: &Transaction<'_>,
    ticket: &Ticket,
    status: Status,
    sop: Option<&str>,
    study: Option<&str>,
    reason: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    let n = tx.execute(
        "UPDATE ledger SET status = ?3, sop_instance_uid = COALESCE(?4, sop_instance_uid),
         study_instance_uid = COALESCE(?5, study_instance_uid), reason = ?6, updated_at = ?7
         WHERE id = ?1 AND attempts = ?2 AND status = 'in_progress'",
        params![
            ticket.ledger_id,
            ticket.attempts,
            status.as_str(),
            sop,
            study,
            reason,
            now
        ],
    )?;
    if n != 1 {
        return Err(stale(ticket));
    }
    Ok(())
}

/// The error of a ticket whose ledger row is no longer in progress.
fn stale(ticket: &Ticket) -> StoreError {
    StoreError::StaleTicket {
        ledger_id: ticket.ledger_id,
        path: ticket.path.clone(),
    }
}

/// Add `d`'s observation to its window, trim the window, set the source's alert state.
fn record_drift(
    tx: &Transaction<'_>,
    model_sha256: &str,
    d: &DriftRecord,
    now: i64,
) -> Result<(), StoreError> {
    let o = &d.observation;
    tx.execute(
        "INSERT INTO drift_obs (model_sha256, manufacturer, model_name, cancer, density,
         percent_density, ood, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            model_sha256,
            d.manufacturer,
            d.model_name,
            f64::from(o.cancer),
            o.density as i64,
            f64::from(o.percent_density),
            o.ood,
            now
        ],
    )?;
    tx.execute(
        "DELETE FROM drift_obs WHERE model_sha256 = ?1 AND manufacturer = ?2 AND model_name = ?3
         AND id <= (SELECT id FROM drift_obs WHERE model_sha256 = ?1 AND manufacturer = ?2
                    AND model_name = ?3 ORDER BY id DESC LIMIT 1 OFFSET ?4)",
        params![model_sha256, d.manufacturer, d.model_name, d.window as i64],
    )?;
    tx.execute(
        "INSERT INTO drift_state (model_sha256, manufacturer, model_name, alerting, changed_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT DO UPDATE SET alerting = excluded.alerting,
         changed_at = CASE WHEN alerting = excluded.alerting THEN changed_at ELSE excluded.changed_at END",
        params![model_sha256, d.manufacturer, d.model_name, d.alerting, now],
    )?;
    Ok(())
}

fn push(tx: &Transaction<'_>, messages: &[OutboxMessage], now: i64) -> Result<(), StoreError> {
    let mut st = tx.prepare_cached(
        "INSERT INTO outbox (topic, payload, retain, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for m in messages {
        st.execute(params![
            m.topic,
            serde_json::to_string(&m.payload)?,
            m.retain,
            now
        ])?;
    }
    Ok(())
}
