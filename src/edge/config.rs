//! The edge daemon's TOML configuration: every key with a compiled-in default, the commented
//! default file an operator edits (`Config::default_toml`), loading, and validation whose errors
//! name the key (`mqtt.url: scheme must be mqtt:// or mqtts://`). Keys: docs/daemon-store.md.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ingest::dicom::{IngestOptions, Resolution};

/// Why a configuration is refused. Every message starts with the key it is about (or the file).
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, or a key has the wrong type / an unknown name. `key` is the dotted path
    /// (`ingest.max_attempts`), `line` is 1-based where known.
    #[error("config {origin}{}: {}{message}", at_line(*line), key_prefix(key))]
    Parse {
        origin: String,
        key: String,
        line: Option<usize>,
        message: String,
    },
    /// A value of the right type that is not allowed.
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl ConfigError {
    /// The dotted key the error is about (`""` for an unreadable file or a syntax error).
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Read { .. } => "",
            ConfigError::Parse { key, .. } => key,
            ConfigError::Invalid { key, .. } => key,
        }
    }
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() || key == "." {
        String::new()
    } else {
        format!("{key}: ")
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The whole configuration. Missing sections and keys take the defaults of `Config::default()`;
/// unknown keys are refused (a typo must not silently fall back to a default).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub watch: WatchConfig,
    pub state: StateConfig,
    pub model: ModelConfig,
    pub ingest: IngestConfig,
    pub mqtt: MqttConfig,
    pub exam: ExamConfig,
    pub drift: DriftConfig,
    pub files: FilesConfig,
    pub privacy: PrivacyConfig,
    /// `[dicom]`: the C-STORE receiver; absent = no listener (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dicom: Option<DicomConfig>,
    /// `[sr]`: where each exam's Mammography CAD SR goes; default nowhere.
    #[serde(skip_serializing_if = "SrConfig::is_off")]
    pub sr: SrConfig,
}

/// `[sr]`: the Mammography CAD SR of each exam revision (docs/conformance.md), delivered
/// through the state database like the MQTT outbox: to each `[[sr.destination]]` by C-STORE
/// and/or written to `folder`. The SR carries the patient module of its images, so while SR is
/// on the state database keeps those header attributes of each scored image until its result
/// is purged (`state.retention_days`); they go nowhere else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SrConfig {
    /// `[[sr.destination]]`: storage SCPs (PACS, viewer) sent every SR. Default none.
    pub destination: Vec<SrDestination>,
    /// Folder each SR is also written to, as `<SOPInstanceUID>.dcm`; empty = none (default).
    pub folder: PathBuf,
    /// Longest wait between two tries of one delivery, s (the wait doubles from 1 s up to
    /// it). Default 300.
    pub retry_max_secs: u64,
}

impl Default for SrConfig {
    fn default() -> Self {
        SrConfig {
            destination: Vec::new(),
            folder: PathBuf::new(),
            retry_max_secs: 300,
        }
    }
}

impl SrConfig {
    /// True when SRs go nowhere (no destination, no folder): none is made.
    pub fn is_off(&self) -> bool {
        self.destination.is_empty() && is_unset(&self.folder)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let ae_ok = |t: &str| {
            !t.trim().is_empty()
                && t.len() <= 16
                && t.chars().all(|c| c.is_ascii_graphic() || c == ' ')
                && !t.contains('\\')
        };
        for d in &self.destination {
            if !ae_ok(&d.ae_title) {
                return Err(invalid(
                    "sr.destination.ae_title",
                    format!(
                        "{:?}: 1 to 16 printable ASCII characters, no backslash",
                        d.ae_title
                    ),
                ));
            }
            if !ae_ok(&d.calling_ae) {
                return Err(invalid(
                    "sr.destination.calling_ae",
                    format!(
                        "{:?}: 1 to 16 printable ASCII characters, no backslash",
                        d.calling_ae
                    ),
                ));
            }
            let port_ok = d
                .address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(invalid(
                    "sr.destination.address",
                    format!("{:?} is not host:port", d.address),
                ));
            }
            if d.timeout_secs == 0 || d.timeout_secs > 3600 {
                return Err(invalid("sr.destination.timeout_secs", "must be 1 to 3600"));
            }
            if is_unset(&d.tls_cert) != is_unset(&d.tls_key) {
                return Err(invalid(
                    "sr.destination.tls_cert",
                    "tls_cert and tls_key go together",
                ));
            }
            if !is_unset(&d.tls_cert) && is_unset(&d.tls_ca) {
                return Err(invalid(
                    "sr.destination.tls_ca",
                    "required with a client certificate",
                ));
            }
        }
        if self.retry_max_secs == 0 || self.retry_max_secs > 86_400 {
            return Err(invalid("sr.retry_max_secs", "must be 1 to 86400"));
        }
        Ok(())
    }
}

