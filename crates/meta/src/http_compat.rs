//! QMQ's form-encoded admin endpoint, `POST /management` with `action=<Name>` and the token in
//! `X-Api-Token`, so the Java `tools.sh` works against this server. Actions: AddBroker,
//! ReplaceBroker, ListBrokers, ListBrokerGroups, ListSubjectRoutes, AddDb,
//! MarkReadonlyBrokerGroup, UnMarkReadonlyBrokerGroup, ResetOffset. As in QMQ, the HTTP status
//! is 200 and the outcome is in the JSON `status` (0 ok, -1 refused, with `message`): the Java
//! tools print the body and would lose the message on an error status.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde_json::Value;

use crate::admin::{AddDbParams, ReadonlyParams, ResetOffsetParams};
use crate::http::{check_token, HttpState};
use crate::http_client::ApiResult;
use crate::model::{BrokerSpec, ResetAction};
use crate::MetaError;

type Params = HashMap<String, String>;

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

fn json<T: serde::Serialize>(r: Result<T, MetaError>) -> Result<Value, MetaError> {
    r.and_then(|v| serde_json::to_value(v).map_err(|e| MetaError::Corrupt(e.to_string())))
}

async fn dispatch(state: &HttpState, p: &Params) -> Result<Value, MetaError> {
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
    let outcome = match check_token(&state, &headers) {
        Ok(()) => dispatch(&state, &params).await,
        Err(e) => Err(e),
    };
    let body = match outcome {
        Ok(data) => ApiResult {
            status: 0,
            message: String::new(),
            data: Some(data),
        },
        Err(e) => ApiResult {
            status: -1,
            message: e.to_string(),
            data: None,
        },
    };
    Json(body).into_response()
}
