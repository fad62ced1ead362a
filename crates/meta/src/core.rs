//! The meta server's logic, shared by the TCP and HTTP front ends: client routes, broker
//! registration and heartbeats, broker meta acquisition.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use qmq_protocol::{
    BrokerAcquireMetaRequest, BrokerAcquireMetaResponse, BrokerGroup, BrokerRegisterRequest,
    BrokerRequestType, BrokerRole, BrokerState, ClientRequestType, ClientType, MetaInfoRequest,
    MetaInfoResponse, OnOfflineState,
};

use crate::cache::Cache;
use crate::model::{now_ms, BrokerGroupInfo, ClientRecord, GroupKind};
use crate::store::{is_master, Store};
use crate::{routing, subject, MetaConfig, MetaError};

/// How often one client's heartbeats are written to the database at most.
const CLIENT_TOUCH_INTERVAL_MS: i64 = 60_000;

/// Timestamp QMQ answers with when it refuses a client registration.
const REFUSED_TIMESTAMP: i64 = -2;

type ClientKey = (String, i32, String, String);

/// Store, cache and settings of one meta server.
#[derive(Debug)]
pub struct MetaCore {
    pub(crate) store: Store,
    pub(crate) cache: Cache,
    pub(crate) config: MetaConfig,
    /// When this server started: no group is expired during its first heartbeat timeout, so
    /// brokers that could not reach a restarting meta server get a chance to heartbeat again.
    started_ms: i64,
    client_touched: Mutex<HashMap<ClientKey, i64>>,
    /// Groups (and the epoch) for which "no slave can take over" was logged already.
    pub(crate) no_candidate_logged: Mutex<HashMap<String, i64>>,
}

impl MetaCore {
    /// A core over `store`, with the cache loaded once.
    pub async fn new(store: Store, config: MetaConfig) -> Result<Self, MetaError> {
        let cache = Cache::default();
        cache.refresh(&store).await?;
        Ok(Self {
            store,
            cache,
            config,
            started_ms: now_ms(),
            client_touched: Mutex::new(HashMap::new()),
            no_candidate_logged: Mutex::new(HashMap::new()),
        })
    }

    /// Counts `e` in the metrics if it is a database failure.
    pub(crate) fn note_error(&self, e: &MetaError) {
        if let Some(m) = &self.config.metrics {
            m.error(e);
        }
    }

