//! A DICOM C-STORE SCU (issue 14): sends Part 10 files as they are stored (no transcoding) to
//! a storage SCP over dicom-ul on tokio, and C-ECHO. Used by `mammo-edge demo --dicom` to send
//! its phantom exam to the daemon's receiver, and by the daemon's SR delivery
//! ([`crate::edge::sr_delivery`]). Main items: [`store_files`], [`store_bytes`], [`echo`],
//! [`ScuError`].

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::association::client::AsyncClientAssociation;
use dicom_ul::pdu::{PDataValueType, Pdu};
use dicom_ul::ClientAssociationOptions;
use thiserror::Error;
use tokio::io::AsyncWriteExt;

use crate::edge::dicom_scp::VERIFICATION;

/// The byte streams an association runs on: TCP, or TLS over TCP.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Why a send failed.
#[derive(Debug, Error)]
pub enum ScuError {
    /// A file could not be read, or is not a Part 10 file with the UIDs a C-STORE needs.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// The association could not be made (refused, unreachable, timed out).
    #[error("association with {peer}: {reason}")]
    Association { peer: String, reason: String },
    /// The peer accepted no presentation context for a file's SOP class and transfer syntax.
    #[error("{path}: the peer accepts no presentation context for SOP class {sop_class} in transfer syntax {transfer_syntax}")]
    NoContext {
        path: PathBuf,
        sop_class: String,
        transfer_syntax: String,
    },
    /// The exchange broke off (network error, unexpected PDU).
    #[error("with {peer}: {reason}")]
    Exchange { peer: String, reason: String },
}

/// Where to send: `host:port`, this node's AE title and the peer's.
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: String,
    pub calling_ae: String,
    pub called_ae: String,
    /// Connection, read and write time limit.
    pub timeout: Duration,
    /// DICOM TLS: the client configuration (trust anchors, client certificate); the peer's
    /// certificate must name the host of `address`. `None` = plain DICOM.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Peer {
    /// The host part of `address` (`host:port`, `[v6]:port`), the TLS server name.
    fn host(&self) -> &str {
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }

    fn association_error(&self, e: impl std::fmt::Display) -> ScuError {
        ScuError::Association {
            peer: self.address.clone(),
            reason: e.to_string(),
        }
    }
}

/// Connect `options` to `peer` (TLS when configured) and run `f` on the association.
macro_rules! with_association {
    ($peer:expr, $options:expr, |$a:ident| $body:expr) => {{
        let peer: &Peer = $peer;
        let options = $options;
        match &peer.tls {
            None => {
                let mut $a = options
                    .establish_async(peer.address.as_str())
                    .await
                    .map_err(|e| peer.association_error(e))?;
                $body
            }
            Some(tls) => {
                let mut $a = options
                    .tls_config(tls.clone())
                    .server_name(peer.host())
                    .establish_tls_async(peer.address.as_str())
                    .await
                    .map_err(|e| {
                        let detail = std::error::Error::source(&e)
                            .map(|c| format!(": {c}"))
                            .unwrap_or_default();
                        peer.association_error(format!("{e}{detail}"))
                    })?;
                $body
            }
        }
    }};
}

/// One object to send: where its bytes come from, its UIDs and transfer syntax. A file's bytes
/// are read only when it is its turn, so a batch never sits in memory at once.
struct Object {
    label: PathBuf,
    source: Source,
    sop_class: String,
    sop_instance: String,
    transfer_syntax: String,
}

enum Source {
    File,
    Bytes(Vec<u8>),
}

/// The file meta group of a Part 10 stream (`bytes` from its start; at least the preamble,
/// `DICM` and the group) and the offset of its data set. Errors: the reason, as text.
fn parse_meta(bytes: &[u8]) -> Result<(dicom_object::FileMetaTable, usize), String> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err("not a DICOM Part 10 file (no DICM prefix)".into());
    }
    let meta = dicom_object::FileMetaTable::from_reader(&bytes[128..])
        .map_err(|e| format!("file meta: {e}"))?;
    // the data set follows the group: 132 + (0002,0000) element (12 bytes) + its value
    let dataset_at = 132 + 12 + meta.information_group_length as usize;
    Ok((meta, dataset_at))
}

fn object_of(label: &Path, source: Source, meta: &dicom_object::FileMetaTable) -> Object {
    let clean = |s: &str| s.trim_end_matches(['\0', ' ']).to_string();
    Object {
        label: label.to_path_buf(),
        source,
        sop_class: clean(meta.media_storage_sop_class_uid()),
        sop_instance: clean(meta.media_storage_sop_instance_uid()),
        transfer_syntax: clean(meta.transfer_syntax()),
    }
}

