//! The meta server's metrics, registered into a [`qmq_metrics::Registry`] (names and their
//! QMQ counterparts: README "Metrics").
//!
//! - Counted as things happen: requests by kind (TCP commands, broker registrations by type,
//!   HTTP endpoints), promotions this server made (by trigger), and database failures seen by
//!   requests and background jobs.
//! - Computed at every scrape from the cached view: broker groups by kind and state, subjects
//!   with a route, and the age of the cached view (it grows while the database is down).
//!
//! Every label value is one of a fixed set, so the number of series is fixed.

use std::fmt;
use std::sync::{Arc, Weak};

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use qmq_protocol::BrokerState;

use crate::core::MetaCore;
use crate::model::{now_ms, GroupKind};
use crate::MetaError;

/// A kind of request (the `kind` label of `qmq_meta_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// TCP CLIENT_REGISTER: a client asking for a subject's route (and heartbeating).
    ClientRegister,
    /// TCP BROKER_REGISTER of type online.
    BrokerOnline,
    /// TCP BROKER_REGISTER of type heartbeat.
    BrokerHeartbeat,
    /// TCP BROKER_REGISTER of type offline.
    BrokerOffline,
    /// TCP BROKER_REGISTER that could not be decoded.
    BrokerRegisterMalformed,
    /// TCP BROKER_ACQUIRE_META: a server asking for its role.
    AcquireMeta,
    /// TCP GROUP_LEASE: a replicated server renewing its lease.
    GroupLease,
    /// TCP HEARTBEAT.
    Heartbeat,
    /// A TCP command this server does not know.
    Unknown,
    /// HTTP `GET /meta/address` (client discovery).
    HttpAddress,
    /// HTTP `GET /broker/directives`.
    HttpDirectives,
    /// HTTP `/admin/...`.
    HttpAdmin,
    /// HTTP `POST /management` (QMQ's admin endpoint).
    HttpManagement,
    /// Any other HTTP path.
    HttpOther,
}

impl RequestKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientRegister => "client_register",
            Self::BrokerOnline => "broker_online",
            Self::BrokerHeartbeat => "broker_heartbeat",
            Self::BrokerOffline => "broker_offline",
            Self::BrokerRegisterMalformed => "broker_register_malformed",
            Self::AcquireMeta => "acquire_meta",
            Self::GroupLease => "group_lease",
            Self::Heartbeat => "heartbeat",
            Self::Unknown => "unknown",
            Self::HttpAddress => "http_address",
            Self::HttpDirectives => "http_directives",
            Self::HttpAdmin => "http_admin",
            Self::HttpManagement => "http_management",
            Self::HttpOther => "http_other",
        }
    }

    /// The kind of an HTTP request for `path`.
    pub fn of_http_path(path: &str) -> Self {
        match path {
            "/meta/address" => Self::HttpAddress,
            "/broker/directives" => Self::HttpDirectives,
            "/management" => Self::HttpManagement,
            p if p.starts_with("/admin/") => Self::HttpAdmin,
            _ => Self::HttpOther,
        }
    }
}

/// What made this server promote a slave (the `trigger` label of `qmq_meta_failovers_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailoverTrigger {
    /// The master's lease ran out (the failover checker).
    LeaseExpired,
    /// An operator asked (`POST /admin/groups/promote`).
    Manual,
}

impl FailoverTrigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::LeaseExpired => "lease_expired",
            Self::Manual => "manual",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: &'static str,
}

/// The meta server's metrics. Create once per process ([`MetaMetrics::new`] registers them)
/// and give it to the server in [`crate::MetaConfig::metrics`].
pub struct MetaMetrics {
    requests: Family<KindLabels, Counter>,
    failovers: Family<TriggerLabels, Counter>,
    store_errors: Counter,
    core: Arc<RwLock<Option<Weak<MetaCore>>>>,
}

impl fmt::Debug for MetaMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetaMetrics").finish_non_exhaustive()
    }
}

