//! Standalone mode: one broker next to the meta server, registered without a manual step.
//!
//! In a cluster an operator adds each server with add-broker; a standalone deployment calls
//! [`register_local_broker`] at start-up instead. It is idempotent, so it runs on every start.
//! The broker then starts as usual: BROKER_ACQUIRE_META finds its group and role, and its
//! BROKER_REGISTER online/heartbeats make the group routable.

use crate::model::BrokerSpec;
use crate::store::Store;
use crate::MetaError;

/// The usual standalone broker: group `standalone`, master, on `hostname` / `ip` with QMQ's
/// default ports 20881 (serve) and 20882 (sync).
pub fn default_local_broker(hostname: &str, ip: &str) -> BrokerSpec {
    BrokerSpec {
        group: "standalone".into(),
        role: qmq_protocol::BrokerRole::Master.code(),
        hostname: hostname.into(),
        ip: ip.into(),
        serve_port: 20881,
        sync_port: 20882,
    }
}

/// Makes sure `broker` is registered: adds it if absent, accepts it if registered identically,
/// and updates its IP / sync port if the same group role on the same host:port changed them.
/// Fails with [`MetaError::Conflict`] if its host:port or group role belongs to another server.
pub async fn register_local_broker(store: &Store, broker: &BrokerSpec) -> Result<(), MetaError> {
    if let Some(existing) = store
        .broker_by_host(&broker.hostname, broker.serve_port)
        .await?
    {
        if existing.group != broker.group || existing.role != broker.role {
            return Err(MetaError::Conflict(format!(
                "{}:{} is registered as role {} of group {}",
                broker.hostname, broker.serve_port, existing.role, existing.group
            )));
        }
        if existing != *broker {
            store.replace_broker(&existing, broker).await?;
        }
        return Ok(());
    }
    if store.insert_broker(broker).await? {
        tracing::info!(
            group = broker.group,
            host = broker.hostname,
            "registered local broker"
        );
        return Ok(());
    }
    Err(MetaError::Conflict(format!(
        "group {} already has a server with role {} on another host",
        broker.group, broker.role
    )))
}
