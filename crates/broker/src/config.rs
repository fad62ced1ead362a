//! Broker settings, with QMQ's defaults where QMQ has one (retry delay, new-group start,
//! consumer lease) and the limits that bound what one client can make the broker hold.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use qmq_store::{ResetTo, StoreConfig};

use crate::metrics::BrokerMetrics;

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
    /// How often offline consumers are looked for (and idle ones forgotten).
    pub consumer_check_interval: Duration,
    /// A consumer not seen for this long (at least `consumer_lease`) is forgotten from memory;
    /// its pull log and progress stay in the store. Bounds the map of consumers by recent
    /// activity instead of by every name a client ever sent.
    pub consumer_forget: Duration,
    /// How long a message stays in a `%RETRY%` subject before it is served (QMQ's
    /// `message.retry.delay.seconds`, 5 s): the back-off between a consumer's failure and the
    /// redelivery. Measured from the time the broker stored the retry message.
    pub retry_delay: Duration,
    /// Where a consumer group this broker has never seen starts on a subject: QMQ starts it at
    /// the latest message (the default). A pull may ask for the earliest explicitly (see
    /// [`qmq_protocol::pull::START_EARLIEST`]); retry subjects always start at the earliest,
    /// so a new group loses no retries.
    pub new_group_start: ResetTo,
    /// Most bytes of messages in one pull response or redelivery (kept below
    /// `max_frame_bytes`); a single larger message is still delivered alone.
    pub max_pull_bytes: usize,
    /// Requests one connection may have in progress (parked pulls included: a client process
    /// long-polls every subscription, and its retry subject, on one connection); once reached
    /// the broker stops reading that connection until one finishes.
    pub max_in_flight: usize,
    /// Bytes of request frames one connection may have in progress (at least one frame of
    /// `max_frame_bytes` always fits).
    pub max_in_flight_bytes: usize,
    /// Most bytes a SEND frame may take once decoded (attributes cost more decoded than on
    /// the wire); a larger batch is refused whole before it is fully decoded.
    pub max_decoded_send_bytes: usize,
    /// How long a stored message id is remembered per subject, so that the same id sent again
    /// is answered `DUPLICATE` and not stored twice ([`crate::dedup`]); zero turns the window
    /// off. Default 2 minutes (JetStream's duplicate window).
    pub dedup_window: Duration,
    /// Most ids the duplicate window holds across all subjects (oldest evicted first); about
    /// 72 bytes each at most. Default 1,000,000 (at most about 72 MB).
    pub dedup_window_max_ids: usize,
    /// Where the broker records its metrics (None: it records none). Give every run of a
    /// process's broker the same one: it is registered once.
    pub metrics: Option<Arc<BrokerMetrics>>,
    /// Make OpenTelemetry spans (`Qmq.Broker.Append`, see [`crate::server`]) for the messages
    /// that carry a trace context, with the global tracer provider. Off by default: then the
    /// send path does not look at a message's attributes for tracing at all.
    pub trace_spans: bool,
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
            consumer_forget: Duration::from_secs(600),
            retry_delay: Duration::from_secs(5),
            new_group_start: ResetTo::Latest,
            max_pull_bytes: 8 * 1024 * 1024,
            max_in_flight: 1024,
            max_in_flight_bytes: 2 * qmq_protocol::frame::DEFAULT_MAX_FRAME,
            max_decoded_send_bytes: 4 * qmq_protocol::frame::DEFAULT_MAX_FRAME,
            dedup_window: Duration::from_secs(120),
            dedup_window_max_ids: 1_000_000,
            metrics: None,
            trace_spans: false,
        }
    }

    /// The byte budget of a pull response: `max_pull_bytes`, kept 64 KiB below the frame limit
    /// so headers and per-message framing always fit.
    pub fn pull_budget(&self) -> usize {
        self.max_pull_bytes
            .min(self.max_frame_bytes.saturating_sub(64 * 1024))
            .max(1)
    }
}
