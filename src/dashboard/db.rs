//! The dashboard's database — SQLite (one file, WAL; one site) or PostgreSQL (a URL; many
//! sites, several dashboards) — what the subscribed brokers carried, kept as received: exams
//! (highest revision), appliances (status, health), drift per source, alerts; and the queries of
//! the JSON API ([docs/dashboard.md](../../docs/dashboard.md)). One SQL text serves both
//! backends (`?N` placeholders, rewritten to `$N` for PostgreSQL) except the schema and the day
//! of a timestamp.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{json, Value};

use super::topic::{Kind, Parsed};

/// Errors of the dashboard database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("--db {0:?}: expected sqlite:PATH or postgres://USER@HOST:PORT/DATABASE")]
    Url(String),
    // (the causes are in the messages, not chained as sources: the CLI prints a chain whole)
    #[error("--db sqlite:{path}: {error}")]
    Open {
        path: PathBuf,
        error: rusqlite::Error,
    },
    #[error("--db {url}: {detail}")]
    Connect {
        /// The URL without its password.
        url: String,
        /// The client's error with its cause (e.g. "connection refused").
        detail: String,
    },
    #[error("dashboard database: {0}")]
    Sql(rusqlite::Error),
    #[error("dashboard database (PostgreSQL): {0}")]
    Pg(postgres::Error),
    #[error("dashboard database: column {0} has an unexpected type")]
    Type(usize),
    #[error("dashboard database: a call panicked: {0}")]
    Panicked(String),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sql(e)
    }
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> Self {
        DbError::Pg(e)
    }
}

/// The tables, for both databases: `{int}`, `{real}` and `{bool}` stand for each backend's
/// column types ([`schema`]), so a column is declared once.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS exams (
    device TEXT NOT NULL, result_id TEXT NOT NULL, study_instance_uid TEXT NOT NULL,
    revision {int} NOT NULL, triage TEXT NOT NULL, density TEXT, percent_density {real},
    dense_breasts {bool}, cancer_probability {real}, cancer_threshold {real}, cancer_flag {bool},
    ood {bool}, complete {bool}, produced_at TEXT, received_at {int} NOT NULL,
    payload TEXT NOT NULL, PRIMARY KEY (device, result_id));
CREATE INDEX IF NOT EXISTS exams_received ON exams (received_at);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY, online {bool}, status_at {int}, last_seen {int},
    health TEXT, info TEXT);
CREATE TABLE IF NOT EXISTS drift (
    device TEXT NOT NULL, source_id TEXT NOT NULL, alert {bool} NOT NULL,
    received_at {int} NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (device, source_id));
CREATE TABLE IF NOT EXISTS alerts (
    device TEXT NOT NULL, result_id TEXT NOT NULL, state TEXT NOT NULL, source_id TEXT,
    produced_at TEXT, received_at {int} NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (device, result_id));
CREATE TABLE IF NOT EXISTS counts (
    device TEXT NOT NULL, kind TEXT NOT NULL, n {int} NOT NULL, PRIMARY KEY (device, kind));
";

/// [`SCHEMA`] with PostgreSQL's types (64-bit integers, double precision, booleans) or
/// SQLite's (INTEGER, REAL, booleans as INTEGER 0/1; `user_version` 1).
fn schema(postgres: bool) -> String {
    let (int, real, boolean) = if postgres {
        ("BIGINT", "DOUBLE PRECISION", "BOOLEAN")
    } else {
        ("INTEGER", "REAL", "INTEGER")
    };
    let s = SCHEMA
        .replace("{int}", int)
        .replace("{real}", real)
        .replace("{bool}", boolean);
    if postgres {
        s
    } else {
        s + "PRAGMA user_version = 1;\n"
    }
}

/// A statement parameter.
#[derive(Debug, Clone, Copy)]
enum P<'a> {
    I(i64),
    F(Option<f64>),
    T(Option<&'a str>),
    B(Option<bool>),
}

/// A column value read back (SQLite gives booleans as integers).
#[derive(Debug, Clone)]
enum V {
    Null,
    I(i64),
    F(f64),
    T(String),
    B(bool),
}

