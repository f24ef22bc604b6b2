//! The JSON payloads of the MQTT contract (DESIGN.md, "MQTT contract"; schemas in
//! docs/schemas/): `mammo-edge.image/1`, `.exam/1`, `.skipped/1`, `.error/1`, built from results
//! under the identifier policy of `[privacy]` (UIDs plain or HMAC-SHA256 hashed, AccessionNumber
//! and file names only when allowed, else a hash of the path). Patient attributes are never read
//! into these. Main items: [`Messages`], [`ModelInfo`], [`Privacy`], [`hmac_hex`], [`summary`]
//! (one human-readable line of a payload, for `demo` and `infer`).

use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

use crate::edge::config::{Config, UidMode};
use crate::edge::exam::{ExamResult, ImageScore};
use crate::edge::publish::Topics;
use crate::edge::store::{result_id, OutboxMessage, HASHED_PREFIX};
use crate::ingest::dicom::{Laterality, MammoMeta, View};
pub use crate::ingest::files::hmac_hex;
use crate::ingest::files::sha256_hex;
use crate::model::score::ImageResult;
use crate::model::ModelMeta;

/// Schema names (`schema` field), one per topic.
pub mod schema {
    pub const IMAGE: &str = "mammo-edge.image/1";
    pub const EXAM: &str = "mammo-edge.exam/1";
    pub const SKIPPED: &str = "mammo-edge.skipped/1";
    pub const ERROR: &str = "mammo-edge.error/1";
    pub const DRIFT: &str = "mammo-edge.drift/1";
    pub const ALERT: &str = "mammo-edge.alert/1";
}

/// Shortest accepted UID hash key, bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// Why the message context could not be built.
#[derive(Debug, Error)]
pub enum MessageError {
    /// `privacy.key_file` unreadable or too short.
    #[error("privacy.key_file {path}: {detail}")]
    KeyFile { path: String, detail: String },
    /// The appliance's own file-label key ([`LABEL_KEY_FILE`] in `state.dir`) could not be read
    /// or created.
    #[error("state.dir {path}: file-label key: {detail}")]
    LabelKey { path: String, detail: String },
}

/// File in `state.dir` holding the appliance's own key of the path hashes (`file_hash`, log
/// labels) when `privacy.key_file` is not set: 32 random bytes made at the first start, mode
/// 0600, so that a hash cannot be reversed by trying candidate paths (review #13).
pub const LABEL_KEY_FILE: &str = "file-label.key";

