//! The dashboard's database (SQLite, one file, WAL): what the subscribed brokers carried, kept as
//! received — exams (highest revision), appliances (status, health), drift per source, alerts —
//! and the queries of the JSON API ([docs/dashboard.md](../../docs/dashboard.md)).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::{json, Value};

use super::topic::{Kind, Parsed};

/// Errors of the dashboard database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("--db {0:?}: expected sqlite:PATH (PostgreSQL is not supported yet)")]
    Url(String),
    #[error("dashboard database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("dashboard database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// Schema of the dashboard database (`user_version` 1).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS exams (
    device TEXT NOT NULL, result_id TEXT NOT NULL, study_instance_uid TEXT NOT NULL,
    revision INTEGER NOT NULL, triage TEXT NOT NULL, density TEXT, percent_density REAL,
    dense_breasts INTEGER, cancer_probability REAL, cancer_threshold REAL, cancer_flag INTEGER,
    ood INTEGER, complete INTEGER, produced_at TEXT, received_at INTEGER NOT NULL,
    payload TEXT NOT NULL, PRIMARY KEY (device, result_id));
CREATE INDEX IF NOT EXISTS exams_received ON exams (received_at);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY, online INTEGER, status_at INTEGER, last_seen INTEGER NOT NULL,
    health TEXT, info TEXT);
CREATE TABLE IF NOT EXISTS drift (
    device TEXT NOT NULL, source_id TEXT NOT NULL, alert INTEGER NOT NULL,
    received_at INTEGER NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (device, source_id));
CREATE TABLE IF NOT EXISTS alerts (
    device TEXT NOT NULL, result_id TEXT NOT NULL, state TEXT NOT NULL, source_id TEXT,
    received_at INTEGER NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (device, result_id));
CREATE TABLE IF NOT EXISTS counts (
    device TEXT NOT NULL, kind TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (device, kind));
PRAGMA user_version = 1;
";

/// The dashboard database: one SQLite connection behind a mutex (writes come from the MQTT
/// subscribers, reads from the web handlers; each is one short statement or transaction).
pub struct Db {
    conn: Mutex<Connection>,
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
}