impl V {
    fn text(&self) -> Option<String> {
        match self {
            V::T(t) => Some(t.clone()),
            _ => None,
        }
    }
    fn int(&self) -> Option<i64> {
        match self {
            V::I(i) => Some(*i),
            _ => None,
        }
    }
    fn float(&self) -> Option<f64> {
        match self {
            V::F(f) => Some(*f),
            V::I(i) => Some(*i as f64),
            _ => None,
        }
    }
    fn bool(&self) -> Option<bool> {
        match self {
            V::B(b) => Some(*b),
            V::I(i) => Some(*i != 0),
            _ => None,
        }
    }
}

/// One connection to either backend.
enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Pg),
}

/// The PostgreSQL client. The `postgres` crate drives its connection with a runtime of its own,
/// which must not start inside the dashboard's tokio runtime: it connects and closes on a
/// thread of its own, and is used from blocking threads (`spawn_blocking`) only.
struct Pg(Option<postgres::Client>);

impl Pg {
    fn connect(url: &str) -> Result<Pg, postgres::Error> {
        let url = url.to_string();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
            c.batch_execute(&schema(true))?;
            Ok(Pg(Some(c)))
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    fn client(&mut self) -> &mut postgres::Client {
        self.0.as_mut().expect("a PostgreSQL client until dropped")
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            let _ = std::thread::spawn(move || drop(c)).join();
        }
    }
}

impl Conn {
    /// Run one statement; rows changed.
    fn exec(&mut self, sql: &str, params: &[P<'_>]) -> Result<u64, DbError> {
        match self {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                Ok(st.execute(rusqlite::params_from_iter(params.iter().map(sqlite_param)))? as u64)
            }
            Conn::Postgres(c) => {
                let boxed = pg_params(params);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    boxed.iter().map(|b| b.as_ref()).collect();
                Ok(c.client().execute(pg_sql(sql).as_str(), &refs)?)
            }
        }
    }

    /// Run a query; every row as its values.
    fn query(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Vec<V>>, DbError> {
        match self {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let n = st.column_count();
                let mut rows =
                    st.query(rusqlite::params_from_iter(params.iter().map(sqlite_param)))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let mut row = Vec::with_capacity(n);
                    for i in 0..n {
                        use rusqlite::types::ValueRef;
                        row.push(match r.get_ref(i)? {
                            ValueRef::Null => V::Null,
                            ValueRef::Integer(x) => V::I(x),
                            ValueRef::Real(x) => V::F(x),
                            ValueRef::Text(t) => V::T(String::from_utf8_lossy(t).into_owned()),
                            ValueRef::Blob(_) => return Err(DbError::Type(i)),
                        });
                    }
                    out.push(row);
                }
                Ok(out)
            }
            Conn::Postgres(c) => {
                use postgres::types::Type;
                let boxed = pg_params(params);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    boxed.iter().map(|b| b.as_ref()).collect();
                let rows = c.client().query(pg_sql(sql).as_str(), &refs)?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let mut row = Vec::with_capacity(r.len());
                    for (i, col) in r.columns().iter().enumerate() {
                        let t = col.type_();
                        let v = if *t == Type::INT8 {
                            r.try_get::<_, Option<i64>>(i)?.map(V::I)
                        } else if *t == Type::INT4 {
                            r.try_get::<_, Option<i32>>(i)?.map(|x| V::I(x.into()))
                        } else if *t == Type::FLOAT8 {
                            r.try_get::<_, Option<f64>>(i)?.map(V::F)
                        } else if *t == Type::BOOL {
                            r.try_get::<_, Option<bool>>(i)?.map(V::B)
                        } else if *t == Type::TEXT || *t == Type::VARCHAR {
                            r.try_get::<_, Option<String>>(i)?.map(V::T)
                        } else {
                            return Err(DbError::Type(i));
                        };
                        row.push(v.unwrap_or(V::Null));
                    }
                    out.push(row);
                }
                Ok(out)
            }
        }
    }

    /// Statements without parameters (schema, BEGIN / COMMIT / ROLLBACK).
    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres(c) => Ok(c.client().batch_execute(sql)?),
        }
    }

    /// The UTC day (`YYYY-MM-DD`) of a Unix-seconds column.
    fn day_of(&self, column: &str) -> String {
        match self {
            Conn::Sqlite(_) => format!("date({column}, 'unixepoch')"),
            Conn::Postgres(_) => {
                format!("to_char(to_timestamp({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
            }
        }
    }
}

fn sqlite_param(p: &P<'_>) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    match *p {
        P::I(i) => S::Integer(i),
        P::F(f) => f.map_or(S::Null, S::Real),
        P::T(t) => t.map_or(S::Null, |t| S::Text(t.to_string())),
        P::B(b) => b.map_or(S::Null, |b| S::Integer(b.into())),
    }
}

