//! `mammo-edge dashboard`: the hospital-side consumer of the appliances' MQTT messages (feature
//! `dashboard`). Subscribes to one or more brokers, keeps what arrives in SQLite, and serves a
//! live web page and a JSON API ([docs/dashboard.md](../../docs/dashboard.md)). Not run on the
//! appliance.

pub mod db;
pub mod subscribe;
pub mod topic;
pub mod web;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::edge::config::MqttConfig;

/// What `mammo-edge dashboard` is given on its command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT`, one or more.
    pub brokers: Vec<String>,
    /// MQTT topic filters, e.g. `mammo/#`.
    pub topics: Vec<String>,
    /// Address of the web page and API; loopback unless a token is set.
    pub listen: SocketAddr,
    /// `sqlite:PATH`.
    pub db: String,
    /// Bearer token the page and API require (from `--token-file`); `None` = none (loopback only).
    pub token: Option<String>,
    /// PEM CA bundle of `mqtts://` brokers, and an optional client certificate and key.
    pub ca_file: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// MQTT client identifier prefix; the broker's index is appended (persistent sessions).
    pub client_id: String,
}

/// Errors of the dashboard.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("--broker {url}: {detail}")]
    Broker { url: String, detail: String },
    #[error("--listen {0}: not a loopback address and no --token-file; the page would be open to the network")]
    Unprotected(SocketAddr),
    #[error("--token-file {path}: {detail}")]
    Token { path: PathBuf, detail: String },
    #[error("--listen {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("at least one --broker and one --topics are needed")]
    Nothing,
    #[error("serving the page: {0}")]
    Serve(std::io::Error),
}

/// Read a bearer token from a file (first line; at least 16 characters).
pub fn read_token(path: &std::path::Path) -> Result<String, DashboardError> {
    let err = |detail: String| DashboardError::Token {
        path: path.to_path_buf(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16 {
        return Err(err("the token must be at least 16 characters".into()));
    }
    Ok(token)
}

/// Run the dashboard until `shutdown` completes: one subscriber per broker, the web server on
/// `listen`. Calls `on_listening` with the bound address (port 0 picks a free one).
pub async fn run(
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), DashboardError> {
    if opts.brokers.is_empty() || opts.topics.is_empty() {
        return Err(DashboardError::Nothing);
    }
    if !opts.listen.ip().is_loopback() && opts.token.is_none() {
        return Err(DashboardError::Unprotected(opts.listen));
    }
    let db = Arc::new(db::Db::open(&opts.db)?);
    let (changes, _) = broadcast::channel(1024);
    let brokers: subscribe::Brokers = Arc::new(std::sync::Mutex::new(
        opts.brokers
            .iter()
            .map(|url| subscribe::BrokerStatus {
                url: url.clone(),
                connected: false,
                since: None,
                error: None,
            })
            .collect(),
    ));
    let mut tasks = Vec::new();
    for (i, url) in opts.brokers.iter().enumerate() {
        let mut m = MqttConfig::default();
        m.url = url.clone();
        m.client_id = format!("{}-{i}", opts.client_id);
        m.ca_file = opts.ca_file.clone();
        m.client_cert = opts.client_cert.clone();
        m.client_key = opts.client_key.clone();
        let broker = m.broker().map_err(|e| DashboardError::Broker {
            url: url.clone(),
            detail: e.to_string(),
        })?;
        if !broker.tls && !broker.is_loopback() {
            log::warn!("dashboard: {url} is plaintext MQTT beyond this host");
        }
        let o =
            crate::edge::publish::subscriber_options(&m).map_err(|e| DashboardError::Broker {
                url: url.clone(),
                detail: e.to_string(),
            })?;
        tasks.push(tokio::spawn(subscribe::subscribe(
            i,
            brokers.clone(),
            o,
            opts.topics.clone(),
            db.clone(),
            changes.clone(),
        )));
    }
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|error| DashboardError::Listen {
            addr: opts.listen,
            error,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|error| DashboardError::Listen {
            addr: opts.listen,
            error,
        })?;
    log::info!("dashboard: page at http://{addr}/");
    on_listening(addr);
    let app = web::router(web::AppState {
        db,
        changes,
        brokers,
        token: opts.token.map(Arc::from),
    });
    // the live page's event streams never end by themselves: on shutdown the server is dropped
    // with its connections (nothing is written on the web side)
    let served = tokio::select! {
        r = axum::serve(listener, app).into_future() => r.map_err(DashboardError::Serve),
        () = shutdown => Ok(()),
    };
    for t in tasks {
        t.abort();
    }
    served
}
