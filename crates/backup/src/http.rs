//! The query API over HTTP.
//!
//! QMQ's backup endpoint (spec §3.3), for QMQ's tools:
//!
//! * `GET /api/message?backupQuery=<json>` — `{"subject", "messageId", "msgCreateTimeBegin",
//!   "msgCreateTimeEnd", "isDelay", "len", "start"}` (times in ms since the epoch; default the
//!   last 30 days) → `{"list":[{"subject","messageId","sequence","createTime","brokerGroup"}…],
//!   "next":"<cursor>"|null}` with 64-bit numbers as strings, oldest first. As in QMQ a missing
//!   parameter answers an empty body, an unreadable one `[]`, and a rejected query (no
//!   subject, `len` ≤ 0, a bad cursor, a delay query — delay groups are not indexed yet) an
//!   empty result; always HTTP 200.
//!
//! * `GET /api/message/records?recordQuery=<json>` — `{"subject", "messageId", "brokerGroup",
//!   "sequence", "recordCode"}` (code 0: the records of that message; 1: of its retry copies;
//!   2: one record per dead letter, for the group that gave up) → `{"records":[{
//!   "consumerGroup", "action" (0 pull, 1 ack), "type" (the record code), "timestamp",
//!   "consumerId", "sequence"}…]}`; `timestamp` is when the backup received the action (actions
//!   carry no time), `sequence` the copy's sequence; 64-bit numbers as strings. Rejected or
//!   unreadable queries answer `{"records":[]}`, HTTP 200.
//!
//! qmq-rs's own JSON (snake_case, numbers as numbers):
//!
//! * `GET /v1/messages/<message-id>` → `{"messages":[entry…]}` (one per broker group and
//!   subject holding the id; empty when unknown).
//! * `GET /v1/messages?subject=s&from=t&to=t&limit=n&cursor=c` → `{"messages":[entry…],
//!   "next":c|null}`; times in ms or RFC 3339, `from` defaults to 30 days before `to`, `to`
//!   to now, `limit` to 100 (at most 10 000). 400 `{"error": …}` on bad input.
//! * `GET /v1/messages/<message-id>/life` → [`crate::Life`]: `{"message_id", "messages":[entry…],
//!   "events":[{"time", "event" (created, stored, retry, dead_lettered, pulled, acked),
//!   "subject", "broker_group", "sequence", "copy" (original, retry, dead), "consumer_group",
//!   "consumer_id"}…]}` oldest first. Pulls and acks are timed by when the backup received
//!   them (`seen_at`), retry copies and dead letters by when it indexed them, the rest by the
//!   message's creation time.
//! * `GET /v1/status` → `{"messages": n, "groups":[{"group","offset","action_offset"}…],
//!   "retention_ms"}` (`offset`: the message-index offset; `action_offset`: the action-log
//!   offset, `null` before the first action chunk).
//!
//! An entry is `{"subject","message_id","sequence","created_time","broker_group"}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::follower::blocking;
use crate::{BackupError, IndexEntry, IndexStore, Page, RangeQuery};

/// Default look-back of a query without a start time.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default page size of `/v1/messages`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page of either API.
pub const MAX_LIMIT: usize = 10_000;

/// The HTTP application over `store`.
pub fn router(store: Arc<IndexStore>) -> Router {
    Router::new()
        .route("/api/message", get(qmq_messages))
        .route("/api/message/records", get(qmq_records))
        .route("/v1/messages/{id}/life", get(life))
        .route("/v1/messages", get(messages))
        .route("/v1/messages/{id}", get(message_by_id))
        .route("/v1/status", get(status))
        .with_state(store)
}

/// Serves [`router`] on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    store: Arc<IndexStore>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(store))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// QMQ's query (`BackupQuery`); unknown fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackupQuery {
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    msg_create_time_begin: Option<Value>,
    #[serde(default)]
    msg_create_time_end: Option<Value>,
    #[serde(default)]
    is_delay: bool,
    #[serde(default)]
    len: i64,
    #[serde(default)]
    start: Option<String>,
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn empty_result() -> Response {
    json_response(StatusCode::OK, &json!({"list": [], "next": null}))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn window_ms() -> i64 {
    DEFAULT_WINDOW.as_millis() as i64
}

/// A time: ms since the epoch (number or digits) or RFC 3339.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("bad time {s:?} (ms since the epoch or RFC 3339): {e}"))
}

