//! The query API over HTTP.
//!
//! QMQ's backup endpoint (spec §3.3), for QMQ's tools:
//!
//! * `GET /api/message?backupQuery=<json>` — `{"subject", "messageId", "msgCreateTimeBegin",
//!   "msgCreateTimeEnd", "isDelay", "len", "start"}` (times in ms since the epoch; default the
//!   last 30 days) → `{"list":[{"subject","messageId","sequence","createTime","brokerGroup"}…],
//!   "next":"<cursor>"|null}` with 64-bit numbers as strings, oldest first. As in QMQ a missing
//!   parameter answers an empty body, an unreadable one `[]`, and a rejected query (no
//!   subject, `len` ≤ 0, a bad cursor) an empty result; always HTTP 200. `isDelay: true` lists
//!   the subject's delay messages (once their broker stored them, at their delivery time:
//!   delay servers are not followed).
//!
//! * `GET /api/message/dead?backupQuery=<json>` — the same query plus `consumerGroup`
//!   (optional: every group) → the same list of the subject's dead letters, each with its
//!   `consumerGroup`; `subject` is the dead-letter subject its `sequence` counts in.
//!
//! * `GET /api/message/detail?backupQuery=<json>` — `{"subject", "brokerGroup", "sequence"}` →
//!   `{"subject","messageId","brokerGroup","sequence","tags":[…],"storeAtFailed","durable",
//!   "attrs":{…}}`, read from the broker (FETCH_MESSAGES on its sync port) or, for a dead
//!   letter it no longer holds, from the backup's copy; `{}` when neither has it.
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
//! * `GET /v1/messages?subject=s&from=t&to=t&limit=n&cursor=c[&key=k=v][&delayed=true]` →
//!   `{"messages":[entry…], "next":c|null}`; times in ms or RFC 3339, `from` defaults to 30
//!   days before `to`, `to` to now, `limit` to 100 (at most 10 000); `key` keeps the messages
//!   with that property, `delayed` the delay messages. 400 `{"error": …}` on bad input.
//! * `GET /v1/message?group=g&subject=s&sequence=n` → `{"subject","message_id",
//!   "broker_group","sequence","created_time","tags","durable","attrs","body","body_encoding",
//!   "source" ("broker" or "backup")}`: the message with its body, from its broker, else the
//!   backup's copy of a dead letter; 404 when neither has it, 502 when the broker cannot be
//!   asked and there is no copy.
//! * `GET /v1/dead?subject=s[&group=g]&from&to&limit&cursor` → `{"dead_letters":[entry +
//!   "consumer_group"…], "next"}`, group by group, oldest first within a group.
//! * `POST /v1/dead/replay` with header `X-Api-Token` (a token of `--admin-token`; none: 401)
//!   and `{"subject","group","ids":[…]?,"from"?,"to"?}` → `{"replayed":[{"message_id",
//!   "broker_group","sequence","retry_subject","error"?}…]}`: see [`crate::dead`].
//! * `GET /v1/messages/<message-id>/life` → [`crate::Life`]: `{"message_id", "messages":[entry…],
//!   "events":[{"time", "event" (created, delayed, stored, retry, dead_lettered, pulled,
//!   acked), "subject", "broker_group", "sequence", "copy" (original, retry, dead),
//!   "consumer_group", "consumer_id", "app_code" and "producer_host" (created),
//!   "delayed_until" (delayed)}…]}`
//!   oldest first. Pulls and acks are timed by when the backup received
//!   them (`seen_at`), retry copies and dead letters by when it indexed them, the rest by the
//!   message's creation time.
//! * `GET /metrics` → the backup's metrics in the Prometheus text format ([`crate::metrics`]).
//! * `GET /v1/status` → `{"messages": n, "groups":[{"group","offset","action_offset"}…],
//!   "retention_ms"}` (`offset`: the message-index offset; `action_offset`: the action-log
//!   offset, `null` before the first action chunk).
//!
//! An entry is `{"subject","message_id","sequence","created_time","broker_group","details"?}`
//! with `details` = `{"tags","app_code","delayed_until","times","properties":[[k,v]…]}`
//! (each part only when present; see [`crate::Details`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use qmq_protocol::wire::Reader;
use qmq_protocol::Message;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::brokers::Brokers;
use crate::dead::{DeadQuery, Replay};
use crate::follower::blocking;
use crate::metrics::BackupMetrics;
use crate::{BackupError, IndexEntry, IndexStore, Page, RangeQuery};

