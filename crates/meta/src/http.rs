//! The HTTP front end: discovery for QMQ clients, the admin API and broker directives.
//!
//! - `GET /meta/address` -> `host:port` of the TCP meta listener (plain text, what the QMQ
//!   Java client asks first).
//! - `GET /broker/directives?group=G&after=N` -> [`crate::broker_api::BrokerDirectives`].
//! - `/admin/...` (header `X-Api-Token` must hold a configured token; JSON in and out):
//!   `GET  brokers[?group=G]`, `POST brokers` (add-broker), `POST brokers/replace`,
//!   `GET  broker-groups`, `POST readonly/mark`, `POST readonly/unmark`, `POST reset-offset`,
//!   `POST dbs` (add-db), `GET subjects`, `POST subjects` (add-new-subject),
//!   `GET consumers[?subject=S]`, `POST client-state`, `POST subject-routes/add-group`,
//!   `POST subject-routes/remove-group`, `POST subject-routes/extend`,
//!   `GET groups/replication` (epochs, leases, servers' offsets and lag; see
//!   [`crate::failover::GroupReplication`]), `POST groups/promote` (manual promotion,
//!   [`crate::failover::PromoteParams`]).
//! - `POST /management`: QMQ's form-encoded admin endpoint for the Java tools, answering in
//!   QMQ's shapes (see the `http_compat` module).
//!
//! Every JSON answer of the native API (`/admin`, `/broker`) is
//! `{"status": 0 | -1, "message": "...", "data": ...}` with snake_case fields; errors also carry
//! a matching HTTP status (400 bad input, 401 bad token, 404 unknown, 409 conflict,
//! 503 database unavailable).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::admin::{
    AddDbParams, ExtendRouteParams, NewSubjectParams, ReadonlyParams, ResetOffsetParams,
    SubjectGroupParams,
};
use crate::auth::token_accepted;
use crate::core::MetaCore;
use crate::failover::PromoteParams;
use crate::http_client::{ApiResult, TOKEN_HEADER};
use crate::model::{BrokerSpec, ClientStateSetting};
use crate::MetaError;

/// Shared state of the HTTP handlers.
#[derive(Debug, Clone)]
pub(crate) struct HttpState {
    pub core: Arc<MetaCore>,
    /// `host:port` answered by `/meta/address`.
    pub tcp_advertised: String,
}

