//! The HTTP API (wire contract v1).
//!
//! | method | path          | role   | does |
//! |--------|---------------|--------|------|
//! | POST   | `/v1/events`  | ingest | archive one event (`application/json`), a JSON array of events, or NDJSON (`application/x-ndjson`) |
//! | POST   | `/v1/flush`   | admin  | seal every open batch now and wait (up to 60 s) until it is in the store |
//! | GET    | `/healthz`    | —      | the process is alive |
//! | GET    | `/readyz`     | —      | the store is reachable and the bucket is fit (versioning, COMPLIANCE default retention) |
//! | GET    | `/metrics`    | —      | Prometheus metrics |
//!
//! `POST /v1/events` answers 200 with one result per event, in order:
//!
//! ```json
//! {"accepted":1,"duplicates":1,"rejected":1,"results":[
//!   {"index":0,"line":1,"event_id":"e-1","status":"accepted","day":"2026-11-20","retention_class":"sec-17a-4-a","seq":42},
//!   {"index":1,"line":2,"event_id":"e-0","status":"duplicate"},
//!   {"index":2,"line":3,"event_id":"e-2","status":"rejected","code":"invalid_value","field":"actor.type","reason":"must be one of …"}]}
//! ```
//!
//! `line` appears for NDJSON. Other answers: 400 unreadable body (not JSON where JSON was
//! declared, empty); 401 missing or unknown token; 403 token without the role; 413 body larger
//! than `server.max_body`; 415 a content type other than the two above; 429 spool full and 503
//! draining or spool unwritable, both with `Retry-After`. Every answer that is not 200 carries
//! `{"error": "..."}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::auth::{Auth, Refusal, Role};
use crate::daemon::{Command, EventOutcome, FlushReply, IngestReply, Item};
use crate::event::{EventError, Limits, Record, RejectKind, parse_event};
use crate::import::CONFLICT_REASON;
use crate::retention::RetentionPolicy;
use crate::timestamp::Timestamp;

/// The client's address, for logs.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Whether the archive can take writes, as `/readyz` reports it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub store: String,
    pub problems: Vec<String>,
    pub checked_at: Option<String>,
}

/// What the handlers share.
pub struct Shared {
    pub commands: crossbeam_channel::Sender<Command>,
    pub auth: Auth,
    pub retention: Arc<RetentionPolicy>,
    pub max_event_bytes: usize,
    pub max_future_skew: Duration,
    pub max_body: usize,
    pub draining: AtomicBool,
    pub readiness: std::sync::RwLock<Readiness>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/flush", post(post_flush))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn retry_after(mut r: Response, seconds: u32) -> Response {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    r
}

/// Checks the bearer token; logs and answers refusals.
fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    role: Role,
    peer: PeerAddr,
    path: &str,
) -> Result<String, Box<Response>> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match shared.auth.check(header, role) {
        Ok(name) => Ok(name.to_owned()),
        Err(refusal) => {
            let (status, reason, text) = match refusal {
                Refusal::Missing => (
                    StatusCode::UNAUTHORIZED,
                    "missing",
                    "an `Authorization: Bearer <token>` header is required",
                ),
                Refusal::Unknown => (
                    StatusCode::UNAUTHORIZED,
                    "unknown",
                    "the token is not valid",
                ),
                Refusal::Forbidden => (
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the token does not have the role this endpoint needs",
                ),
            };
            crate::telemetry::metrics::auth_refused(reason);
            tracing::warn!(%peer, path, role = role.as_str(), reason, "Refused a request: {text}.");
            let mut r = error(status, format!("{text} (role `{}`)", role.as_str()));
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Err(Box::new(r))
        }
    }
}

/// How the body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Json,
    Ndjson,
}

fn framing(headers: &HeaderMap) -> Result<Framing, Box<Response>> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(Framing::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Framing::Ndjson),
        "" => Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a Content-Type is required: application/json (one event or an array) or application/x-ndjson",
        ))),
        other => Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {other:?} is not accepted: use application/json (one event or an array) or application/x-ndjson"
            ),
        ))),
    }
}

/// One item of the body before parsing: its position and its bytes.
struct Slot {
    index: usize,
    line: Option<usize>,
    event_id: Option<String>,
}

/// Splits and parses a body. `Err` is a 400 for a body that is not what it says it is.
fn parse_body(
    shared: &Shared,
    framing: Framing,
    body: &[u8],
) -> Result<(Vec<Slot>, Vec<Item>), String> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err("the body is empty".into());
    }
    let now = Timestamp::now();
    let limits = Limits {
        max_event_bytes: shared.max_event_bytes,
        latest_occurred_at: now.plus_micros(shared.max_future_skew.as_micros() as i64),
    };
    let mut slots = Vec::new();
    let mut items = Vec::new();
    let mut push = |index: usize, line: Option<usize>, bytes: &[u8]| {
        let (event_id, item) = match parse_event(bytes, &limits) {
            Err(e) => (e.event_id.clone(), Item::Rejected(e)),
            Ok(event) => match shared.retention.resolve(
                &event.action,
                event.retention_class.as_deref(),
                event.occurred_at,
            ) {
                Err(reason) => {
                    let id = event.event_id.clone();
                    (
                        Some(id.clone()),
                        Item::Rejected(EventError {
                            kind: RejectKind::InvalidValue,
                            field: Some("retention_class".into()),
                            reason,
                            event_id: Some(id),
                        }),
                    )
                }
                Ok(res) => {
                    let id = event.event_id.clone();
                    let record = Record::new(event, Timestamp::now(), res.class);
                    (
                        Some(id),
                        Item::Event {
                            record: Box::new(record),
                            note: res.note,
                        },
                    )
                }
            },
        };
        slots.push(Slot {
            index,
            line,
            event_id,
        });
        items.push(item);
    };
    match framing {
        Framing::Ndjson => {
            let mut index = 0;
            for (n, raw) in body.split(|&b| b == b'\n').enumerate() {
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                if raw.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                push(index, Some(n + 1), raw);
                index += 1;
            }
        }
        Framing::Json => {
            let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
            if first == Some(b'[') {
                let elements: Vec<&RawValue> = serde_json::from_slice(body)
                    .map_err(|e| format!("the body is not a JSON array of events: {e}"))?;
                if elements.is_empty() {
                    return Err("the body is an empty array".into());
                }
                for (i, el) in elements.iter().enumerate() {
                    push(i, None, el.get().as_bytes());
                }
            } else {
                let _: &RawValue = serde_json::from_slice(body)
                    .map_err(|e| format!("the body is not JSON: {e}"))?;
                push(0, None, body);
            }
        }
    }
    Ok((slots, items))
}