/// One `[[sr.destination]]`: a storage SCP the SR is sent to by C-STORE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SrDestination {
    /// The peer's AE title (called AE). Required.
    pub ae_title: String,
    /// `host:port` of the peer. Required.
    pub address: String,
    /// This node's AE title towards the peer. Default `MAMMO_EDGE`.
    pub calling_ae: String,
    /// Connection, read and write time limit, s. Default 30.
    pub timeout_secs: u64,
    /// DICOM TLS: the CA bundle (PEM) the peer's certificate must chain to (its name checked
    /// against the host of `address`). Set = TLS. Default "" (plain).
    pub tls_ca: PathBuf,
    /// This node's client certificate chain and key (PEM), both or neither, for a peer that
    /// asks for one.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
}

impl Default for SrDestination {
    fn default() -> Self {
        SrDestination {
            ae_title: String::new(),
            address: String::new(),
            calling_ae: "MAMMO_EDGE".into(),
            timeout_secs: 30,
            tls_ca: PathBuf::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
        }
    }
}

impl SrDestination {
    /// The name of this destination in the state database and logs: `AE@host:port`.
    pub fn key(&self) -> String {
        format!("{}@{}", self.ae_title, self.address)
    }
}

/// Largest `dicom.max_associations`.
pub const MAX_ASSOCIATIONS: u32 = 64;

/// `[dicom]`: the DICOM C-STORE SCP beside the folder watch (docs/conformance.md). Deny by
/// default: an empty `calling_ae_allow` or `ip_allow` refuses every association.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DicomConfig {
    /// Address and TCP port listened on. Default `0.0.0.0:11112`.
    pub listen: String,
    /// This node's AE title; an association calling another title is refused. Default
    /// `MAMMO_EDGE`.
    pub ae_title: String,
    /// Calling AE titles allowed to send (exact, case-sensitive). Default: none.
    pub calling_ae_allow: Vec<String>,
    /// Source addresses allowed, as IPs or CIDR blocks (`10.1.2.0/24`). Default: none.
    pub ip_allow: Vec<String>,
    /// Associations served at once; one more is refused (transient, local limit exceeded).
    /// Default 8.
    pub max_associations: u32,
    /// An association silent for this long is aborted, s. Default 60.
    pub timeout_secs: u64,
    /// DICOM TLS (PS3.15 B.1): this node's certificate chain and key (PEM). Set = every
    /// association is TLS (no plain DICOM on `listen`). Default "" (plain).
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// CA bundle (PEM) a client certificate must chain to; required with `tls_cert`.
    pub tls_client_ca: PathBuf,
    /// SHA-256 fingerprints of the client certificates allowed (64 hex digits, colons and case
    /// ignored: `openssl x509 -noout -fingerprint -sha256 -in client.pem`). Empty = refuse all.
    pub tls_client_allow: Vec<String>,
}

impl Default for DicomConfig {
    fn default() -> Self {
        DicomConfig {
            listen: "0.0.0.0:11112".into(),
            ae_title: "MAMMO_EDGE".into(),
            calling_ae_allow: Vec::new(),
            ip_allow: Vec::new(),
            max_associations: 8,
            timeout_secs: 60,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_client_ca: PathBuf::new(),
            tls_client_allow: Vec::new(),
        }
    }
}

impl DicomConfig {
    /// `listen` as a socket address. Errors: `Invalid` naming `dicom.listen`.
    pub fn listen_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            invalid(
                "dicom.listen",
                format!("{:?} is not an address:port", self.listen),
            )
        })
    }

    /// `ip_allow` parsed (a bare IP is a /32 or /128 block). Errors: `Invalid` naming
    /// `dicom.ip_allow`.
    pub fn ip_blocks(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.ip_allow
            .iter()
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "dicom.ip_allow",
                            format!("{s:?} is not an IP address or CIDR block"),
                        )
                    })
            })
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.ip_blocks()?;
        let ae_ok = |t: &str| {
            !t.trim().is_empty()
                && t.len() <= 16
                && t.chars().all(|c| c.is_ascii_graphic() || c == ' ')
                && !t.contains('\\')
        };
        if !ae_ok(&self.ae_title) {
            return Err(invalid(
                "dicom.ae_title",
                "1 to 16 printable ASCII characters, no backslash",
            ));
        }
        if let Some(t) = self.calling_ae_allow.iter().find(|t| !ae_ok(t)) {
            return Err(invalid(
                "dicom.calling_ae_allow",
                format!("{t:?}: 1 to 16 printable ASCII characters, no backslash"),
            ));
        }
        if self.max_associations == 0 || self.max_associations > MAX_ASSOCIATIONS {
            return Err(invalid(
                "dicom.max_associations",
                format!("must be 1 to {MAX_ASSOCIATIONS}"),
            ));
        }
        if self.timeout_secs == 0 || self.timeout_secs > 3600 {
            return Err(invalid("dicom.timeout_secs", "must be 1 to 3600"));
        }
        if self.tls() {
            if is_unset(&self.tls_key) {
                return Err(invalid("dicom.tls_key", "required with dicom.tls_cert"));
            }
            if is_unset(&self.tls_client_ca) {
                return Err(invalid(
                    "dicom.tls_client_ca",
                    "required with dicom.tls_cert (client certificates are checked)",
                ));
            }
        } else if !is_unset(&self.tls_key) || !is_unset(&self.tls_client_ca) {
            return Err(invalid(
                "dicom.tls_cert",
                "required with dicom.tls_key / dicom.tls_client_ca",
            ));
        }
        if let Some(f) = self
            .tls_client_allow
            .iter()
            .find(|f| crate::edge::tls::normalise_fingerprint(f).is_none())
        {
            return Err(invalid(
                "dicom.tls_client_allow",
                format!("{f:?} is not a SHA-256 fingerprint (64 hex digits)"),
            ));
        }
        Ok(())
    }

    /// True when the receiver speaks DICOM TLS (`tls_cert` set).
    pub fn tls(&self) -> bool {
        !is_unset(&self.tls_cert)
    }
}