/// The key in `dir/`[`LABEL_KEY_FILE`], made (32 bytes of /dev/urandom, mode 0600) when absent.
fn appliance_label_key(dir: &Path) -> Result<Vec<u8>, MessageError> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LABEL_KEY_FILE);
    let err = |e: std::io::Error| MessageError::LabelKey {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    match std::fs::read(&path) {
        Ok(k) if k.len() >= MIN_KEY_BYTES => return Ok(k),
        Ok(k) => {
            return Err(MessageError::LabelKey {
                path: path.display().to_string(),
                detail: format!("{} bytes; at least {MIN_KEY_BYTES} needed", k.len()),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut key = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(&mut key))
        .map_err(err)?;
    // written under a temporary name and renamed: a crash never leaves a short key behind
    let tmp = dir.join(format!("{LABEL_KEY_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(&key).and_then(|_| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(key)
}

/// The identifier policy of `[privacy]`.
#[derive(Clone)]
pub struct Privacy {
    /// Key of the UID and path hashes (`privacy.key_file`); `None` with `uids = "plain"` and no
    /// key file.
    key: Option<Vec<u8>>,
    /// Key of the path hashes: `privacy.key_file`'s, else the appliance's own
    /// ([`LABEL_KEY_FILE`]); `None` only for the local tools ([`Privacy::local`]).
    label_key: Option<Vec<u8>>,
    uids: UidMode,
    publish_accession: bool,
    publish_file_names: bool,
}

impl std::fmt::Debug for Privacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Privacy")
            .field("key", &self.key.as_ref().map(|_| "<secret>"))
            .field("uids", &self.uids)
            .finish_non_exhaustive()
    }
}

impl Privacy {
    /// From `[privacy]`; the key file (whole content, a trailing newline removed, at least
    /// [`MIN_KEY_BYTES`]) is read when set, else the appliance's own path-hash key in `state.dir`
    /// is read or made ([`LABEL_KEY_FILE`]). Errors: `KeyFile`, `LabelKey`.
    pub fn from_config(c: &Config) -> Result<Privacy, MessageError> {
        let p = &c.privacy;
        let key = if p.key_file.as_os_str().is_empty() {
            None
        } else {
            let err = |detail: String| MessageError::KeyFile {
                path: p.key_file.display().to_string(),
                detail,
            };
            let mut k = std::fs::read(&p.key_file).map_err(|e| err(e.to_string()))?;
            while matches!(k.last(), Some(b'\n' | b'\r')) {
                k.pop();
            }
            if k.len() < MIN_KEY_BYTES {
                return Err(err(format!(
                    "key of {} bytes; at least {MIN_KEY_BYTES} needed",
                    k.len()
                )));
            }
            Some(k)
        };
        let label_key = match &key {
            Some(k) => k.clone(),
            None => appliance_label_key(&c.state.dir)?,
        };
        Ok(Privacy {
            key,
            label_key: Some(label_key),
            uids: p.uids,
            publish_accession: p.publish_accession,
            publish_file_names: p.publish_file_names,
        })
    }

    /// This policy with the pseudonyms of `running`: its keys and its UID mode (a SIGHUP reload
    /// never re-keys hashed UIDs or file hashes midway through open studies: review #28). Also
    /// true when those differed, so the reload can report that a restart is needed.
    pub fn keeping_pseudonyms_of(mut self, running: &Privacy) -> (Privacy, bool) {
        let differs = self.key != running.key
            || self.label_key != running.label_key
            || self.uids != running.uids;
        self.key = running.key.clone();
        self.label_key = running.label_key.clone();
        self.uids = running.uids;
        (self, differs)
    }

    /// The policy of the local command-line tools (`infer`): UIDs plain, file names shown, no
    /// AccessionNumber, no key (output goes to the operator's terminal, not to a broker).
    pub fn local() -> Privacy {
        Privacy {
            key: None,
            label_key: None,
            uids: UidMode::Plain,
            publish_accession: false,
            publish_file_names: true,
        }
    }

    /// A UID as published, and as the state database keeps it: as is, or `hmac-sha256:<hex>`
    /// with `uids = "hashed"`.
    pub fn uid(&self, uid: &str) -> String {
        match (self.uids, &self.key) {
            (UidMode::Hashed, Some(k)) => format!("{HASHED_PREFIX}{}", hmac_hex(k, uid.as_bytes())),
            _ => uid.to_string(),
        }
    }

    /// The key under which the state database keeps paths hashed (`privacy.key_file`'s), when
    /// UIDs are hashed; `None` when identifiers are kept plain (review #13).
    pub fn at_rest_key(&self) -> Option<&[u8]> {
        match (self.uids, &self.key) {
            (UidMode::Hashed, Some(k)) => Some(k),
            _ => None,
        }
    }

    /// `"plain"` or `"hashed"`.
    pub fn uid_mode(&self) -> &'static str {
        match self.uids {
            UidMode::Plain => "plain",
            UidMode::Hashed => "hashed",
        }
    }

    /// Hash of a path for messages and logs: HMAC-SHA256 with `privacy.key_file`'s key, else
    /// with the appliance's own ([`LABEL_KEY_FILE`]); plain SHA-256 only for the local tools.
    /// Lower-case hex.
    pub fn path_hash(&self, path: &Path) -> String {
        let bytes = path.to_string_lossy();
        match &self.label_key {
            Some(k) => hmac_hex(k, bytes.as_bytes()),
            None => sha256_hex(bytes.as_bytes()),
        }
    }

    /// How a file is named in messages and logs: its name when `publish_file_names`, else
    /// `sha256:<first 16 hex digits of the path hash>`.
    pub fn file_label(&self, path: &Path) -> String {
        if self.publish_file_names {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            format!("sha256:{}", &self.path_hash(path)[..16])
        }
    }

    /// Remove the path and the file name from a free-text reason unless file names may be
    /// published (library errors sometimes quote the path).
    pub fn scrub(&self, text: &str, path: &Path) -> String {
        if self.publish_file_names {
            return text.to_string();
        }
        let mut t = text.replace(&*path.to_string_lossy(), "<file>");
        if let Some(name) = path.file_name().map(|n| n.to_string_lossy()) {
            if name.len() >= 3 {
                t = t.replace(&*name, "<file>");
            }
        }
        t
    }

    fn file_fields(&self, path: &Path, out: &mut serde_json::Map<String, Value>) {
        if self.publish_file_names {
            out.insert(
                "file".into(),
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
                    .into(),
            );
        } else {
            out.insert("file_hash".into(), self.path_hash(path).into());
        }
    }
}

/// The model fields every message carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    /// SHA-256 of the model file, lower-case hex.
    pub sha256: String,
    /// The model's intended-use statement (`mammo.intended_use`).
    pub intended_use: String,
    /// `mammo.cancer_threshold`, 0–1.
    pub cancer_threshold: f32,
    /// `mammo.ood_threshold` (the `ood_score` feature distance) when the model has it, else
    /// `mammo.recon_error_threshold` (mean squared error in the normalised input space).
    pub ood_threshold: f32,
}

impl ModelInfo {
    /// From the model's metadata and the sha256 of its file.
    pub fn new(meta: &ModelMeta, sha256: &str) -> ModelInfo {
        ModelInfo {
            name: meta.model_name.clone(),
            version: meta.model_version.clone(),
            sha256: sha256.to_ascii_lowercase(),
            intended_use: meta.intended_use.clone(),
            cancer_threshold: meta.cancer_threshold,
            ood_threshold: meta.ood_threshold.unwrap_or(meta.recon_error_threshold),
        }
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "intended_use": self.intended_use,
        })
    }
}

