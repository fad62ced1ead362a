//! QMQ's form-encoded admin endpoint, `POST /management` with `action=<Name>` and the token in
//! `X-Api-Token`, so the Java `tools.sh` works against this server. Actions: AddBroker,
//! ReplaceBroker, ListBrokers, ListBrokerGroups, ListSubjectRoutes, AddSubjectBrokerGroup,
//! RemoveSubjectBrokerGroup, ExtendSubjectRoute, AddDb, MarkReadonlyBrokerGroup,
//! UnMarkReadonlyBrokerGroup, ResetOffset. As in QMQ, the list actions need no token; every
//! other action does. The HTTP status is 200 and the outcome is in the JSON `status` (0 ok, -1
//! refused, with `message`): the Java tools print the body and would lose the message on an
//! error status.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde_json::Value;

use crate::admin::{
    AddDbParams, ExtendRouteParams, ReadonlyParams, ResetOffsetParams, SubjectGroupParams,
};
use crate::http::{check_token, HttpState};
use crate::http_client::ApiResult;
use crate::model::{BrokerSpec, ResetAction};
use crate::MetaError;

type Params = HashMap<String, String>;

/// Actions anyone may call: QMQ registers them without token verification.
const OPEN_ACTIONS: [&str; 3] = ["ListBrokers", "ListBrokerGroups", "ListSubjectRoutes"];

/// A successful action: its data and, for some actions, a message.
struct Reply {
    message: String,
    data: Value,
}

fn text<'a>(p: &'a Params, key: &str) -> &'a str {
    p.get(key).map_or("", String::as_str)
}

fn number<T: std::str::FromStr>(p: &Params, key: &str) -> Result<T, MetaError> {
    text(p, key)
        .trim()
        .parse()
        .map_err(|_| MetaError::InvalidArgument(format!("{key} must be a number")))
}

fn broker(p: &Params) -> Result<BrokerSpec, MetaError> {
    Ok(BrokerSpec {
        group: text(p, "brokerGroup").to_owned(),
        role: number(p, "role")?,
        hostname: text(p, "hostname").to_owned(),
        ip: text(p, "ip").to_owned(),
        serve_port: number(p, "servePort")?,
        sync_port: number(p, "syncPort").unwrap_or(-1),
    })
}

fn readonly(p: &Params) -> ReadonlyParams {
    let subject = text(p, "subject");
    ReadonlyParams {
        broker_group: text(p, "brokerGroup").to_owned(),
        subject: if subject.is_empty() { "*" } else { subject }.to_owned(),
    }
}

fn subject_group(p: &Params) -> SubjectGroupParams {
    SubjectGroupParams {
        broker_group: text(p, "brokerGroup").to_owned(),
        subject: text(p, "subject").to_owned(),
    }
}

fn extend_route(p: &Params) -> ExtendRouteParams {
    ExtendRouteParams {
        related_subject: text(p, "relatedSubject").to_owned(),
        related_broker_group: text(p, "relatedBrokerGroup").to_owned(),
        new_broker_group: text(p, "newBrokerGroup").to_owned(),
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, MetaError> {
    serde_json::to_value(v).map_err(|e| MetaError::Corrupt(e.to_string()))
}

fn json<T: serde::Serialize>(r: Result<T, MetaError>) -> Result<Reply, MetaError> {
    Ok(Reply {
        message: String::new(),
        data: to_value(r?)?,
    })
}

async fn extend(state: &HttpState, p: &Params) -> Result<Reply, MetaError> {
    let outcome = state.core.extend_subject_route(&extend_route(p)).await?;
    Ok(Reply {
        message: outcome.summary(),
        data: to_value(outcome)?,
    })
}

async fn dispatch(state: &HttpState, p: &Params) -> Result<Reply, MetaError> {
    let core = &state.core;
    match text(p, "action") {
        "AddBroker" => json(core.add_broker(&broker(p)?).await),
        "ReplaceBroker" => json(core.replace_broker(&broker(p)?).await),
        "ListBrokers" => json(
            core.list_brokers(p.get("brokerGroup").map(String::as_str))
                .await,
        ),
        "ListBrokerGroups" => json(core.list_broker_groups().await),
        "ListSubjectRoutes" => json(core.list_subjects().await),
        "AddSubjectBrokerGroup" => json(core.add_subject_broker_group(&subject_group(p)).await),
        "RemoveSubjectBrokerGroup" => {
            json(core.remove_subject_broker_group(&subject_group(p)).await)
        }
        "ExtendSubjectRoute" => extend(state, p).await,
        "AddDb" => json(
            core.add_db(&AddDbParams {
                db_type: text(p, "type").to_owned(),
                host: text(p, "host").to_owned(),
                port: number(p, "port")?,
                username: text(p, "username").to_owned(),
                password: text(p, "password").to_owned(),
                room: text(p, "room").to_owned(),
            })
            .await,
        ),
        "MarkReadonlyBrokerGroup" => json(core.mark_readonly(&readonly(p)).await),
        "UnMarkReadonlyBrokerGroup" => json(core.unmark_readonly(&readonly(p)).await),
        "ResetOffset" => {
            let action = ResetAction::from_code(number(p, "code")?).ok_or_else(|| {
                MetaError::InvalidArgument("code must be 1 (LATEST) or 2 (EARLIEST)".into())
            })?;
            json(
                core.reset_offset(&ResetOffsetParams {
                    subject: text(p, "subject").to_owned(),
                    consumer_group: text(p, "group").to_owned(),
                    action,
                })
                .await,
            )
        }
        "" => Err(MetaError::InvalidArgument(
            "need provide action param".into(),
        )),
        other => Err(MetaError::InvalidArgument(format!(
            "unsupported action: {other}"
        ))),
    }
}

/// `POST /management`.
pub(crate) async fn management(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    let action = text(&params, "action");
    let allowed = if OPEN_ACTIONS.contains(&action) {
        Ok(())
    } else {
        check_token(&state, &headers)
    };
    let outcome = match allowed {
        Ok(()) => dispatch(&state, &params).await,
        Err(e) => Err(e),
    };
    let body = match outcome {
        Ok(reply) => ApiResult {
            status: 0,
            message: reply.message,
            data: Some(reply.data),
        },
        Err(e) => {
            tracing::info!(action, error = %e, "management request refused");
            ApiResult {
                status: -1,
                message: e.to_string(),
                data: None,
            }
        }
    };
    Json(body).into_response()
}
