//! MQTT publisher (rumqttc 0.25): drains the SQLite outbox to the broker IN ORDER at QoS 1 and
//! marks a row delivered only on its PUBACK (DESIGN.md, "Storage guarantees"). On every ConnAck
//! it republishes the retained `<prefix>/status` = `online` (the LWT is a retained `offline`) and
//! resumes from the first undelivered row. rumqttc drops in-flight QoS 1 messages on reconnect
//! with a clean session and keeps nothing on disk, so the outbox is the source of truth: each
//! connection gets a fresh client, and reconnection uses our own capped backoff. Besides the
//! outbox it publishes two retained snapshots handed over through [`Retained`] (not results, so
//! not through the outbox): `<prefix>/status/info` and `<prefix>/health`. rumqttc's
//! `EventLoop::poll` is not cancel-safe (a dropped poll can abandon a CONNECT waiting for its
//! CONNACK, or a PUBLISH taken from the request queue but not yet written), so each connection's
//! event loop runs in a task of its own that is never cancelled ([`Poller`]); and a message
//! without its PUBACK after `mqtt.ack_timeout_secs` ends the connection, whose successor sends it
//! again (review #7). Main items: [`Publisher`], [`Retained`], [`probe`], [`PublishError`].

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::edge::config::{Broker, ConfigError, MqttConfig};
use crate::edge::service::Liveness;
use crate::edge::store::{Store, StoreError};
use crate::edge::tls::TlsError;

/// Outbox rows handed to the client before their PUBACKs (publication order is kept: the broker
/// forwards QoS 1 messages of one connection in order).
const WINDOW: usize = 16;
/// First reconnection delay; doubled after each failed attempt up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest delay between connection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// At a graceful stop, how long the PUBACKs of messages already handed over are waited for
/// (with the 2 s of the goodbye, inside the daemon's 5 s wait for the publisher).
const SETTLE: Duration = Duration::from_secs(2);
/// MQTT keep-alive, s.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Largest MQTT packet sent or received, bytes (exam messages are a few KiB).
pub const MAX_PACKET: usize = 256 * 1024;

/// Why publishing (or a broker check) failed.
#[derive(Debug, Error)]
pub enum PublishError {
    /// The `[mqtt]` settings are not usable (URL).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A TLS or credential file could not be read or parsed; `key` is the config key.
    #[error("{key} {path}: {detail}")]
    File {
        key: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// Building the TLS client configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The broker could not be reached or refused the connection. A TLS failure is followed by
    /// what to check ([`describe`]).
    #[error("broker {url}: {}", describe(.source))]
    Connect {
        url: String,
        source: Box<ConnectionError>,
    },
    /// The broker did not answer within the time given.
    #[error("broker {url}: no CONNACK within {secs} s")]
    Timeout { url: String, secs: u64 },
    /// The outbox could not be read or updated.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Topics of the contract under `mqtt.topic_prefix` (DESIGN.md, "MQTT contract").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `<prefix>`.
    pub prefix: String,
}

impl Topics {
    /// Topics under `prefix` (validated by `Config::validate`).
    pub fn new(prefix: &str) -> Topics {
        Topics {
            prefix: prefix.to_string(),
        }
    }

    /// `<prefix>/<leaf>`, e.g. `leaf` = `image`, `exam`, `skipped`, `error`, `health`.
    pub fn topic(&self, leaf: &str) -> String {
        format!("{}/{leaf}", self.prefix)
    }

    /// `<prefix>/status`: retained `online` / `offline` (LWT).
    pub fn status(&self) -> String {
        self.topic("status")
    }

    /// `<prefix>/status/info`: retained JSON with the versions of the appliance and model.
    pub fn status_info(&self) -> String {
        self.topic("status/info")
    }

    /// `<prefix>/health`: retained `mammo-edge.health/1` JSON.
    pub fn health(&self) -> String {
        self.topic("health")
    }
}

/// A connection error as text, with what to check when it is a TLS failure: the broker's
/// certificate not signed by a CA of `mqtt.ca_file`, not naming the host of `mqtt.url`, out of
/// its validity period, or the broker refusing the handshake (a client certificate missing or
/// not trusted by it).
pub fn describe(e: &ConnectionError) -> String {
    use rustls::CertificateError as C;
    let hint = match find_rustls(e) {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            C::UnknownIssuer | C::BadSignature => {
                "the broker's certificate is not signed by a CA in mqtt.ca_file"
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the broker's certificate does not name the host of mqtt.url"
            }
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
                "the broker's certificate is outside its validity period (check it and this clock)"
            }
            _ => "the broker's certificate was rejected (check mqtt.ca_file and the host of mqtt.url)",
        },
        Some(rustls::Error::AlertReceived(_)) => {
            "the broker refused the TLS session: it may require a client certificate \
             (mqtt.client_cert / mqtt.client_key) signed by a CA it trusts"
        }
        _ => return e.to_string(),
    };
    format!("{e} ({hint})")
}