/// `[watch]`: the export folders (DESIGN.md, "Data flow (edge)").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Folders watched (recursively) for DICOM files. Default `["/srv/dicom-export"]`.
    pub dirs: Vec<PathBuf>,
    /// A file is taken once its size and mtime have not changed for this long, s. Default 2.
    /// With `settle = "events"` only files without a completion event wait for it (found by
    /// the rescan: network mounts, files present at start-up).
    pub stable_secs: u64,
    /// Full rescan period besides file-system events, s. Default 30.
    pub rescan_secs: u64,
    /// When a file counts as complete ([`Settle`]). Default `events`.
    pub settle: Settle,
}

/// `watch.settle`: how the daemon knows a file is completely written (docs/daemon.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Settle {
    /// A file closed after writing (inotify `IN_CLOSE_WRITE`) or moved into the folder
    /// (`IN_MOVED_TO`) is taken at once, unless it changes again; files found only by the
    /// rescan wait `stable_secs`. For local writers that write a file in one open–close: dcmtk
    /// `storescp`, `cp`/`rsync`, Samba (SMB) shares served by this machine.
    #[default]
    Events,
    /// Every file waits until its size and mtime are unchanged for `stable_secs`. For writers
    /// that close a file before it is complete, e.g. a folder this machine exports over NFS
    /// (the kernel server may close between write calls).
    Timer,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            dirs: vec![PathBuf::from("/srv/dicom-export")],
            stable_secs: 2,
            rescan_secs: 30,
            settle: Settle::Events,
        }
    }
}

/// `[state]`: the SQLite state (DESIGN.md, "Storage guarantees").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// Folder of `state.sqlite`. Default `/var/lib/mammo-edge`.
    pub dir: PathBuf,
    /// Delivered outbox rows and done ledger rows older than this are deleted, days. Default 30.
    pub retention_days: u32,
    /// Intake pauses (no new file is claimed; files wait in the export folder) while the file
    /// system of `dir` has less than this many MiB free for the daemon (statvfs `f_bavail`);
    /// it resumes when space returns. 0 turns the check off. Default 256.
    pub min_free_mb: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("/var/lib/mammo-edge"),
            retention_days: 30,
            min_free_mb: 256,
        }
    }
}

impl StateConfig {
    /// `retention_days` as a duration.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.retention_days) * 86_400)
    }

    /// `min_free_mb` in bytes (MiB × 1 048 576, saturating).
    pub fn min_free_bytes(&self) -> u64 {
        self.min_free_mb.saturating_mul(1024 * 1024)
    }
}

/// Upper bound of `model.threads`.
pub const MAX_MODEL_THREADS: u32 = 16;

/// `[model]`: the ONNX model (DESIGN.md, "Model contract").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// ONNX file following docs/model-contract.md.
    /// Default `/usr/share/mammo-edge/models/mammo-mtl-demo.int8.onnx`.
    pub path: PathBuf,
    /// Threads of tract's matrix products (`ModelRunner::with_threads`): 1 runs them on the
    /// worker thread, N > 1 on a pool of N. 1–16 (the unit's `TasksMax=64` counts them).
    /// Default 1.
    pub threads: u32,
    /// `auto` (default): when the other precision's file of the same model lies beside `path`
    /// (`X.onnx` ↔ `X.int8.onnx`), time both at start-up and on reload and score with the faster
    /// on this CPU (`model::precision`, logged); `file`: always `path`.
    pub precision: Precision,
}

