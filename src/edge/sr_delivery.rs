//! Delivery of the Mammography CAD SRs (issue 14) from the state database's SR outbox: each
//! `[[sr.destination]]` by C-STORE ([`crate::edge::dicom_scu`]) and the `[sr] folder` by
//! temporary file, fsync and rename. Like the MQTT outbox, a row is marked delivered only
//! after the peer's success status (or the rename), so a crash, a restart or a PACS outage
//! loses nothing; a destination's SRs go in order, and after a failure its head waits
//! 1 s, 2 s, 4 s … up to `sr.retry_max_secs` before the next try. An SR sent twice (a crash
//! between the peer's success and our commit) has the same SOPInstanceUID: a duplicate the
//! PACS recognises. Logs name the SR by its SOPInstanceUID and the destination by its key,
//! never the patient. Main items: [`Destination`], [`SrSender`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};

use crate::edge::config::SrConfig;
use crate::edge::dicom_scu::{self, Peer};
use crate::edge::store::{Store, StoreError};
use crate::edge::tls::TlsError;

/// Key of the `[sr] folder` destination in the SR outbox.
pub const FOLDER_KEY: &str = "folder";

/// Longest sleep between two looks at the SR outbox when nothing wakes the sender.
const IDLE_LOOK: Duration = Duration::from_secs(30);

/// C-STORE statuses that mean stored: success and the warnings (coercion, elements
/// discarded, data set does not match the SOP class: PS3.4 Annex B.2.3).
fn stored(status: u16) -> bool {
    matches!(status, 0x0000 | 0xB000 | 0xB006 | 0xB007)
}

/// Where SRs go.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A storage SCP (`[[sr.destination]]`).
    Scu { key: String, peer: Peer },
    /// The `[sr] folder`.
    Folder(PathBuf),
}

impl Destination {
    /// The destinations of `[sr]`, in the order of the configuration, folder last; the TLS
    /// files of a destination with `tls_ca` are read now. Errors: [`TlsError`].
    pub fn from_config(c: &SrConfig) -> Result<Vec<Destination>, TlsError> {
        let mut out = Vec::new();
        for d in &c.destination {
            let tls = if d.tls_ca.as_os_str().is_empty() {
                None
            } else {
                let client = (!d.tls_cert.as_os_str().is_empty()).then_some((
                    ("sr.destination.tls_cert", d.tls_cert.as_path()),
                    ("sr.destination.tls_key", d.tls_key.as_path()),
                ));
                Some(Arc::new(crate::edge::tls::client_config(
                    ("sr.destination.tls_ca", &d.tls_ca),
                    client,
                )?))
            };
            out.push(Destination::Scu {
                key: d.key(),
                peer: Peer {
                    address: d.address.clone(),
                    calling_ae: d.calling_ae.clone(),
                    called_ae: d.ae_title.clone(),
                    timeout: Duration::from_secs(d.timeout_secs),
                    tls,
                },
            });
        }
        if !c.folder.as_os_str().is_empty() {
            out.push(Destination::Folder(c.folder.clone()));
        }
        Ok(out)
    }

    /// The destination's key in the SR outbox and the logs (`AE@host:port`, or `folder`).
    pub fn key(&self) -> &str {
        match self {
            Destination::Scu { key, .. } => key,
            Destination::Folder(_) => FOLDER_KEY,
        }
    }

    /// Deliver one SR (`object`: a Part 10 file's bytes; `sop_instance_uid` names it).
    /// Errors: why, as text without patient data.
    async fn deliver(&self, sop_instance_uid: &str, object: Vec<u8>) -> Result<(), String> {
        match self {
            Destination::Scu { peer, .. } => {
                match dicom_scu::store_bytes(peer, sop_instance_uid, object).await {
                    Ok(s) if stored(s) => Ok(()),
                    Ok(s) => Err(format!("C-STORE status 0x{s:04X}")),
                    Err(e) => Err(e.to_string()),
                }
            }
            Destination::Folder(dir) => {
                let (dir, name) = (dir.clone(), format!("{sop_instance_uid}.dcm"));
                tokio::task::spawn_blocking(move || write_durably(&dir, &name, &object))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Write `bytes` to `dir/name` so that it is whole or absent after a crash: a temporary file
/// in `dir`, fsync, rename, fsync of the folder. The folder is created if missing.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".sr-")
        .suffix(".part")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(name)).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The wait before try `attempts + 1` after `attempts` failed ones: 1 s doubling, at most
/// `max`.
pub fn backoff(attempts: u32, max: Duration) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(20)).min(max)
}

/// Counters of one sender run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SrStats {
    pub delivered: u64,
    pub failures: u64,
}