/// Default look-back of a query without a start time.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default page size of `/v1/messages`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page of either API.
pub const MAX_LIMIT: usize = 10_000;

/// Header carrying an admin token (as the meta server's admin API).
pub const TOKEN_HEADER: &str = "X-Api-Token";

/// What the API answers from: the index, the followed brokers (message bodies, replays) and
/// the admin tokens that may replay dead letters (none: replay is refused).
#[derive(Debug, Clone)]
pub struct Api {
    /// The index.
    pub store: Arc<IndexStore>,
    /// The followed broker groups.
    pub brokers: Arc<Brokers>,
    /// Tokens accepted in [`TOKEN_HEADER`] by `POST /v1/dead/replay`.
    pub admin_tokens: Arc<Vec<String>>,
    /// The registry `GET /metrics` serves.
    pub registry: qmq_metrics::Registry,
    /// The metrics replays record into (registered in `registry`).
    pub metrics: Arc<BackupMetrics>,
}

impl Api {
    /// An API over `store` and `brokers` accepting `admin_tokens`, with its own metrics
    /// registry.
    pub fn new(store: Arc<IndexStore>, brokers: Arc<Brokers>, admin_tokens: Vec<String>) -> Self {
        let registry = qmq_metrics::Registry::new();
        Self {
            store,
            brokers,
            admin_tokens: Arc::new(admin_tokens),
            metrics: Arc::new(BackupMetrics::new(&registry)),
            registry,
        }
    }
}

impl FromRef<Api> for Arc<IndexStore> {
    fn from_ref(api: &Api) -> Self {
        api.store.clone()
    }
}

/// The HTTP application over `store` alone: no broker to read bodies from, no replay.
pub fn router(store: Arc<IndexStore>) -> Router {
    router_with(Api::new(store, Arc::new(Brokers::default()), Vec::new()))
}

/// The HTTP application over `api`.
pub fn router_with(api: Api) -> Router {
    Router::new()
        .route("/api/message", get(qmq_messages))
        .route("/api/message/dead", get(qmq_dead))
        .route("/api/message/detail", get(qmq_detail))
        .route("/api/message/records", get(qmq_records))
        .route("/v1/messages/{id}/life", get(life))
        .route("/v1/messages", get(messages))
        .route("/v1/messages/{id}", get(message_by_id))
        .route("/v1/message", get(message_detail))
        .route("/v1/dead", get(dead))
        .route("/v1/dead/replay", post(replay))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(api)
}

/// Serves [`router_with`] on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    api: Api,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router_with(api))
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
    #[serde(default)]
    consumer_group: Option<String>,
    #[serde(default)]
    broker_group: Option<String>,
    #[serde(default)]
    sequence: Option<Value>,
}

/// The paging part of a QMQ query, checked: `None` when the query is to be rejected (no
/// subject, `len` ≤ 0, an unreadable time or cursor).
struct QmqPage {
    subject: String,
    from: i64,
    to: i64,
    limit: usize,
    cursor: Option<Vec<u8>>,
}

impl BackupQuery {
    fn page(&self) -> Option<QmqPage> {
        let subject = self.subject.clone().filter(|s| !s.is_empty())?;
        if self.len <= 0 {
            return None;
        }
        let begin = json_time(&self.msg_create_time_begin).ok()?;
        let to = json_time(&self.msg_create_time_end)
            .ok()?
            .unwrap_or_else(now_ms);
        let cursor = match self.start.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(unhex(s)?),
        };
        Some(QmqPage {
            subject,
            from: begin.unwrap_or_else(|| to.saturating_sub(window_ms())),
            to,
            limit: (self.len as usize).min(MAX_LIMIT),
            cursor,
        })
    }
}

