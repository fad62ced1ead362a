//! Broker settings.

use std::net::SocketAddr;
use std::time::Duration;

use qmq_store::StoreConfig;

/// Everything a broker needs to start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Address to listen on for clients (default port 20881).
    pub listen: SocketAddr,
    /// The address clients should use, as registered with the meta server (defaults to the
    /// bound address).
    pub advertised: Option<String>,
    /// Broker group name registered with the meta server.
    pub group: String,
    /// Meta server TCP address to register and heartbeat with, if any.
    pub meta: Option<String>,
    /// Secret presented to the meta server when registering, heartbeating and going offline
    /// (a meta server with a cluster secret refuses registrations without it).
    pub cluster_secret: Option<String>,
    /// How often to heartbeat the meta server.
    pub heartbeat_interval: Duration,
    /// Storage settings.
    pub store: StoreConfig,
    /// Largest message accepted (stored form), in bytes; larger ones are refused per message.
    pub max_message_bytes: usize,
    /// Largest frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Tasks serving pull requests.
    pub pull_workers: usize,
    /// A consumer not seen for this long is offline: what it pulled and did not ack goes to its
    /// group's retry subject, for the group's other consumers.
    pub consumer_lease: Duration,
    /// How often offline consumers are looked for.
    pub consumer_check_interval: Duration,
}

impl BrokerConfig {
    /// Defaults for a broker storing under `store.dir`, listening on 0.0.0.0:20881.
    pub fn new(store: StoreConfig) -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 20881)),
            advertised: None,
            group: "broker-1".into(),
            meta: None,
            cluster_secret: None,
            heartbeat_interval: Duration::from_secs(10),
            store,
            max_message_bytes: 4 * 1024 * 1024,
            max_frame_bytes: qmq_protocol::frame::DEFAULT_MAX_FRAME,
            pull_workers: 4,
            consumer_lease: Duration::from_secs(180),
            consumer_check_interval: Duration::from_secs(30),
        }
    }
}