/// What the exam rule needs of a stored image result (`results.result_json` is the image
/// payload; these fields are read back from it).
#[derive(Debug, Clone, Deserialize)]
pub struct StoredScore {
    pub result_id: String,
    pub laterality: Laterality,
    pub view: View,
    pub cancer_probability: f32,
    pub density_probabilities: [f32; 4],
    pub percent_density: f32,
    pub ood: bool,
}

impl StoredScore {
    /// As the exam rule's input.
    pub fn score(&self) -> ImageScore {
        ImageScore {
            laterality: self.laterality,
            view: self.view,
            cancer_probability: self.cancer_probability,
            density_probabilities: self.density_probabilities,
            percent_density: self.percent_density,
            ood: self.ood,
        }
    }
}

/// Largest topic + JSON payload of one message, bytes: the client's packet limit
/// (`publish::MAX_PACKET`, 256 KiB) less room for the MQTT fixed and variable headers.
pub const MAX_MESSAGE_BYTES: usize = crate::edge::publish::MAX_PACKET - 1024;

/// Builds the outbox messages of one appliance: topics, model fields, identifier policy.
#[derive(Debug, Clone)]
pub struct Messages {
    pub topics: Topics,
    pub model: ModelInfo,
    pub privacy: Privacy,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn round(x: f32, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (f64::from(x) * p).round() / p
}

impl Messages {
    fn base(&self, schema: &str, result_id: &str) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("schema".into(), schema.into());
        m.insert("result_id".into(), result_id.into());
        m.insert("produced_at".into(), now_rfc3339().into());
        m.insert("model".into(), self.model.json());
        m
    }

    fn uids(&self, m: &mut serde_json::Map<String, Value>, sop: Option<&str>, study: Option<&str>) {
        m.insert("uid_mode".into(), self.privacy.uid_mode().into());
        if let Some(s) = study {
            m.insert("study_instance_uid".into(), self.privacy.uid(s).into());
        }
        if let Some(s) = sop {
            m.insert("sop_instance_uid".into(), self.privacy.uid(s).into());
        }
    }

    fn accession(&self, m: &mut serde_json::Map<String, Value>, meta: &MammoMeta) {
        if self.privacy.publish_accession {
            if let Some(a) = meta.accession_number.as_deref().filter(|a| !a.is_empty()) {
                m.insert("accession_number".into(), a.into());
            }
        }
    }