/// The `backupQuery` parameter, or the answer QMQ gives without a readable one (an empty
/// body when it is missing, `[]` when it is not JSON).
fn backup_query(params: &HashMap<String, String>) -> Result<BackupQuery, Box<Response>> {
    let Some(raw) = params.get("backupQuery").filter(|q| !q.is_empty()) else {
        return Err(Box::new((StatusCode::OK, "").into_response()));
    };
    serde_json::from_str(raw).map_err(|e| {
        warn!(error = %e, "unreadable backupQuery");
        Box::new(json_response(StatusCode::OK, &json!([])))
    })
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
    let query = match backup_query(&params) {
        Ok(q) => q,
        Err(r) => return *r,
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
    let Some(p) = q.page() else {
        return Ok(None);
    };
    if let Some(id) = q.message_id.filter(|s| !s.is_empty()) {
        let entries = blocking(move || store.by_id(&id)).await?;
        let entries = entries
            .into_iter()
            .filter(|e| e.subject == p.subject && (p.from..=p.to).contains(&e.created_time))
            .filter(|e| {
                !q.is_delay
                    || e.details
                        .as_ref()
                        .is_some_and(|d| d.delayed_until.is_some())
            })
            .take(p.limit)
            .collect();
        return Ok(Some(Page {
            entries,
            next: None,
        }));
    }
    let mut rq = RangeQuery::new(p.subject, p.from, p.to, p.limit);
    rq.cursor = p.cursor;
    rq.delayed_only = q.is_delay;
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

/// A `/v1` listing's parameters: `subject` (required), `from`, `to`, `limit`, `cursor`.
struct Window {
    subject: String,
    from: i64,
    to: i64,
    limit: usize,
    cursor: Option<Vec<u8>>,
}

fn window(params: &HashMap<String, String>) -> Result<Window, String> {
    let Some(subject) = params.get("subject").filter(|s| !s.is_empty()).cloned() else {
        return Err("subject is required".into());
    };
    let time = |name: &str| params.get(name).map(|s| parse_time(s)).transpose();
    let (from, to) = match (time("from"), time("to")) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    let to = to.unwrap_or_else(now_ms);
    let from = from.unwrap_or_else(|| to.saturating_sub(window_ms()));
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(l)) if (1..=MAX_LIMIT).contains(&l) => l,
        Some(_) => return Err(format!("limit must be 1..={MAX_LIMIT}")),
    };
    let cursor = match params.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match unhex(c) {
            Some(c) => Some(c),
            None => return Err("bad cursor".into()),
        },
    };
    Ok(Window {
        subject,
        from,
        to,
        limit,
        cursor,
    })
}

async fn messages(
    State(store): State<Arc<IndexStore>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let w = match window(&params) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let property = match params.get("key").filter(|k| !k.is_empty()) {
        None => None,
        Some(kv) => match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Some((k.to_owned(), v.to_owned())),
            _ => return bad_request(format!("key must be k=v, got {kv:?}")),
        },
    };
    let mut q = RangeQuery::new(w.subject, w.from, w.to, w.limit);
    q.cursor = w.cursor;
    q.property = property;
    q.delayed_only = params.get("delayed").is_some_and(|d| d == "true");
    match blocking(move || store.range(&q)).await {
        Ok(page) => Json(json!({
            "messages": page.entries,
            "next": page.next.as_deref().map(hex),
        }))
        .into_response(),
        Err(BackupError::BadCursor) => bad_request("bad cursor"),
        Err(e @ BackupError::Invalid(_)) => bad_request(e),
        Err(e) => internal(e),
    }
}

/// `GET /v1/dead?subject=s[&group=g]&from&to&limit&cursor`: dead letters, group by group.
async fn dead(
    State(store): State<Arc<IndexStore>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let w = match window(&params) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let q = DeadQuery {
        subject: w.subject,
        group: params.get("group").filter(|g| !g.is_empty()).cloned(),
        from: w.from,
        to: w.to,
        limit: w.limit,
        cursor: w.cursor,
    };
    match blocking(move || store.dead_letters(&q)).await {
        Ok(page) => Json(json!({
            "dead_letters": page.entries.iter().map(dead_entry).collect::<Vec<_>>(),
            "next": page.next.as_deref().map(hex),
        }))
        .into_response(),
        Err(BackupError::BadCursor) => bad_request("bad cursor"),
        Err(e) => internal(e),
    }
}