/// The rustls error somewhere in the chain of `e` (rumqttc wraps it in `io::Error`s, during
/// the handshake or, for an alert sent after it, in the first read).
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cur = c.source();
    }
    None
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, PublishError> {
    std::fs::read(path).map_err(|e| PublishError::File {
        key,
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// The rustls client configuration of `mqtts://`: the CA bundle of `mqtt.ca_file` as the only
/// trust anchors and, when set, the client certificate chain and key (PEM) of
/// `mqtt.client_cert` / `mqtt.client_key` ([`crate::edge::tls::client_config`], ring).
pub fn tls_config(m: &MqttConfig) -> Result<rustls::ClientConfig, PublishError> {
    let client = (!m.client_cert.as_os_str().is_empty()).then_some((
        ("mqtt.client_cert", m.client_cert.as_path()),
        ("mqtt.client_key", m.client_key.as_path()),
    ));
    crate::edge::tls::client_config(("mqtt.ca_file", &m.ca_file), client).map_err(|e| match e {
        TlsError::File { key, path, detail } => PublishError::File { key, path, detail },
        TlsError::Config(c) => PublishError::Tls(c),
    })
}

/// rumqttc options of `[mqtt]`: broker, client id, clean session, keep-alive, the retained
/// `offline` LWT on `<prefix>/status`, credentials (password from `mqtt.password_file`, trailing
/// newline removed) and TLS. Files are read here, so a bad path fails before connecting.
pub fn mqtt_options(m: &MqttConfig) -> Result<MqttOptions, PublishError> {
    options(m, true)
}

/// rumqttc options of `[mqtt]` for a subscriber (the dashboard): as [`mqtt_options`], without
/// the LWT; the caller sets its own client id and session.
pub fn subscriber_options(m: &MqttConfig) -> Result<MqttOptions, PublishError> {
    options(m, false)
}

fn options(m: &MqttConfig, will: bool) -> Result<MqttOptions, PublishError> {
    let broker: Broker = m.broker()?;
    let topics = Topics::new(&m.topic_prefix);
    let mut o = MqttOptions::new(m.client_id.clone(), broker.host.clone(), broker.port);
    o.set_clean_session(true)
        .set_keep_alive(KEEP_ALIVE)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if will {
        o.set_last_will(LastWill::new(
            topics.status(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    }
    if !m.username.is_empty() {
        let password = if m.password_file.as_os_str().is_empty() {
            String::new()
        } else {
            let bytes = read_file("mqtt.password_file", &m.password_file)?;
            String::from_utf8(bytes)
                .map_err(|_| PublishError::File {
                    key: "mqtt.password_file",
                    path: m.password_file.clone(),
                    detail: "not UTF-8".into(),
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string()
        };
        o.set_credentials(m.username.clone(), password);
    }
    if broker.tls {
        let cfg = tls_config(m)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(cfg),
        )));
    }
    Ok(o)
}

/// Connect once, wait for the CONNACK (at most `timeout`) and disconnect: `mammo-edge check`.
/// Errors: `File` / `Tls` (local files), `Connect` (refused, TLS handshake, unreachable),
/// `Timeout`.
pub async fn probe(m: &MqttConfig, timeout: Duration) -> Result<(), PublishError> {
    // its own client id and no LWT: a check must not disturb a running daemon's session or
    // leave `offline` behind
    let mut o = options(m, false)?;
    o.set_client_id(format!("{}-check", m.client_id));
    let (client, mut events) = AsyncClient::new(o, 8);
    let url = m.url.clone();
    let wait = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    return Err(PublishError::Connect {
                        url: url.clone(),
                        source: Box::new(e),
                    })
                }
            }
        }
    };
    let r = match tokio::time::timeout(timeout, wait).await {
        Ok(r) => r,
        Err(_) => Err(PublishError::Timeout {
            url: m.url.clone(),
            secs: timeout.as_secs(),
        }),
    };
    if r.is_ok() {
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
    }
    r
}

/// Counters of one publisher, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Successful connections (ConnAcks).
    pub connections: u64,
    /// Outbox rows marked delivered on PUBACK.
    pub delivered: u64,
}

