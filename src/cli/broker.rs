//! The embedded MQTT broker of `mammo-edge demo` (cargo feature `embedded-broker`): rumqttd
//! (MQTT 3.1.1, plain TCP) on a free loopback port, so the demo runs on a machine without
//! mosquitto. Not for the appliance: it listens on 127.0.0.1 only, keeps nothing on disk and
//! lives until the process ends. Main items: [`EmbeddedBroker`], [`BrokerError`].

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};
use thiserror::Error;

/// Largest MQTT payload the broker accepts, bytes (the daemon's messages are a few KiB).
const MAX_PAYLOAD: usize = 1 << 20;
/// How long the broker may take to open its port.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the embedded broker did not start.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// No free loopback port, or the broker thread could not be started.
    #[error("embedded MQTT broker: {0}")]
    Start(String),
    /// The broker did not accept connections on its port in time.
    #[error("embedded MQTT broker: 127.0.0.1:{port} not accepting connections after {secs} s")]
    NotListening { port: u16, secs: u64 },
}

/// A running rumqttd on `127.0.0.1:port`. Its threads end with the process (rumqttd has no
/// stop); dropping this value does not stop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedBroker {
    /// The TCP port it listens on (loopback only).
    pub port: u16,
}

impl EmbeddedBroker {
    /// Pick a free loopback port, start rumqttd there (MQTT 3.1.1, anonymous, QoS 0/1, retained
    /// messages) and wait until it accepts connections (at most 10 s).
    /// Errors: `Start`, `NotListening`.
    pub fn start() -> Result<EmbeddedBroker, BrokerError> {
        // the port is free now; rumqttd binds it a moment later (a race only with another
        // program binding loopback ports in that instant)
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| BrokerError::Start(format!("no free loopback port: {e}")))?
            .port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let server = ServerSettings {
            name: "mammo-edge-demo".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 1,
            connections: ConnectionSettings {
                connection_timeout_ms: 10_000,
                max_payload_size: MAX_PAYLOAD,
                max_inflight_count: 100,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 16,
                max_outgoing_packet_count: 200,
                max_segment_size: 16 * MAX_PAYLOAD,
                max_segment_count: 4,
                ..Default::default()
            },
            v4: Some(HashMap::from([("1".to_string(), server)])),
            ..Default::default()
        };
        std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                if let Err(e) = broker.start() {
                    log::error!("embedded MQTT broker stopped: {e}");
                }
            })
            .map_err(|e| BrokerError::Start(format!("thread: {e}")))?;
        let t0 = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if t0.elapsed() > START_TIMEOUT {
                return Err(BrokerError::NotListening {
                    port,
                    secs: START_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        log::debug!("embedded MQTT broker listening on {addr}");
        Ok(EmbeddedBroker { port })
    }

    /// `mqtt://127.0.0.1:<port>`, for `mqtt.url`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}