/// A dead letter's entry with its consumer group.
fn dead_entry(e: &IndexEntry) -> Value {
    let mut v = json!(e);
    if let (Some(obj), Some((_, _, group))) = (v.as_object_mut(), crate::life::derived(&e.subject))
    {
        obj.insert("consumer_group".into(), json!(group));
    }
    v
}

/// QMQ's dead-letter query: `backupQuery` as for `/api/message` plus `consumerGroup`
/// (optional: every group).
async fn qmq_dead(
    State(store): State<Arc<IndexStore>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let q = match backup_query(&params) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    let Some(p) = q.page() else {
        return empty_result();
    };
    let dq = DeadQuery {
        subject: p.subject,
        group: q.consumer_group.filter(|g| !g.is_empty()),
        from: p.from,
        to: p.to,
        limit: p.limit,
        cursor: p.cursor,
    };
    match blocking(move || store.dead_letters(&dq)).await {
        Ok(page) => json_response(
            StatusCode::OK,
            &json!({
                "list": page.entries.iter().map(|e| {
                    let mut v = qmq_entry(e);
                    if let (Some(o), Some((_, _, g))) = (v.as_object_mut(), crate::life::derived(&e.subject)) {
                        o.insert("consumerGroup".into(), json!(g));
                    }
                    v
                }).collect::<Vec<_>>(),
                "next": page.next.as_deref().map(hex),
            }),
        ),
        Err(e) => {
            warn!(error = %e, "dead-letter query failed");
            empty_result()
        }
    }
}

/// A message read back: from its broker, else (a dead letter the broker no longer holds, or
/// a broker that cannot be reached) the backup's copy.
struct Loaded {
    message: Message,
    source: &'static str,
}