    /// `msg` itself when its topic and JSON fit in [`MAX_MESSAGE_BYTES`], else an `error`
    /// message `payload_too_large` in its place (same topic family, no field of the original but
    /// its kind and size): one oversized row would otherwise be refused by the client on every
    /// reconnection and hold back the whole outbox (review #1).
    fn bounded(&self, msg: OutboxMessage) -> OutboxMessage {
        let size = msg.topic.len() + msg.payload.to_string().len();
        if size <= MAX_MESSAGE_BYTES {
            return msg;
        }
        let kind = msg.payload["schema"]
            .as_str()
            .unwrap_or("message")
            .to_string();
        let original = msg.payload["result_id"].as_str().unwrap_or("").to_string();
        log::error!("a {kind} message of {size} bytes replaced by payload_too_large");
        let id = result_id(
            &format!("error:payload_too_large:{original}"),
            &self.model.sha256,
        )
        .to_string();
        let mut m = self.base(schema::ERROR, &id);
        m.insert("uid_mode".into(), self.privacy.uid_mode().into());
        m.insert("reason_code".into(), "payload_too_large".into());
        m.insert(
            "reason".into(),
            format!(
                "the {kind} message would be {size} bytes, over the {MAX_MESSAGE_BYTES} bytes \
                 an MQTT packet of this appliance may carry; not published"
            )
            .into(),
        );
        OutboxMessage {
            topic: self.topics.topic("error"),
            payload: Value::Object(m),
            retain: false,
        }
    }

    /// `<prefix>/image` (`mammo-edge.image/1`) for a scored image; `result_id` from
    /// `store::result_id` (SOPInstanceUID + model sha256). The payload is also the stored
    /// result (`StoredScore` reads it back).
    pub fn image(&self, path: &Path, meta: &MammoMeta, r: &ImageResult) -> OutboxMessage {
        let id = result_id(&meta.sop_instance_uid, &self.model.sha256).to_string();
        let mut m = self.base(schema::IMAGE, &id);
        self.uids(
            &mut m,
            Some(&meta.sop_instance_uid),
            Some(&meta.study_instance_uid),
        );
        self.accession(&mut m, meta);
        self.privacy.file_fields(path, &mut m);
        m.insert("vendor".into(), json!(r.vendor));
        m.insert("manufacturer".into(), json!(meta.manufacturer));
        self.result_fields(&mut m, r);
        self.bounded(OutboxMessage {
            topic: self.topics.topic("image"),
            payload: Value::Object(m),
            retain: false,
        })
    }

    /// The `mammo-edge.image/1` payload of an image file (PNG, JPEG, PGM/PNM; `mammo-edge
    /// infer` only, never the daemon): no UIDs and no DICOM vendor or manufacturer; `file` (or
    /// `file_hash`), `image_file` = what the reader found (format, bits, `inverted`: the
    /// polarity was corrected); `result_id` = UUIDv5 of the file's SHA-256 + model sha256;
    /// `laterality` inferred from the chest-wall side, `view` = the predicted view.
    pub fn image_file(
        &self,
        path: &Path,
        file_sha256: &str,
        report: &crate::ingest::image_file::ImageFileReport,
        r: &ImageResult,
    ) -> OutboxMessage {
        let id = result_id(&format!("sha256:{file_sha256}"), &self.model.sha256).to_string();
        let mut m = self.base(schema::IMAGE, &id);
        self.privacy.file_fields(path, &mut m);
        m.insert("image_file".into(), json!(report));
        self.result_fields(&mut m, r);
        self.bounded(OutboxMessage {
            topic: self.topics.topic("image"),
            payload: Value::Object(m),
            retain: false,
        })
    }

