//! Registering a server with the meta server: BROKER_REGISTER online, then heartbeats, then
//! offline. Brokers and delay servers both do it (with their own group, address and role).
//! When the server has a cluster secret, every request carries it in the extension block after
//! QMQ's fields (`qmq_protocol::meta`), which a meta server with a secret requires and a Java
//! meta server does not read.

use std::time::Duration;

use bytes::BytesMut;
use qmq_protocol::codes::{command, response};
use qmq_protocol::{BrokerRegisterRequest, BrokerRequestType, BrokerRole, BrokerState};
use qmq_transport::Connection;

use crate::BrokerError;

/// Who registers where.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Meta server TCP address.
    pub meta: String,
    /// The server's group name.
    pub group: String,
    /// The address clients use to reach the server.
    pub address: String,
    /// The server's role (a broker master, a delay master...).
    pub role: BrokerRole,
    /// The cluster secret to present, if the meta server requires one.
    pub secret: Option<String>,
}

impl Registration {
    /// Sends one BROKER_REGISTER of `kind` with `state`.
    pub async fn register(
        &self,
        kind: BrokerRequestType,
        state: BrokerState,
    ) -> Result<(), BrokerError> {
        let req = BrokerRegisterRequest {
            request_type: kind,
            group_name: self.group.clone(),
            broker_address: self.address.clone(),
            role: self.role,
            state,
        };
        let mut body = BytesMut::new();
        req.encode_with_secret(self.secret.as_deref(), &mut body)?;
        let failed = |op: &'static str, e: String| BrokerError::Io {
            op,
            source: std::io::Error::other(e),
        };
        let conn = Connection::connect_with(
            &self.meta,
            qmq_protocol::frame::VERSION_8,
            qmq_protocol::frame::DEFAULT_MAX_FRAME,
        )
        .await
        .map_err(|e| failed("connect to meta server", e.to_string()))?;
        let resp = conn
            .request(
                command::BROKER_REGISTER,
                body.freeze(),
                Duration::from_secs(5),
            )
            .await
            .map_err(|e| failed("register with meta server", e.to_string()))?;
        if resp.header.code != response::SUCCESS {
            return Err(failed(
                "register with meta server",
                format!("meta server answered code {}", resp.header.code),
            ));
        }
        Ok(())
    }

    /// Heartbeats every `interval` forever (ONLINE first unless `online` already succeeded),
    /// reporting the state `state()` returns each time. Failures are logged and retried.
    pub async fn heartbeat_loop(
        self,
        interval: Duration,
        online: bool,
        state: impl Fn() -> BrokerState,
    ) {
        let mut kind = if online {
            BrokerRequestType::Heartbeat
        } else {
            BrokerRequestType::Online
        };
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.register(kind, state()).await {
                Ok(()) => kind = BrokerRequestType::Heartbeat,
                Err(e) => {
                    tracing::warn!(meta = %self.meta, error = %e, "meta server registration failed")
                }
            }
        }
    }
}
