//! The HTTP API (wire contract v1).
//!
//! | method | path          | role   | does |
//! |--------|---------------|--------|------|
//! | POST   | `/v1/events`  | ingest | archive one event (`application/json`), a JSON array of events, or NDJSON (`application/x-ndjson`) |
//! | POST   | `/v1/flush`   | admin  | seal every open batch now and wait (up to 60 s) until it is in the store |
//! | GET    | `/v1/records` | compliance | the records matching a filter, as NDJSON (docs/API.md) |
//! | POST   | `/v1/rti/exports` | compliance | a Response-to-Inquiry package (a zip) for a case |
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
use crate::event::{Limits, RejectKind, parse_record};
use crate::import::CONFLICT_REASON;
use crate::retention::RetentionPolicy;
use crate::timestamp::{Day, Timestamp};

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
    /// What retrieval needs.
    pub rti: RtiContext,
}

/// The archive as retrieval reads it.
pub struct RtiContext {
    pub store: Arc<dyn crate::store::WormStore>,
    pub layout: crate::layout::Layout,
    pub keys: Vec<crate::note::VerifierKey>,
    /// Signs packages; without it exports are refused.
    pub signer: Option<Arc<crate::note::SignerKey>>,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/flush", post(post_flush))
        .route("/v1/records", get(get_records))
        .route("/v1/rti/exports", post(post_export))
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
        let (event_id, item) =
            match parse_record(bytes, &limits, &shared.retention, Timestamp::now()) {
                Err(e) => (e.event_id.clone(), Item::Rejected(e)),
                Ok(a) => (
                    Some(a.record.event_id().to_owned()),
                    Item::Event {
                        record: Box::new(a.record),
                        note: a.note,
                    },
                ),
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
            crate::import::ndjson_lines(body, 0, |line, r| {
                push(index, Some(line as usize), &body[r]);
                index += 1;
            });
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
    let principal = match authorize(&shared, &headers, Role::Ingest, peer, "/v1/events") {
        Ok(p) => p,
        Err(r) => return *r,
    };
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
        Err(reason) => {
            tracing::warn!(principal, %peer, "Refused a request's body (400), nothing of it is archived: {reason}");
            return error(StatusCode::BAD_REQUEST, reason);
        }
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
        IngestReply::Done(outcomes) => {
            log_refusals(&principal, peer, &slots, &outcomes);
            results(&slots, outcomes)
        }
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

/// One event's entry in the answer to `POST /v1/events`, keys in the order docs/API.md shows.
#[derive(serde::Serialize)]
struct EventResult<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    /// `null` when the event's id could not be read.
    event_id: Option<&'a str>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    day: Option<Day>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_class: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct IngestAnswer<'a> {
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    results: Vec<EventResult<'a>>,
}

/// One WARN line for a request with refused events, naming its sender and the first refusal:
/// a refused event is not archived, and whoever is on call must be able to tell which sender
/// to call. One line a request, not one an event, so a sender looping on bad events cannot
/// flood the log.
fn log_refusals(principal: &str, peer: PeerAddr, slots: &[Slot], outcomes: &[EventOutcome]) {
    let mut refused = slots
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| matches!(o, EventOutcome::Rejected(_) | EventOutcome::Conflict));
    let Some((slot, first)) = refused.next() else {
        return;
    };
    let count = 1 + refused.count();
    let (code, what, event_id) = match first {
        EventOutcome::Rejected(e) => (
            e.kind.as_str(),
            e.to_string(),
            e.event_id.as_deref().or(slot.event_id.as_deref()),
        ),
        _ => (
            RejectKind::Conflict.as_str(),
            CONFLICT_REASON.to_owned(),
            slot.event_id.as_deref(),
        ),
    };
    tracing::warn!(
        principal,
        %peer,
        refused = count,
        events = outcomes.len(),
        index = slot.index,
        line = slot.line,
        event_id,
        code,
        "Refused {count} of {} events of a request; they are not archived unless their sender resends them. The first: {what}",
        outcomes.len()
    );
}

fn results(slots: &[Slot], outcomes: Vec<EventOutcome>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        answer_json(slots, &outcomes),
    )
        .into_response()
}