fn pg_params(params: &[P<'_>]) -> Vec<Box<dyn postgres::types::ToSql + Sync>> {
    params
        .iter()
        .map(|p| -> Box<dyn postgres::types::ToSql + Sync> {
            match *p {
                P::I(i) => Box::new(i),
                P::F(f) => Box::new(f),
                P::T(t) => Box::new(t.map(str::to_string)),
                P::B(b) => Box::new(b),
            }
        })
        .collect()
}

/// `?N` placeholders (SQLite) as `$N` (PostgreSQL); our SQL has no other `?`.
fn pg_sql(sql: &str) -> String {
    sql.replace('?', "$")
}

/// A PostgreSQL URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = &url[s + 3..at];
            let user = user.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// The dashboard database: one connection behind a mutex (writes come from the MQTT
/// subscribers, reads from the web handlers, each on a blocking thread; every call is one short
/// statement or transaction).
pub struct Db {
    conn: Mutex<Conn>,
}

/// One exam as `GET /api/exams` lists it.
#[derive(Debug, Serialize)]
pub struct ExamRow {
    pub device: String,
    pub result_id: String,
    /// StudyInstanceUID as the appliance published it (plain or `hmac-sha256:…`).
    pub study_instance_uid: String,
    pub revision: i64,
    pub triage: String,
    pub density: Option<String>,
    /// Percent density, 0–100.
    pub percent_density: Option<f64>,
    pub dense_breasts: Option<bool>,
    /// Exam cancer probability, 0–1, and the model's operating threshold.
    pub cancer_probability: Option<f64>,
    pub cancer_threshold: Option<f64>,
    pub cancer_flag: Option<bool>,
    pub ood: Option<bool>,
    pub complete: Option<bool>,
    pub produced_at: Option<String>,
    /// Unix seconds when the dashboard received this revision.
    pub received_at: i64,
    /// Per breast: laterality, cancer probability, views, ood (as in the exam message).
    pub breasts: Value,
    pub views_present: Value,
    pub views_missing: Value,
    /// `{name, version, sha256, intended_use}` of the model that scored the exam.
    pub model: Value,
    /// How the appliance published UIDs (`plain` / `hashed`), as in the message.
    pub uid_mode: Value,
}

/// One appliance as `GET /api/devices` lists it.
#[derive(Debug, Serialize)]
pub struct DeviceRow {
    /// The topic prefix the appliance publishes under (`mqtt.topic_prefix`).
    pub device: String,
    /// From the retained `status` (`online` / the `offline` LWT); null before any.
    pub online: Option<bool>,
    /// Unix seconds when the last live message of any kind from this appliance arrived (a
    /// retained message the broker hands over on subscribing is not one); null before any.
    pub last_seen: Option<i64>,
    /// From the latest retained `health`: outbox backlog, intake state, free space, counters.
    pub backlog: Option<i64>,
    pub health: Option<Value>,
    /// Versions from `status/info`.
    pub info: Option<Value>,
    /// The latest drift message per source (`source`, `window`, `psi`, `ood_rate`, `alert`, …).
    pub drift: Vec<Value>,
    /// Messages received per kind (`image`, `exam`, `skipped`, `error`, …).
    pub counts: Value,
}

/// Counts for the charts: density classes and triage per day (UTC) of the latest revisions.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub density: Value,
    pub triage_by_day: Vec<Value>,
    pub exams: i64,
    pub alerts_raised: i64,
}

/// What a message changed, for the live page (`event:` of the server-sent events).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Change {
    pub kind: &'static str,
    pub device: String,
}