/// `model.precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Auto,
    File,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: PathBuf::from("/usr/share/mammo-edge/models/mammo-mtl-demo.int8.onnx"),
            threads: 1,
            precision: Precision::Auto,
        }
    }
}

/// `[ingest]`: limits on reading one file (DESIGN.md, "DICOM ingest rules").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest image decoded, pixels (Rows × Columns × frames × samples). Default 60 000 000.
    pub pixel_budget: u64,
    /// Time limit for decoding one file, s. Default 60.
    pub file_timeout_secs: u64,
    /// A file whose decoding crashes or times out this many times is quarantined. Default 3.
    pub max_attempts: u32,
    /// Score For Processing images (with a percentile window) instead of skipping them.
    /// Default false.
    pub allow_for_processing: bool,
    /// Decode JPEG 2000 at the coarsest wavelet level that keeps four times the model's input per
    /// side (`ingest::dicom::Resolution::ForModel`; ~18× faster on a 26 MP Hologic file, model
    /// outputs within the tolerance of tests/it/codecs.rs). false = every sample. Default true.
    pub reduced_decode: bool,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            pixel_budget: 60_000_000,
            file_timeout_secs: 60,
            max_attempts: 3,
            allow_for_processing: false,
            reduced_decode: true,
        }
    }
}

/// `[mqtt]`: the broker (DESIGN.md, "MQTT contract"). Empty paths mean "not set".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` (plaintext, default port 1883) or `mqtts://host[:port]` (TLS, 8883).
    /// Default `mqtt://127.0.0.1:1883`.
    pub url: String,
    /// Topic prefix, `<prefix>/image`, `<prefix>/exam` … Default `mammo/site-1/edge-1`.
    pub topic_prefix: String,
    /// MQTT client identifier. Default `mammo-edge-1`.
    pub client_id: String,
    /// PEM CA bundle that signs the broker's certificate; required with `mqtts://`.
    pub ca_file: PathBuf,
    /// PEM client certificate and its key (both or neither; `mqtts://` only).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// User name; its password is read from `password_file`.
    pub username: String,
    /// File holding the password (first line). A password never goes in the TOML itself.
    pub password_file: PathBuf,
    /// Allow plaintext `mqtt://` to a host other than loopback. Default false.
    pub allow_insecure: bool,
    /// Period of the retained `<prefix>/health` message, s (it is also sent at every connection
    /// and when intake pauses or resumes, or a reload is tried). Default 60.
    pub health_secs: u64,
    /// A message handed to the broker and not acknowledged (PUBACK) within this many seconds
    /// ends the connection; the next one sends it again. Default 30.
    pub ack_timeout_secs: u64,
    /// Whether the file has an `mqtt.password` key, only to refuse it with a clear message (the
    /// value itself is not kept).
    #[serde(default, skip_serializing, deserialize_with = "key_present")]
    password: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            topic_prefix: "mammo/site-1/edge-1".into(),
            client_id: "mammo-edge-1".into(),
            ca_file: PathBuf::new(),
            client_cert: PathBuf::new(),
            client_key: PathBuf::new(),
            username: String::new(),
            password_file: PathBuf::new(),
            allow_insecure: false,
            health_secs: 60,
            ack_timeout_secs: 30,
            password: false,
        }
    }
}

/// A broker address parsed from `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// True for `mqtts://`.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl Broker {
    /// Parse `mqtt://host[:port]` / `mqtts://host[:port]` (an optional trailing `/`; IPv6 in
    /// brackets). Errors name `mqtt.url`: wrong scheme, credentials in the URL, empty host, bad port.
    pub fn parse(url: &str) -> Result<Broker, ConfigError> {
        const KEY: &str = "mqtt.url";
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(invalid(
                KEY,
                format!("scheme must be mqtt:// or mqtts:// (got {url:?})"),
            ));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('@') {
            return Err(invalid(
                KEY,
                "credentials do not belong in the URL; use mqtt.username and mqtt.password_file",
            ));
        }
        if authority.contains(['/', '?', '#']) {
            return Err(invalid(
                KEY,
                format!("only mqtt[s]://host[:port] is accepted (got {url:?})"),
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| invalid(KEY, format!("unclosed [ in {url:?}")))?;
            let port =
                match after {
                    "" => None,
                    p => Some(p.strip_prefix(':').ok_or_else(|| {
                        invalid(KEY, format!("expected :port after ] in {url:?}"))
                    })?),
                };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid(KEY, format!("no host in {url:?}")));
        }
        let port = match port {
            None => {
                if tls {
                    8883
                } else {
                    1883
                }
            }
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(invalid(KEY, format!("port {p:?} is not 1–65535"))),
            },
        };
        Ok(Broker {
            tls,
            host: host.to_string(),
            port,
        })
    }

    /// True for `localhost`, `127.0.0.0/8` and `::1`.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }
}

