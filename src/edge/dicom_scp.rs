//! The daemon's DICOM C-STORE SCP (`[dicom]`, issue 14; docs/conformance.md): C-ECHO and
//! C-STORE of the mammography SOP classes (plus the X-ray classes the ingest skips with a
//! reason), in the transfer syntaxes the build decodes and only those. Deny by default: the
//! source IP is checked at accept, the called and calling AE titles at negotiation, and one
//! association beyond `max_associations` is refused (transient, local limit exceeded).
//! A received object is streamed to a temporary file in `<state.dir>/received/` (memory stays
//! at one PDU whatever the object declares), fsynced, renamed to a name derived from its
//! SOPInstanceUID, and handed to the daemon loop ([`Received`]), which records it in the ledger
//! and queues it with no settle wait; the C-STORE-RSP says success only once that is done.
//! Main items: [`Scp`], [`ScpSettings`], [`Received`], [`STORAGE_SOP_CLASSES`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::association::server::{AccessControl, DefaultNegotiation};
use dicom_ul::association::Association as _;
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, PDataValue, PDataValueType, Pdu,
    PresentationContextResultReason, UserIdentity,
};
use dicom_ul::ServerAssociationOptions;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::ingest::dicom::{header_string, sop, DECODABLE_TRANSFER_SYNTAXES};

/// Verification SOP class (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// The storage SOP classes accepted, with their names (PS3.4 B.5). The mammography classes
/// are scored (or skipped for a stated reason: For Processing, tomosynthesis); the X-ray
/// classes are accepted so that a misrouted image is reported `skipped` rather than refused
/// without trace.
pub const STORAGE_SOP_CLASSES: &[(&str, &str)] = &[
    (
        sop::MG_PRESENTATION,
        "Digital Mammography X-Ray Image Storage - For Presentation",
    ),
    (
        sop::MG_PROCESSING,
        "Digital Mammography X-Ray Image Storage - For Processing",
    ),
    (sop::BREAST_TOMO, "Breast Tomosynthesis Image Storage"),
    (
        sop::BREAST_PROJECTION_PRESENTATION,
        "Breast Projection X-Ray Image Storage - For Presentation",
    ),
    (
        sop::BREAST_PROJECTION_PROCESSING,
        "Breast Projection X-Ray Image Storage - For Processing",
    ),
    (
        sop::DX_PRESENTATION,
        "Digital X-Ray Image Storage - For Presentation",
    ),
    (
        sop::DX_PROCESSING,
        "Digital X-Ray Image Storage - For Processing",
    ),
    (sop::CR, "Computed Radiography Image Storage"),
];

/// C-STORE-RSP / C-ECHO-RSP status codes used (PS3.4 B.2.3, PS3.7 C).
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: out of resources (state folder short of space, object over the size limit).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: cannot understand (no usable SOP Instance UID).
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Processing failure (the object could not be stored or recorded).
    pub const PROCESSING_FAILURE: u16 = 0x0110;
}