    /// The fields of a result, DICOM or image file.
    fn result_fields(&self, m: &mut serde_json::Map<String, Value>, r: &ImageResult) {
        let lat = r.laterality.map(|l| l.as_str()).unwrap_or("");
        let rest = json!({
            "laterality": lat,
            "view": r.view,
            "vendor_predicted": r.vendor_predicted,
            "vendor_probability": round(r.vendor_probability, 4),
            "density": r.density,
            "density_probabilities": r.density_probabilities.map(|p| round(p, 4)),
            "percent_density": round(r.percent_density, 2),
            "cancer_probability": round(r.cancer_probability, 4),
            "cancer_threshold": round(self.model.cancer_threshold, 4),
            "cancer_flag": r.cancer_flag,
            "normal_probability": round(r.normal_probability, 4),
            "view_predicted": r.view_predicted,
            "view_probability": round(r.view_probability, 4),
            "ood": r.ood,
            "ood_score": r.ood_score,
            "ood_threshold": self.model.ood_threshold,
            "orientation_mismatch": r.orientation_mismatch,
            "timings_ms": {
                "decode": (r.decode_ms * 10.0).round() / 10.0,
                "preprocess": (r.preprocess_ms * 10.0).round() / 10.0,
                "inference": (r.inference_ms * 10.0).round() / 10.0,
            },
        });
        if let Value::Object(rest) = rest {
            m.extend(rest);
        }
    }

    /// `<prefix>/drift/<source id>` (`mammo-edge.drift/1`, retained): the drift monitor's state
    /// of one source after an image ([`crate::edge::drift::DriftStatus`]); `result_id` = UUIDv5
    /// of `drift:<source id>` + model sha256 (the same for every update of that source).
    pub fn drift(&self, status: &crate::edge::drift::DriftStatus) -> OutboxMessage {
        let id = result_id(&format!("drift:{}", status.source.id), &self.model.sha256);
        let mut m = self.base(schema::DRIFT, &id.to_string());
        if let Ok(Value::Object(body)) = serde_json::to_value(status) {
            m.extend(body);
        }
        self.bounded(OutboxMessage {
            topic: self.topics.topic(&format!("drift/{}", status.source.id)),
            payload: Value::Object(m),
            retain: true,
        })
    }

    /// `<prefix>/alert` (`mammo-edge.alert/1`): a drift alert of one source `raised` or
    /// `cleared` by the image just counted, with the numbers of its drift message; `result_id`
    /// = UUIDv5 of `alert:drift:<source id>:<state>:<images in the window>:<time>` + model sha256.
    pub fn alert(&self, status: &crate::edge::drift::DriftStatus, raised: bool) -> OutboxMessage {
        let state = if raised { "raised" } else { "cleared" };
        let produced = now_rfc3339();
        let id = result_id(
            &format!(
                "alert:drift:{}:{state}:{}:{produced}",
                status.source.id, status.window.images
            ),
            &self.model.sha256,
        );
        let mut m = self.base(schema::ALERT, &id.to_string());
        m.insert("kind".into(), "drift".into());
        m.insert("state".into(), state.into());
        let body = json!({
            "source": status.source,
            "reference": status.reference,
            "window": status.window,
            "psi": status.psi,
            "ood_rate": status.ood_rate,
            "thresholds": status.thresholds,
            "reasons": status.reasons,
        });
        if let Value::Object(body) = body {
            m.extend(body);
        }
        self.bounded(OutboxMessage {
            topic: self.topics.topic("alert"),
            payload: Value::Object(m),
            retain: false,
        })
    }

    /// `<prefix>/exam` (`mammo-edge.exam/1`): the exam rule's result for a study, given by its
    /// StudyInstanceUID as published ([`Privacy::uid`]: the form the state database keeps),
    /// with `result_id` = UUIDv5 of that UID + model sha256 (the same for every revision;
    /// consumers keep the highest `revision`) and the `result_id`s of the images aggregated.
    pub fn exam(
        &self,
        study_as_published: &str,
        exam: &ExamResult,
        image_result_ids: &[String],
    ) -> OutboxMessage {
        let id = result_id(study_as_published, &self.model.sha256).to_string();
        let mut m = self.base(schema::EXAM, &id);
        m.insert("uid_mode".into(), self.privacy.uid_mode().into());
        m.insert("study_instance_uid".into(), study_as_published.into());
        if let Ok(Value::Object(e)) = serde_json::to_value(exam) {
            m.extend(e);
        }
        m.insert("image_result_ids".into(), json!(image_result_ids));
        self.bounded(OutboxMessage {
            topic: self.topics.topic("exam"),
            payload: Value::Object(m),
            retain: false,
        })
    }