/// The body of a `200` answer: counts, then one result per event in the order sent.
fn answer_json(slots: &[Slot], outcomes: &[EventOutcome]) -> String {
    let mut answer = IngestAnswer {
        accepted: 0,
        duplicates: 0,
        rejected: 0,
        results: Vec::with_capacity(outcomes.len()),
    };
    for (slot, outcome) in slots.iter().zip(outcomes) {
        let mut r = EventResult {
            index: slot.index,
            line: slot.line,
            event_id: slot.event_id.as_deref(),
            status: "",
            day: None,
            retention_class: None,
            seq: None,
            note: None,
            code: None,
            field: None,
            reason: None,
        };
        match outcome {
            EventOutcome::Accepted { lane, seq, note } => {
                answer.accepted += 1;
                r.status = "accepted";
                r.day = Some(lane.day);
                r.retention_class = Some(&lane.class);
                r.seq = Some(*seq);
                r.note = note.as_deref();
            }
            EventOutcome::Duplicate => {
                answer.duplicates += 1;
                r.status = "duplicate";
            }
            EventOutcome::Conflict => {
                answer.rejected += 1;
                r.status = "rejected";
                r.code = Some(RejectKind::Conflict.as_str());
                r.reason = Some(CONFLICT_REASON);
            }
            EventOutcome::Rejected(e) => {
                answer.rejected += 1;
                r.status = "rejected";
                r.event_id = e.event_id.as_deref().or(r.event_id);
                r.code = Some(e.kind.as_str());
                r.field = e.field.as_deref();
                r.reason = Some(&e.reason);
            }
        }
        answer.results.push(r);
    }
    serde_json::to_string(&answer).expect("serializable")
}

/// The query string of `GET /v1/records`.
#[derive(Debug, Default, serde::Deserialize)]
struct RecordsQuery {
    #[serde(flatten)]
    filter: crate::retrieve::FilterParams,
    /// At most this many records (default 1000, at most 100000).
    limit: Option<usize>,
    /// Where the previous page ended (`Wormvault-Next-Cursor`).
    cursor: Option<String>,
    /// The case the retrieval is for (recorded in the audit event).
    case: Option<String>,
}

/// Records a retrieval as an event in the archive before anything is returned: if it cannot
/// be recorded, nothing is returned.
async fn record_retrieval(shared: &Shared, event: String) -> Result<(), Box<Response>> {
    let unavailable = |why: &str| {
        Box::new(retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the retrieval could not be recorded in the archive ({why}); nothing was returned"
                ),
            ),
            5,
        ))
    };
    let (_, items) =
        parse_body(shared, Framing::Json, event.as_bytes()).map_err(|e| unavailable(&e))?;
    let (tx, rx) = oneshot::channel();
    if shared
        .commands
        .send(Command::Ingest { items, reply: tx })
        .is_err()
    {
        return Err(unavailable("the daemon is shutting down"));
    }
    match rx.await {
        Ok(IngestReply::Done(outcomes)) => match outcomes.into_iter().next() {
            Some(EventOutcome::Accepted { .. }) => Ok(()),
            Some(EventOutcome::Rejected(e)) => Err(unavailable(&e.reason)),
            _ => Err(unavailable("not accepted")),
        },
        _ => Err(unavailable("the spool cannot take it")),
    }
}

async fn get_records(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let principal = match authorize(&shared, &headers, Role::Compliance, peer, "/v1/records") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let rti = &shared.rti;
    let q: RecordsQuery = match parse_query(&uri) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let filter = match q.filter.to_filter() {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, 100_000);
    let after = match q.cursor.as_deref().map(parse_cursor) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let case = q.case.unwrap_or_else(|| "ad-hoc".into());
    let audit = crate::retrieve::audit_event(&principal, "rti.query", &case, &filter, None);
    if let Err(r) = record_retrieval(&shared, audit).await {
        return *r;
    }
    tracing::info!(principal = %principal, peer = %peer, case = %case, filter = %serde_json::to_string(&filter).unwrap_or_default(), "Records retrieved.");
    let outcome = match crate::retrieve::query(&rti.store, &rti.layout, &filter).await {
        Ok(o) => o,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let mut page = outcome
        .records
        .iter()
        .filter(|r| {
            after
                .as_ref()
                .is_none_or(|(t, id)| (r.occurred_at, &r.event_id) > (*t, id))
        })
        .take(limit + 1)
        .collect::<Vec<_>>();
    let more = page.len() > limit;
    page.truncate(limit);
    let mut body = String::new();
    for r in &page {
        body.push_str(&crate::retrieve::record_line(r));
        body.push('\n');
    }
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response();
    if more && let Some(last) = page.last() {
        let cursor = format!("{}.{}", last.occurred_at.as_micros(), last.event_id);
        if let Ok(v) = HeaderValue::from_str(&cursor) {
            resp.headers_mut().insert("wormvault-next-cursor", v);
        }
    }
    resp
}

fn parse_cursor(c: &str) -> Result<(Timestamp, String), String> {
    let (t, id) = c
        .split_once('.')
        .ok_or("a cursor is what Wormvault-Next-Cursor said")?;
    let t: i64 = t
        .parse()
        .map_err(|_| "a cursor is what Wormvault-Next-Cursor said")?;
    Ok((Timestamp::from_micros(t), id.to_owned()))
}

/// Parses a query string into `T`: decoded as forms are, each key at most once, `limit` a
/// number (`serde(flatten)` cannot take numbers from a query string directly).
fn parse_query<T: serde::de::DeserializeOwned>(uri: &axum::http::Uri) -> Result<T, String> {
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map_err(|e| e.body_text())?;
    let mut map = serde_json::Map::new();
    for (k, v) in pairs {
        let value = if k == "limit" {
            serde_json::Value::from(
                v.parse::<u64>()
                    .map_err(|_| format!("limit {v:?} is not a number"))?,
            )
        } else {
            serde_json::Value::from(v)
        };
        if map.insert(k.clone(), value).is_some() {
            return Err(format!("{k} is given twice"));
        }
    }
    serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| e.to_string())
}