impl Db {
    /// Open the database named by `--db`: `sqlite:PATH` (created if missing) or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (libpq-style URL, no TLS: a local or
    /// tunnelled server); the tables are created if missing.
    ///
    /// Errors: [`DbError::Url`] for another scheme, [`DbError::Open`] / [`DbError::Connect`]
    /// when the database cannot be opened or its tables created.
    pub fn open(url: &str) -> Result<Db, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Self::open_postgres(url);
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|p| !p.is_empty())
            .ok_or_else(|| DbError::Url(url.to_string()))?;
        Self::open_path(Path::new(path))
    }

    fn open_path(path: &Path) -> Result<Db, DbError> {
        let open = |path: &Path| -> rusqlite::Result<rusqlite::Connection> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = std::fs::create_dir_all(dir);
            }
            let c = rusqlite::Connection::open(path)?;
            c.pragma_update(None, "journal_mode", "wal")?;
            c.pragma_update(None, "synchronous", "NORMAL")?;
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            c.execute_batch(&schema(false))?;
            Ok(c)
        };
        let conn = open(path).map_err(|error| DbError::Open {
            path: path.to_path_buf(),
            error,
        })?;
        Ok(Db {
            conn: Mutex::new(Conn::Sqlite(conn)),
        })
    }

    fn open_postgres(url: &str) -> Result<Db, DbError> {
        let pg = Pg::connect(url).map_err(|error| DbError::Connect {
            url: redact(url),
            detail: match std::error::Error::source(&error) {
                Some(cause) => format!("{error}: {cause}"),
                None => error.to_string(),
            },
        })?;
        Ok(Db {
            conn: Mutex::new(Conn::Postgres(pg)),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Conn> {
        // a panic while holding the lock leaves a usable connection (statements are atomic; a
        // transaction a panic left open makes the next `record` fail and roll it back)
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record one received message (`now` in Unix seconds) in one transaction: the appliance's
    /// `last_seen` and its count per kind for a live message (a payload that is not the JSON
    /// its topic carries counts as `invalid`), and what the message says. A `retained` delivery
    /// (the broker's last value, handed over on every subscription) updates what it says but is
    /// neither seen nor counted again. Returns what changed for the
    /// page: `device` when only the appliance's row did (also for an older exam revision, which
    /// is not kept). Blocking: call it off the async runtime.
    pub fn record(
        &self,
        msg: &Parsed,
        payload: &[u8],
        now: i64,
        retained: bool,
    ) -> Result<Change, DbError> {
        let mut conn = self.conn();
        conn.batch("BEGIN")?;
        match record_in(&mut conn, msg, payload, now, retained) {
            Ok(change) => {
                conn.batch("COMMIT")?;
                Ok(change)
            }
            Err(e) => {
                let _ = conn.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// The exams, newest first (received), at most `limit`. Blocking.
    pub fn exams(&self, limit: usize) -> Result<Vec<ExamRow>, DbError> {
        let rows = self.conn().query(
            "SELECT device, result_id, study_instance_uid, revision, triage, density,
                    percent_density, dense_breasts, cancer_probability, cancer_threshold,
                    cancer_flag, ood, complete, produced_at, received_at, payload
             FROM exams ORDER BY received_at DESC, produced_at DESC, result_id LIMIT ?1",
            &[P::I(limit as i64)],
        )?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let v: Value = r[15]
                    .text()
                    .and_then(|p| serde_json::from_str(&p).ok())
                    .unwrap_or(Value::Null);
                ExamRow {
                    device: r[0].text().unwrap_or_default(),
                    result_id: r[1].text().unwrap_or_default(),
                    study_instance_uid: r[2].text().unwrap_or_default(),
                    revision: r[3].int().unwrap_or_default(),
                    triage: r[4].text().unwrap_or_default(),
                    density: r[5].text(),
                    percent_density: r[6].float(),
                    dense_breasts: r[7].bool(),
                    cancer_probability: r[8].float(),
                    cancer_threshold: r[9].float(),
                    cancer_flag: r[10].bool(),
                    ood: r[11].bool(),
                    complete: r[12].bool(),
                    produced_at: r[13].text(),
                    received_at: r[14].int().unwrap_or_default(),
                    breasts: v["breasts"].clone(),
                    views_present: v["views_present"].clone(),
                    views_missing: v["views_missing"].clone(),
                    model: v["model"].clone(),
                    uid_mode: v["uid_mode"].clone(),
                }
            })
            .collect())
    }

    /// Every appliance seen, by topic prefix, with its drift per source. Blocking.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, DbError> {
        let mut conn = self.conn();
        let rows = conn.query(
            "SELECT device, online, last_seen, health, info FROM devices ORDER BY device",
            &[],
        )?;
        let mut devices = Vec::with_capacity(rows.len());
        for r in rows {
            let device = r[0].text().unwrap_or_default();
            let health: Option<Value> = r[3].text().and_then(|h| serde_json::from_str(&h).ok());
            let drift = conn
                .query(
                    "SELECT payload FROM drift WHERE device = ?1 ORDER BY source_id",
                    &[P::T(Some(&device))],
                )?
                .into_iter()
                .filter_map(|p| p[0].text().and_then(|p| serde_json::from_str(&p).ok()))
                .collect();
            let mut counts = serde_json::Map::new();
            for c in conn.query(
                "SELECT kind, n FROM counts WHERE device = ?1 ORDER BY kind",
                &[P::T(Some(&device))],
            )? {
                counts.insert(c[0].text().unwrap_or_default(), c[1].int().into());
            }
            devices.push(DeviceRow {
                online: r[1].bool(),
                last_seen: r[2].int(),
                backlog: health.as_ref().and_then(|h| h["outbox_backlog"].as_i64()),
                health,
                info: r[4].text().and_then(|i| serde_json::from_str(&i).ok()),
                drift,
                counts: Value::Object(counts),
                device,
            });
        }
        Ok(devices)
    }

    /// The alerts, newest first, at most `limit` (payloads as received, `device` and
    /// `received_at` added). Blocking.
    pub fn alerts(&self, limit: usize) -> Result<Vec<Value>, DbError> {
        let rows = self.conn().query(
            "SELECT device, received_at, payload FROM alerts
             ORDER BY received_at DESC, produced_at DESC, result_id LIMIT ?1",
            &[P::I(limit as i64)],
        )?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let mut v: Value = r[2]
                    .text()
                    .and_then(|p| serde_json::from_str(&p).ok())
                    .unwrap_or(Value::Null);
                if let Value::Object(m) = &mut v {
                    m.insert("device".into(), r[0].text().into());
                    m.insert("received_at".into(), r[1].int().into());
                }
                v
            })
            .collect())
    }

    /// Density classes of all exams (latest revisions) and triage counts per UTC day received
    /// (the last `days` days before now). Blocking.
    pub fn stats(&self, days: i64) -> Result<Stats, DbError> {
        let mut conn = self.conn();
        let mut density = serde_json::Map::new();
        for class in ["A", "B", "C", "D"] {
            density.insert(class.into(), 0.into());
        }
        for r in conn.query(
            "SELECT density, COUNT(*) FROM exams WHERE density IS NOT NULL GROUP BY density",
            &[],
        )? {
            density.insert(r[0].text().unwrap_or_default(), r[1].int().into());
        }
        let since = super::subscribe::unix_now() - days * 86_400;
        let day = conn.day_of("received_at");
        let triage_by_day = conn
            .query(
                &format!(
                    "SELECT {day} AS day,
                        SUM(CASE WHEN triage = 'priority' THEN 1 ELSE 0 END),
                        SUM(CASE WHEN triage = 'review' THEN 1 ELSE 0 END),
                        SUM(CASE WHEN triage = 'routine' THEN 1 ELSE 0 END)
                     FROM exams WHERE received_at >= ?1 GROUP BY day ORDER BY day"
                ),
                &[P::I(since)],
            )?
            .into_iter()
            .map(|r| {
                json!({
                    "day": r[0].text(),
                    "priority": r[1].int(),
                    "review": r[2].int(),
                    "routine": r[3].int(),
                })
            })
            .collect();
        let count = |conn: &mut Conn, sql: &str| -> Result<i64, DbError> {
            Ok(conn.query(sql, &[])?[0][0].int().unwrap_or(0))
        };
        let exams = count(&mut conn, "SELECT COUNT(*) FROM exams")?;
        let alerts_raised = count(
            &mut conn,
            "SELECT COUNT(*) FROM alerts WHERE state = 'raised'",
        )?;
        Ok(Stats {
            density: Value::Object(density),
            triage_by_day,
            exams,
            alerts_raised,
        })
    }
}