    /// `<prefix>/skipped` or `<prefix>/error` (`mammo-edge.skipped/1` / `.error/1`): an input
    /// not scored, with the stable `reason_code` and the `reason` text (path scrubbed unless file
    /// names may be published). `result_id`: UUIDv5 of `<skipped|error>:<reason_code>:` and the
    /// SOPInstanceUID when the header was read, else the path, size and mtime: stable across
    /// retries of the same rejection, and never the `result_id` of the image's own result
    /// (review #2: a file rejected while half written and scored later has both messages).
    pub fn rejected(
        &self,
        skipped: bool,
        path: &Path,
        file_key: &str,
        meta: Option<&MammoMeta>,
        code: &str,
        reason: &str,
    ) -> OutboxMessage {
        let (schema, leaf) = if skipped {
            (schema::SKIPPED, "skipped")
        } else {
            (schema::ERROR, "error")
        };
        let subject = match meta {
            Some(mm) if !mm.sop_instance_uid.is_empty() => mm.sop_instance_uid.clone(),
            _ => format!("file:{}", sha256_hex(file_key.as_bytes())),
        };
        let id = result_id(&format!("{leaf}:{code}:{subject}"), &self.model.sha256).to_string();
        let mut m = self.base(schema, &id);
        m.insert("reason_code".into(), code.into());
        m.insert("reason".into(), self.privacy.scrub(reason, path).into());
        match meta {
            Some(mm) => {
                self.uids(
                    &mut m,
                    Some(&mm.sop_instance_uid)
                        .filter(|s| !s.is_empty())
                        .map(|s| s.as_str()),
                    Some(&mm.study_instance_uid)
                        .filter(|s| !s.is_empty())
                        .map(|s| s.as_str()),
                );
                self.accession(&mut m, mm);
                if let Some(l) = mm.laterality {
                    m.insert("laterality".into(), l.as_str().into());
                }
                m.insert("view".into(), json!(mm.view));
                m.insert("vendor".into(), json!(mm.vendor));
                m.insert("manufacturer".into(), mm.manufacturer.clone().into());
            }
            None => {
                m.insert("uid_mode".into(), self.privacy.uid_mode().into());
            }
        }
        self.privacy.file_fields(path, &mut m);
        self.bounded(OutboxMessage {
            topic: self.topics.topic(leaf),
            payload: Value::Object(m),
            retain: false,
        })
    }
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

fn yes_no(v: &Value) -> &'static str {
    if v.as_bool().unwrap_or(false) {
        "yes"
    } else {
        "no"
    }
}

fn name_of(v: &Value) -> String {
    v.get("file")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            v.get("file_hash")
                .and_then(Value::as_str)
                .map(|h| format!("sha256:{}", &h[..h.len().min(16)]))
        })
        .unwrap_or_default()
}