async fn load(
    api: &Api,
    group: &str,
    subject: &str,
    seq: u64,
) -> Result<Option<Loaded>, BackupError> {
    let fetched = match i64::try_from(seq) {
        Ok(s) => api.brokers.fetch(group, subject, vec![s]).await,
        Err(_) => Ok(Vec::new()),
    };
    let broker_error = match fetched {
        Ok(records) => {
            if let Some(r) = records.into_iter().find(|r| r.sequence as u64 == seq) {
                let m = Message::decode_stored(&mut Reader::new(&r.stored)).map_err(|e| {
                    BackupError::BrokerAnswer {
                        addr: group.to_owned(),
                        reason: format!("unreadable stored message: {e}"),
                    }
                })?;
                return Ok(Some(Loaded {
                    message: m,
                    source: "broker",
                }));
            }
            None
        }
        Err(e) => Some(e),
    };
    let (store, g, s) = (api.store.clone(), group.to_owned(), subject.to_owned());
    if let Some(stored) = blocking(move || store.dead_letter(&g, &s, seq)).await? {
        let m = Message::decode_stored(&mut Reader::new(&stored)).map_err(|_| {
            BackupError::Corrupt {
                what: "dead letter",
            }
        })?;
        return Ok(Some(Loaded {
            message: m,
            source: "backup",
        }));
    }
    match broker_error {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

fn attrs_json(m: &Message) -> serde_json::Map<String, Value> {
    m.attrs
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect()
}

/// QMQ's detail query: `backupQuery` = `{"subject","brokerGroup","sequence"}` → the message
/// with its attributes (body included), fetched from its broker; empty when not found.
async fn qmq_detail(
    State(api): State<Api>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let empty = || json_response(StatusCode::OK, &json!({}));
    let Some(q) = params
        .get("backupQuery")
        .and_then(|raw| serde_json::from_str::<BackupQuery>(raw).ok())
    else {
        return empty();
    };
    let (Some(subject), Some(group), Some(seq)) = (
        q.subject.filter(|s| !s.is_empty()),
        q.broker_group.filter(|g| !g.is_empty()),
        json_u64(&q.sequence),
    ) else {
        return empty();
    };
    match load(&api, &group, &subject, seq).await {
        Ok(Some(l)) => json_response(
            StatusCode::OK,
            &json!({
                "subject": subject,
                "messageId": l.message.message_id,
                "brokerGroup": group,
                "sequence": seq.to_string(),
                "tags": l.message.tags,
                "storeAtFailed": false,
                "durable": l.message.flags.is_reliable(),
                "attrs": attrs_json(&l.message),
            }),
        ),
        Ok(None) => empty(),
        Err(e) => {
            warn!(error = %e, "detail query failed");
            empty()
        }
    }
}

/// `GET /v1/message?group=g&subject=s&sequence=n`: the message with its body, from its broker
/// (or the backup's copy of a dead letter); 404 when neither has it, 502 when the broker
/// cannot be asked and there is no copy.
async fn message_detail(
    State(api): State<Api>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let (Some(group), Some(subject), Some(seq)) = (
        params.get("group").filter(|s| !s.is_empty()),
        params.get("subject").filter(|s| !s.is_empty()),
        params.get("sequence").and_then(|s| s.parse::<u64>().ok()),
    ) else {
        return bad_request("group, subject and sequence are required");
    };
    match load(&api, group, subject, seq).await {
        Ok(Some(l)) => {
            let m = &l.message;
            let attr = |k: &str| {
                m.attrs
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            };
            Json(json!({
                "subject": subject,
                "message_id": m.message_id,
                "broker_group": group,
                "sequence": seq,
                "created_time": m.created_time,
                "tags": m.tags,
                "durable": m.flags.is_reliable(),
                "attrs": attrs_json(m),
                "body": attr("body"),
                "body_encoding": attr("bodyEncoding"),
                "source": l.source,
            }))
            .into_response()
        }
        Ok(None) => json_response(StatusCode::NOT_FOUND, &json!({"error": "no such message"})),
        Err(e @ BackupError::UnknownGroup { .. }) => bad_request(e),
        Err(e) => json_response(StatusCode::BAD_GATEWAY, &json!({"error": e.to_string()})),
    }
}

/// `POST /v1/dead/replay` with an admin token: `{"subject","group","ids":[…]?,"from"?,"to"?}`
/// → `{"replayed":[{"message_id","broker_group","sequence","retry_subject","error"?}…]}`.
#[derive(Debug, Deserialize)]
struct ReplayBody {
    subject: String,
    group: String,
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    from: Option<Value>,
    #[serde(default)]
    to: Option<Value>,
}

async fn replay(State(api): State<Api>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let token = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    if !token.is_some_and(|t| api.admin_tokens.iter().any(|a| a == t)) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": format!("replay needs an admin token in {TOKEN_HEADER}")}),
        );
    }
    let r: ReplayBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("bad replay request: {e}")),
    };
    let (from, to) = match (json_time(&r.from), json_time(&r.to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return bad_request(e),
    };
    let to = to.unwrap_or_else(now_ms);
    let req = Replay {
        subject: r.subject,
        group: r.group,
        ids: r.ids,
        from: from.unwrap_or_else(|| to.saturating_sub(window_ms())),
        to,
    };
    match crate::dead::replay(api.store.clone(), &api.brokers, req).await {
        Ok(done) => {
            for d in &done {
                api.metrics.replayed(d.error.is_none());
            }
            Json(json!({ "replayed": done })).into_response()
        }
        Err(e @ BackupError::Invalid(_)) => bad_request(e),
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

/// `GET /metrics`: the backup's metrics ([`crate::metrics`]) in the Prometheus text format.
async fn metrics(State(api): State<Api>) -> Response {
    let registry = api.registry.clone();
    match tokio::task::spawn_blocking(move || registry.encode()).await {
        Ok(Ok(text)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, qmq_metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Ok(Err(e)) => internal(BackupError::Store(e.to_string())),
        Err(e) => internal(BackupError::Task(e.to_string())),
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