fn status_of(e: &MetaError) -> StatusCode {
    match e {
        MetaError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        MetaError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        MetaError::NotFound(_) => StatusCode::NOT_FOUND,
        MetaError::Conflict(_) | MetaError::NoBrokerGroups(_) => StatusCode::CONFLICT,
        MetaError::Db(_) | MetaError::Migrate(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(crate) fn error_response(e: &MetaError) -> Response {
    let body = ApiResult::<()> {
        status: -1,
        message: e.to_string(),
        data: None,
    };
    (status_of(e), Json(body)).into_response()
}

pub(crate) fn answer<T: Serialize>(result: Result<T, MetaError>) -> Response {
    match result {
        Ok(data) => Json(ApiResult {
            status: 0,
            message: String::new(),
            data: Some(data),
        })
        .into_response(),
        Err(e) => {
            tracing::info!(error = %e, "admin request refused");
            error_response(&e)
        }
    }
}

fn body<T: DeserializeOwned>(json: Result<Json<T>, JsonRejection>) -> Result<T, MetaError> {
    json.map(|Json(v)| v).map_err(|e| {
        MetaError::InvalidArgument(format!("malformed request body: {}", e.body_text()))
    })
}

/// Accepts the request if it carries a configured admin token.
pub(crate) fn check_token(state: &HttpState, headers: &HeaderMap) -> Result<(), MetaError> {
    let token = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    let tokens = &state.core.config.admin_tokens;
    let refusal = match token {
        _ if tokens.is_empty() => "no admin tokens are configured on this meta server",
        None => "missing X-Api-Token header",
        Some(t) if !token_accepted(t, tokens) => "invalid api token",
        Some(_) => return Ok(()),
    };
    Err(MetaError::Unauthorized(refusal.into()))
}

async fn require_token(
    State(state): State<HttpState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    match check_token(&state, &headers) {
        Ok(()) => next.run(req).await,
        Err(e) => error_response(&e),
    }
}

async fn meta_address(State(state): State<HttpState>) -> String {
    state.tcp_advertised.clone()
}

async fn directives(
    State(state): State<HttpState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let group = q.get("group").cloned().unwrap_or_default();
    let after = match q.get("after").map(|a| a.parse::<i64>()) {
        None => Ok(0),
        Some(Ok(a)) => Ok(a),
        Some(Err(_)) => Err(MetaError::InvalidArgument(
            "after must be an integer".into(),
        )),
    };
    match after {
        Ok(after) => answer(state.core.broker_directives(&group, after).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn list_brokers(
    State(s): State<HttpState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    answer(
        s.core
            .list_brokers(q.get("group").map(String::as_str))
            .await,
    )
}

async fn add_broker(
    State(s): State<HttpState>,
    json: Result<Json<BrokerSpec>, JsonRejection>,
) -> Response {
    match body(json) {
        Ok(b) => answer(s.core.add_broker(&b).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn replace_broker(
    State(s): State<HttpState>,
    json: Result<Json<BrokerSpec>, JsonRejection>,
) -> Response {
    match body(json) {
        Ok(b) => answer(s.core.replace_broker(&b).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn broker_groups(State(s): State<HttpState>) -> Response {
    answer(s.core.list_broker_groups().await)
}

async fn mark_readonly(
    State(s): State<HttpState>,
    json: Result<Json<ReadonlyParams>, JsonRejection>,
) -> Response {
    match body(json) {
        Ok(p) => answer(s.core.mark_readonly(&p).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn unmark_readonly(
    State(s): State<HttpState>,
    json: Result<Json<ReadonlyParams>, JsonRejection>,
) -> Response {
    match body(json) {
        Ok(p) => answer(s.core.unmark_readonly(&p).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn reset_offset(
    State(s): State<HttpState>,
    json: Result<Json<ResetOffsetParams>, JsonRejection>,
) -> Response {
    match body(json) {
        Ok(p) => answer(s.core.reset_offset(&p).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn add_db(
    State(s): State<HttpState>,
    json: Result<Json<AddDbParams>, JsonRejection>,
) -> Response {
    match body(json) {
        Ok(p) => answer(s.core.add_db(&p).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn add_subject(
    State(s): State<HttpState>,
    json: Result<Json<NewSubjectParams>, JsonRejection>,
) -> Response {
    match body(json) {
        Ok(p) => answer(s.core.add_new_subject(&p).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn route_add_group(
    State(s): State<HttpState>,
    json: Result<Json<SubjectGroupParams>, JsonRejection>,
) -> Response {
    match body(json) {
        Ok(p) => answer(s.core.add_subject_broker_group(&p).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn route_remove_group(
    State(s): State<HttpState>,
    json: Result<Json<SubjectGroupParams>, JsonRejection>,
) -> Response {
    match body(json) {
        Ok(p) => answer(s.core.remove_subject_broker_group(&p).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn route_extend(
    State(s): State<HttpState>,
    json: Result<Json<ExtendRouteParams>, JsonRejection>,
) -> Response {
    match body(json) {
        Ok(p) => answer(s.core.extend_subject_route(&p).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn subjects(State(s): State<HttpState>) -> Response {
    answer(s.core.list_subjects().await)
}

async fn consumers(
    State(s): State<HttpState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    answer(
        s.core
            .list_consumers(q.get("subject").map(String::as_str))
            .await,
    )
}

async fn client_state(
    State(s): State<HttpState>,
    json: Result<Json<ClientStateSetting>, JsonRejection>,
) -> Response {
    match body(json) {
        Ok(p) => answer(s.core.set_client_state(&p).await.map(|()| p)),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn replication_groups(State(s): State<HttpState>) -> Response {
    answer(s.core.replication_groups().await)
}

async fn promote(
    State(s): State<HttpState>,
    json: Result<Json<PromoteParams>, JsonRejection>,
) -> Response {
    match body(json) {
        Ok(p) => answer(s.core.promote(&p).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

/// Counts every HTTP request by endpoint, and answers 503 (the database failed) as store
/// errors.
async fn count_requests(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    let Some(metrics) = state.core.config.metrics.clone() else {
        return next.run(req).await;
    };
    metrics.request(crate::metrics::RequestKind::of_http_path(req.uri().path()));
    let response = next.run(req).await;
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        metrics.store_error();
    }
    response
}

/// The HTTP application.
pub(crate) fn router(state: HttpState) -> Router {
    let admin = Router::new()
        .route("/brokers", get(list_brokers).post(add_broker))
        .route("/brokers/replace", post(replace_broker))
        .route("/broker-groups", get(broker_groups))
        .route("/readonly/mark", post(mark_readonly))
        .route("/readonly/unmark", post(unmark_readonly))
        .route("/reset-offset", post(reset_offset))
        .route("/dbs", post(add_db))
        .route("/subjects", get(subjects).post(add_subject))
        .route("/subject-routes/add-group", post(route_add_group))
        .route("/subject-routes/remove-group", post(route_remove_group))
        .route("/subject-routes/extend", post(route_extend))
        .route("/consumers", get(consumers))
        .route("/client-state", post(client_state))
        .route("/groups/replication", get(replication_groups))
        .route("/groups/promote", post(promote))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/meta/address", get(meta_address))
        .route("/broker/directives", get(directives))
        .nest("/admin", admin)
        .route("/management", post(crate::http_compat::management))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}
