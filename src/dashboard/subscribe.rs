//! One MQTT subscription (rumqttc) per `--broker`: every message on the topic filters is recorded
//! in the dashboard database and only then acknowledged (QoS 1, manual PUBACK, persistent
//! session), so a dashboard that crashes loses nothing its broker kept; each change is announced
//! to the live page.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::broadcast;

use super::db::{Change, Db};
use super::topic;

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The connection of the dashboard to one broker, as `GET /api/brokers` lists it: while it is
/// down, the appliances' states shown are the last known ones.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerStatus {
    /// The `--broker` URL.
    pub url: String,
    pub connected: bool,
    /// Unix seconds of the last change of `connected` (null before the first attempt ended).
    pub since: Option<i64>,
    /// Why the last attempt or connection failed.
    pub error: Option<String>,
}

/// The status of every broker, in `--broker` order.
pub type Brokers = Arc<Mutex<Vec<BrokerStatus>>>;

/// Subscribe to `filters` on one broker until the task is dropped; reconnects with a doubling
/// wait (1 s … 30 s). `index` is this broker's row in `brokers` (its URL names it in the log).
pub async fn subscribe(
    index: usize,
    brokers: Brokers,
    mut options: MqttOptions,
    filters: Vec<String>,
    db: Arc<Db>,
    changes: broadcast::Sender<Change>,
) {
    let name = brokers
        .lock()
        .map(|b| b[index].url.clone())
        .unwrap_or_default();
    // a change of the connection, for /api/brokers and the page
    let set = |connected: bool, error: Option<String>| {
        let mut b = brokers.lock().unwrap_or_else(|p| p.into_inner());
        let row = &mut b[index];
        if row.connected != connected || row.since.is_none() {
            row.since = Some(unix_now());
            let _ = changes.send(Change {
                kind: "broker",
                device: row.url.clone(),
            });
        }
        row.connected = connected;
        row.error = error;
    };
    options.set_manual_acks(true).set_clean_session(false);
    let (client, mut events) = AsyncClient::new(options, 64);
    let mut backoff = Duration::from_secs(1);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_secs(1);
                set(true, None);
                log::info!(
                    "dashboard: connected to {name} (session present: {})",
                    ack.session_present
                );
                for f in &filters {
                    if let Err(e) = client.subscribe(f.clone(), QoS::AtLeastOnce).await {
                        log::warn!("dashboard: subscribing to {f} on {name}: {e}");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some(parsed) = topic::parse(&p.topic) {
                    let now = unix_now();
                    // set by the broker only for the last value handed over on subscribing
                    let retained = p.retain;
                    let (db, payload, device) =
                        (db.clone(), p.payload.clone(), parsed.device.clone());
                    let recorded = tokio::task::spawn_blocking(move || {
                        db.record(&parsed, &payload, now, retained)
                    })
                    .await
                    .unwrap_or_else(|e| Err(super::db::DbError::Panicked(e.to_string())));
                    match recorded {
                        Ok(change) => {
                            // no page listening is not an error
                            let _ = changes.send(change);
                        }
                        Err(e) => {
                            // not acknowledged: the broker sends it again on the next session
                            log::error!("dashboard: recording a message of {device}: {e}");
                            continue;
                        }
                    }
                }
                if let Err(e) = client.ack(&p).await {
                    log::warn!("dashboard: acknowledging on {name}: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => {
                set(false, Some(e.to_string()));
                log::warn!(
                    "dashboard: broker {name}: {e}; again in {} s",
                    backoff.as_secs()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