    /// Counts a request of `kind` in the metrics.
    pub(crate) fn note_request(&self, kind: crate::metrics::RequestKind) {
        if let Some(m) = &self.config.metrics {
            m.request(kind);
        }
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Reloads the cache; on failure the old view stays.
    pub async fn refresh(&self) -> Result<(), MetaError> {
        self.cache.refresh(&self.store).await
    }

    /// Marks groups without a recent heartbeat unavailable; returns their names.
    pub async fn expire_heartbeats(&self) -> Result<Vec<String>, MetaError> {
        let timeout = i64::try_from(self.config.heartbeat_timeout_ms).unwrap_or(i64::MAX);
        let now = now_ms();
        if now.saturating_sub(self.started_ms) < timeout {
            return Ok(Vec::new());
        }
        let expired = self
            .store
            .expire_broker_groups(now.saturating_sub(timeout))
            .await?;
        if !expired.is_empty() {
            tracing::warn!(groups = ?expired, "broker groups lost their heartbeat, marked NRW");
            self.refresh().await?;
        }
        Ok(expired)
    }

    // ---- CLIENT_REGISTER ----

    /// Answers a producer's or consumer's CLIENT_REGISTER with its route and on/offline state.
    pub async fn client_register(&self, req: &MetaInfoRequest) -> MetaInfoResponse {
        let client_type = req.client_type();
        let refused = || MetaInfoResponse {
            timestamp: REFUSED_TIMESTAMP,
            subject: req.subject().to_owned(),
            consumer_group: req.consumer_group().to_owned(),
            state: OnOfflineState::Offline,
            client_type_code: client_type.code() as u8,
            groups: Vec::new(),
        };
        let real = subject::real_subject(req.subject());
        if !subject::is_valid(real) {
            tracing::warn!(
                subject = req.subject(),
                "client register with an invalid subject"
            );
            return refused();
        }
        self.record_client(req, real).await;

        let names = match client_type {
            ClientType::DelayProducer => self
                .cache
                .read(|v| routing::delay_groups(v, real, self.config.min_group_num)),
            _ => match routing::realtime_groups(
                &self.store,
                &self.cache,
                real,
                self.config.min_group_num,
            )
            .await
            {
                Ok(names) => names,
                Err(e) => {
                    tracing::warn!(subject = real, error = %e, "no route for subject");
                    Vec::new()
                }
            },
        };
        let producer = matches!(
            client_type,
            ClientType::Producer | ClientType::DelayProducer
        );
        self.cache.read(|v| {
            let groups = names
                .iter()
                .filter_map(|n| v.groups.get(n))
                .filter(|g| g.state != BrokerState::None)
                .filter(|g| !producer || (g.state.can_write() && !v.is_readonly(&g.name, real)))
                .map(|g| BrokerGroup {
                    name: g.name.clone(),
                    master: g.master_address.clone(),
                    update_time: g.updated_ms,
                    state: g.state,
                })
                .collect();
            MetaInfoResponse {
                timestamp: v.loaded_ms,
                subject: req.subject().to_owned(),
                consumer_group: req.consumer_group().to_owned(),
                state: v.client_state(req.client_id(), real, req.consumer_group()),
                client_type_code: client_type.code() as u8,
                groups,
            }
        })
    }

    /// Stores the client (always on ONLINE, at most once a minute on heartbeats); a database
    /// failure is logged and does not stop the route from being served.
    async fn record_client(&self, req: &MetaInfoRequest, real: &str) {
        let now = now_ms();
        let key: ClientKey = (
            real.to_owned(),
            req.client_type().code(),
            req.consumer_group().to_owned(),
            req.client_id().to_owned(),
        );
        let due = {
            let touched = self.client_touched.lock();
            req.request_type() == ClientRequestType::Online
                || touched
                    .get(&key)
                    .is_none_or(|t| now - t >= CLIENT_TOUCH_INTERVAL_MS)
        };
        if !due {
            return;
        }
        let record = ClientRecord {
            subject: key.0.clone(),
            client_type: key.1,
            consumer_group: key.2.clone(),
            client_id: key.3.clone(),
            app_code: req.app_code().to_owned(),
            room: req
                .attrs
                .iter()
                .find(|(k, _)| k == qmq_protocol::meta::keys::CLIENT_LDC)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            last_seen_ms: now,
        };
        match self.store.upsert_client(&record).await {
            Ok(()) => {
                let mut touched = self.client_touched.lock();
                touched.retain(|_, t| now - *t < 10 * CLIENT_TOUCH_INTERVAL_MS);
                touched.insert(key, now);
            }
            Err(e) => {
                self.note_error(&e);
                tracing::warn!(error = %e, client = req.client_id(), "cannot record client")
            }
        }
    }

    // ---- BROKER_REGISTER ----

    /// Handles a broker's online / heartbeat / offline. Only masters are recorded (slaves and
    /// backups are acknowledged). A live group cannot be taken over by another address.
    pub async fn broker_register(&self, req: &BrokerRegisterRequest) -> Result<(), MetaError> {
        if !is_master(req.role) {
            return Ok(());
        }
        if req.group_name.is_empty() || req.broker_address.is_empty() {
            return Err(MetaError::InvalidArgument(
                "group name and broker address are required".into(),
            ));
        }
        let kind = GroupKind::of_role(req.role);
        let existing = self.store.broker_group(&req.group_name).await?;
        if let Some(lease) = self.store.group_lease_state(&req.group_name).await? {
            // A group under GROUP_LEASE changes masters only through promotions.
            if lease.epoch >= 1 && lease.master_address != req.broker_address {
                return Err(MetaError::Conflict(format!(
                    "broker group {} is replicated with leases (epoch {}) and its master is \
                     {}; {} cannot register as its master",
                    req.group_name, lease.epoch, lease.master_address, req.broker_address
                )));
            }
        }
        if let Some(g) = &existing {
            if g.master_address != req.broker_address && g.state != BrokerState::None {
                return Err(MetaError::Conflict(format!(
                    "broker group {} is served by {} which is alive; {} cannot register under \
                     the same name",
                    g.name, g.master_address, req.broker_address
                )));
            }
            if g.kind != kind {
                return Err(MetaError::Conflict(format!(
                    "broker group {} is a {:?} group; a {:?} server cannot join it",
                    g.name, g.kind, req.role
                )));
            }
        }
        let state = match req.request_type {
            BrokerRequestType::Online => BrokerState::ReadWrite,
            BrokerRequestType::Heartbeat => req.state,
            BrokerRequestType::Offline => BrokerState::None,
        };
        let same_master = existing
            .as_ref()
            .is_some_and(|g| g.master_address == req.broker_address);
        if req.request_type == BrokerRequestType::Heartbeat && same_master {
            self.store
                .heartbeat_broker_group(&req.group_name, state)
                .await?;
        } else {
            // Online, offline, or a heartbeat from a group this database does not know yet
            // (e.g. after the meta database was rebuilt): record it in full.
            self.store
                .upsert_broker_group(&req.group_name, kind, &req.broker_address, state)
                .await?;
        }
        if existing
            .as_ref()
            .is_none_or(|g| g.state != state || !same_master)
        {
            tracing::info!(group = req.group_name, address = req.broker_address, ?state,
                request = ?req.request_type, "broker group registered");
        }
        // The cache ignores heartbeat times: only put a group whose routing facts changed.
        let cached = self.cache.read(|v| v.groups.get(&req.group_name).cloned());
        let changed = cached.is_none_or(|c| {
            c.state != state || c.master_address != req.broker_address || c.kind != kind
        });
        if changed {
            if let Some(g) = self.store.broker_group(&req.group_name).await? {
                self.cache.put_group(g);
            }
        }
        Ok(())
    }

    // ---- BROKER_ACQUIRE_META ----

    /// Tells a starting server its group, role and (slaves, backups) the address to sync from.
    pub async fn acquire_meta(
        &self,
        req: &BrokerAcquireMetaRequest,
    ) -> Result<BrokerAcquireMetaResponse, MetaError> {
        let broker = self
            .store
            .broker_by_host(&req.hostname, req.port)
            .await?
            .ok_or_else(|| {
                MetaError::NotFound(format!(
                    "no broker registered for {}:{} (add it with add-broker)",
                    req.hostname, req.port
                ))
            })?;
        let role = BrokerRole::from_code(broker.role)
            .map_err(|_| MetaError::Corrupt(format!("broker role code {}", broker.role)))?;
        let source = match role {
            BrokerRole::Slave | BrokerRole::DelaySlave => Some(is_master as fn(BrokerRole) -> bool),
            BrokerRole::Backup | BrokerRole::DelayBackup => {
                Some((|r| matches!(r, BrokerRole::Slave | BrokerRole::DelaySlave)) as fn(_) -> _)
            }
            _ => None,
        };
        let master = match source {
            None => String::new(),
            Some(wanted) => {
                let peers = self.store.brokers(Some(&broker.group)).await?;
                let peer = peers
                    .iter()
                    .find(|b| BrokerRole::from_code(b.role).is_ok_and(wanted))
                    .ok_or_else(|| {
                        MetaError::NotFound(format!(
                            "group {} has no server to sync {:?} from",
                            broker.group, role
                        ))
                    })?;
                format!("{}:{}", peer.ip, peer.sync_port)
            }
        };
        Ok(BrokerAcquireMetaResponse {
            name: broker.group,
            master,
            role,
        })
    }

    /// Groups currently cached, sorted by name.
    pub fn cached_groups(&self) -> Vec<BrokerGroupInfo> {
        let mut groups: Vec<_> = self.cache.read(|v| v.groups.values().cloned().collect());
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        groups
    }

    /// The refresh period.
    pub fn refresh_interval(&self) -> Duration {
        self.config.refresh_interval()
    }

    /// The failover checker's period.
    pub fn failover_check_interval(&self) -> Duration {
        self.config.failover_check_interval()
    }

    /// The heartbeat sweep period: a fraction of the timeout, between 20 ms and 5 s.
    pub fn sweep_interval(&self) -> Duration {
        (self.config.heartbeat_timeout() / 5)
            .clamp(Duration::from_millis(20), Duration::from_secs(5))
    }
}
