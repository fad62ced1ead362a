//! QMQ's form-encoded admin endpoint, `POST /management` with `action=<Name>` and the token in
//! `X-Api-Token`, so the Java `tools.sh` (and scripts that parse its output) work against this
//! server. It answers in QMQ's shapes, not the native admin API's (see [`crate::http`]).
//!
//! Actions (all that QMQ's management servlet registers): AddBroker, ReplaceBroker,
//! ListBrokers, ListBrokerGroups, ListSubjectRoutes, AddSubjectBrokerGroup,
//! RemoveSubjectBrokerGroup, AddNewSubject, ExtendSubjectRoute, AddDb, MarkReadonlyBrokerGroup,
//! UnMarkReadonlyBrokerGroup, ResetOffset. As in QMQ, the three list actions need no token;
//! every other action does.
//!
//! Answers are HTTP 200 (the Java tools print the body and would lose it on an error status):
//!
//! - most actions: QMQ's envelope `{"status": 0 | -1, "message": "...", "data": ...}`;
//! - ListBrokerGroups: a bare array of `{groupName, master, slaves, updateTime, brokerState,
//!   tag, kind, ext}` (`brokerState` "RW"/"R"/"W"/"NRW", `kind` "NORMAL"/"DELAY"; this server
//!   keeps no slave addresses or `ext`, so they are `[]` and `null`);
//! - ListSubjectRoutes: a bare array of `{subject, brokerGroups, version, updateTime}`;
//! - AddSubjectBrokerGroup: the bare route object, or `{"error": "..."}`;
//! - AddNewSubject: `{"data": {name, tag, updateTime}}`, or `{"error": "..."}` (both `subject`
//!   and `tag` are required; for a subject already recorded, `{"error", "data": <its info>}`
//!   and nothing changes; the native API's add-subject updates the tag instead);
//! - a missing action: plain text `need provide action param`; an unknown one: plain text
//!   naming it.
//!
//! Brokers are `{group, role, hostname, ip, servePort, syncPort}` with the role's QMQ name
//! (`MASTER`, `SLAVE`, `DELAY_MASTER`, ...). Data fields are camelCase throughout.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde_json::{json, Value};

use crate::admin::{
    AddDbParams, ExtendRouteParams, NewSubjectParams, ReadonlyParams, ResetOffsetParams,
    SubjectGroupParams,
};
use crate::http::{check_token, HttpState};
use crate::model::{
    BrokerGroupInfo, BrokerSpec, GroupKind, ResetAction, SubjectInfo, SubjectRoute,
};
use crate::MetaError;

type Params = HashMap<String, String>;

/// Actions anyone may call: QMQ registers them without token verification.
const OPEN_ACTIONS: [&str; 3] = ["ListBrokers", "ListBrokerGroups", "ListSubjectRoutes"];

/// Actions that need the admin token.
const TOKEN_ACTIONS: [&str; 10] = [
    "AddBroker",
    "ReplaceBroker",
    "AddSubjectBrokerGroup",
    "RemoveSubjectBrokerGroup",
    "AddNewSubject",
    "ExtendSubjectRoute",
    "AddDb",
    "MarkReadonlyBrokerGroup",
    "UnMarkReadonlyBrokerGroup",
    "ResetOffset",
];