impl MqttConfig {
    /// The broker address of `url` (already checked by `Config::validate`).
    pub fn broker(&self) -> Result<Broker, ConfigError> {
        Broker::parse(&self.url)
    }
}

/// `[exam]`: exam aggregation (DESIGN.md, "Data flow (edge)", exam rule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExamConfig {
    /// An incomplete exam is published once no image has arrived for this long, s. Default 300.
    pub quiet_secs: u64,
}

impl Default for ExamConfig {
    fn default() -> Self {
        ExamConfig { quiet_secs: 300 }
    }
}

/// `[drift]`: the drift monitor (docs/drift.md): rolling windows of the outputs per source
/// (Manufacturer, ManufacturerModelName) compared with the model's reference distributions
/// (`mammo.drift_reference`); a retained `<prefix>/drift/<source>` message after each image
/// and an `<prefix>/alert` message when a threshold is crossed (and when it is back under).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftConfig {
    /// Off: no window is kept and no drift or alert message is sent. Default on.
    pub enabled: bool,
    /// Images per source in the rolling window (the newest are kept). Default 200.
    pub window: usize,
    /// Images a window needs before it is judged (no alert before). Default 100.
    pub min_images: usize,
    /// Population stability index of an output (cancer probability, density class, percent
    /// density) above which the source is alerted. Default 0.25 (the usual "significant shift").
    pub psi_alert: f64,
    /// Share of the window flagged out of distribution above which the source is alerted.
    /// Default 0.10 (the flag's threshold is the 99th percentile of the validation images).
    pub ood_rate_alert: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            enabled: true,
            window: 200,
            min_images: 100,
            psi_alert: 0.25,
            ood_rate_alert: 0.10,
        }
    }
}

impl DriftConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(10..=100_000).contains(&self.window) {
            return Err(invalid("drift.window", "must be between 10 and 100000"));
        }
        if self.min_images == 0 || self.min_images > self.window {
            return Err(invalid(
                "drift.min_images",
                "must be at least 1 and at most drift.window",
            ));
        }
        if !(self.psi_alert.is_finite() && self.psi_alert > 0.0) {
            return Err(invalid("drift.psi_alert", "must be a number above 0"));
        }
        if !(self.ood_rate_alert > 0.0 && self.ood_rate_alert <= 1.0) {
            return Err(invalid(
                "drift.ood_rate_alert",
                "must be above 0 and at most 1",
            ));
        }
        Ok(())
    }
}

/// What happens to an input file once it is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum FilesAfter {
    /// Leave it where it is (the ledger remembers it).
    Keep,
    /// Move it into `done/`, `skipped/` or `failed/` next to the watched folder.
    Move,
}

impl TryFrom<String> for FilesAfter {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "keep" => Ok(FilesAfter::Keep),
            "move" => Ok(FilesAfter::Move),
            _ => Err(format!("{s:?} is not keep or move")),
        }
    }
}

/// `[files]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// `keep` (default) or `move`.
    pub after: FilesAfter,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            after: FilesAfter::Keep,
        }
    }
}

/// How StudyInstanceUID / SOPInstanceUID appear in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum UidMode {
    /// As in the DICOM file (needed to link results inside the hospital).
    Plain,
    /// Replaced by a keyed hash with the key in `privacy.key_file`.
    Hashed,
}

impl TryFrom<String> for UidMode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "plain" => Ok(UidMode::Plain),
            "hashed" => Ok(UidMode::Hashed),
            _ => Err(format!("{s:?} is not plain or hashed")),
        }
    }
}

/// `[privacy]`: what identifying data may leave the appliance (DESIGN.md, "MQTT contract").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// `plain` (default) or `hashed`.
    pub uids: UidMode,
    /// Secret key of the UID hash; required with `uids = "hashed"`.
    pub key_file: PathBuf,
    /// Publish AccessionNumber. Default false.
    pub publish_accession: bool,
    /// Publish input file names (they often contain patient names). Default false.
    pub publish_file_names: bool,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            uids: UidMode::Plain,
            key_file: PathBuf::new(),
            publish_accession: false,
            publish_file_names: false,
        }
    }
}

/// The commented default configuration (`mammo-edge print-default-config`). It parses back to
/// `Config::default()` (a test holds it to that).
const DEFAULT_TOML: &str = r#"# mammo-edge configuration. Every key is optional; the values shown are the defaults.
# Unknown keys are refused. Reference: docs/daemon-store.md.