fn json_time(v: &Option<Value>) -> Result<Option<i64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| format!("bad time {n}")),
        Some(Value::String(s)) => parse_time(s).map(Some),
        Some(other) => Err(format!("bad time {other}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn qmq_entry(e: &IndexEntry) -> Value {
    json!({
        "subject": e.subject,
        "messageId": e.message_id,
        "sequence": e.sequence.to_string(),
        "createTime": e.created_time.to_string(),
        "brokerGroup": e.broker_group,
    })
}

async fn qmq_messages(
    State(store): State<Arc<IndexStore>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(raw) = params.get("backupQuery").filter(|q| !q.is_empty()) else {
        return (StatusCode::OK, "").into_response();
    };
    let query: BackupQuery = match serde_json::from_str(raw) {
        Ok(q) => q,
        Err(e) => {
            warn!(error = %e, "unreadable backupQuery");
            return json_response(StatusCode::OK, &json!([]));
        }
    };
    match qmq_query(store, query).await {
        Ok(Some(page)) => json_response(
            StatusCode::OK,
            &json!({
                "list": page.entries.iter().map(qmq_entry).collect::<Vec<_>>(),
                "next": page.next.as_deref().map(hex),
            }),
        ),
        Ok(None) => empty_result(),
        Err(e) => {
            warn!(error = %e, "backup query failed");
            empty_result()
        }
    }
}

/// Runs a QMQ query; `None` when it is rejected.
async fn qmq_query(store: Arc<IndexStore>, q: BackupQuery) -> Result<Option<Page>, BackupError> {
    let Some(subject) = q.subject.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if q.is_delay || q.len <= 0 {
        return Ok(None);
    }
    let limit = (q.len as usize).min(MAX_LIMIT);
    let (Ok(begin), Ok(end)) = (
        json_time(&q.msg_create_time_begin),
        json_time(&q.msg_create_time_end),
    ) else {
        return Ok(None);
    };
    let to = end.unwrap_or_else(now_ms);
    let from = begin.unwrap_or_else(|| to.saturating_sub(window_ms()));
    if let Some(id) = q.message_id.filter(|s| !s.is_empty()) {
        let entries = blocking(move || store.by_id(&id)).await?;
        let entries = entries
            .into_iter()
            .filter(|e| e.subject == subject && (from..=to).contains(&e.created_time))
            .take(limit)
            .collect();
        return Ok(Some(Page {
            entries,
            next: None,
        }));
    }
    let cursor = match q.start.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match unhex(s) {
            Some(c) => Some(c),
            None => return Ok(None),
        },
    };
    let rq = RangeQuery {
        subject,
        from,
        to,
        limit,
        cursor,
    };
    match blocking(move || store.range(&rq)).await {
        Ok(page) => Ok(Some(page)),
        Err(BackupError::BadCursor) => Ok(None),
        Err(e) => Err(e),
    }
}

fn bad_request(msg: impl std::fmt::Display) -> Response {
    json_response(StatusCode::BAD_REQUEST, &json!({"error": msg.to_string()}))
}

fn internal(e: BackupError) -> Response {
    warn!(error = %e, "backup query failed");
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({"error": e.to_string()}),
    )
}

async fn message_by_id(State(store): State<Arc<IndexStore>>, Path(id): Path<String>) -> Response {
    match blocking(move || store.by_id(&id)).await {
        Ok(entries) => Json(json!({ "messages": entries })).into_response(),
        Err(e) => internal(e),
    }
}