/// What one action answers, in QMQ's shape.
enum Answer {
    /// `{"status", "message", "data"}`: the message and data of a success, or the error.
    Envelope(Result<(String, Value), MetaError>),
    /// A bare JSON value.
    Bare(Value),
    /// Plain text.
    Text(&'static str, String),
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

/// QMQ's name of a broker role code (its `BrokerRole` enum); unknown codes stay numbers.
fn role_name(code: i32) -> Value {
    let name = match code {
        0 => "MASTER",
        1 => "SLAVE",
        2 => "STANDBY",
        3 => "DELAY",
        4 => "BACKUP",
        5 => "DELAY_MASTER",
        6 => "DELAY_SLAVE",
        7 => "DELAY_BACKUP",
        other => return json!(other),
    };
    json!(name)
}

/// A broker as QMQ's management actions show it.
fn broker_json(b: &BrokerSpec) -> Value {
    json!({
        "group": b.group,
        "role": role_name(b.role),
        "hostname": b.hostname,
        "ip": b.ip,
        "servePort": b.serve_port,
        "syncPort": b.sync_port,
    })
}

/// A broker group as QMQ's ListBrokerGroups shows it.
fn group_json(g: &BrokerGroupInfo) -> Value {
    json!({
        "groupName": g.name,
        "master": g.master_address,
        "slaves": [],
        "updateTime": g.updated_ms,
        "brokerState": crate::model::state_serde::name(g.state),
        "tag": g.tag,
        "kind": match g.kind {
            GroupKind::Normal => "NORMAL",
            GroupKind::Delay => "DELAY",
        },
        "ext": null,
    })
}

/// A subject route as QMQ shows it.
fn route_json(r: &SubjectRoute) -> Value {
    json!({
        "subject": r.subject,
        "brokerGroups": r.groups,
        "version": r.version,
        "updateTime": r.updated_ms,
    })
}

/// A subject's info as QMQ's AddNewSubject shows it.
fn subject_info_json(i: &SubjectInfo) -> Value {
    json!({
        "name": i.subject,
        "tag": i.tag,
        "updateTime": i.updated_ms,
    })
}

/// An envelope with `data` and no message.
fn data(r: Result<Value, MetaError>) -> Answer {
    Answer::Envelope(r.map(|v| (String::new(), v)))
}

/// The data or `{"error": ...}`, bare (AddSubjectBrokerGroup, AddNewSubject).
fn data_or_error(r: Result<Value, MetaError>) -> Answer {
    Answer::Bare(r.unwrap_or_else(|e| {
        tracing::info!(error = %e, "management request refused");
        json!({ "error": e.to_string() })
    }))
}

fn list<T>(r: Result<Vec<T>, MetaError>, f: fn(&T) -> Value) -> Result<Value, MetaError> {
    r.map(|items| Value::Array(items.iter().map(f).collect()))
}

async fn dispatch(state: &HttpState, action: &str, p: &Params) -> Answer {
    let core = &state.core;
    match action {
        "AddBroker" => match broker(p) {
            Ok(b) => data(core.add_broker(&b).await.map(|b| broker_json(&b))),
            Err(e) => data(Err(e)),
        },
        "ReplaceBroker" => match broker(p) {
            Ok(b) => data(core.replace_broker(&b).await.map(|b| broker_json(&b))),
            Err(e) => data(Err(e)),
        },
        "ListBrokers" => {
            let group = p.get("brokerGroup").map(String::as_str);
            data(list(core.list_brokers(group).await, broker_json))
        }
        "ListBrokerGroups" => match list(core.list_broker_groups().await, group_json) {
            Ok(v) => Answer::Bare(v),
            Err(e) => data(Err(e)),
        },
        "ListSubjectRoutes" => match list(core.list_subjects().await, route_json) {
            Ok(v) => Answer::Bare(v),
            Err(e) => data(Err(e)),
        },
        "AddSubjectBrokerGroup" => data_or_error(
            core.add_subject_broker_group(&subject_group(p))
                .await
                .map(|r| route_json(&r)),
        ),
        "RemoveSubjectBrokerGroup" => data(list(
            core.remove_subject_broker_group(&subject_group(p)).await,
            route_json,
        )),
        "AddNewSubject" => {
            // As QMQ: both names are required, and an existing subject is left as it is.
            if text(p, "subject").is_empty() || text(p, "tag").is_empty() {
                return Answer::Bare(json!({ "error": "both subject and tag are required" }));
            }
            match core.subject_info(text(p, "subject")).await {
                Ok(Some(existing)) => {
                    return Answer::Bare(json!({
                        "error": "subject already exists",
                        "data": subject_info_json(&existing),
                    }))
                }
                Ok(None) => {}
                Err(e) => return data_or_error(Err(e)),
            }
            let params = NewSubjectParams {
                subject: text(p, "subject").to_owned(),
                tag: text(p, "tag").to_owned(),
            };
            data_or_error(
                core.add_new_subject(&params)
                    .await
                    .map(|i| json!({ "data": subject_info_json(&i) })),
            )
        }
        "ExtendSubjectRoute" => {
            Answer::Envelope(core.extend_subject_route(&extend_route(p)).await.map(|o| {
                (
                    o.summary(),
                    json!({"updated": o.updated, "subjects": o.subjects}),
                )
            }))
        }
        "AddDb" => {
            let params = number(p, "port").map(|port| AddDbParams {
                db_type: text(p, "type").to_owned(),
                host: text(p, "host").to_owned(),
                port,
                username: text(p, "username").to_owned(),
                password: text(p, "password").to_owned(),
                room: text(p, "room").to_owned(),
                database: None,
            });
            match params {
                Ok(params) => data(
                    core.add_db(&params)
                        .await
                        .map(|_| json!("register success")),
                ),
                Err(e) => data(Err(e)),
            }
        }
        "MarkReadonlyBrokerGroup" => data(
            core.mark_readonly(&readonly(p))
                .await
                .map(|_| json!("success")),
        ),
        "UnMarkReadonlyBrokerGroup" => data(
            core.unmark_readonly(&readonly(p))
                .await
                .map(|_| json!("success")),
        ),
        "ResetOffset" => {
            let action = number(p, "code").and_then(|code| {
                ResetAction::from_code(code).ok_or_else(|| {
                    MetaError::InvalidArgument("code must be 1 (LATEST) or 2 (EARLIEST)".into())
                })
            });
            let params = action.map(|action| ResetOffsetParams {
                subject: text(p, "subject").to_owned(),
                consumer_group: text(p, "group").to_owned(),
                action,
            });
            match params {
                Ok(params) => data(core.reset_offset(&params).await.map(|_| json!("success"))),
                Err(e) => data(Err(e)),
            }
        }
        other => Answer::Text(
            "text/plain; charset=utf-8",
            format!("unknown action: {other}"),
        ),
    }
}

/// `POST /management`.
pub(crate) async fn management(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    let action = text(&params, "action");
    let answer = if action.is_empty() {
        Answer::Text(
            "text/plain; charset=utf-8",
            "need provide action param".into(),
        )
    } else if !OPEN_ACTIONS.contains(&action) && !TOKEN_ACTIONS.contains(&action) {
        Answer::Text(
            "text/plain; charset=utf-8",
            format!("unknown action: {action}"),
        )
    } else if let (false, Err(e)) = (
        OPEN_ACTIONS.contains(&action),
        check_token(&state, &headers),
    ) {
        Answer::Envelope(Err(e))
    } else {
        dispatch(&state, action, &params).await
    };
    match answer {
        Answer::Envelope(Ok((message, data))) => {
            Json(json!({"status": 0, "message": message, "data": data})).into_response()
        }
        Answer::Envelope(Err(e)) => {
            tracing::info!(action, error = %e, "management request refused");
            Json(json!({"status": -1, "message": e.to_string(), "data": null})).into_response()
        }
        Answer::Bare(v) => Json(v).into_response(),
        Answer::Text(content_type, body) => {
            ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
        }
    }
}