/// Drains the SR outbox to its destinations (a task beside the MQTT publisher, with its own
/// database connection).
pub struct SrSender {
    store: Store,
    destinations: Vec<Destination>,
    retry_max: Duration,
    wake: Arc<Notify>,
}

impl SrSender {
    /// A sender of `[sr]`'s destinations over `store` (a connection of its own). Errors: a
    /// destination's TLS files ([`TlsError`]).
    pub fn new(store: Store, config: &SrConfig) -> Result<SrSender, TlsError> {
        Ok(SrSender {
            store,
            destinations: Destination::from_config(config)?,
            retry_max: Duration::from_secs(config.retry_max_secs),
            wake: Arc::new(Notify::new()),
        })
    }

    /// Notify it after committing SRs, so it looks at once.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The keys of its destinations, in order: each SR is queued once per key.
    pub fn keys(&self) -> Vec<String> {
        self.destinations
            .iter()
            .map(|d| d.key().to_string())
            .collect()
    }

    /// Run until `stop` turns true. A database error ends it (the daemon stops, as for the
    /// MQTT publisher: SRs would pile up undelivered). An SR being sent when `stop` turns
    /// is abandoned and sent again at the next start.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<SrStats, StoreError> {
        let mut stats = SrStats::default();
        for (key, n) in self.store.sr_undelivered()? {
            if self.destinations.iter().all(|d| d.key() != key) {
                log::warn!(
                    "{n} SR(s) for {key}, no longer a destination in [sr], are kept undelivered"
                );
            } else {
                log::info!("{n} SR(s) waiting for {key}");
            }
        }
        loop {
            if *stop.borrow() {
                return Ok(stats);
            }
            let mut next_look = IDLE_LOOK;
            for d in self.destinations.clone() {
                let wait = tokio::select! {
                    w = self.drain(&d, &mut stats) => w?,
                    _ = stop.changed() => return Ok(stats),
                };
                if let Some(w) = wait {
                    next_look = next_look.min(w);
                }
            }
            tokio::select! {
                _ = stop.changed() => return Ok(stats),
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(next_look) => {}
            }
        }
    }

    /// Send `d`'s due SRs in order until none is left (`None`) or the head is not yet due
    /// (`Some(wait)`, also after a failure).
    async fn drain(
        &mut self,
        d: &Destination,
        stats: &mut SrStats,
    ) -> Result<Option<Duration>, StoreError> {
        loop {
            let Some(row) = self.store.sr_next(d.key())? else {
                return Ok(None);
            };
            let now = now_ms();
            if row.next_try_at_ms > now {
                let ms = u64::try_from(row.next_try_at_ms - now).unwrap_or(0);
                return Ok(Some(Duration::from_millis(ms)));
            }
            match d.deliver(&row.sop_instance_uid, row.object).await {
                Ok(()) => {
                    self.store.sr_delivered(row.id)?;
                    stats.delivered += 1;
                    log::info!(
                        "SR {} delivered to {}{}",
                        row.sop_instance_uid,
                        d.key(),
                        if row.attempts > 0 {
                            format!(" at try {}", row.attempts + 1)
                        } else {
                            String::new()
                        }
                    );
                }
                Err(why) => {
                    stats.failures += 1;
                    let wait = backoff(row.attempts + 1, self.retry_max);
                    let at = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(0));
                    self.store.sr_failed(row.id, at, &why)?;
                    log::warn!(
                        "SR {} not delivered to {} (try {}): {why}; next try in {}",
                        row.sop_instance_uid,
                        d.key(),
                        row.attempts + 1,
                        humantime::format_duration(wait)
                    );
                    return Ok(Some(wait));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn the_wait_doubles_from_one_second_up_to_the_cap() {
        let max = Duration::from_secs(300);
        let secs: Vec<u64> = (1..=11).map(|n| backoff(n, max).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX, max), max);
    }
}