/// The pipeline's side of the retained snapshots the publisher sends outside the outbox (they
/// describe the appliance, they are not results: only the latest matters, and a lost one is
/// replaced by the next).
pub struct Retained {
    /// `<prefix>/status/info` JSON: sent at every ConnAck and again whenever it changes (a
    /// reload that changed the model).
    pub info: watch::Sender<String>,
    /// `<prefix>/health` JSON: sent whenever a new value is set while connected.
    pub health: watch::Sender<Option<String>>,
    /// Notified at every ConnAck: the pipeline should set a fresh health value, which is then
    /// sent (so a new connection gets a current snapshot, not a stale one).
    pub health_request: Arc<Notify>,
}

/// The outbox drainer. Runs until the shutdown signal; wakes on [`Publisher::wake`] (called by
/// the pipeline after each commit) and otherwise checks the outbox every second.
pub struct Publisher {
    mqtt: MqttConfig,
    store: Store,
    topics: Topics,
    /// Retained JSON for `<prefix>/status/info` (versions), sent on every ConnAck and on change.
    info: watch::Receiver<String>,
    /// Retained JSON for `<prefix>/health`, sent on change while connected.
    health: watch::Receiver<Option<String>>,
    health_request: Arc<Notify>,
    /// The senders until [`Publisher::retained`] hands them out.
    retained: Option<Retained>,
    wake: Arc<Notify>,
    stats: PublishStats,
    /// Beaten on every loop turn (the systemd watchdog's view of the publisher).
    liveness: Arc<Liveness>,
}