/// The body of `POST /v1/rti/exports`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    case_id: String,
    filter: crate::retrieve::FilterParams,
}

async fn post_export(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let principal = match authorize(&shared, &headers, Role::Compliance, peer, "/v1/rti/exports") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let rti = &shared.rti;
    let Some(signer) = &rti.signer else {
        return error(
            StatusCode::NOT_FOUND,
            "exports need anchor.signing_key; this daemon has none",
        );
    };
    let bytes = match axum::body::to_bytes(body, 1 << 20).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request is larger than 1 MiB",
            );
        }
    };
    let req: ExportRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"case_id\": ..., \"filter\": {{...}}}}: {e}"),
            );
        }
    };
    let filter = match req.filter.to_filter() {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = crate::rti::check_case_id(&req.case_id) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let audit = crate::retrieve::audit_event(&principal, "rti.export", &req.case_id, &filter, None);
    if let Err(r) = record_retrieval(&shared, audit).await {
        return *r;
    }
    tracing::info!(principal = %principal, peer = %peer, case = %req.case_id, "Package exported.");
    let request = crate::rti::Request {
        case_id: req.case_id.clone(),
        requester: principal,
        filter,
    };
    match crate::rti::export(&rti.store, &rti.layout, &rti.keys, signer, &request).await {
        Ok(p) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/zip".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}.zip\"", req.case_id),
                ),
            ],
            p.zip,
        )
            .into_response(),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventError;
    use crate::state::Lane;

    #[test]
    fn an_answer_names_every_event_in_the_documented_shape() {
        let slot = |index, line: Option<usize>, id: Option<&str>| Slot {
            index,
            line,
            event_id: id.map(str::to_owned),
        };
        let rejected = |kind, field: Option<&str>, id: Option<&str>| {
            EventOutcome::Rejected(EventError {
                kind,
                field: field.map(str::to_owned),
                reason: "why".into(),
                event_id: id.map(str::to_owned),
            })
        };
        let slots = [
            slot(0, Some(1), Some("e-1")),
            slot(1, Some(2), Some("e-0")),
            slot(2, Some(3), Some("e-5")),
            slot(3, Some(5), None),
            slot(4, None, None),
        ];
        let outcomes = [
            EventOutcome::Accepted {
                lane: Lane {
                    day: Day::parse("2026-11-20").unwrap(),
                    class: "sec-17a-4-a".into(),
                },
                seq: 42,
                note: None,
            },
            EventOutcome::Duplicate,
            EventOutcome::Conflict,
            // The parser read the id though the line splitter could not.
            rejected(RejectKind::InvalidValue, Some("actor.type"), Some("e-2")),
            rejected(RejectKind::Malformed, None, None),
        ];
        let conflict = serde_json::to_string(CONFLICT_REASON).unwrap();
        let expected = [
            r#"{"accepted":1,"duplicates":1,"rejected":3,"results":["#,
            r#"{"index":0,"line":1,"event_id":"e-1","status":"accepted","day":"2026-11-20","retention_class":"sec-17a-4-a","seq":42},"#,
            r#"{"index":1,"line":2,"event_id":"e-0","status":"duplicate"},"#,
            &format!(r#"{{"index":2,"line":3,"event_id":"e-5","status":"rejected","code":"conflict","reason":{conflict}}},"#),
            r#"{"index":3,"line":5,"event_id":"e-2","status":"rejected","code":"invalid_value","field":"actor.type","reason":"why"},"#,
            r#"{"index":4,"event_id":null,"status":"rejected","code":"malformed","reason":"why"}]}"#,
        ]
        .concat();
        assert_eq!(answer_json(&slots, &outcomes), expected);
    }
}