async fn messages(
    State(store): State<Arc<IndexStore>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(subject) = params.get("subject").filter(|s| !s.is_empty()).cloned() else {
        return bad_request("subject is required");
    };
    let time = |name: &str| params.get(name).map(|s| parse_time(s)).transpose();
    let (from, to) = match (time("from"), time("to")) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(e), _) | (_, Err(e)) => return bad_request(e),
    };
    let to = to.unwrap_or_else(now_ms);
    let from = from.unwrap_or_else(|| to.saturating_sub(window_ms()));
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(l)) if (1..=MAX_LIMIT).contains(&l) => l,
        Some(_) => return bad_request(format!("limit must be 1..={MAX_LIMIT}")),
    };
    let cursor = match params.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match unhex(c) {
            Some(c) => Some(c),
            None => return bad_request("bad cursor"),
        },
    };
    let q = RangeQuery {
        subject,
        from,
        to,
        limit,
        cursor,
    };
    match blocking(move || store.range(&q)).await {
        Ok(page) => Json(json!({
            "messages": page.entries,
            "next": page.next.as_deref().map(hex),
        }))
        .into_response(),
        Err(BackupError::BadCursor) => bad_request("bad cursor"),
        Err(e) => internal(e),
    }
}

/// QMQ's record query (`RecordQuery`); unknown fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordQuery {
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    broker_group: Option<String>,
    #[serde(default)]
    sequence: Option<Value>,
    #[serde(default)]
    record_code: Option<Value>,
}

fn json_u64(v: &Option<Value>) -> Option<u64> {
    match v {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

async fn qmq_records(
    State(store): State<Arc<IndexStore>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let empty = || json_response(StatusCode::OK, &json!({"records": []}));
    let Some(raw) = params.get("recordQuery").filter(|q| !q.is_empty()) else {
        return empty();
    };
    let q: RecordQuery = match serde_json::from_str(raw) {
        Ok(q) => q,
        Err(e) => {
            warn!(error = %e, "unreadable recordQuery");
            return empty();
        }
    };
    let code = json_u64(&q.record_code).unwrap_or(0);
    let Some(subject) = q.subject.filter(|s| !s.is_empty()) else {
        return empty();
    };
    let id = q.message_id.unwrap_or_default();
    let group = q.broker_group.unwrap_or_default();
    let sequence = json_u64(&q.sequence);
    let code = match (code, sequence) {
        (0, Some(_)) if !group.is_empty() => 0u8,
        (1 | 2, _) if !id.is_empty() => code as u8,
        _ => return empty(),
    };
    let seq = sequence.unwrap_or(0);
    match blocking(move || store.qmq_records(&subject, &id, &group, seq, code)).await {
        Ok(records) => json_response(
            StatusCode::OK,
            &json!({
                "records": records
                    .iter()
                    .map(|(e, r)| json!({
                        "consumerGroup": r.consumer_group,
                        "action": r.action.qmq_code(),
                        "type": code,
                        "timestamp": r.seen_at.to_string(),
                        "consumerId": r.consumer_id,
                        "sequence": e.sequence.to_string(),
                    }))
                    .collect::<Vec<_>>(),
            }),
        ),
        Err(e) => {
            warn!(error = %e, "record query failed");
            empty()
        }
    }
}

async fn life(State(store): State<Arc<IndexStore>>, Path(id): Path<String>) -> Response {
    match blocking(move || store.life(&id)).await {
        Ok(life) => Json(life).into_response(),
        Err(e) => internal(e),
    }
}

async fn status(State(store): State<Arc<IndexStore>>) -> Response {
    let retention = store.retention().map(|r| r.as_millis() as u64);
    let read = move || {
        let actions = store.stream_offsets(crate::ACTION_STREAM)?;
        Ok((store.len()?, store.offsets()?, actions))
    };
    match blocking(read).await {
        Ok((n, offsets, actions)) => Json(json!({
            "messages": n,
            "groups": offsets
                .into_iter()
                .map(|(group, offset)| {
                    let action = actions.iter().find(|(g, _)| *g == group).map(|(_, o)| *o);
                    json!({"group": group, "offset": offset, "action_offset": action})
                })
                .collect::<Vec<_>>(),
            "retention_ms": retention,
        }))
        .into_response(),
        Err(e) => internal(e),
    }
}