/// Largest command set accepted, bytes (a C-STORE-RQ is a few hundred).
const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Largest PDU this node receives, bytes (what it announces in A-ASSOCIATE-AC).
const MAX_PDU: u32 = 65_536;
/// How long the daemon loop may take to record a received file before the store fails.
const RECORD_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the receiver could not start.
#[derive(Debug, Error)]
pub enum ScpError {
    /// The listen address could not be bound (in use, no permission for a port below 1024).
    #[error("dicom.listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The folder for received objects could not be created.
    #[error("received-objects folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The DICOM TLS files (`dicom.tls_*`) are unusable.
    #[error(transparent)]
    Tls(#[from] crate::edge::tls::TlsError),
}

/// What the receiver needs, from `[dicom]`, `[state]` and `[ingest]`.
#[derive(Debug, Clone)]
pub struct ScpSettings {
    pub listen: SocketAddr,
    pub ae_title: String,
    pub calling_ae_allow: Vec<String>,
    pub ip_allow: Vec<IpNet>,
    pub max_associations: usize,
    /// An association silent for this long is aborted.
    pub timeout: Duration,
    /// Folder of received objects (`<state.dir>/received`).
    pub dir: PathBuf,
    /// The state folder, whose free space is checked before each object.
    pub state_dir: PathBuf,
    /// Below this many free bytes an object is refused with `OUT_OF_RESOURCES` (0: no check).
    pub min_free_bytes: u64,
    /// Largest object stored, bytes (the ingest's `max_file_bytes`).
    pub max_object_bytes: u64,
    /// DICOM TLS: every association is TLS with a client certificate checked against
    /// `dicom.tls_client_ca` and `dicom.tls_client_allow`; `None` = plain DICOM.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl ScpSettings {
    /// Settings from a validated configuration with a `[dicom]` section (`Ok(None)` without
    /// one); the TLS files are read now. Errors: `Tls`.
    pub fn from_config(
        config: &crate::edge::config::Config,
    ) -> Result<Option<ScpSettings>, ScpError> {
        let Some(d) = config.dicom.as_ref() else {
            return Ok(None);
        };
        let tls = if d.tls() {
            Some(Arc::new(crate::edge::tls::server_config(
                ("dicom.tls_cert", &d.tls_cert),
                ("dicom.tls_key", &d.tls_key),
                ("dicom.tls_client_ca", &d.tls_client_ca),
                &d.tls_client_allow,
                "dicom",
            )?))
        } else {
            None
        };
        let (Ok(listen), Ok(ip_allow)) = (d.listen_addr(), d.ip_blocks()) else {
            // validated by Config::validate
            return Ok(None);
        };
        Ok(Some(ScpSettings {
            tls,
            listen,
            ae_title: d.ae_title.trim().to_string(),
            calling_ae_allow: d
                .calling_ae_allow
                .iter()
                .map(|t| t.trim().to_string())
                .collect(),
            ip_allow,
            max_associations: d.max_associations as usize,
            timeout: Duration::from_secs(d.timeout_secs),
            dir: received_dir(&config.state.dir),
            state_dir: config.state.dir.clone(),
            min_free_bytes: config.state.min_free_bytes(),
            max_object_bytes: config.ingest_options().max_file_bytes,
        }))
    }
}

/// The folder of objects received over the network: `<state.dir>/received`.
pub fn received_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("received")
}

