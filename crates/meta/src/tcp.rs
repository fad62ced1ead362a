//! The TCP front end: the QMQ meta protocol (CLIENT_REGISTER, BROKER_REGISTER,
//! BROKER_ACQUIRE_META), byte-compatible with the Java client and servers, and qmq-rs's
//! GROUP_LEASE (see [`crate::failover`]).
//!
//! A BROKER_REGISTER or GROUP_LEASE is checked against the cluster secret and trusted addresses first
//! ([`crate::auth`]); a refused one is logged and answered `BROKER_REJECT` without touching the
//! registry, so a stranger can neither add a group nor take a real one offline.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use qmq_protocol::codes::{command, response};
use qmq_protocol::replication::GROUP_LEASE;
use qmq_protocol::{
    BrokerAcquireMetaRequest, BrokerRegisterRequest, Frame, FrameCodec, GroupLeaseRequest, Header,
    MetaInfoRequest,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::check_registration;
use crate::core::MetaCore;
use crate::metrics::RequestKind;
use crate::MetaError;

/// Accepts connections until `stop` is cancelled; each connection gets its own task.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    core: Arc<MetaCore>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let core = core.clone();
                let stop = stop.clone();
                tracker.spawn(async move {
                    if let Err(e) = serve_connection(stream, peer.ip(), core, stop).await {
                        tracing::debug!(%peer, error = %e, "meta connection closed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // Back off briefly so a persistent error (e.g. out of fds) does not spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: IpAddr,
    core: Arc<MetaCore>,
    stop: CancellationToken,
) -> Result<(), qmq_protocol::FrameError> {
    stream.set_nodelay(true)?;
    let mut framed = Framed::new(stream, FrameCodec::new(core.config.max_frame));
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            n = framed.next() => n,
        };
        let frame = match next {
            None => return Ok(()),
            Some(f) => f?,
        };
        if frame.header.is_response() {
            continue;
        }
        let reply = handle(&core, &frame, peer).await;
        framed.send(reply).await?;
    }
}

fn reply(header: &Header, code: i16, body: Bytes) -> Frame {
    Frame::new(header.response(code), body)
}

fn refuse(header: &Header, code: i16, what: &str, e: &dyn std::fmt::Display) -> Frame {
    tracing::warn!(request = header.code, error = %e, "{what}");
    reply(header, code, Bytes::new())
}

fn error_code(e: &MetaError) -> i16 {
    match e {
        MetaError::InvalidArgument(_) | MetaError::NotFound(_) => response::PARAM_ERROR,
        MetaError::Conflict(_) | MetaError::Unauthorized(_) => response::BROKER_REJECT,
        _ => response::BROKER_ERROR,
    }
}

/// The metrics kind of a request frame (BROKER_REGISTER by its type, when it decodes).
fn request_kind(frame: &Frame) -> RequestKind {
    match frame.header.code {
        command::CLIENT_REGISTER => RequestKind::ClientRegister,
        command::BROKER_REGISTER => match BrokerRegisterRequest::decode_with_secret(&frame.body) {
            Ok((req, _)) => match req.request_type {
                qmq_protocol::BrokerRequestType::Online => RequestKind::BrokerOnline,
                qmq_protocol::BrokerRequestType::Heartbeat => RequestKind::BrokerHeartbeat,
                qmq_protocol::BrokerRequestType::Offline => RequestKind::BrokerOffline,
            },
            Err(_) => RequestKind::BrokerRegisterMalformed,
        },
        command::BROKER_ACQUIRE_META => RequestKind::AcquireMeta,
        GROUP_LEASE => RequestKind::GroupLease,
        command::HEARTBEAT => RequestKind::Heartbeat,
        _ => RequestKind::Unknown,
    }
}

/// Answers one request frame from `peer` (and counts it, with the database failures it met).
pub(crate) async fn handle(core: &MetaCore, frame: &Frame, peer: IpAddr) -> Frame {
    if core.config.metrics.is_some() {
        core.note_request(request_kind(frame));
    }
    answer(core, frame, peer).await
}

async fn answer(core: &MetaCore, frame: &Frame, peer: IpAddr) -> Frame {
    let h = &frame.header;
    match h.code {
        command::CLIENT_REGISTER => match MetaInfoRequest::decode(&frame.body) {
            Ok(req) => {
                let resp = core.client_register(&req).await;
                let mut out = BytesMut::new();
                match resp.encode(&mut out) {
                    Ok(()) => reply(h, response::SUCCESS, out.freeze()),
                    Err(e) => refuse(h, response::BROKER_ERROR, "cannot encode route", &e),
                }
            }
            Err(e) => refuse(h, response::PARAM_ERROR, "malformed client register", &e),
        },
        command::BROKER_REGISTER => match BrokerRegisterRequest::decode_with_secret(&frame.body) {
            Ok((req, secret)) => {
                if let Err(e) = check_registration(&core.config, peer, secret.as_deref()) {
                    tracing::warn!(%peer, group = req.group_name, address = req.broker_address,
                        request = ?req.request_type, error = %e, "broker registration refused");
                    return reply(h, error_code(&e), Bytes::new());
                }
                match core.broker_register(&req).await {
                    Ok(()) => reply(h, response::SUCCESS, Bytes::new()),
                    Err(e) => {
                        core.note_error(&e);
                        refuse(h, error_code(&e), "broker register refused", &e)
                    }
                }
            }
            Err(e) => refuse(h, response::PARAM_ERROR, "malformed broker register", &e),
        },
        command::BROKER_ACQUIRE_META => match BrokerAcquireMetaRequest::decode(&frame.body) {
            Ok(req) => match core.acquire_meta(&req).await {
                Ok(resp) => {
                    let mut out = BytesMut::new();
                    match resp.encode(&mut out) {
                        Ok(()) => reply(h, response::SUCCESS, out.freeze()),
                        Err(e) => refuse(h, response::BROKER_ERROR, "cannot encode meta", &e),
                    }
                }
                Err(e) => {
                    core.note_error(&e);
                    refuse(h, error_code(&e), "broker acquire meta refused", &e)
                }
            },
            Err(e) => refuse(h, response::PARAM_ERROR, "malformed acquire meta", &e),
        },
        GROUP_LEASE => match GroupLeaseRequest::decode(&frame.body) {
            Ok(req) => {
                if let Err(e) = check_registration(&core.config, peer, req.secret.as_deref()) {
                    tracing::warn!(%peer, host = req.hostname, port = req.serve_port, error = %e,
                        "group lease refused");
                    return reply(h, error_code(&e), Bytes::new());
                }
                match core.group_lease(&req).await {
                    Ok(resp) => {
                        let mut out = BytesMut::new();
                        match resp.encode(&mut out) {
                            Ok(()) => reply(h, response::SUCCESS, out.freeze()),
                            Err(e) => refuse(h, response::BROKER_ERROR, "cannot encode lease", &e),
                        }
                    }
                    Err(e) => {
                        core.note_error(&e);
                        refuse(h, error_code(&e), "group lease refused", &e)
                    }
                }
            }
            Err(e) => refuse(h, response::PARAM_ERROR, "malformed group lease", &e),
        },
        command::HEARTBEAT => reply(h, response::SUCCESS, Bytes::new()),
        other => refuse(h, response::UNKNOWN_CODE, "unknown command", &other),
    }
}