[watch]
# Export folders watched (recursively) for DICOM files.
dirs = ["/srv/dicom-export"]
# A file is taken once its size and mtime have not changed for this many seconds.
stable_secs = 2
# Full rescan period besides file-system events, seconds.
rescan_secs = 30
# "events": a file closed after writing or moved in is taken at once (local writers: storescp,
# cp, Samba shares served here); files found only by the rescan wait stable_secs. "timer": every
# file waits stable_secs (folders exported over NFS by this machine, writers that close early).
settle = "events"

[state]
# Folder of state.sqlite (ledger, results, outbox).
dir = "/var/lib/mammo-edge"
# Delivered outbox rows and done ledger rows older than this many days are deleted.
retention_days = 30
# Intake pauses (files wait in the export folder, nothing is lost) while the file system of
# dir has less than this many MiB free; it resumes when space returns. 0: no check.
min_free_mb = 256

[model]
# ONNX model following docs/model-contract.md.
path = "/usr/share/mammo-edge/models/mammo-mtl-demo.int8.onnx"
# Threads of the model's matrix products: 1 = on the worker thread, N = a pool of N (1-16).
threads = 1
# "auto": when the model's other precision (X.onnx <-> X.int8.onnx, same model) lies beside
# `path`, time both at start-up and score with the faster on this CPU (logged); "file": `path`.
precision = "auto"

[ingest]
# Largest image decoded, pixels (Rows x Columns).
pixel_budget = 60000000
# Time limit for decoding one file, seconds.
file_timeout_secs = 60
# A file whose decoding crashes or times out this many times is quarantined.
max_attempts = 3
# Score For Processing images (percentile window) instead of skipping them.
allow_for_processing = false
# Decode JPEG 2000 only down to the wavelet level the model needs (four times its input per side);
# false = decode every sample.
reduced_decode = true

[mqtt]
# mqtt://host[:port] (plaintext, 1883) or mqtts://host[:port] (TLS, 8883).
url = "mqtt://127.0.0.1:1883"
# Messages go to <topic_prefix>/image, /exam, /skipped, /error, /status, /health, /drift/<source>, /alert.
topic_prefix = "mammo/site-1/edge-1"
client_id = "mammo-edge-1"
# TLS: CA bundle (required with mqtts://), client certificate and key (PEM, both or neither).
ca_file = ""
client_cert = ""
client_key = ""
# The password is read from password_file; a password never goes in this file.
username = ""
password_file = ""
# Plaintext mqtt:// is allowed only to loopback unless this is true.
allow_insecure = false
# Period of the retained <topic_prefix>/health message (counters, backlog, intake state),
# seconds; it is also sent at each connection and when intake pauses or resumes.
health_secs = 60
# A message without its PUBACK after this many seconds ends the connection; the next
# connection sends it again.
ack_timeout_secs = 30

[exam]
# An incomplete exam is published once no image has arrived for this many seconds.
quiet_secs = 300

[drift]
# The drift monitor (docs/drift.md): per source (Manufacturer + ManufacturerModelName) a rolling
# window of the model's outputs compared with the model's reference distributions; a retained
# <topic_prefix>/drift/<source> message after each image, <topic_prefix>/alert when crossed.
enabled = true
# Images per source in the window, and how many it needs before it is judged.
window = 200
min_images = 100
# Population stability index of an output (cancer probability, density class, percent density)
# above which the source is alerted; share of out-of-distribution images above which it is.
psi_alert = 0.25
ood_rate_alert = 0.1

[files]
# keep: leave input files in place; move: into done/, skipped/, failed/ next to the watched folder.
after = "keep"

[privacy]
# plain: StudyInstanceUID / SOPInstanceUID as in the file; hashed: keyed hash with key_file.
uids = "plain"
key_file = ""
# AccessionNumber and file names (which often contain patient names) only when allowed.
publish_accession = false
publish_file_names = false

# DICOM C-STORE receiver (docs/conformance.md). Absent = no listener. Deny by default: an
# empty allow-list refuses every association. Received images go through the same ledger as
# watched files, with no settle wait.
# [dicom]
# listen = "0.0.0.0:11112"
# ae_title = "MAMMO_EDGE"
# calling_ae_allow = ["MG_ROOM1"]
# ip_allow = ["10.1.2.0/24"]
# max_associations = 8
# timeout_secs = 60
# DICOM TLS (all associations): certificate and key, the CA of the modalities' client
# certificates, and the SHA-256 fingerprints of those allowed (empty = refuse all).
# tls_cert = "/etc/mammo-edge/dicom.crt"
# tls_key = "/etc/mammo-edge/dicom.key"
# tls_client_ca = "/etc/mammo-edge/modalities-ca.pem"
# tls_client_allow = ["3f:a2:…"]