/// The file name a received object is kept under: 32 hex digits of the SHA-256 of its
/// SOPInstanceUID (no UID in a path or log), `.dcm`. The same instance sent twice lands on the
/// same name.
pub fn received_name(sop_instance_uid: &str) -> String {
    let digest = Sha256::digest(sop_instance_uid.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.dcm")
}

/// A received object, stored durably, for the daemon loop to record in its ledger and queue.
/// The loop answers on `recorded`: `Ok` once the ledger row exists, `Err(why)` otherwise (the
/// SCP then removes the file and answers a failure status).
#[derive(Debug)]
pub struct Received {
    pub path: PathBuf,
    pub recorded: oneshot::Sender<Result<(), String>>,
}

/// Counters of the receiver, for logs and tests.
#[derive(Debug, Default)]
pub struct ScpCounters {
    pub associations: AtomicU64,
    pub refused: AtomicU64,
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub failed: AtomicU64,
}

/// The listening receiver: [`Scp::bind`], then [`Scp::serve`] in a task of its own.
pub struct Scp {
    listener: TcpListener,
    settings: Arc<ScpSettings>,
    counters: Arc<ScpCounters>,
}

/// AE titles checked at negotiation: the called title must be ours, the calling one in the
/// allow-list (an empty list refuses all).
struct AeAllow {
    calling: Vec<String>,
}

impl AccessControl for AeAllow {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != this_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if !self.calling.iter().any(|a| a == calling_ae_title.trim()) {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

type Options = ServerAssociationOptions<'static, AeAllow, DefaultNegotiation>;

fn options(s: &ScpSettings) -> Options {
    let mut o = ServerAssociationOptions::new()
        .ae_access_control(AeAllow {
            calling: s.calling_ae_allow.clone(),
        })
        .ae_title(s.ae_title.clone())
        .max_pdu_length(MAX_PDU)
        .read_timeout(s.timeout)
        .write_timeout(s.timeout)
        .with_abstract_syntax(VERIFICATION);
    for (uid, _) in STORAGE_SOP_CLASSES {
        o = o.with_abstract_syntax(*uid);
    }
    for ts in DECODABLE_TRANSFER_SYNTAXES {
        o = o.with_transfer_syntax(*ts);
    }
    if let Some(tls) = &s.tls {
        o = o.tls_config(tls.clone());
    }
    o
}

impl Scp {
    /// Bind `settings.listen` and create the received-objects folder (mode 0700).
    /// Errors: `Bind`, `Folder`.
    pub async fn bind(settings: ScpSettings) -> Result<Scp, ScpError> {
        create_private_dir(&settings.dir).map_err(|source| ScpError::Folder {
            path: settings.dir.clone(),
            source,
        })?;
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| ScpError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        Ok(Scp {
            listener,
            settings: Arc::new(settings),
            counters: Arc::default(),
        })
    }

    /// The address actually bound (port 0 in the settings picks a free one).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The receiver's counters (shared with the running server).
    pub fn counters(&self) -> Arc<ScpCounters> {
        self.counters.clone()
    }

    /// Accept associations until the task is dropped, each in a task of its own, handing
    /// stored objects to `tx`. Never returns an error: a failed accept is logged and retried.
    pub async fn serve(self, tx: mpsc::Sender<Received>) {
        let options = Arc::new(options(&self.settings));
        let slots = Arc::new(Semaphore::new(self.settings.max_associations));
        // refusals in flight: each holds a socket and a 16 KiB buffer for at most a few seconds;
        // beyond this many the connection is closed without an answer (a flood cannot grow
        // tasks without bound)
        let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
        let seq = Arc::new(AtomicU64::new(0));
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    log::warn!("dicom: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // a listener on [::] sees IPv4 peers as ::ffff:a.b.c.d; the allow-list names them as IPv4
            let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
            let s = self.settings.clone();
            let counters = self.counters.clone();
            if !s.ip_allow.iter().any(|n| n.contains(&peer.ip())) {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "dicom: association from {} refused: address not in dicom.ip_allow",
                    peer.ip()
                );
                spawn_refusal(
                    &refusals,
                    stream,
                    s.timeout,
                    AssociationRJResult::Permanent,
                    AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::NoReasonGiven),
                );
                continue;
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "dicom: association from {} refused: {} association(s) already open (dicom.max_associations)",
                    peer.ip(),
                    s.max_associations
                );
                spawn_refusal(
                    &refusals,
                    stream,
                    s.timeout,
                    AssociationRJResult::Transient,
                    AssociationRJSource::ServiceProviderPresentation(
                        AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
                    ),
                );
                continue;
            };
            let (options, tx, seq) = (options.clone(), tx.clone(), seq.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let mut assoc = Association {
                    settings: s,
                    counters,
                    tx,
                    seq,
                    peer,
                };
                assoc.run(&options, stream).await;
            });
        }
    }
}

/// Refusals answered at once at most; further refused connections are closed unanswered.
const MAX_REFUSALS: usize = 64;

/// Run [`refuse`] in a task of its own while fewer than [`MAX_REFUSALS`] are running; else close
/// the connection at once (dropping the stream).
fn spawn_refusal(
    slots: &Arc<Semaphore>,
    stream: TcpStream,
    timeout: Duration,
    result: AssociationRJResult,
    source: AssociationRJSource,
) {
    match slots.clone().try_acquire_owned() {
        Ok(permit) => {
            // each step of a refusal is bounded: the rejection itself by at most 2 s
            let timeout = timeout.min(Duration::from_secs(2));
            tokio::spawn(async move {
                let _permit = permit;
                refuse(stream, timeout, result, source).await;
            });
        }
        Err(_) => log::debug!("dicom: {MAX_REFUSALS} refusals in flight; connection closed"),
    }
}

