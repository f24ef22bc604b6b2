//! The daemon's health: the retained `<prefix>/health` message (`mammo-edge.health/1`,
//! docs/schemas/health.json: counters since start, outbox backlog, intake state, free space of
//! the state folder, the model in use, the last SIGHUP reload) and the free-space probe
//! ([`free_bytes`], statvfs) that pauses intake below `state.min_free_mb`. Health is a snapshot,
//! not a result: it is published directly (retained, QoS 1), never through the outbox.
//! Main items: [`Health`], [`Intake`], [`free_bytes`].

use std::path::Path;

use serde::Serialize;

use crate::edge::message::ModelInfo;

/// `schema` of the health message.
pub const SCHEMA: &str = "mammo-edge.health/1";

/// Bytes of the file system holding `path` that the daemon may still use (statvfs `f_bavail`
/// × `f_frsize`: what an unprivileged process can write). Errors: the `statvfs` call's.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Why intake is paused; the `reason_code` of the health message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseCode {
    /// The state folder's file system has less than `state.min_free_mb` free.
    DiskLow,
    /// Writes to the state database fail for lack of storage (SQLITE_FULL, I/O error …).
    StateDb,
}

/// Whether new files are claimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Intake {
    /// Files are claimed and scored.
    Running,
    /// No file is claimed; files wait in the export folder (nothing is lost) until the cause
    /// is gone. `reason` is for people (free and needed bytes, the database error).
    Paused {
        reason_code: PauseCode,
        reason: String,
    },
}

/// Counters of the running daemon since it started (they restart at 0 with the process).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// `image` messages committed.
    pub images_scored: u64,
    /// `skipped` messages committed.
    pub skipped: u64,
    /// `error` messages committed for invalid inputs (quarantines not included).
    pub errors: u64,
    /// Files quarantined (each with one `error` message, `reason_code` `quarantined`).
    pub quarantined: u64,
    /// `exam` messages committed (every revision counts).
    pub exams_published: u64,
    /// Re-exported copies of a SOPInstanceUID scored already (no message).
    pub duplicates: u64,
    /// Files given back after a time-out or a worker panic.
    pub retries: u64,
}

/// The state folder's free space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StateSpace {
    /// Bytes free for the daemon; `None` when statvfs failed.
    pub free_bytes: Option<u64>,
    /// `state.min_free_mb` in bytes (0: no floor).
    pub min_free_bytes: u64,
}

/// Outcome of the last SIGHUP reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reload {
    /// RFC 3339 UTC.
    pub at: String,
    /// False when the new configuration or model was refused (the running ones are kept).
    pub ok: bool,
    /// What was applied, or why it was refused.
    pub message: String,
    /// Keys whose new values wait for a restart (`watch.dirs`, `state.dir`, `mqtt.*`).
    pub needs_restart: Vec<String>,
}

/// The `<prefix>/health` payload. No patient data, no paths.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// RFC 3339 UTC.
    pub produced_at: String,
    /// Start of this process, RFC 3339 UTC.
    pub started_at: String,
    /// Seconds since `started_at`.
    pub uptime_s: u64,
    /// mammo-edge version.
    pub version: &'static str,
    pub counters: Counters,
    /// Outbox rows not yet acknowledged by the broker; `None` when the database was unreadable.
    pub outbox_backlog: Option<u64>,
    pub intake: Intake,
    pub state_dir: StateSpace,
    /// The model in use: name, version, sha256, intended use.
    pub model: HealthModel,
    /// The last SIGHUP reload, if there was one.
    pub last_reload: Option<Reload>,
}

/// Model fields of the health message (those every result message carries).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthModel {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub intended_use: String,
}

impl From<&ModelInfo> for HealthModel {
    fn from(m: &ModelInfo) -> Self {
        HealthModel {
            name: m.name.clone(),
            version: m.version.clone(),
            sha256: m.sha256.clone(),
            intended_use: m.intended_use.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_bytes_of_a_real_folder_is_positive_and_of_a_missing_one_an_error() {
        let here = std::env::temp_dir();
        assert!(free_bytes(&here).unwrap() > 0);
        assert!(free_bytes(&here.join("no/such/folder/mammo-edge")).is_err());
    }

    #[test]
    fn paused_intake_serialises_with_state_code_and_reason() {
        let v = serde_json::to_value(Intake::Paused {
            reason_code: PauseCode::DiskLow,
            reason: "x".into(),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"state": "paused", "reason_code": "disk_low", "reason": "x"})
        );
        assert_eq!(
            serde_json::to_value(Intake::Running).unwrap(),
            serde_json::json!({"state": "running"})
        );
    }
}
