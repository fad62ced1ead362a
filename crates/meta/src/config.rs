//! Meta server configuration.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::metrics::MetaMetrics;
use crate::MetaError;

/// How a meta server runs. `Default` gives QMQ's defaults: HTTP 8080, TCP 20880,
/// `min.group.num` 2, 30 s heartbeat timeout, embedded SQLite in `data_dir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MetaConfig {
    /// Directory of the embedded SQLite database (`meta.db`), used when `database_url` is unset.
    pub data_dir: PathBuf,
    /// `postgres://...` or `mysql://...` (or an explicit `sqlite:` URL); `None` = embedded SQLite.
    pub database_url: Option<String>,
    /// HTTP listener: discovery (`GET /meta/address`), admin API, broker directives.
    pub http_addr: SocketAddr,
    /// TCP listener for the QMQ meta protocol.
    pub tcp_addr: SocketAddr,
    /// Host clients should use to reach the TCP listener (answered by `/meta/address`).
    /// Default: the TCP bind IP, or this machine's outbound IP when bound to all interfaces.
    pub advertised_host: Option<String>,
    /// Broker groups per realtime subject (`min.group.num`), capped at the groups that exist.
    pub min_group_num: usize,
    /// A group whose master sent no heartbeat for this long is marked unavailable (`NRW`).
    pub heartbeat_timeout_ms: u64,
    /// How often the cached view is reloaded from the database.
    pub refresh_interval_ms: u64,
    /// Tokens accepted by the admin API (header `X-Api-Token`). Empty = admin API refuses all.
    pub admin_tokens: Vec<String>,
    /// Largest TCP frame accepted, bytes.
    pub max_frame: usize,
    /// Secret brokers and delay servers must present to register, heartbeat or go offline
    /// (see [`crate::auth`]). `None` = no secret.
    pub cluster_secret: Option<String>,
    /// Addresses allowed to register without the secret (Java servers cannot send it). With
    /// no secret and no trusted address, every registration is accepted, as in QMQ.
    pub trusted_broker_addrs: Vec<IpAddr>,
    /// How long a master may accept writes after a GROUP_LEASE renewal (from when it sent
    /// the request).
    pub lease_ms: u64,
    /// Extra wait after a lease's end before another server may take over (covers clock skew
    /// between meta servers).
    pub lease_grace_ms: u64,
    /// How often this meta server looks for groups whose master lost its lease.
    pub failover_check_ms: u64,
    /// A GROUP_LEASE report older than this does not make a server a promotion candidate.
    pub replica_stale_ms: u64,
    /// Where the server records its metrics (None: nowhere). Not read from files.
    #[serde(skip)]
    pub metrics: Option<Arc<MetaMetrics>>,
}

impl Default for MetaConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data/meta"),
            database_url: None,
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tcp_addr: SocketAddr::from(([0, 0, 0, 0], 20880)),
            advertised_host: None,
            min_group_num: 2,
            heartbeat_timeout_ms: 30_000,
            refresh_interval_ms: 5_000,
            admin_tokens: Vec::new(),
            max_frame: 1024 * 1024,
            cluster_secret: None,
            trusted_broker_addrs: Vec::new(),
            lease_ms: 2_000,
            lease_grace_ms: 500,
            failover_check_ms: 250,
            replica_stale_ms: 3_000,
            metrics: None,
        }
    }
}

impl MetaConfig {
    /// The heartbeat timeout.
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }

    /// The cache refresh period.
    pub fn refresh_interval(&self) -> Duration {
        Duration::from_millis(self.refresh_interval_ms)
    }

    /// The failover checker's period.
    pub fn failover_check_interval(&self) -> Duration {
        Duration::from_millis(self.failover_check_ms)
    }

    /// Applies QMQ `metaserver.properties` keys (`meta.server.discover.port`,
    /// `meta.server.port`, `min.group.num`, `heartbeat.timeout.ms`, `refresh.period.seconds`)
    /// so an existing QMQ configuration file can be reused. Unknown keys are ignored.
    pub fn apply_properties(&mut self, text: &str) -> Result<(), MetaError> {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let Some((key, value)) = line.split_once(['=', ':']) else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let num = |what: &str| -> Result<u64, MetaError> {
                value
                    .parse()
                    .map_err(|_| MetaError::Config(format!("{what}: {value:?} is not a number")))
            };
            match key {
                "meta.server.discover.port" => self.http_addr.set_port(num(key)? as u16),
                "meta.server.port" => self.tcp_addr.set_port(num(key)? as u16),
                "min.group.num" => self.min_group_num = num(key)? as usize,
                "heartbeat.timeout.ms" => self.heartbeat_timeout_ms = num(key)?,
                "refresh.period.seconds" => self.refresh_interval_ms = num(key)? * 1000,
                _ => {}
            }
        }
        self.validate()
    }

    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), MetaError> {
        if self.min_group_num == 0 {
            return Err(MetaError::Config("min_group_num must be at least 1".into()));
        }
        if self.heartbeat_timeout_ms == 0 || self.refresh_interval_ms == 0 {
            return Err(MetaError::Config(
                "heartbeat_timeout_ms and refresh_interval_ms must be positive".into(),
            ));
        }
        if self.lease_ms == 0 || self.failover_check_ms == 0 || self.replica_stale_ms == 0 {
            return Err(MetaError::Config(
                "lease_ms, failover_check_ms and replica_stale_ms must be positive".into(),
            ));
        }
        let max = i64::MAX as u64 / 4;
        if self.lease_ms > max || self.lease_grace_ms > max || self.replica_stale_ms > max {
            return Err(MetaError::Config(
                "lease_ms, lease_grace_ms and replica_stale_ms are too large".into(),
            ));
        }
        if self.cluster_secret.as_deref().is_some_and(str::is_empty) {
            return Err(MetaError::Config(
                "cluster_secret must not be empty (leave it unset for none)".into(),
            ));
        }
        if self.max_frame < 64 {
            return Err(MetaError::Config(
                "max_frame must be at least 64 bytes".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qmq_properties_are_understood() {
        let mut c = MetaConfig::default();
        c.apply_properties(
            "#comment\nmeta.server.discover.port=18080\nmeta.server.port=20990\nmin.group.num=3\n",
        )
        .unwrap();
        assert_eq!(c.http_addr.port(), 18080);
        assert_eq!(c.tcp_addr.port(), 20990);
        assert_eq!(c.min_group_num, 3);
        assert!(c.apply_properties("min.group.num=zero").is_err());
        assert!(c.apply_properties("min.group.num=0").is_err());
    }
}