/// The body of [`Db::record`], inside its transaction.
fn record_in(
    conn: &mut Conn,
    msg: &Parsed,
    payload: &[u8],
    now: i64,
    retained: bool,
) -> Result<Change, DbError> {
    let device = Some(msg.device.as_str());
    if retained {
        conn.exec(
            "INSERT INTO devices (device) VALUES (?1) ON CONFLICT DO NOTHING",
            &[P::T(device)],
        )?;
    } else {
        conn.exec(
            "INSERT INTO devices (device, last_seen) VALUES (?1, ?2)
             ON CONFLICT (device) DO UPDATE SET last_seen = CASE
               WHEN devices.last_seen IS NULL OR excluded.last_seen > devices.last_seen
               THEN excluded.last_seen ELSE devices.last_seen END",
            &[P::T(device), P::I(now)],
        )?;
    }
    let text = std::str::from_utf8(payload).unwrap_or("");
    let json: Option<Value> = serde_json::from_str(text).ok();
    let change = |kind: &'static str| {
        Some(Change {
            kind,
            device: msg.device.clone(),
        })
    };
    let counted = match (&msg.kind, &json) {
        (Kind::Status, _) => {
            let online = match text.trim() {
                "online" => Some(true),
                "offline" => Some(false),
                _ => None,
            };
            if let Some(online) = online {
                conn.exec(
                    "UPDATE devices SET online = ?1, status_at = ?2 WHERE device = ?3",
                    &[P::B(Some(online)), P::I(now), P::T(device)],
                )?;
                change("device")
            } else {
                None
            }
        }
        (Kind::StatusInfo, Some(v)) => {
            conn.exec(
                "UPDATE devices SET info = ?1 WHERE device = ?2",
                &[P::T(Some(&v.to_string())), P::T(device)],
            )?;
            change("device")
        }
        (Kind::Health, Some(v)) => {
            conn.exec(
                "UPDATE devices SET health = ?1 WHERE device = ?2",
                &[P::T(Some(&v.to_string())), P::T(device)],
            )?;
            change("device")
        }
        (Kind::Exam, Some(v)) => {
            if record_exam(conn, &msg.device, v, now)? {
                change("exam")
            } else {
                None
            }
        }
        (Kind::Drift(source), Some(v)) => {
            conn.exec(
                "INSERT INTO drift (device, source_id, alert, received_at, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (device, source_id) DO UPDATE SET alert = excluded.alert,
                   received_at = excluded.received_at, payload = excluded.payload",
                &[
                    P::T(device),
                    P::T(Some(source)),
                    P::B(Some(v["alert"].as_bool().unwrap_or(false))),
                    P::I(now),
                    P::T(Some(&v.to_string())),
                ],
            )?;
            change("drift")
        }
        (Kind::Alert, Some(v)) => {
            if let Some(id) = v["result_id"].as_str() {
                conn.exec(
                    "INSERT INTO alerts
                       (device, result_id, state, source_id, produced_at, received_at, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                    &[
                        P::T(device),
                        P::T(Some(id)),
                        P::T(Some(v["state"].as_str().unwrap_or(""))),
                        P::T(v["source"]["id"].as_str()),
                        P::T(v["produced_at"].as_str()),
                        P::I(now),
                        P::T(Some(&v.to_string())),
                    ],
                )?;
                change("alert")
            } else {
                None
            }
        }
        (Kind::Image | Kind::Skipped | Kind::Error, Some(_)) => change("device"),
        _ => None,
    };
    let kind_name = match (&counted, &json, &msg.kind) {
        (None, None, k) if !matches!(k, Kind::Status) => "invalid",
        _ => msg.kind.name(),
    };
    if !retained {
        conn.exec(
            "INSERT INTO counts (device, kind, n) VALUES (?1, ?2, 1)
             ON CONFLICT (device, kind) DO UPDATE SET n = counts.n + 1",
            &[P::T(device), P::T(Some(kind_name))],
        )?;
    }
    Ok(counted.unwrap_or(Change {
        kind: "device",
        device: msg.device.clone(),
    }))
}