/// Answer an association request with A-ASSOCIATE-RJ without negotiating: read what the peer
/// sent (its A-ASSOCIATE-RQ, bounded), send the rejection, close.
async fn refuse(
    mut stream: TcpStream,
    timeout: Duration,
    result: AssociationRJResult,
    source: AssociationRJSource,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(timeout, stream.read(&mut buf)).await;
    let mut out = Vec::new();
    if dicom_ul::pdu::write_pdu(
        &mut out,
        &Pdu::AssociationRJ(AssociationRJ { result, source }),
    )
    .is_ok()
    {
        let _ = tokio::time::timeout(timeout, stream.write_all(&out)).await;
    }
    let _ = stream.shutdown().await;
    // the peer closes after reading the rejection; wait for that (bounded) so that unread
    // bytes do not turn our close into a reset that loses the rejection
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
}

/// One object being received.
struct Incoming {
    message_id: u16,
    sop_class: String,
    sop_instance: String,
    context_id: u8,
    sink: Sink,
}

enum Sink {
    /// Written to `tmp`; `bytes` so far.
    File {
        tmp: PathBuf,
        file: tokio::fs::File,
        bytes: u64,
    },
    /// Read and dropped; the C-STORE-RSP gives `status` and `why`.
    Discard { status: u16, why: String },
}

struct Association {
    settings: Arc<ScpSettings>,
    counters: Arc<ScpCounters>,
    tx: mpsc::Sender<Received>,
    seq: Arc<AtomicU64>,
    peer: SocketAddr,
}

impl Association {
    /// Negotiate (over TLS when configured), then serve the association.
    async fn run(&mut self, options: &Options, stream: TcpStream) {
        let established = if self.settings.tls.is_some() {
            match options.establish_tls_async(stream).await {
                Ok(a) => return self.serve(a).await,
                Err(e) => e,
            }
        } else {
            match options.establish_async(stream).await {
                Ok(a) => return self.serve(a).await,
                Err(e) => e,
            }
        };
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        // only a rejection's reason and a TLS failure are logged: other negotiation errors of
        // dicom-ul print the offending PDU, which may hold data-set bytes
        use dicom_ul::association::Error as E;
        let why = match &established {
            E::Rejected { .. } => established.to_string(),
            E::TlsHandshake { .. } | E::TlsConnection { .. } => format!(
                "TLS handshake failed: {}",
                std::error::Error::source(&established)
                    .map(|c| c.to_string())
                    .unwrap_or_default()
            ),
            _ => "negotiation failed (not an A-ASSOCIATE-RQ, or the connection ended)".into(),
        };
        log::warn!("dicom: association from {} refused: {why}", self.peer.ip());
    }

    /// Serve one accepted association until it is released, aborted or times out.
    async fn serve<S>(&mut self, mut a: dicom_ul::association::server::AsyncServerAssociation<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        self.counters.associations.fetch_add(1, Ordering::Relaxed);
        let calling = a.peer_ae_title().to_string();
        log::info!(
            "dicom: association from {calling} at {} accepted",
            self.peer.ip()
        );
        let mut command: Vec<u8> = Vec::new();
        let mut incoming: Option<Incoming> = None;
        let why_end: String = loop {
            let pdu = match a.receive().await {
                Ok(p) => p,
                Err(e) => break format!("ended: {e}"),
            };
            match pdu {
                Pdu::PData { data } => {
                    let mut reply = None;
                    for pdv in data {
                        match pdv.value_type {
                            PDataValueType::Command => {
                                if command.len() + pdv.data.len() > MAX_COMMAND_BYTES {
                                    reply = Some(Err("command set too long".to_string()));
                                    break;
                                }
                                command.extend_from_slice(&pdv.data);
                                if !pdv.is_last {
                                    continue;
                                }
                                let bytes = std::mem::take(&mut command);
                                match self.command(&a, &bytes, pdv.presentation_context_id).await {
                                    Ok(Step::Reply(r)) => reply = Some(Ok(r)),
                                    Ok(Step::Expect(inc)) => {
                                        if let Some(old) = incoming.replace(inc) {
                                            discard(old).await;
                                        }
                                    }
                                    Err(e) => {
                                        reply = Some(Err(e));
                                        break;
                                    }
                                }
                            }
                            PDataValueType::Data => {
                                let Some(inc) = incoming.as_mut() else {
                                    reply = Some(Err("data set without a C-STORE request".into()));
                                    break;
                                };
                                self.write(inc, &pdv.data).await;
                                if pdv.is_last {
                                    let inc = incoming.take().expect("present");
                                    reply = Some(Ok(self.finish(inc).await));
                                }
                            }
                        }
                    }
                    match reply {
                        Some(Ok(r)) => {
                            if let Err(e) = a.send(&r).await {
                                break format!("response not sent: {e}");
                            }
                        }
                        Some(Err(why)) => {
                            let _ = a
                                .send(&Pdu::AbortRQ {
                                    source: dicom_ul::pdu::AbortRQSource::ServiceProvider(
                                        dicom_ul::pdu::AbortRQServiceProviderReason::UnexpectedPdu,
                                    ),
                                })
                                .await;
                            break format!("aborted: {why}");
                        }
                        None => {}
                    }
                }
                Pdu::ReleaseRQ => {
                    let _ = a.send(&Pdu::ReleaseRP).await;
                    break "released".into();
                }
                Pdu::AbortRQ { .. } => break "aborted by the peer".into(),
                other => break format!("ended: unexpected {}", other.short_description()),
            }
        };
        if let Some(inc) = incoming {
            discard(inc).await;
        }
        log::info!("dicom: association from {calling} {why_end}");
    }