/// The meta group of a file (read up to 64 KiB of its start, not the whole file).
fn read_object(path: &Path) -> Result<Object, ScuError> {
    use std::io::Read;
    let bad = |reason: String| ScuError::File {
        path: path.to_path_buf(),
        reason,
    };
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .map_err(|e| bad(e.to_string()))?;
    let (meta, _) = parse_meta(&head).map_err(bad)?;
    Ok(object_of(path, Source::File, &meta))
}

impl Object {
    /// The data set's bytes (a file is read now). Errors: `File`.
    fn dataset(&self) -> Result<Cow<'_, [u8]>, ScuError> {
        let bad = |reason: String| ScuError::File {
            path: self.label.clone(),
            reason,
        };
        let all: Cow<'_, [u8]> = match &self.source {
            Source::Bytes(b) => Cow::Borrowed(b),
            Source::File => Cow::Owned(std::fs::read(&self.label).map_err(|e| bad(e.to_string()))?),
        };
        let (_, at) = parse_meta(&all).map_err(bad)?;
        if at > all.len() {
            return Err(bad("file meta group longer than the file".into()));
        }
        Ok(match all {
            Cow::Borrowed(b) => Cow::Borrowed(&b[at..]),
            Cow::Owned(mut v) => {
                v.drain(..at);
                Cow::Owned(v)
            }
        })
    }
}

/// Send `files` in one association (one presentation context per SOP class and transfer
/// syntax found, each file in its own transfer syntax; a file is read when its turn comes).
/// Returns the C-STORE-RSP status of each file, in order (0x0000 = success). Errors:
/// [`ScuError`]; a file refused by status is not an error.
pub async fn store_files(peer: &Peer, files: &[PathBuf]) -> Result<Vec<u16>, ScuError> {
    let objects = files
        .iter()
        .map(|f| read_object(f))
        .collect::<Result<Vec<_>, _>>()?;
    store_objects(peer, &objects).await
}

/// Send one Part 10 object held in memory (`bytes`: the whole file, preamble included);
/// `label` names it in errors. Returns its C-STORE-RSP status (0x0000 = success). Errors:
/// `File` (not Part 10), the others as [`store_files`].
pub async fn store_bytes(peer: &Peer, label: &str, bytes: Vec<u8>) -> Result<u16, ScuError> {
    let label = Path::new(label);
    let (meta, _) = parse_meta(&bytes).map_err(|reason| ScuError::File {
        path: label.to_path_buf(),
        reason,
    })?;
    let o = object_of(label, Source::Bytes(bytes), &meta);
    let statuses = store_objects(peer, std::slice::from_ref(&o)).await?;
    Ok(statuses.first().copied().unwrap_or(0xFFFF))
}

async fn store_objects(peer: &Peer, objects: &[Object]) -> Result<Vec<u16>, ScuError> {
    let mut contexts: Vec<(String, String)> = Vec::new();
    for o in objects {
        let c = (o.sop_class.clone(), o.transfer_syntax.clone());
        if !contexts.contains(&c) {
            contexts.push(c);
        }
    }
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(peer.calling_ae.clone())
        .called_ae_title(peer.called_ae.clone())
        .connection_timeout(peer.timeout)
        .read_timeout(peer.timeout)
        .write_timeout(peer.timeout);
    for (class, ts) in &contexts {
        options = options.with_presentation_context(class.clone(), vec![ts.clone()]);
    }
    with_association!(peer, options, |a| {
        let mut out = Vec::with_capacity(objects.len());
        for (i, o) in objects.iter().enumerate() {
            let message_id = u16::try_from(i + 1).unwrap_or(u16::MAX);
            let result = store_one(&mut a, peer, o, message_id).await;
            match result {
                Ok(status) => out.push(status),
                Err(e) => {
                    let _ = a.abort().await;
                    return Err(e);
                }
            }
        }
        let _ = a.release().await;
        Ok(out)
    })
}