impl MetaMetrics {
    /// Creates the meta server's metrics and registers them (and the scrape-time collector)
    /// into `registry`. Call once per registry.
    pub fn new(registry: &qmq_metrics::Registry) -> Arc<Self> {
        let m = Arc::new(Self {
            requests: Family::default(),
            failovers: Family::default(),
            store_errors: Counter::default(),
            core: Arc::default(),
        });
        // Present from the start, so a dashboard shows 0 rather than nothing.
        for trigger in [FailoverTrigger::LeaseExpired, FailoverTrigger::Manual] {
            let _ = m.failovers.get_or_create(&TriggerLabels {
                trigger: trigger.as_str(),
            });
        }
        registry.register(
            "qmq_meta_requests",
            "Requests the meta server answered, per kind (TCP command, broker registration \
             type, HTTP endpoint)",
            m.requests.clone(),
        );
        registry.register(
            "qmq_meta_failovers",
            "Slaves this meta server promoted to master, per trigger",
            m.failovers.clone(),
        );
        registry.register(
            "qmq_meta_store_errors",
            "Database failures met by requests and background jobs (cache refresh, heartbeat \
             sweep, failover checks)",
            m.store_errors.clone(),
        );
        registry.register_collector(CacheCollector {
            core: m.core.clone(),
        });
        m
    }

    /// The server started: scrapes read its cached view (held weakly).
    pub(crate) fn attach(&self, core: Weak<MetaCore>) {
        *self.core.write() = Some(core);
    }

    /// A request of `kind` arrived.
    pub fn request(&self, kind: RequestKind) {
        self.requests
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// This server promoted `n` slaves because of `trigger`.
    pub(crate) fn failovers(&self, trigger: FailoverTrigger, n: usize) {
        self.failovers
            .get_or_create(&TriggerLabels {
                trigger: trigger.as_str(),
            })
            .inc_by(n as u64);
    }

    /// A database failure (HTTP answers 503 for exactly these).
    pub(crate) fn store_error(&self) {
        self.store_errors.inc();
    }

    /// Counts `e` if it is a database failure.
    pub(crate) fn error(&self, e: &MetaError) {
        if is_store_error(e) {
            self.store_error();
        }
    }
}

/// Whether `e` is the database failing (rather than a bad request).
pub(crate) fn is_store_error(e: &MetaError) -> bool {
    matches!(
        e,
        MetaError::Db(_) | MetaError::Migrate(_) | MetaError::Corrupt(_)
    )
}

fn kind_label(k: GroupKind) -> &'static str {
    match k {
        GroupKind::Normal => "normal",
        GroupKind::Delay => "delay",
    }
}

fn state_label(s: BrokerState) -> &'static str {
    match s {
        BrokerState::ReadWrite => "rw",
        BrokerState::Read => "r",
        BrokerState::Write => "w",
        BrokerState::None => "nrw",
    }
}

/// Encodes the gauges read from the cached view.
struct CacheCollector {
    core: Arc<RwLock<Option<Weak<MetaCore>>>>,
}

impl fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheCollector").finish_non_exhaustive()
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(core) = self.core.read().as_ref().and_then(Weak::upgrade) else {
            return Ok(());
        };
        const KINDS: [GroupKind; 2] = [GroupKind::Normal, GroupKind::Delay];
        const STATES: [BrokerState; 4] = [
            BrokerState::ReadWrite,
            BrokerState::Read,
            BrokerState::Write,
            BrokerState::None,
        ];
        let (counts, subjects, loaded_ms) = core.cache.read(|v| {
            let mut counts = [[0i64; 4]; 2];
            for g in v.groups.values() {
                let k = KINDS.iter().position(|k| *k == g.kind).unwrap_or(0);
                let s = STATES.iter().position(|s| *s == g.state).unwrap_or(3);
                counts[k][s] += 1;
            }
            (counts, v.routes.len(), v.loaded_ms)
        });
        {
            let mut family = encoder.encode_descriptor(
                "qmq_meta_broker_groups",
                "Broker groups registered, per kind (normal, delay) and state (rw, r, w, nrw: \
                 offline or heartbeat timed out)",
                None,
                MetricType::Gauge,
            )?;
            for (k, kind) in KINDS.iter().enumerate() {
                for (s, state) in STATES.iter().enumerate() {
                    ConstGauge::new(counts[k][s]).encode(family.encode_family(&[
                        ("kind", kind_label(*kind)),
                        ("state", state_label(*state)),
                    ])?)?;
                }
            }
        }
        ConstGauge::new(i64::try_from(subjects).unwrap_or(i64::MAX)).encode(
            encoder.encode_descriptor(
                "qmq_meta_subjects",
                "Subjects with a route to broker groups",
                None,
                MetricType::Gauge,
            )?,
        )?;
        ConstGauge::new(now_ms().saturating_sub(loaded_ms) as f64 / 1000.0).encode(
            encoder.encode_descriptor(
                "qmq_meta_cache_age_seconds",
                "Age of the cached view requests are answered from (refreshed every few \
                 seconds; grows while the database is unreachable)",
                None,
                MetricType::Gauge,
            )?,
        )?;
        Ok(())
    }
}