    /// Act on one complete command set.
    async fn command<S>(
        &self,
        a: &dicom_ul::association::server::AsyncServerAssociation<S>,
        bytes: &[u8],
        context_id: u8,
    ) -> Result<Step, String> {
        let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let obj = InMemDicomObject::read_dataset_with_ts(bytes, &ts)
            .map_err(|e| format!("unreadable command set: {e}"))?;
        let uint = |tag| obj.element(tag).ok().and_then(|e| e.to_int::<u16>().ok());
        let text = |tag| header_string(&obj, tag).unwrap_or_default();
        let field = uint(tags::COMMAND_FIELD).ok_or("command without Command Field")?;
        let message_id = uint(tags::MESSAGE_ID).unwrap_or(0);
        match field {
            // C-ECHO-RQ
            0x0030 => Ok(Step::Reply(response(
                context_id,
                0x8030,
                message_id,
                VERIFICATION,
                None,
                status::SUCCESS,
                None,
            ))),
            // C-STORE-RQ
            0x0001 => {
                let sop_class = text(tags::AFFECTED_SOP_CLASS_UID);
                let sop_instance = text(tags::AFFECTED_SOP_INSTANCE_UID);
                let ts = a
                    .presentation_contexts()
                    .iter()
                    .find(|pc| {
                        pc.id == context_id
                            && pc.reason == PresentationContextResultReason::Acceptance
                            && pc.abstract_syntax.trim_end_matches('\0') == sop_class
                    })
                    .map(|pc| pc.transfer_syntax.trim_end_matches('\0').to_string())
                    .ok_or("C-STORE on a presentation context not accepted for its SOP class")?;
                let sink = self.open(&sop_class, &sop_instance, &ts).await;
                Ok(Step::Expect(Incoming {
                    message_id,
                    sop_class,
                    sop_instance,
                    context_id,
                    sink,
                }))
            }
            other => Err(format!("command 0x{other:04X} not supported")),
        }
    }