/// One connection's rumqttc event loop, polled in a task of its own that nothing cancels; its
/// events arrive on `events` (which ends after the first error). Dropping the poller aborts the
/// task (the connection is over then).
struct Poller {
    events: mpsc::Receiver<Result<Event, ConnectionError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Poller {
    fn spawn(mut event_loop: EventLoop) -> Poller {
        let (tx, events) = mpsc::channel(4 * WINDOW);
        let task = tokio::spawn(async move {
            loop {
                let ev = event_loop.poll().await;
                let failed = ev.is_err();
                if tx.send(ev).await.is_err() || failed {
                    break;
                }
            }
        });
        Poller { events, task }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Messages handed to the client and not yet acknowledged: the oldest hand-over time, if any.
fn oldest_unacked(
    queued: &VecDeque<(Option<i64>, Instant)>,
    inflight: &HashMap<u16, (Option<i64>, Instant)>,
) -> Option<Instant> {
    queued
        .iter()
        .map(|(_, t)| *t)
        .chain(inflight.values().map(|(_, t)| *t))
        .min()
}

enum Ended {
    /// The shutdown signal was seen.
    Shutdown,
    /// The connection failed (logged); reconnect after the backoff.
    Lost { connected: bool },
}

impl Publisher {
    /// A publisher draining `store` (its own connection to the state database) to the broker of
    /// `mqtt`. `info` is the JSON published retained on `<prefix>/status/info`.
    pub fn new(mqtt: MqttConfig, store: Store, info: serde_json::Value) -> Publisher {
        let (info_tx, info_rx) = watch::channel(info.to_string());
        let (health_tx, health_rx) = watch::channel(None);
        let health_request = Arc::new(Notify::new());
        Publisher {
            topics: Topics::new(&mqtt.topic_prefix),
            mqtt,
            store,
            info: info_rx,
            health: health_rx,
            health_request: health_request.clone(),
            retained: Some(Retained {
                info: info_tx,
                health: health_tx,
                health_request,
            }),
            wake: Arc::new(Notify::new()),
            stats: PublishStats::default(),
            liveness: Arc::default(),
        }
    }

    /// Report progress to `liveness` (shared with the systemd watchdog ticker).
    pub fn with_liveness(mut self, liveness: Arc<Liveness>) -> Publisher {
        self.liveness = liveness;
        self
    }

    /// The senders of the retained `status/info` and `health` snapshots (once; `None` after).
    pub fn retained(&mut self) -> Option<Retained> {
        self.retained.take()
    }

    /// Handle to wake the publisher when new outbox rows were committed.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Connect, drain, reconnect with a capped exponential backoff (0.25 s doubling to
    /// [`BACKOFF_MAX`], reset after a ConnAck) until `shutdown` becomes true; then publish a
    /// retained `offline` and disconnect (best effort, 2 s). Undelivered rows stay in the outbox.
    /// TLS / credential files unreadable at a reconnection are logged and retried with the
    /// backoff. Errors: only a state database failure other than lack of storage (`Store`).
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<PublishStats, PublishError> {
        let mut backoff = BACKOFF_MIN;
        loop {
            self.liveness.publisher();
            if *shutdown.borrow() {
                return Ok(self.stats);
            }
            // the TLS / password files are read again for every connection (a renewed
            // certificate is picked up); a file broken meanwhile is retried, not fatal
            let ended = match mqtt_options(&self.mqtt) {
                Ok(options) => self.connection(options, &mut shutdown).await?,
                Err(e) => {
                    log::error!("broker settings unusable now ({e}); retrying");
                    Ended::Lost { connected: false }
                }
            };
            match ended {
                Ended::Shutdown => return Ok(self.stats),
                Ended::Lost { connected } => {
                    if connected {
                        backoff = BACKOFF_MIN;
                    }
                    log::debug!("broker: next connection attempt in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    self.liveness.publisher();
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// One connection: a fresh client and event loop, so nothing of an earlier connection's
    /// in-flight state survives; the drain restarts from the first undelivered row.
    async fn connection(
        &mut self,
        options: MqttOptions,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Ended, PublishError> {
        let (client, event_loop) = AsyncClient::new(options, 2 * WINDOW + 8);
        let mut poller = Poller::spawn(event_loop);
        let ack_timeout = Duration::from_secs(self.mqtt.ack_timeout_secs);
        let mut connected = false;
        // requests handed to the client (when), waiting for their Outgoing::Publish (None = a
        // retained snapshot outside the outbox)
        let mut queued: VecDeque<(Option<i64>, Instant)> = VecDeque::new();
        // packet id -> outbox id and hand-over time, waiting for the PUBACK
        let mut inflight: HashMap<u16, (Option<i64>, Instant)> = HashMap::new();
        let mut cursor = 0i64;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // a dropped sender ends its branch (changed() would fail at once, forever)
        let (mut info_open, mut health_open) = (true, true);
        loop {
            // every turn counts, the 1 s tick included: an idle or connecting publisher is alive
            self.liveness.publisher();
            tokio::select! {
                ev = poller.events.recv() => match ev.unwrap_or(Err(ConnectionError::RequestsDone)) {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        connected = true;
                        self.stats.connections += 1;
                        log::info!(
                            "broker {}: connected (session present: {}); resuming the outbox",
                            self.mqtt.url, ack.session_present
                        );
                        queued.clear();
                        inflight.clear();
                        cursor = 0;
                        self.send_status(&client, &mut queued);
                        // a fresh health snapshot for the new connection (sent on change)
                        self.health.borrow_and_update();
                        self.health_request.notify_one();
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(entry) = queued.pop_front() {
                            inflight.insert(pkid, entry);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some((Some(id), _)) = inflight.remove(&ack.pkid) {
                            match self.acked(id) {
                                Ok(()) => {}
                                Err(PublishError::Store(e)) if e.is_storage_failure() => {
                                    // as a failed connection: the backoff grows meanwhile
                                    return Ok(Ended::Lost { connected: false });
                                }
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let e = describe(&e);
                        if connected {
                            log::warn!("broker {}: connection lost: {e}", self.mqtt.url);
                        } else {
                            log::warn!("broker {}: cannot connect: {e}", self.mqtt.url);
                        }
                        return Ok(Ended::Lost { connected });
                    }
                },
                _ = self.wake.notified() => {}
                _ = tick.tick() => {}
                r = self.info.changed(), if info_open => match r {
                    Ok(()) if connected => {
                        let info = self.info.borrow_and_update().clone();
                        self.send_retained(&client, &mut queued, self.topics.status_info(), info);
                    }
                    Ok(()) => {}
                    Err(_) => info_open = false,
                },
                r = self.health.changed(), if health_open => match r {
                    Ok(()) if connected => {
                        let health = self.health.borrow_and_update().clone();
                        if let Some(h) = health {
                            self.send_retained(&client, &mut queued, self.topics.health(), h);
                        }
                    }
                    Ok(()) => {}
                    Err(_) => health_open = false,
                },
                _ = shutdown.changed() => {
                    if connected {
                        self.settle(&mut poller, &mut queued, &mut inflight).await;
                        self.goodbye(&client, &mut poller).await;
                    }
                    return Ok(Ended::Shutdown);
                }
            }
            // a message handed over and not acknowledged in time: the connection is not
            // delivering (a lost write, a proxy, a broker fault); its successor sends it again
            if let Some(oldest) = oldest_unacked(&queued, &inflight) {
                if connected && oldest.elapsed() >= ack_timeout {
                    log::warn!(
                        "broker {}: no PUBACK within mqtt.ack_timeout_secs = {} s ({} message(s) waiting); reconnecting to send them again",
                        self.mqtt.url,
                        self.mqtt.ack_timeout_secs,
                        queued.len() + inflight.len()
                    );
                    return Ok(Ended::Lost { connected: true });
                }
            }
            if connected {
                if let Err(e) = self.top_up(&client, &mut queued, &inflight, &mut cursor) {
                    match e {
                        PublishError::Store(s) if s.is_storage_failure() => {
                            log::warn!("outbox unreadable ({s}); reconnecting to retry later");
                            return Ok(Ended::Lost { connected: false });
                        }
                        e => return Err(e),
                    }
                }
            }
        }
    }

    fn send_status(&mut self, client: &AsyncClient, queued: &mut VecDeque<(Option<i64>, Instant)>) {
        let info = self.info.borrow_and_update().clone();
        for (topic, payload) in [
            (self.topics.status(), "online".to_string()),
            (self.topics.status_info(), info),
        ] {
            self.send_retained(client, queued, topic, payload);
        }
    }

    /// A retained QoS 1 publication outside the outbox (its PUBACK marks nothing).
    fn send_retained(
        &self,
        client: &AsyncClient,
        queued: &mut VecDeque<(Option<i64>, Instant)>,
        topic: String,
        payload: String,
    ) {
        match client.try_publish(topic.as_str(), QoS::AtLeastOnce, true, payload) {
            Ok(()) => queued.push_back((None, Instant::now())),
            Err(e) => log::warn!("broker: {topic} not queued: {e}"),
        }
    }

    /// Hand the next undelivered rows to the client while fewer than [`WINDOW`] are in flight.
    fn top_up(
        &mut self,
        client: &AsyncClient,
        queued: &mut VecDeque<(Option<i64>, Instant)>,
        inflight: &HashMap<u16, (Option<i64>, Instant)>,
        cursor: &mut i64,
    ) -> Result<(), PublishError> {
        let busy = queued.len() + inflight.len();
        if busy >= WINDOW {
            return Ok(());
        }
        for row in self.store.undelivered_after(*cursor, WINDOW - busy)? {
            match client.try_publish(
                row.topic.as_str(),
                QoS::AtLeastOnce,
                row.retain,
                row.payload.into_bytes(),
            ) {
                Ok(()) => {
                    queued.push_back((Some(row.id), Instant::now()));
                    *cursor = row.id;
                }
                Err(e) => {
                    log::debug!(
                        "broker: request queue full ({e}); outbox row {} later",
                        row.id
                    );
                    break;
                }
            }
        }
        Ok(())
    }

    /// A PUBACK for outbox row `id`: mark it delivered. Errors: `Store` (a storage failure
    /// leaves the row undelivered, so it is sent again on the next connection: at least once).
    fn acked(&mut self, id: i64) -> Result<(), PublishError> {
        match self.store.mark_delivered(id) {
            Ok(true) => self.stats.delivered += 1,
            Ok(false) => {}
            Err(e) => {
                if e.is_storage_failure() {
                    log::warn!(
                        "outbox row {id} delivered but not marked ({e}); reconnecting to send it again later"
                    );
                }
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Graceful end, first half: wait up to [`SETTLE`] for the PUBACKs of what was already
    /// handed to the client, marking those rows delivered, so a clean stop does not leave them
    /// to be sent again at the next start. Nothing new is handed over; any error ends the wait
    /// (the rows left stay undelivered and are sent again: at least once).
    async fn settle(
        &mut self,
        poller: &mut Poller,
        queued: &mut VecDeque<(Option<i64>, Instant)>,
        inflight: &mut HashMap<u16, (Option<i64>, Instant)>,
    ) {
        let wait = async {
            while !(queued.is_empty() && inflight.is_empty()) {
                match poller.events.recv().await {
                    Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        if let Some(entry) = queued.pop_front() {
                            inflight.insert(pkid, entry);
                        }
                    }
                    Some(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                        if let Some((Some(id), _)) = inflight.remove(&ack.pkid) {
                            if self.acked(id).is_err() {
                                return;
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                }
            }
        };
        if tokio::time::timeout(SETTLE, wait).await.is_err() {
            log::info!(
                "shutdown: {} message(s) not acknowledged within {SETTLE:?}; they are sent again at the next start",
                queued.len() + inflight.len()
            );
        }
    }

    /// Graceful end: retained `offline` (the LWT fires only on an unclean end), then DISCONNECT.
    async fn goodbye(&mut self, client: &AsyncClient, poller: &mut Poller) {
        let _ = client.try_publish(self.topics.status(), QoS::AtLeastOnce, true, "offline");
        let _ = client.try_disconnect();
        let drain = async {
            loop {
                match poller.events.recv().await {
                    Some(Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) | None => break,
                    Some(Ok(_)) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        log::info!("broker {}: disconnected", self.mqtt.url);
    }
}