async fn post_events(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    if let Err(r) = authorize(&shared, &headers, Role::Ingest, peer, "/v1/events") {
        return *r;
    }
    if shared.draining.load(Ordering::Acquire) {
        return retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the daemon is shutting down; retry later",
            ),
            5,
        );
    }
    let framing = match framing(&headers) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let bytes = match axum::body::to_bytes(body, shared.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is larger than {} bytes (server.max_body); send fewer events per request",
                    shared.max_body
                ),
            );
        }
    };
    let parse_shared = shared.clone();
    let parsed = if bytes.len() > 256 * 1024 {
        tokio::task::spawn_blocking(move || parse_body(&parse_shared, framing, &bytes))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    } else {
        parse_body(&shared, framing, &bytes)
    };
    let (slots, items) = match parsed {
        Ok(p) => p,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let (tx, rx) = oneshot::channel();
    if shared
        .commands
        .send(Command::Ingest { items, reply: tx })
        .is_err()
    {
        return retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the daemon is shutting down; retry later",
            ),
            5,
        );
    }
    let reply = match rx.await {
        Ok(r) => r,
        Err(_) => {
            return retry_after(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the daemon is shutting down; retry later",
                ),
                5,
            );
        }
    };
    crate::telemetry::metrics::request(started.elapsed());
    match reply {
        IngestReply::Done(outcomes) => results(&slots, outcomes),
        IngestReply::SpoolFull => retry_after(
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "the spool is full (the store may be unreachable); nothing was accepted, retry later",
            ),
            2,
        ),
        IngestReply::Draining => retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the daemon is shutting down; retry later",
            ),
            5,
        ),
        IngestReply::Failed(reason) => retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("nothing was accepted: {reason}"),
            ),
            5,
        ),
    }
}

fn results(slots: &[Slot], outcomes: Vec<EventOutcome>) -> Response {
    let (mut accepted, mut duplicates, mut rejected) = (0u64, 0u64, 0u64);
    let mut out = Vec::with_capacity(outcomes.len());
    for (slot, outcome) in slots.iter().zip(outcomes) {
        let mut r = serde_json::Map::new();
        r.insert("index".into(), slot.index.into());
        if let Some(line) = slot.line {
            r.insert("line".into(), line.into());
        }
        match outcome {
            EventOutcome::Accepted { lane, seq, note } => {
                accepted += 1;
                r.insert("event_id".into(), slot.event_id.clone().into());
                r.insert("status".into(), "accepted".into());
                r.insert("day".into(), lane.day.to_string().into());
                r.insert("retention_class".into(), lane.class.to_string().into());
                r.insert("seq".into(), seq.into());
                if let Some(note) = note {
                    r.insert("note".into(), note.into());
                }
            }
            EventOutcome::Duplicate => {
                duplicates += 1;
                r.insert("event_id".into(), slot.event_id.clone().into());
                r.insert("status".into(), "duplicate".into());
            }
            EventOutcome::Conflict => {
                rejected += 1;
                r.insert("event_id".into(), slot.event_id.clone().into());
                r.insert("status".into(), "rejected".into());
                r.insert("code".into(), RejectKind::Conflict.as_str().into());
                r.insert("reason".into(), CONFLICT_REASON.into());
            }
            EventOutcome::Rejected(e) => {
                rejected += 1;
                r.insert(
                    "event_id".into(),
                    e.event_id.clone().or_else(|| slot.event_id.clone()).into(),
                );
                r.insert("status".into(), "rejected".into());
                r.insert("code".into(), e.kind.as_str().into());
                if let Some(field) = e.field {
                    r.insert("field".into(), field.into());
                }
                r.insert("reason".into(), e.reason.into());
            }
        }
        out.push(serde_json::Value::Object(r));
    }
    let body = serde_json::json!({ "accepted": accepted, "duplicates": duplicates, "rejected": rejected, "results": out });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn post_flush(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&shared, &headers, Role::Admin, peer, "/v1/flush") {
        return *r;
    }
    let (tx, rx) = oneshot::channel();
    if shared.commands.send(Command::Flush { reply: tx }).is_err() {
        return retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the daemon is shutting down",
            ),
            5,
        );
    }
    match tokio::time::timeout(Duration::from_secs(60), rx).await {
        Ok(Ok(reply)) => json(StatusCode::OK, &reply),
        Ok(Err(_)) => retry_after(error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is shutting down"), 5),
        Err(_) => json(
            StatusCode::ACCEPTED,
            &FlushReply {
                sealed: 0,
                uploaded: false,
                message: "sealed; the upload has not been confirmed within 60 s (is the store reachable? see /readyz)".into(),
            },
        ),
    }
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(value).expect("serializable"),
    )
        .into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let r = shared.readiness.read().expect("lock").clone();
    let ready = r.ready && !shared.draining.load(Ordering::Acquire);
    json(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &r,
    )
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}