    /// Where the object of a C-STORE-RQ goes: a temporary file with the Part 10 header, or
    /// nowhere with the refusal's status.
    async fn open(&self, sop_class: &str, sop_instance: &str, ts: &str) -> Sink {
        let s = &self.settings;
        if sop_instance.is_empty() || sop_instance.len() > 64 {
            return Sink::Discard {
                status: status::CANNOT_UNDERSTAND,
                why: "no usable Affected SOP Instance UID".into(),
            };
        }
        if s.min_free_bytes > 0 {
            match crate::edge::health::free_bytes(&s.state_dir) {
                Ok(free) if free < s.min_free_bytes => {
                    return Sink::Discard {
                        status: status::OUT_OF_RESOURCES,
                        why: format!(
                            "state folder has {} MiB free, below state.min_free_mb",
                            free / (1024 * 1024)
                        ),
                    }
                }
                _ => {}
            }
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = s
            .dir
            .join(format!(".incoming-{}-{n}.part", std::process::id()));
        let header = match part10_header(sop_class, sop_instance, ts) {
            Ok(h) => h,
            Err(e) => {
                return Sink::Discard {
                    status: status::CANNOT_UNDERSTAND,
                    why: format!("file meta not writable: {e}"),
                }
            }
        };
        let opened = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            f.write_all(&header).await?;
            Ok::<_, std::io::Error>(f)
        }
        .await;
        match opened {
            Ok(file) => Sink::File {
                tmp,
                file,
                bytes: header.len() as u64,
            },
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Sink::Discard {
                    status: status::OUT_OF_RESOURCES,
                    why: format!("not stored: {e}"),
                }
            }
        }
    }

    /// Append a data fragment; past the size limit or on a write error the object is dropped.
    async fn write(&self, inc: &mut Incoming, data: &[u8]) {
        let Sink::File { tmp, file, bytes } = &mut inc.sink else {
            return;
        };
        let refusal = if *bytes + data.len() as u64 > self.settings.max_object_bytes {
            Some((
                status::OUT_OF_RESOURCES,
                format!(
                    "object larger than {} bytes (the ingest's max_file_bytes)",
                    self.settings.max_object_bytes
                ),
            ))
        } else {
            match file.write_all(data).await {
                Ok(()) => {
                    *bytes += data.len() as u64;
                    None
                }
                Err(e) => Some((status::OUT_OF_RESOURCES, format!("not stored: {e}"))),
            }
        };
        if let Some((status, why)) = refusal {
            let _ = tokio::fs::remove_file(&*tmp).await;
            inc.sink = Sink::Discard { status, why };
        }
    }

    /// The object is complete: make it durable, hand it to the daemon loop, build the answer.
    async fn finish(&self, inc: Incoming) -> Pdu {
        let (status, why) = match inc.sink {
            Sink::Discard { status, why } => (status, Some(why)),
            Sink::File { tmp, file, .. } => match self.keep(&tmp, file, &inc.sop_instance).await {
                Ok(()) => (status::SUCCESS, None),
                Err(why) => (status::PROCESSING_FAILURE, Some(why)),
            },
        };
        if let Some(why) = &why {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "dicom: C-STORE from {} refused (status 0x{status:04X}): {why}",
                self.peer.ip()
            );
        }
        response(
            inc.context_id,
            0x8001,
            inc.message_id,
            &inc.sop_class,
            Some(&inc.sop_instance),
            status,
            why.as_deref(),
        )
    }

    /// fsync, rename into place (unless the instance is here already), fsync the folder, and
    /// wait for the daemon loop to record it.
    async fn keep(
        &self,
        tmp: &Path,
        mut file: tokio::fs::File,
        sop_instance: &str,
    ) -> Result<(), String> {
        let synced = async {
            file.flush().await?;
            file.sync_all().await
        }
        .await;
        drop(file);
        if let Err(e) = synced {
            let _ = tokio::fs::remove_file(tmp).await;
            return Err(format!("not stored: {e}"));
        }
        let path = self.settings.dir.join(received_name(sop_instance));
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            // sent again before the first copy was scored: that copy is scored, once
            let _ = tokio::fs::remove_file(tmp).await;
            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            log::info!("dicom: an instance already received arrived again; stored once");
            return Ok(());
        }
        let dir = self.settings.dir.clone();
        let (from, to) = (tmp.to_path_buf(), path.clone());
        let renamed = tokio::task::spawn_blocking(move || {
            std::fs::rename(&from, &to)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = renamed {
            let _ = tokio::fs::remove_file(tmp).await;
            return Err(format!("not stored: {e}"));
        }
        let (recorded, answer) = oneshot::channel();
        let handed = self
            .tx
            .send(Received {
                path: path.clone(),
                recorded,
            })
            .await;
        let outcome = match handed {
            Err(_) => Err("the daemon is stopping".to_string()),
            Ok(()) => match tokio::time::timeout(RECORD_TIMEOUT, answer).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err("the daemon is stopping".to_string()),
                Err(_) => Err("the daemon did not record the object in time".to_string()),
            },
        };
        match outcome {
            Ok(()) => {
                self.counters.stored.fetch_add(1, Ordering::Relaxed);
                log::debug!("dicom: stored {}", path.display());
                Ok(())
            }
            // the file stays: another association may have been answered for the same name,
            // and the next rescan of received/ records and scores it (the sender, told of the
            // failure, may resend: that copy is then a duplicate scored once)
            Err(why) => Err(format!(
                "{why}; the object is kept and recorded at the next rescan"
            )),
        }
    }
}