# Mammography CAD SR of each exam revision (docs/conformance.md), sent through the state
# database (nothing lost on a crash or a PACS outage; retried with a doubling wait). Absent =
# no SR. While on, the state database keeps the patient and study attributes of each scored
# image's header until its result is purged; the SR goes only to these destinations.
# [sr]
# folder = ""                   # also write <SOPInstanceUID>.dcm here ("" = no)
# retry_max_secs = 300
# [[sr.destination]]            # zero or more storage SCPs (PACS, viewer)
# ae_title = "PACS"
# address = "pacs.example:104"
# calling_ae = "MAMMO_EDGE"
# timeout_secs = 30
# tls_ca = ""                   # DICOM TLS to this peer: its CA bundle ("" = plain)
# tls_cert = ""                 # client certificate and key, if the peer asks for one
# tls_key = ""
"#;

impl Config {
    /// The commented default configuration text; it parses back to `Config::default()`.
    pub fn default_toml() -> String {
        DEFAULT_TOML.to_string()
    }

    /// Read, parse and validate a configuration file.
    ///
    /// Errors: `Read` (I/O), `Parse` (syntax, wrong type, unknown key: names the key and line),
    /// `Invalid` (a value not allowed: names the key).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parse and validate configuration text; `origin` names it in errors (a path, `"(text)"`).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let line_of = |span: Option<std::ops::Range<usize>>| {
            span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
        };
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            key: String::new(),
            line: line_of(e.span()),
            message: e.message().trim().to_string(),
        })?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::Parse {
                origin: origin.to_string(),
                key,
                line: line_of(inner.span()),
                message: inner.message().trim().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Check values the types allow but the daemon does not; the first problem found is returned,
    /// naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("watch.stable_secs", self.watch.stable_secs),
            ("watch.rescan_secs", self.watch.rescan_secs),
            ("state.retention_days", u64::from(self.state.retention_days)),
            ("model.threads", u64::from(self.model.threads)),
            ("ingest.pixel_budget", self.ingest.pixel_budget),
            ("ingest.file_timeout_secs", self.ingest.file_timeout_secs),
            ("ingest.max_attempts", u64::from(self.ingest.max_attempts)),
            ("exam.quiet_secs", self.exam.quiet_secs),
            ("mqtt.health_secs", self.mqtt.health_secs),
            ("mqtt.ack_timeout_secs", self.mqtt.ack_timeout_secs),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        // upper bounds: an absurd period or time limit passed validation and then overflowed
        // the clock at the first file (review #18)
        const DAY: u64 = 86_400;
        let at_most = [
            ("watch.stable_secs", self.watch.stable_secs, DAY),
            ("watch.rescan_secs", self.watch.rescan_secs, DAY),
            (
                "state.retention_days",
                u64::from(self.state.retention_days),
                3650,
            ),
            (
                "ingest.file_timeout_secs",
                self.ingest.file_timeout_secs,
                DAY,
            ),
            (
                "ingest.max_attempts",
                u64::from(self.ingest.max_attempts),
                100,
            ),
            ("exam.quiet_secs", self.exam.quiet_secs, 7 * DAY),
            ("mqtt.health_secs", self.mqtt.health_secs, DAY),
            ("mqtt.ack_timeout_secs", self.mqtt.ack_timeout_secs, DAY),
        ];
        for (key, v, max) in at_most {
            if v > max {
                return Err(invalid(key, format!("must be at most {max}")));
            }
        }
        if self.model.threads > MAX_MODEL_THREADS {
            return Err(invalid(
                "model.threads",
                format!("must be at most {MAX_MODEL_THREADS}"),
            ));
        }
        if self.watch.dirs.is_empty() {
            return Err(invalid("watch.dirs", "at least one folder is needed"));
        }
        if self.watch.dirs.iter().any(|d| d.as_os_str().is_empty()) {
            return Err(invalid("watch.dirs", "an entry is empty"));
        }
        if self.state.dir.as_os_str().is_empty() {
            return Err(invalid("state.dir", "must not be empty"));
        }
        if self.model.path.as_os_str().is_empty() {
            return Err(invalid("model.path", "must not be empty"));
        }
        self.validate_mqtt()?;
        if let Some(d) = &self.dicom {
            d.validate()?;
        }
        self.sr.validate()?;
        self.drift.validate()?;
        if self.privacy.uids == UidMode::Hashed && is_unset(&self.privacy.key_file) {
            return Err(invalid(
                "privacy.key_file",
                "required when privacy.uids = \"hashed\"",
            ));
        }
        Ok(())
    }

    fn validate_mqtt(&self) -> Result<(), ConfigError> {
        let m = &self.mqtt;
        if m.password {
            return Err(invalid(
                "mqtt.password",
                "a password never goes in the TOML; put it in a file and set mqtt.password_file",
            ));
        }
        let broker = m.broker()?;
        if !broker.tls && !broker.is_loopback() && !m.allow_insecure {
            return Err(invalid(
                "mqtt.url",
                format!(
                    "plaintext mqtt:// to {} (not loopback) is refused; use mqtts:// or set mqtt.allow_insecure = true",
                    broker.host
                ),
            ));
        }
        if broker.tls && is_unset(&m.ca_file) {
            return Err(invalid("mqtt.ca_file", "required with mqtts://"));
        }
        if is_unset(&m.client_cert) != is_unset(&m.client_key) {
            let key = if is_unset(&m.client_cert) {
                "mqtt.client_cert"
            } else {
                "mqtt.client_key"
            };
            return Err(invalid(
                key,
                "mqtt.client_cert and mqtt.client_key go together",
            ));
        }
        if !broker.tls && !is_unset(&m.client_cert) {
            return Err(invalid("mqtt.client_cert", "needs mqtts://"));
        }
        if !is_unset(&m.password_file) && m.username.is_empty() {
            return Err(invalid("mqtt.username", "required with mqtt.password_file"));
        }
        let prefix = &m.topic_prefix;
        if prefix.is_empty() {
            return Err(invalid("mqtt.topic_prefix", "must not be empty"));
        }
        if prefix.contains(['+', '#', '\0']) {
            return Err(invalid(
                "mqtt.topic_prefix",
                format!("{prefix:?} contains a wildcard (+ #) or NUL"),
            ));
        }
        if prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
            return Err(invalid(
                "mqtt.topic_prefix",
                format!("{prefix:?} has an empty topic level (leading, trailing or double /)"),
            ));
        }
        if m.client_id.is_empty() {
            return Err(invalid("mqtt.client_id", "must not be empty"));
        }
        Ok(())
    }

    /// A configuration re-read on SIGHUP, as it can be applied to a daemon running with `self`:
    /// `new` with the keys a running daemon cannot change kept from `self` (`watch.dirs`,
    /// `state.dir`, and the broker connection: `mqtt.*` except `mqtt.health_secs`), and those of
    /// these keys whose value differs in `new`: they take effect at the next start ("needs
    /// restart"). Every other key applies at once.
    pub fn reloaded(&self, new: Config) -> (Config, Vec<&'static str>) {
        let (o, n) = (&self.mqtt, &new.mqtt);
        let differs = [
            ("watch.dirs", self.watch.dirs != new.watch.dirs),
            ("state.dir", self.state.dir != new.state.dir),
            ("dicom", self.dicom != new.dicom),
            ("sr", self.sr != new.sr),
            ("mqtt.url", o.url != n.url),
            ("mqtt.topic_prefix", o.topic_prefix != n.topic_prefix),
            ("mqtt.client_id", o.client_id != n.client_id),
            ("mqtt.ca_file", o.ca_file != n.ca_file),
            ("mqtt.client_cert", o.client_cert != n.client_cert),
            ("mqtt.client_key", o.client_key != n.client_key),
            ("mqtt.username", o.username != n.username),
            ("mqtt.password_file", o.password_file != n.password_file),
            ("mqtt.allow_insecure", o.allow_insecure != n.allow_insecure),
            (
                "mqtt.ack_timeout_secs",
                o.ack_timeout_secs != n.ack_timeout_secs,
            ),
            // the pseudonyms of open studies must not change midway (review #28)
            ("privacy.uids", self.privacy.uids != new.privacy.uids),
            (
                "privacy.key_file",
                self.privacy.key_file != new.privacy.key_file,
            ),
        ];
        let restart = differs
            .iter()
            .filter(|(_, d)| *d)
            .map(|(k, _)| *k)
            .collect();
        let mut out = new;
        out.watch.dirs = self.watch.dirs.clone();
        out.state.dir = self.state.dir.clone();
        out.dicom = self.dicom.clone();
        out.sr = self.sr.clone();
        out.privacy.uids = self.privacy.uids;
        out.privacy.key_file = self.privacy.key_file.clone();
        out.mqtt = MqttConfig {
            health_secs: out.mqtt.health_secs,
            ..self.mqtt.clone()
        };
        (out, restart)
    }

    /// Ingest options for `dicom::read_mammogram`: `pixel_budget` at 16 bits per sample
    /// (2 bytes per pixel) and the For Processing policy; other fields keep their defaults.
    pub fn ingest_options(&self) -> IngestOptions {
        IngestOptions {
            max_pixel_bytes: self.ingest.pixel_budget.saturating_mul(2),
            accept_for_processing: self.ingest.allow_for_processing,
            resolution: if self.ingest.reduced_decode {
                Resolution::ForModel
            } else {
                Resolution::Full
            },
            ..IngestOptions::default()
        }
    }
}

fn key_present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

fn is_unset(p: &Path) -> bool {
    p.as_os_str().is_empty()
}
