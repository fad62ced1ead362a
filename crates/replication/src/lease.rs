//! The GROUP_LEASE call to the meta server: report this server, learn its role, epoch and
//! (as master) its lease.

use std::time::Duration;

use bytes::BytesMut;
use qmq_protocol::codes::response;
use qmq_protocol::replication::GROUP_LEASE;
use qmq_protocol::{BrokerRole, GroupLeaseRequest, GroupLeaseResponse};
use qmq_transport::Connection;
use tokio::time::Instant;

use crate::ReplicationError;

/// Who this server is to the meta server.
#[derive(Debug, Clone)]
pub struct LeaseClient {
    /// Meta server TCP address.
    pub meta: String,
    /// Hostname of this server's `broker` row.
    pub hostname: String,
    /// Client port of this server's `broker` row.
    pub serve_port: i32,
    /// Cluster secret, if the meta server requires one.
    pub secret: Option<String>,
}

/// What this server reports in a lease call.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The role it runs as.
    pub role: BrokerRole,
    /// The epoch it follows.
    pub epoch: u64,
    /// Its message-log end (-1: not known yet).
    pub message_end: i64,
    /// Its action-log end (-1: not known yet).
    pub action_end: i64,
}

/// A lease answer and when its request was sent (the lease counts from then).
#[derive(Debug, Clone)]
pub struct Granted {
    /// The meta server's answer.
    pub answer: GroupLeaseResponse,
    /// When the request was sent.
    pub sent: Instant,
}

impl LeaseClient {
    /// Calls GROUP_LEASE once on `conn` (connecting when it is `None` or closed).
    pub async fn call(
        &self,
        conn: &mut Option<Connection>,
        report: Report,
        timeout: Duration,
    ) -> Result<Granted, ReplicationError> {
        let failed = |op: &'static str, e: String| ReplicationError::Io {
            op,
            source: std::io::Error::other(e),
        };
        if conn.as_ref().is_none_or(|c| !c.is_open()) {
            let c = Connection::connect_with(
                &self.meta,
                qmq_protocol::frame::VERSION_8,
                qmq_protocol::frame::DEFAULT_MAX_FRAME,
            )
            .await
            .map_err(|e| failed("connect to meta server", e.to_string()))?;
            *conn = Some(c);
        }
        let Some(c) = conn.as_ref() else {
            return Err(failed("connect to meta server", "no connection".into()));
        };
        let req = GroupLeaseRequest {
            hostname: self.hostname.clone(),
            serve_port: self.serve_port,
            role: report.role,
            epoch: report.epoch as i64,
            message_offset: report.message_end,
            action_offset: report.action_end,
            secret: self.secret.clone(),
        };
        let mut body = BytesMut::new();
        req.encode(&mut body)?;
        let sent = Instant::now();
        let resp = match c.request(GROUP_LEASE, body.freeze(), timeout).await {
            Ok(r) => r,
            Err(e) => {
                *conn = None;
                return Err(failed("lease call to meta server", e.to_string()));
            }
        };
        if resp.header.code != response::SUCCESS {
            return Err(failed(
                "lease call to meta server",
                format!(
                    "meta server answered code {} (is this server added with `qmq tools add-broker`?)",
                    resp.header.code
                ),
            ));
        }
        let answer = GroupLeaseResponse::decode(&resp.body)?;
        Ok(Granted { answer, sent })
    }
}
