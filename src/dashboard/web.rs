//! The dashboard's HTTP side (axum): the page at `/` (one self-contained HTML file, no CDN), the
//! JSON API (`/api/exams`, `/api/devices`, `/api/alerts`, `/api/stats`, `/api/brokers`) and the live updates as
//! server-sent events (`/api/events`). With a token every route wants `Authorization: Bearer
//! <token>` or `?token=<token>` (the page passes on the one it was opened with).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use super::db::{Change, Db, DbError};

/// The page: HTML, CSS and JavaScript in one file, charts drawn as inline SVG.
const PAGE: &str = include_str!("page.html");

/// Most exams `GET /api/exams` returns (`?limit=` up to this).
const MAX_EXAMS: usize = 1000;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub db: Arc<Db>,
    pub changes: broadcast::Sender<Change>,
    /// The connection to each broker (`/api/brokers`).
    pub brokers: super::subscribe::Brokers,
    pub token: Option<Arc<str>>,
}

/// The routes, behind the token check.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/exams", get(exams))
        .route("/api/devices", get(devices))
        .route("/api/alerts", get(alerts))
        .route("/api/stats", get(stats))
        .route("/api/brokers", get(brokers))
        .route("/api/events", get(events))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// 401 unless the request carries the token (header or query); nothing to check without one.
async fn authorize(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = &s.token else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::to_string)
    });
    let given = bearer.map(str::to_string).or(query);
    if given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "a token is required: ?token=… or Authorization: Bearer …\n",
        )
            .into_response()
    }
}

/// Comparison in a time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        Html(PAGE),
    )
}

/// A database failure as 500 with the message (nothing of the messages' content).
fn failed(e: impl std::fmt::Display) -> Response {
    log::error!("dashboard: {e}");
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

/// The query parameter `name` as an integer in `1..=max`, `default` when absent; otherwise the
/// message of a 400 naming the parameter and its range.
fn param(q: &HashMap<String, String>, name: &str, default: i64, max: i64) -> Result<i64, String> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| format!("?{name}= wants an integer from 1 to {max}, not {v:?}")),
    }
}

/// A refused request parameter.
fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

/// Run a database query on a blocking thread (the database calls block) and answer its JSON.
async fn answer<T: serde::Serialize + Send + 'static>(
    db: &Arc<Db>,
    query: impl FnOnce(&Db) -> Result<T, DbError> + Send + 'static,
) -> Response {
    let db = db.clone();
    match tokio::task::spawn_blocking(move || query(&db)).await {
        Ok(Ok(rows)) => Json(rows).into_response(),
        Ok(Err(e)) => failed(e),
        Err(e) => failed(e),
    }
}

async fn exams(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    match param(&q, "limit", 200, MAX_EXAMS as i64) {
        Ok(n) => answer(&s.db, move |db| db.exams(n as usize)).await,
        Err(m) => bad_request(m),
    }
}

async fn devices(State(s): State<AppState>) -> Response {
    answer(&s.db, |db| db.devices()).await
}

async fn alerts(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    match param(&q, "limit", 50, MAX_EXAMS as i64) {
        Ok(n) => answer(&s.db, move |db| db.alerts(n as usize)).await,
        Err(m) => bad_request(m),
    }
}

async fn stats(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    match param(&q, "days", 14, 3660) {
        Ok(days) => answer(&s.db, move |db| db.stats(days)).await,
        Err(m) => bad_request(m),
    }
}

async fn brokers(State(s): State<AppState>) -> Response {
    let b = s.brokers.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Json(b).into_response()
}

/// `text/event-stream`: one event per change (`event: exam|device|drift|alert|broker`, data `{kind,
/// device}`), and `lagged` when this client fell behind (the page then reloads everything).
async fn events(State(s): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = BroadcastStream::new(s.changes.subscribe()).map(|c| {
        Ok(match c {
            Ok(c) => Event::default()
                .event(c.kind)
                .data(serde_json::to_string(&c).unwrap_or_default()),
            Err(_) => Event::default().event("lagged").data("{}"),
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!same(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!same(b"abc", b"abcd"));
    }
}