/// Upsert an exam message unless a higher revision of the same `result_id` is kept already.
/// Returns whether the row changed.
fn record_exam(conn: &mut Conn, device: &str, v: &Value, now: i64) -> Result<bool, DbError> {
    let (Some(id), Some(revision), Some(triage), Some(study)) = (
        v["result_id"].as_str(),
        v["revision"].as_i64(),
        v["triage"].as_str(),
        v["study_instance_uid"].as_str(),
    ) else {
        return Ok(false);
    };
    let kept = conn.query(
        "SELECT revision FROM exams WHERE device = ?1 AND result_id = ?2",
        &[P::T(Some(device)), P::T(Some(id))],
    )?;
    if kept
        .first()
        .and_then(|r| r[0].int())
        .is_some_and(|k| k > revision)
    {
        return Ok(false);
    }
    let payload = v.to_string();
    conn.exec(
        "INSERT INTO exams (device, result_id, study_instance_uid, revision, triage, density,
             percent_density, dense_breasts, cancer_probability, cancer_threshold, cancer_flag,
             ood, complete, produced_at, received_at, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
         ON CONFLICT (device, result_id) DO UPDATE SET study_instance_uid = excluded.study_instance_uid,
             revision = excluded.revision, triage = excluded.triage, density = excluded.density,
             percent_density = excluded.percent_density, dense_breasts = excluded.dense_breasts,
             cancer_probability = excluded.cancer_probability,
             cancer_threshold = excluded.cancer_threshold, cancer_flag = excluded.cancer_flag,
             ood = excluded.ood, complete = excluded.complete, produced_at = excluded.produced_at,
             received_at = excluded.received_at, payload = excluded.payload",
        &[
            P::T(Some(device)),
            P::T(Some(id)),
            P::T(Some(study)),
            P::I(revision),
            P::T(Some(triage)),
            P::T(v["density"].as_str()),
            P::F(v["percent_density"].as_f64()),
            P::B(v["dense_breasts"].as_bool()),
            P::F(v["cancer_probability"].as_f64()),
            P::F(v["cancer_threshold"].as_f64()),
            P::B(v["cancer_flag"].as_bool()),
            P::B(v["ood"].as_bool()),
            P::B(v["complete"].as_bool()),
            P::T(v["produced_at"].as_str()),
            P::I(now),
            P::T(Some(&payload)),
        ],
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::topic::parse;

    fn exam(revision: i64, triage: &str, density: &str) -> Vec<u8> {
        json!({
            "schema": "mammo-edge.exam/1", "result_id": "r1", "revision": revision,
            "study_instance_uid": "1.2.3", "triage": triage, "density": density,
            "percent_density": 31.5, "dense_breasts": false, "cancer_probability": 0.2,
            "cancer_threshold": 0.47, "cancer_flag": false, "ood": false, "complete": true,
            "breasts": [], "views_present": [], "views_missing": [],
            "model": {"name": "m", "version": "1", "sha256": "0", "intended_use": "research only"}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_lower_revision_does_not_replace_a_higher_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite:{}", dir.path().join("d.sqlite").display())).unwrap();
        let t = parse("mammo/site/edge-1/exam").unwrap();
        assert_eq!(
            db.record(&t, &exam(2, "priority", "C"), 10, false)
                .unwrap()
                .kind,
            "exam"
        );
        assert_eq!(
            db.record(&t, &exam(1, "routine", "A"), 11, false).unwrap(),
            Change {
                kind: "device",
                device: "mammo/site/edge-1".into()
            }
        );
        let rows = db.exams(10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].revision, rows[0].triage.as_str()), (2, "priority"));
        assert_eq!(rows[0].density.as_deref(), Some("C"));
        let stats = db.stats(36500).unwrap();
        assert_eq!(stats.density["C"], 1);
        assert_eq!(stats.density["A"], 0);
    }

    #[test]
    fn status_and_health_make_the_device_row() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite:{}", dir.path().join("d.sqlite").display())).unwrap();
        db.record(&parse("m/e/status").unwrap(), b"online", 5, false)
            .unwrap();
        db.record(
            &parse("m/e/health").unwrap(),
            br#"{"outbox_backlog": 3}"#,
            6,
            false,
        )
        .unwrap();
        db.record(&parse("m/e/exam").unwrap(), b"not json", 7, false)
            .unwrap();
        let d = db.devices().unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].online, d[0].backlog, d[0].last_seen),
            (Some(true), Some(3), Some(7))
        );
        assert_eq!(d[0].counts["invalid"], 1);
        // the broker's retained health again (a new subscription): applied, not seen or counted
        db.record(
            &parse("m/e/health").unwrap(),
            br#"{"outbox_backlog": 0}"#,
            9,
            true,
        )
        .unwrap();
        let d = db.devices().unwrap();
        assert_eq!((d[0].backlog, d[0].last_seen), (Some(0), Some(7)));
        assert_eq!(d[0].counts["health"], 1);
        db.record(&parse("m/e/status").unwrap(), b"offline", 8, false)
            .unwrap();
        assert_eq!(db.devices().unwrap()[0].online, Some(false));
    }

    #[test]
    fn another_scheme_is_refused_with_the_url() {
        assert!(matches!(Db::open("mysql://x/y"), Err(DbError::Url(u)) if u == "mysql://x/y"));
        assert!(matches!(Db::open("sqlite:"), Err(DbError::Url(_))));
        assert_eq!(
            redact("postgres://dash:s3cret@db.example:5432/mammo"),
            "postgres://dash@db.example:5432/mammo"
        );
    }
}