async fn store_one<S: Stream>(
    a: &mut AsyncClientAssociation<S>,
    peer: &Peer,
    o: &Object,
    message_id: u16,
) -> Result<u16, ScuError> {
    let exchange = |reason: String| ScuError::Exchange {
        peer: peer.address.clone(),
        reason,
    };
    let pc = a
        .presentation_contexts()
        .iter()
        .find(|pc| {
            pc.abstract_syntax.trim_end_matches('\0') == o.sop_class
                && pc.transfer_syntax.trim_end_matches('\0') == o.transfer_syntax
                && pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance
        })
        .map(|pc| pc.id)
        .ok_or_else(|| ScuError::NoContext {
            path: o.label.clone(),
            sop_class: o.sop_class.clone(),
            transfer_syntax: o.transfer_syntax.clone(),
        })?;
    let command = InMemDicomObject::command_from_element_iter([
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(o.sop_class.as_str()),
        ),
        DataElement::new(
            tags::COMMAND_FIELD,
            VR::US,
            PrimitiveValue::from(0x0001_u16),
        ),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(message_id)),
        // priority medium
        DataElement::new(tags::PRIORITY, VR::US, PrimitiveValue::from(0x0000_u16)),
        // a data set follows
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(0x0000_u16),
        ),
        DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(o.sop_instance.as_str()),
        ),
    ]);
    let dataset = o.dataset()?;
    send_command(a, pc, &command).await.map_err(exchange)?;
    {
        let mut w = a.send_pdata(pc);
        w.write_all(&dataset)
            .await
            .map_err(|e| exchange(e.to_string()))?;
        w.finish().await.map_err(|e| exchange(e.to_string()))?;
    }
    response_status(a, peer).await
}

/// A command set (Implicit VR Little Endian) as one P-DATA-TF PDU on context `pc`.
async fn send_command<S: Stream>(
    a: &mut AsyncClientAssociation<S>,
    pc: u8,
    command: &InMemDicomObject,
) -> Result<(), String> {
    let mut data = Vec::new();
    command
        .write_dataset_with_ts(&mut data, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| format!("command not encoded: {e}"))?;
    a.send(&Pdu::PData {
        data: vec![dicom_ul::pdu::PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Command,
            is_last: true,
            data,
        }],
    })
    .await
    .map_err(|e| e.to_string())
}

/// Wait for the response command of the request just sent; its Status.
async fn response_status<S: Stream>(
    a: &mut AsyncClientAssociation<S>,
    peer: &Peer,
) -> Result<u16, ScuError> {
    let exchange = |reason: String| ScuError::Exchange {
        peer: peer.address.clone(),
        reason,
    };
    let mut bytes = Vec::new();
    loop {
        match a.receive().await.map_err(|e| exchange(e.to_string()))? {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type == PDataValueType::Command {
                        bytes.extend_from_slice(&pdv.data);
                        if pdv.is_last {
                            let obj = InMemDicomObject::read_dataset_with_ts(
                                bytes.as_slice(),
                                &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
                            )
                            .map_err(|e| exchange(format!("unreadable response: {e}")))?;
                            return obj
                                .element(tags::STATUS)
                                .ok()
                                .and_then(|e| e.to_int::<u16>().ok())
                                .ok_or_else(|| exchange("response without Status".into()));
                        }
                    }
                }
            }
            Pdu::AbortRQ { .. } => return Err(exchange("aborted by the peer".into())),
            other => {
                return Err(exchange(format!(
                    "unexpected {}",
                    other.short_description()
                )))
            }
        }
    }
}

/// C-ECHO: `Ok(())` when the peer answers success. Errors: `Association`, `Exchange`.
pub async fn echo(peer: &Peer) -> Result<(), ScuError> {
    let options = ClientAssociationOptions::new()
        .calling_ae_title(peer.calling_ae.clone())
        .called_ae_title(peer.called_ae.clone())
        .with_presentation_context(VERIFICATION, vec!["1.2.840.10008.1.2"])
        .connection_timeout(peer.timeout)
        .read_timeout(peer.timeout)
        .write_timeout(peer.timeout);
    with_association!(peer, options, |a| {
        let r = echo_on(&mut a, peer).await;
        let _ = a.release().await;
        r
    })
}

async fn echo_on<S: Stream>(
    a: &mut AsyncClientAssociation<S>,
    peer: &Peer,
) -> Result<(), ScuError> {
    let pc = a
        .presentation_contexts()
        .first()
        .map(|pc| pc.id)
        .unwrap_or(1);
    let command = InMemDicomObject::command_from_element_iter([
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(VERIFICATION),
        ),
        DataElement::new(
            tags::COMMAND_FIELD,
            VR::US,
            PrimitiveValue::from(0x0030_u16),
        ),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(1_u16)),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(0x0101_u16),
        ),
    ]);
    if let Err(reason) = send_command(a, pc, &command).await {
        return Err(ScuError::Exchange {
            peer: peer.address.clone(),
            reason,
        });
    }
    match response_status(a, peer).await? {
        0 => Ok(()),
        s => Err(ScuError::Exchange {
            peer: peer.address.clone(),
            reason: format!("C-ECHO status 0x{s:04X}"),
        }),
    }
}