/// One human-readable line of an `image`, `exam`, `skipped` or `error` payload (any other
/// payload: its JSON text), for `mammo-edge demo` and `infer`. Starts with the kind (`image`,
/// `exam`, `skipped`, `error`); probabilities with 3 decimals, percent density with 1.
pub fn summary(v: &Value) -> String {
    let kind = v["schema"]
        .as_str()
        .and_then(|s| s.strip_prefix("mammo-edge."))
        .and_then(|s| s.strip_suffix("/1"))
        .unwrap_or("");
    match kind {
        "image" => {
            let d: Vec<String> = ["A", "B", "C", "D"]
                .iter()
                .zip(v["density_probabilities"].as_array().into_iter().flatten())
                .map(|(c, p)| format!("{c} {:.2}", p.as_f64().unwrap_or(f64::NAN)))
                .collect();
            format!(
                "image    {}-{:<3}  cancer {:.3} (flag {})  density {} ({})  percent density {:.1} %  \
                 vendor {} (predicted {} {:.2})  view predicted {} {:.2}  OOD {} (score {:.4})  {}{}",
                v["laterality"].as_str().unwrap_or("?"),
                v["view"].as_str().unwrap_or("?"),
                num(v, "cancer_probability"),
                yes_no(&v["cancer_flag"]),
                v["density"].as_str().unwrap_or("?"),
                d.join(", "),
                num(v, "percent_density"),
                v["vendor"].as_str().unwrap_or("–"),
                v["vendor_predicted"].as_str().unwrap_or("?"),
                num(v, "vendor_probability"),
                v["view_predicted"].as_str().unwrap_or("?"),
                num(v, "view_probability"),
                yes_no(&v["ood"]),
                num(v, "ood_score"),
                name_of(v),
                if v["image_file"]["inverted"] == Value::Bool(true) {
                    "  (stored inverted: polarity corrected)"
                } else {
                    ""
                },
            )
        }
        "exam" => {
            let strs = |key: &str| -> String {
                v[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let breasts: Vec<String> = v["breasts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    let views: Vec<&str> = b["views"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    format!(
                        "{}: cancer {:.3}, views {}, OOD {}",
                        b["laterality"].as_str().unwrap_or("?"),
                        num(b, "cancer_probability"),
                        views.join(" "),
                        yes_no(&b["ood"])
                    )
                })
                .collect();
            let missing = strs("views_missing");
            format!(
                "exam     triage {}  complete {} (views {}{})  cancer {:.3} (threshold {:.3}, flag {})  \
                 density {}  percent density {:.1} %  dense breasts {}  OOD {}  [{}]  revision {}",
                v["triage"].as_str().unwrap_or("?"),
                yes_no(&v["complete"]),
                strs("views_present"),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!("; missing {missing}")
                },
                num(v, "cancer_probability"),
                num(v, "cancer_threshold"),
                yes_no(&v["cancer_flag"]),
                v["density"].as_str().unwrap_or("?"),
                num(v, "percent_density"),
                yes_no(&v["dense_breasts"]),
                yes_no(&v["ood"]),
                breasts.join("; "),
                v["revision"],
            )
        }
        "skipped" | "error" => format!(
            "{kind:<8} {}  {}: {}",
            name_of(v),
            v["reason_code"].as_str().unwrap_or("?"),
            v["reason"].as_str().unwrap_or("")
        ),
        _ => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc_4231_test_case_2() {
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn messages() -> Messages {
        Messages {
            topics: Topics::new("mammo/t/d"),
            model: ModelInfo {
                name: "m".into(),
                version: "1".into(),
                sha256: "ab".repeat(32),
                intended_use: "research only".into(),
                cancer_threshold: 0.5,
                ood_threshold: 1.0,
            },
            privacy: Privacy::local(),
        }
    }

    /// Review #1: a message over the packet limit is replaced by a small `error`
    /// `payload_too_large`; one under it is left alone.
    #[test]
    fn an_oversized_message_is_replaced_by_payload_too_large() {
        let m = messages();
        let path = Path::new("/srv/export/x.dcm");
        let huge = m.rejected(
            true,
            path,
            "k",
            None,
            "not_mammogram",
            &"\u{1}".repeat(65_000),
        );
        let text = huge.payload.to_string();
        assert!(text.len() < 2048, "{} bytes", text.len());
        assert_eq!(huge.payload["reason_code"], "payload_too_large");
        assert_eq!(huge.payload["schema"], schema::ERROR);
        assert_eq!(huge.topic, "mammo/t/d/error");
        assert!(huge.payload["reason"]
            .as_str()
            .unwrap()
            .contains("mammo-edge.skipped/1"));
        let small = m.rejected(true, path, "k", None, "not_mammogram", "CT");
        assert_eq!(small.payload["reason_code"], "not_mammogram");
        assert_ne!(small.payload["result_id"], huge.payload["result_id"]);
    }

    #[test]
    fn scrub_removes_path_and_name_unless_names_are_allowed() {
        let mut p = Privacy {
            key: None,
            label_key: None,
            uids: UidMode::Plain,
            publish_accession: false,
            publish_file_names: false,
        };
        let path = Path::new("/srv/export/DOE^JANE.dcm");
        assert_eq!(
            p.scrub(
                "cannot open /srv/export/DOE^JANE.dcm: bad; DOE^JANE.dcm",
                path
            ),
            "cannot open <file>: bad; <file>"
        );
        assert_eq!(
            p.file_label(path),
            format!("sha256:{}", &sha256_hex(b"/srv/export/DOE^JANE.dcm")[..16])
        );
        p.publish_file_names = true;
        assert_eq!(p.file_label(path), "DOE^JANE.dcm");
    }
}