/// One appliance as `GET /api/devices` lists it.
#[derive(Debug, Serialize)]
pub struct DeviceRow {
    /// The topic prefix the appliance publishes under (`mqtt.topic_prefix`).
    pub device: String,
    /// From the retained `status` (`online` / the `offline` LWT); null before any.
    pub online: Option<bool>,
    /// Unix seconds of the last message of any kind from this appliance.
    pub last_seen: i64,
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
    /// Open (create) the database named by `--db` (`sqlite:PATH`).
    ///
    /// Errors: [`DbError::Url`] for another scheme, [`DbError::Open`] when the file cannot be
    /// opened or migrated.
    pub fn open(url: &str) -> Result<Db, DbError> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|p| !p.is_empty())
            .ok_or_else(|| DbError::Url(url.to_string()))?;
        Self::open_path(Path::new(path))
    }

    fn open_path(path: &Path) -> Result<Db, DbError> {
        let open = |path: &Path| -> rusqlite::Result<Connection> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = std::fs::create_dir_all(dir);
            }
            let c = Connection::open(path)?;
            c.pragma_update(None, "journal_mode", "wal")?;
            c.pragma_update(None, "synchronous", "NORMAL")?;
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            c.execute_batch(SCHEMA)?;
            Ok(c)
        };
        let conn = open(path).map_err(|source| DbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Db {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // a panic while holding the lock leaves a usable connection (statements are atomic)
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record one received message (`now` in Unix seconds): the appliance's `last_seen` and its
    /// count per kind always (a payload that is not the JSON its topic carries counts as
    /// `invalid`), and what the message says. Returns what changed for the page: `device` when
    /// only the appliance's row did (also for an older exam revision, which is not kept).
    pub fn record(&self, msg: &Parsed, payload: &[u8], now: i64) -> Result<Change, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO devices (device, last_seen) VALUES (?1, ?2)
             ON CONFLICT (device) DO UPDATE SET last_seen = MAX(last_seen, excluded.last_seen)",
            params![msg.device, now],
        )?;
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
                    tx.execute(
                        "UPDATE devices SET online = ?2, status_at = ?3 WHERE device = ?1",
                        params![msg.device, online, now],
                    )?;
                    change("device")
                } else {
                    None
                }
            }
            (Kind::StatusInfo, Some(v)) => {
                tx.execute(
                    "UPDATE devices SET info = ?2 WHERE device = ?1",
                    params![msg.device, v.to_string()],
                )?;
                change("device")
            }
            (Kind::Health, Some(v)) => {
                tx.execute(
                    "UPDATE devices SET health = ?2 WHERE device = ?1",
                    params![msg.device, v.to_string()],
                )?;
                change("device")
            }
            (Kind::Exam, Some(v)) => {
                if record_exam(&tx, &msg.device, v, now)? {
                    change("exam")
                } else {
                    None
                }
            }
            (Kind::Drift(source), Some(v)) => {
                tx.execute(
                    "INSERT INTO drift (device, source_id, alert, received_at, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (device, source_id) DO UPDATE SET alert = excluded.alert,
                       received_at = excluded.received_at, payload = excluded.payload",
                    params![
                        msg.device,
                        source,
                        v["alert"].as_bool().unwrap_or(false),
                        now,
                        v.to_string()
                    ],
                )?;
                change("drift")
            }
            (Kind::Alert, Some(v)) => {
                if let Some(id) = v["result_id"].as_str() {
                    tx.execute(
                    "INSERT OR IGNORE INTO alerts (device, result_id, state, source_id, received_at, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        msg.device,
                        id,
                        v["state"].as_str().unwrap_or(""),
                        v["source"]["id"].as_str(),
                        now,
                        v.to_string()
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
        tx.execute(
            "INSERT INTO counts (device, kind, n) VALUES (?1, ?2, 1)
             ON CONFLICT (device, kind) DO UPDATE SET n = n + 1",
            params![msg.device, kind_name],
        )?;
        tx.commit()?;
        Ok(counted.unwrap_or(Change {
            kind: "device",
            device: msg.device.clone(),
        }))
    }

    /// The exams, newest first (received), at most `limit`.
    pub fn exams(&self, limit: usize) -> Result<Vec<ExamRow>, DbError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT device, result_id, study_instance_uid, revision, triage, density,
                    percent_density, dense_breasts, cancer_probability, cancer_threshold,
                    cancer_flag, ood, complete, produced_at, received_at, payload
             FROM exams ORDER BY received_at DESC, rowid DESC LIMIT ?1",
        )?;
        let rows = st.query_map([limit as i64], |r| {
            let payload: String = r.get(15)?;
            let v: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
            Ok(ExamRow {
                device: r.get(0)?,
                result_id: r.get(1)?,
                study_instance_uid: r.get(2)?,
                revision: r.get(3)?,
                triage: r.get(4)?,
                density: r.get(5)?,
                percent_density: r.get(6)?,
                dense_breasts: r.get(7)?,
                cancer_probability: r.get(8)?,
                cancer_threshold: r.get(9)?,
                cancer_flag: r.get(10)?,
                ood: r.get(11)?,
                complete: r.get(12)?,
                produced_at: r.get(13)?,
                received_at: r.get(14)?,
                breasts: v["breasts"].clone(),
                views_present: v["views_present"].clone(),
                views_missing: v["views_missing"].clone(),
                model: v["model"].clone(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every appliance seen, by topic prefix, with its drift per source.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, DbError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT device, online, last_seen, health, info FROM devices ORDER BY device",
        )?;
        let mut devices: Vec<DeviceRow> = st
            .query_map([], |r| {
                let health: Option<String> = r.get(3)?;
                let info: Option<String> = r.get(4)?;
                let health: Option<Value> = health.and_then(|h| serde_json::from_str(&h).ok());
                Ok(DeviceRow {
                    device: r.get(0)?,
                    online: r.get(1)?,
                    last_seen: r.get(2)?,
                    backlog: health.as_ref().and_then(|h| h["outbox_backlog"].as_i64()),
                    health,
                    info: info.and_then(|i| serde_json::from_str(&i).ok()),
                    drift: Vec::new(),
                    counts: json!({}),
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut drift =
            conn.prepare("SELECT payload FROM drift WHERE device = ?1 ORDER BY source_id")?;
        let mut counts = conn.prepare("SELECT kind, n FROM counts WHERE device = ?1")?;
        for d in &mut devices {
            d.drift = drift
                .query_map([&d.device], |r| r.get::<_, String>(0))?
                .filter_map(|p| p.ok().and_then(|p| serde_json::from_str(&p).ok()))
                .collect();
            let mut c = serde_json::Map::new();
            for row in counts.query_map([&d.device], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })? {
                let (k, n) = row?;
                c.insert(k, n.into());
            }
            d.counts = Value::Object(c);
        }
        Ok(devices)
    }

    /// The alerts, newest first, at most `limit` (payloads as received, `device` added).
    pub fn alerts(&self, limit: usize) -> Result<Vec<Value>, DbError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT device, received_at, payload FROM alerts
             ORDER BY received_at DESC, rowid DESC LIMIT ?1",
        )?;
        let rows = st.query_map([limit as i64], |r| {
            let mut v: Value = serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("device".into(), r.get::<_, String>(0)?.into());
                m.insert("received_at".into(), r.get::<_, i64>(1)?.into());
            }
            Ok(v)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Density classes of all exams (latest revisions) and triage counts per UTC day received
    /// (the last `days` days).
    pub fn stats(&self, days: i64) -> Result<Stats, DbError> {
        let conn = self.conn();
        let mut density = serde_json::Map::new();
        for class in ["A", "B", "C", "D"] {
            density.insert(class.into(), 0.into());
        }
        let mut st = conn.prepare(
            "SELECT density, COUNT(*) FROM exams WHERE density IS NOT NULL GROUP BY density",
        )?;
        for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (k, n) = row?;
            density.insert(k, n.into());
        }
        let mut st = conn.prepare(
            "SELECT date(received_at, 'unixepoch') AS day,
                    SUM(triage = 'priority'), SUM(triage = 'review'), SUM(triage = 'routine')
             FROM exams WHERE received_at >= strftime('%s', 'now') - ?1 * 86400
             GROUP BY day ORDER BY day",
        )?;
        let triage_by_day = st
            .query_map([days], |r| {
                Ok(json!({
                    "day": r.get::<_, String>(0)?,
                    "priority": r.get::<_, i64>(1)?,
                    "review": r.get::<_, i64>(2)?,
                    "routine": r.get::<_, i64>(3)?,
                }))
            })?
            .collect::<Result<_, _>>()?;
        let exams: i64 = conn.query_row("SELECT COUNT(*) FROM exams", [], |r| r.get(0))?;
        let alerts_raised: i64 = conn.query_row(
            "SELECT COUNT(*) FROM alerts WHERE state = 'raised'",
            [],
            |r| r.get(0),
        )?;
        Ok(Stats {
            density: Value::Object(density),
            triage_by_day,
            exams,
            alerts_raised,
        })
    }
}

/// Upsert an exam message unless a higher revision of the same `result_id` is kept already.
/// Returns whether the row changed.
fn record_exam(
    tx: &rusqlite::Transaction<'_>,
    device: &str,
    v: &Value,
    now: i64,
) -> Result<bool, DbError> {
    let (Some(id), Some(revision), Some(triage), Some(study)) = (
        v["result_id"].as_str(),
        v["revision"].as_i64(),
        v["triage"].as_str(),
        v["study_instance_uid"].as_str(),
    ) else {
        return Ok(false);
    };
    let kept: Option<i64> = tx
        .query_row(
            "SELECT revision FROM exams WHERE device = ?1 AND result_id = ?2",
            params![device, id],
            |r| r.get(0),
        )
        .optional()?;
    if kept.is_some_and(|k| k > revision) {
        return Ok(false);
    }
    tx.execute(
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
        params![
            device,
            id,
            study,
            revision,
            triage,
            v["density"].as_str(),
            v["percent_density"].as_f64(),
            v["dense_breasts"].as_bool(),
            v["cancer_probability"].as_f64(),
            v["cancer_threshold"].as_f64(),
            v["cancer_flag"].as_bool(),
            v["ood"].as_bool(),
            v["complete"].as_bool(),
            v["produced_at"].as_str(),
            now,
            v.to_string()
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
            db.record(&t, &exam(2, "priority", "C"), 10).unwrap().kind,
            "exam"
        );
        assert_eq!(
            db.record(&t, &exam(1, "routine", "A"), 11).unwrap(),
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
        db.record(&parse("m/e/status").unwrap(), b"online", 5)
            .unwrap();
        db.record(
            &parse("m/e/health").unwrap(),
            br#"{"outbox_backlog": 3}"#,
            6,
        )
        .unwrap();
        db.record(&parse("m/e/exam").unwrap(), b"not json", 7)
            .unwrap();
        let d = db.devices().unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].online, d[0].backlog, d[0].last_seen),
            (Some(true), Some(3), 7)
        );
        assert_eq!(d[0].counts["invalid"], 1);
        db.record(&parse("m/e/status").unwrap(), b"offline", 8)
            .unwrap();
        assert_eq!(db.devices().unwrap()[0].online, Some(false));
    }

    #[test]
    fn another_scheme_is_refused_with_the_url() {
        assert!(
            matches!(Db::open("postgres://x/y"), Err(DbError::Url(u)) if u == "postgres://x/y")
        );
        assert!(matches!(Db::open("sqlite:"), Err(DbError::Url(_))));
    }
}
