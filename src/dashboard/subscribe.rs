//! One MQTT subscription (rumqttc) per `--broker`: every message on the topic filters is recorded
//! in the dashboard database and only then acknowledged (QoS 1, manual PUBACK, persistent
//! session), so a dashboard that crashes loses nothing its broker kept; each change is announced
//! to the live page.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::broadcast;

use super::db::{Change, Db};
use super::topic;

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Subscribe to `filters` on one broker until the task is dropped; reconnects with a doubling
/// wait (1 s … 30 s). `name` is the broker URL, for the log.
pub async fn subscribe(
    name: String,
    mut options: MqttOptions,
    filters: Vec<String>,
    db: Arc<Db>,
    changes: broadcast::Sender<Change>,
) {
    options.set_manual_acks(true).set_clean_session(false);
    let (client, mut events) = AsyncClient::new(options, 64);
    let mut backoff = Duration::from_secs(1);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_secs(1);
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
                    match db.record(&parsed, &p.payload, now) {
                        Ok(change) => {
                            // no page listening is not an error
                            let _ = changes.send(change);
                        }
                        Err(e) => {
                            // not acknowledged: the broker sends it again on the next session
                            log::error!("dashboard: recording a message of {}: {e}", parsed.device);
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