enum Step {
    Reply(Pdu),
    Expect(Incoming),
}

async fn discard(inc: Incoming) {
    if let Sink::File { tmp, .. } = inc.sink {
        let _ = tokio::fs::remove_file(tmp).await;
    }
}

/// Preamble, `DICM` and the File Meta Information of a received object (PS3.10 7.1), to which
/// the data set is appended as received (in transfer syntax `ts`).
fn part10_header(
    sop_class: &str,
    sop_instance: &str,
    ts: &str,
) -> Result<Vec<u8>, dicom_object::meta::Error> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .transfer_syntax(ts)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION)
        .build()?;
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out)?;
    Ok(out)
}

/// Implementation Class UID written in the file meta of received objects (a UUID-derived
/// 2.25 root: no registered org root is claimed).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.141120233045617150232227011905213893181";
/// Implementation Version Name (at most 16 characters).
pub const IMPLEMENTATION_VERSION: &str = concat!(
    "MAMMO_EDGE_",
    env!("CARGO_PKG_VERSION_MAJOR"),
    env!("CARGO_PKG_VERSION_MINOR")
);

/// A response command (C-STORE-RSP 0x8001, C-ECHO-RSP 0x8030) as one P-DATA-TF PDU.
fn response(
    context_id: u8,
    field: u16,
    message_id: u16,
    sop_class: &str,
    sop_instance: Option<&str>,
    status: u16,
    comment: Option<&str>,
) -> Pdu {
    let mut elements = vec![
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(sop_class),
        ),
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(field)),
        DataElement::new(
            tags::MESSAGE_ID_BEING_RESPONDED_TO,
            VR::US,
            PrimitiveValue::from(message_id),
        ),
        // no data set follows
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(0x0101_u16),
        ),
        DataElement::new(tags::STATUS, VR::US, PrimitiveValue::from(status)),
    ];
    if let Some(uid) = sop_instance {
        elements.push(DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(uid),
        ));
    }
    if let Some(c) = comment {
        // Error Comment is LO: at most 64 characters, no patient data in it (our own text)
        let c: String = c
            .chars()
            .filter(|c| c.is_ascii() && *c != '\\')
            .take(64)
            .collect();
        elements.push(DataElement::new(
            tags::ERROR_COMMENT,
            VR::LO,
            PrimitiveValue::from(c),
        ));
    }
    let obj = InMemDicomObject::command_from_element_iter(elements);
    let mut data = Vec::new();
    // writing a small in-memory command set cannot fail
    let _ = obj.write_dataset_with_ts(&mut data, &IMPLICIT_VR_LITTLE_ENDIAN.erased());
    Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: context_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data,
        }],
    }
}

/// Create `dir` (and parents) with mode 0700 for the last component.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_received_name_is_stable_per_instance_and_shows_no_uid() {
        let a = received_name("1.2.3.4.5");
        assert_eq!(a, received_name("1.2.3.4.5"));
        assert_ne!(a, received_name("1.2.3.4.6"));
        assert_eq!(a.len(), 32 + 4);
        assert!(!a.contains("1.2.3"));
    }

    #[test]
    fn the_part10_header_reads_back_with_its_transfer_syntax() {
        let h = part10_header(sop::MG_PRESENTATION, "1.2.3.4", "1.2.840.10008.1.2.4.90").unwrap();
        assert_eq!(&h[128..132], b"DICM");
        let meta = dicom_object::FileMetaTable::from_reader(&h[128..]).unwrap();
        assert_eq!(meta.transfer_syntax(), "1.2.840.10008.1.2.4.90");
        assert_eq!(meta.media_storage_sop_instance_uid(), "1.2.3.4");
        assert!(IMPLEMENTATION_VERSION.len() <= 16);
    }
}
