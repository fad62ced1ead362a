//! Replication roles, master leases and automatic failover (qmq-rs's GROUP_LEASE).
//!
//! Every server of a replicated group calls GROUP_LEASE about three times per lease: it reports
//! its role, the epoch it follows and its log ends, and learns its role, the group's epoch and
//! (master) how long it may accept writes, or (slave) where to replicate from.
//!
//! The meta **database** is the arbiter. A group's epoch only ever changes through conditional
//! updates (`... WHERE epoch = <epoch read>`), a lease is only renewed for the group's current
//! epoch after the fence, and a promotion raises the epoch, swaps the roles and records the new
//! epoch in one transaction. Two meta servers sharing a database therefore never make two
//! masters for one epoch, and a promoted master gets no lease before the previous master's
//! lease (plus [`MetaConfig::lease_grace_ms`](crate::MetaConfig)) surely ended.
//!
//! Each meta server runs [`MetaCore::check_failover`] every `failover_check_ms`: a group whose
//! master's lease ended more than the grace ago is marked `NRW` (clients stop routing to it)
//! and its freshest slave following the group's epoch is promoted. Operators promote by hand
//! with [`MetaCore::promote`] (admin API, `qmq tools promote`).

use qmq_protocol::{BrokerRole, BrokerState, EpochStart, GroupLeaseRequest, GroupLeaseResponse};
use serde::{Deserialize, Serialize};

use crate::core::MetaCore;
use crate::model::{
    now_ms, BrokerGroupInfo, BrokerSpec, EpochRecord, GroupKind, GroupLeaseState, ReplicaReport,
};
use crate::store::{is_master, PromotionPlan};
use crate::MetaError;

/// Attempts of a manual promotion against concurrent lease renewals.
const PROMOTE_TRIES: usize = 5;

/// Parameters of a manual promotion (`POST /admin/groups/promote`, `qmq tools promote`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PromoteParams {
    /// The group.
    pub broker_group: String,
    /// Hostname of the slave to promote (with `serve_port`); default: the freshest slave.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Client port of the slave to promote (with `hostname`).
    #[serde(default)]
    pub serve_port: Option<i32>,
}

/// A promotion that happened (automatic or manual).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The group.
    pub group: String,
    /// The epoch that ended.
    pub from_epoch: i64,
    /// The new epoch.
    pub epoch: i64,
    /// Hostname of the new master.
    pub hostname: String,
    /// Client port of the new master.
    pub serve_port: i32,
    /// The group's new master address, `ip:serve_port`.
    pub master_address: String,
    /// The previous master, `hostname:serve_port` (empty if the group had no master row).
    pub previous_master: String,
    /// The new master's message-log end as last reported.
    pub message_offset: i64,
    /// The new master's action-log end as last reported.
    pub action_offset: i64,
    /// The new master gets no lease before this time, ms since the epoch.
    pub fence_until_ms: i64,
}

/// One server of a group as operators see it: its `broker` row and its last report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMember {
    /// `hostname:serve_port`.
    pub server: String,
    /// Its IP address.
    pub ip: String,
    /// Its role in the `broker` table (code).
    pub role: i32,
    /// The role's name.
    pub role_name: String,
    /// The role it last reported running as (code), if it ever reported.
    pub reported_role: Option<i32>,
    /// The epoch it last reported following.
    pub epoch: Option<i64>,
    /// Its message-log end.
    pub message_offset: Option<i64>,
    /// Its action-log end.
    pub action_offset: Option<i64>,
    /// The master's reported message-log end minus this server's.
    pub message_lag: Option<i64>,
    /// The master's reported action-log end minus this server's.
    pub action_lag: Option<i64>,
    /// How old its last report is, ms.
    pub report_age_ms: Option<i64>,
}

/// A broker group with its replication state (`GET /admin/groups/replication`,
/// `qmq tools list-broker-groups`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReplication {
    /// The group as clients are routed to it.
    #[serde(flatten)]
    pub group: BrokerGroupInfo,
    /// The group's epoch (0: no server ever leased).
    pub epoch: i64,
    /// `"none"`, `"fenced"`, `"expired"` or `"<n> ms left"`.
    pub lease: String,
    /// Remaining lease, ms (0 when none runs).
    pub lease_remaining_ms: i64,
    /// End of the master's lease, ms since the epoch (0: none this epoch).
    pub lease_until_ms: i64,
    /// No lease before this time, ms since the epoch.
    pub fence_until_ms: i64,
    /// The group's servers.
    pub members: Vec<ReplicaMember>,
    /// The group's epochs, oldest first.
    pub epochs: Vec<EpochRecord>,
}

/// The master and slave role codes of a group kind.
fn roles_of(kind: GroupKind) -> (BrokerRole, BrokerRole) {
    match kind {
        GroupKind::Normal => (BrokerRole::Master, BrokerRole::Slave),
        GroupKind::Delay => (BrokerRole::DelayMaster, BrokerRole::DelaySlave),
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn role_of(b: &BrokerSpec) -> Result<BrokerRole, MetaError> {
    BrokerRole::from_code(b.role).map_err(|_| {
        MetaError::Corrupt(format!(
            "broker {}:{} has role code {}",
            b.hostname, b.serve_port, b.role
        ))
    })
}

impl MetaCore {
    fn lease_ms(&self) -> i64 {
        ms(self.config.lease_ms)
    }

    fn grace_ms(&self) -> i64 {
        ms(self.config.lease_grace_ms)
    }

    /// Puts the group's current row into the cache when its routing facts differ from the
    /// cached ones (or always, with `force`).
    async fn sync_cached_group(
        &self,
        name: &str,
        expect: Option<(BrokerState, &str)>,
    ) -> Result<(), MetaError> {
        if let Some((state, address)) = expect {
            let same = self.cache.read(|v| {
                v.groups
                    .get(name)
                    .is_some_and(|g| g.state == state && g.master_address == address)
            });
            if same {
                return Ok(());
            }
        }
        if let Some(g) = self.store.broker_group(name).await? {
            self.cache.put_group(g);
        }
        Ok(())
    }

    // ---- GROUP_LEASE ----

    /// Answers a server's GROUP_LEASE (the caller has checked the cluster secret): records its
    /// report, starts epoch 1 for a master leasing for the first time, renews the master's
    /// lease when it follows the group's epoch and the fence has passed, and tells every
    /// server its role, the group's epoch, where to replicate from and the epoch history.
    pub async fn group_lease(
        &self,
        req: &GroupLeaseRequest,
    ) -> Result<GroupLeaseResponse, MetaError> {
        let now = now_ms();
        let row = self
            .store
            .broker_by_host(&req.hostname, req.serve_port)
            .await?
            .ok_or_else(|| {
                MetaError::NotFound(format!(
                    "no broker registered for {}:{} (add it with add-broker)",
                    req.hostname, req.serve_port
                ))
            })?;
        self.store
            .upsert_replica(&ReplicaReport {
                hostname: req.hostname.clone(),
                serve_port: req.serve_port,
                group: row.group.clone(),
                role: req.role.code(),
                epoch: req.epoch,
                message_offset: req.message_offset,
                action_offset: req.action_offset,
                updated_ms: now,
            })
            .await?;
        let role = role_of(&row)?;
        if !is_master(role) {
            return self.answer(&row, role, 0).await;
        }

        let address = format!("{}:{}", row.ip, row.serve_port);
        let kind = GroupKind::of_role(role);
        let mut state = self.store.group_lease_state(&row.group).await?;
        if state.as_ref().is_none_or(|g| g.epoch == 0) {
            if self
                .store
                .start_first_epoch(&row.group, kind, &address, &row.hostname, row.serve_port)
                .await?
            {
                tracing::info!(
                    group = row.group,
                    master = address,
                    "broker group starts epoch 1"
                );
                self.sync_cached_group(&row.group, None).await?;
            }
            state = self.store.group_lease_state(&row.group).await?;
        }
        let group = state
            .ok_or_else(|| MetaError::Corrupt(format!("broker group {} vanished", row.group)))?;
        if req.epoch != group.epoch || now < group.fence_until_ms {
            return self.answer(&row, role, 0).await;
        }
        if self
            .store
            .set_epoch_starts(
                &row.group,
                group.epoch,
                req.message_offset,
                req.action_offset,
            )
            .await?
        {
            tracing::info!(
                group = row.group,
                epoch = group.epoch,
                master = address,
                message_start = req.message_offset,
                action_start = req.action_offset,
                "epoch starts recorded"
            );
        }
        let lease_ms = self.lease_ms();
        let renewed = self
            .store
            .renew_lease(
                &row.group,
                group.epoch,
                &address,
                now,
                now.saturating_add(lease_ms),
            )
            .await?;
        if !renewed {
            // A promotion (or a new fence) came between the read and the renewal: answer
            // from the new state, without a lease.
            let row = self
                .store
                .broker_by_host(&req.hostname, req.serve_port)
                .await?
                .ok_or_else(|| {
                    MetaError::NotFound(format!(
                        "broker {}:{} was removed",
                        req.hostname, req.serve_port
                    ))
                })?;
            let role = role_of(&row)?;
            return self.answer(&row, role, 0).await;
        }
        if group.state != BrokerState::ReadWrite || group.master_address != address {
            tracing::info!(
                group = row.group,
                epoch = group.epoch,
                master = address,
                "master holds the lease, group writable"
            );
        }
        self.sync_cached_group(&row.group, Some((BrokerState::ReadWrite, &address)))
            .await?;
        let mut resp = self.answer(&row, role, lease_ms).await?;
        resp.master_address = address;
        Ok(resp)
    }

    /// The GROUP_LEASE answer for the server of `row` running as `role`.
    async fn answer(
        &self,
        row: &BrokerSpec,
        role: BrokerRole,
        lease_ms: i64,
    ) -> Result<GroupLeaseResponse, MetaError> {
        let group = self.store.group_lease_state(&row.group).await?;
        let kind = GroupKind::of_role(role);
        let (master_role, slave_role) = roles_of(kind);
        let source = match role {
            BrokerRole::Slave | BrokerRole::DelaySlave => Some(master_role),
            BrokerRole::Backup | BrokerRole::DelayBackup => Some(slave_role),
            _ => None,
        };
        let master_sync = match source {
            None => String::new(),
            Some(wanted) => self
                .store
                .brokers(Some(&row.group))
                .await?
                .iter()
                .find(|b| b.role == wanted.code())
                .map(|b| format!("{}:{}", b.ip, b.sync_port))
                .unwrap_or_default(),
        };
        let epochs = self
            .store
            .group_epochs(&row.group)
            .await?
            .into_iter()
            .map(|e| EpochStart {
                epoch: e.epoch,
                message_start: e.message_start,
                action_start: e.action_start,
            })
            .collect();
        Ok(GroupLeaseResponse {
            group: row.group.clone(),
            role,
            epoch: group.as_ref().map_or(0, |g| g.epoch),
            lease_ms,
            master_sync,
            master_address: group.map(|g| g.master_address).unwrap_or_default(),
            epochs,
        })
    }

    // ---- the failover checker ----

    /// One round of the failover checker: every group whose master's lease ended more than
    /// the grace ago is marked `NRW` and its freshest slave following the group's epoch is
    /// promoted. Returns the promotions this meta server made (another meta server racing on
    /// the same database makes the others; the database lets exactly one win per epoch).
    pub async fn check_failover(&self) -> Result<Vec<Promotion>, MetaError> {
        let now = now_ms();
        let expired = self
            .store
            .expired_leases(now.saturating_sub(self.grace_ms()))
            .await?;
        let mut done = Vec::new();
        for g in expired {
            match self.fail_over(&g, now).await {
                Ok(Some(p)) => done.push(p),
                Ok(None) => {}
                Err(e) => {
                    self.note_error(&e);
                    tracing::warn!(group = g.name, epoch = g.epoch, error = %e, "failover failed");
                }
            }
        }
        if let (Some(m), false) = (&self.config.metrics, done.is_empty()) {
            m.failovers(crate::metrics::FailoverTrigger::LeaseExpired, done.len());
        }
        Ok(done)
    }

    async fn fail_over(
        &self,
        g: &GroupLeaseState,
        now: i64,
    ) -> Result<Option<Promotion>, MetaError> {
        if g.state != BrokerState::None
            && self
                .store
                .mark_lease_lost(&g.name, g.epoch, g.lease_until_ms)
                .await?
        {
            tracing::warn!(
                group = g.name,
                epoch = g.epoch,
                master = g.master_address,
                "master lost its lease, group marked NRW"
            );
            self.sync_cached_group(&g.name, None).await?;
        }
        let candidates = self.candidates(g, now).await?;
        let Some((slave, report)) = candidates.into_iter().next() else {
            let first = self
                .no_candidate_logged
                .lock()
                .insert(g.name.clone(), g.epoch)
                != Some(g.epoch);
            if first {
                tracing::warn!(
                    group = g.name,
                    epoch = g.epoch,
                    "master lost its lease and no slave with a fresh report in this epoch \
                     can take over"
                );
            }
            return Ok(None);
        };
        let fence = g
            .lease_until_ms
            .saturating_add(self.grace_ms())
            .max(g.fence_until_ms);
        self.apply_promotion(g, &slave, &report, fence).await
    }

    /// Slaves of the group with a fresh report in the group's epoch, best (highest offsets)
    /// first.
    async fn candidates(
        &self,
        g: &GroupLeaseState,
        now: i64,
    ) -> Result<Vec<(BrokerSpec, ReplicaReport)>, MetaError> {
        let (_, slave_role) = roles_of(g.kind);
        let fresh_after = now.saturating_sub(ms(self.config.replica_stale_ms));
        let brokers = self.store.brokers(Some(&g.name)).await?;
        let reports = self.store.replica_reports(Some(&g.name)).await?;
        let mut out: Vec<(BrokerSpec, ReplicaReport)> = brokers
            .into_iter()
            .filter(|b| b.role == slave_role.code())
            .filter_map(|b| {
                let r = reports
                    .iter()
                    .find(|r| r.hostname == b.hostname && r.serve_port == b.serve_port)?
                    .clone();
                (r.updated_ms >= fresh_after && r.epoch == g.epoch).then_some((b, r))
            })
            .collect();
        out.sort_by(|a, b| {
            (b.1.message_offset, b.1.action_offset).cmp(&(a.1.message_offset, a.1.action_offset))
        });
        Ok(out)
    }

    async fn apply_promotion(
        &self,
        g: &GroupLeaseState,
        slave: &BrokerSpec,
        report: &ReplicaReport,
        fence_until_ms: i64,
    ) -> Result<Option<Promotion>, MetaError> {
        let (master_role, slave_role) = roles_of(g.kind);
        let previous_master = self
            .store
            .brokers(Some(&g.name))
            .await?
            .into_iter()
            .find(|b| b.role == master_role.code())
            .map(|b| format!("{}:{}", b.hostname, b.serve_port))
            .unwrap_or_default();
        let plan = PromotionPlan {
            group: g.name.clone(),
            from_epoch: g.epoch,
            expected_lease_until_ms: g.lease_until_ms,
            master_role: master_role.code(),
            slave_role: slave_role.code(),
            hostname: slave.hostname.clone(),
            serve_port: slave.serve_port,
            master_address: format!("{}:{}", slave.ip, slave.serve_port),
            fence_until_ms,
        };
        if !self.store.promote(&plan).await? {
            tracing::debug!(
                group = g.name,
                epoch = g.epoch,
                "promotion lost: the group changed meanwhile (another meta server?)"
            );
            return Ok(None);
        }
        let p = Promotion {
            group: g.name.clone(),
            from_epoch: g.epoch,
            epoch: g.epoch + 1,
            hostname: slave.hostname.clone(),
            serve_port: slave.serve_port,
            master_address: plan.master_address,
            previous_master,
            message_offset: report.message_offset,
            action_offset: report.action_offset,
            fence_until_ms,
        };
        tracing::warn!(
            group = p.group,
            epoch = p.epoch,
            master = p.master_address,
            previous = p.previous_master,
            message_offset = p.message_offset,
            action_offset = p.action_offset,
            fence_until_ms,
            "promoted"
        );
        self.no_candidate_logged.lock().remove(&g.name);
        self.sync_cached_group(&g.name, None).await?;
        Ok(Some(p))
    }

    // ---- manual promotion and the operators' view ----

    /// Promotes a slave for planned maintenance, whether or not the master's lease runs: the
    /// named slave, or the freshest one. The new master gets no lease before the current
    /// lease (plus the grace) surely ended; the old master learns it is a slave on its next
    /// renewal. Refused when the target is not a slave of the group or has no fresh report in
    /// the group's epoch.
    pub async fn promote(&self, p: &PromoteParams) -> Result<Promotion, MetaError> {
        if p.broker_group.trim().is_empty() {
            return Err(MetaError::InvalidArgument(
                "broker group is required".into(),
            ));
        }
        let target = match (&p.hostname, p.serve_port) {
            (Some(h), Some(port)) => Some((h.clone(), port)),
            (None, None) => None,
            _ => {
                return Err(MetaError::InvalidArgument(
                    "give both hostname and serve port, or neither".into(),
                ))
            }
        };
        for _ in 0..PROMOTE_TRIES {
            let now = now_ms();
            let g = self
                .store
                .group_lease_state(&p.broker_group)
                .await?
                .ok_or_else(|| {
                    MetaError::NotFound(format!("no broker group {}", p.broker_group))
                })?;
            if g.epoch < 1 {
                return Err(MetaError::Conflict(format!(
                    "broker group {} has no epoch yet: its master never leased (GROUP_LEASE)",
                    g.name
                )));
            }
            let candidates = self.candidates(&g, now).await?;
            let chosen = match &target {
                None => candidates.into_iter().next().ok_or_else(|| {
                    MetaError::Conflict(format!(
                        "no slave of broker group {} has a fresh report in epoch {}",
                        g.name, g.epoch
                    ))
                })?,
                Some((host, port)) => {
                    let (_, slave_role) = roles_of(g.kind);
                    let row = self.store.broker_by_host(host, *port).await?;
                    if !row
                        .as_ref()
                        .is_some_and(|b| b.group == g.name && b.role == slave_role.code())
                    {
                        return Err(MetaError::Conflict(format!(
                            "{host}:{port} is not the slave of broker group {}",
                            g.name
                        )));
                    }
                    candidates
                        .into_iter()
                        .find(|(b, _)| &b.hostname == host && b.serve_port == *port)
                        .ok_or_else(|| {
                            MetaError::Conflict(format!(
                                "{host}:{port} has no fresh report in epoch {} of broker \
                                 group {}",
                                g.epoch, g.name
                            ))
                        })?
                }
            };
            let fence = now
                .max(g.lease_until_ms)
                .saturating_add(self.grace_ms())
                .max(g.fence_until_ms);
            if let Some(done) = self
                .apply_promotion(&g, &chosen.0, &chosen.1, fence)
                .await?
            {
                if let Some(m) = &self.config.metrics {
                    m.failovers(crate::metrics::FailoverTrigger::Manual, 1);
                }
                return Ok(done);
            }
        }
        Err(MetaError::Conflict(format!(
            "broker group {} kept changing; promote gave up after {PROMOTE_TRIES} tries",
            p.broker_group
        )))
    }

    /// Every broker group with its epoch, lease and servers (offsets, lag, report age).
    pub async fn replication_groups(&self) -> Result<Vec<GroupReplication>, MetaError> {
        let now = now_ms();
        let mut out = Vec::new();
        for group in self.store.broker_groups().await? {
            let Some(lease) = self.store.group_lease_state(&group.name).await? else {
                continue;
            };
            let brokers = self.store.brokers(Some(&group.name)).await?;
            let reports = self.store.replica_reports(Some(&group.name)).await?;
            let report_of = |b: &BrokerSpec| {
                reports
                    .iter()
                    .find(|r| r.hostname == b.hostname && r.serve_port == b.serve_port)
            };
            let master = brokers
                .iter()
                .find(|b| BrokerRole::from_code(b.role).is_ok_and(is_master))
                .and_then(report_of);
            let members = brokers
                .iter()
                .map(|b| {
                    let r = report_of(b);
                    ReplicaMember {
                        server: format!("{}:{}", b.hostname, b.serve_port),
                        ip: b.ip.clone(),
                        role: b.role,
                        role_name: BrokerRole::from_code(b.role)
                            .map_or_else(|_| format!("role {}", b.role), |r| format!("{r:?}")),
                        reported_role: r.map(|r| r.role),
                        epoch: r.map(|r| r.epoch),
                        message_offset: r.map(|r| r.message_offset),
                        action_offset: r.map(|r| r.action_offset),
                        message_lag: r
                            .zip(master)
                            .map(|(r, m)| m.message_offset - r.message_offset),
                        action_lag: r
                            .zip(master)
                            .map(|(r, m)| m.action_offset - r.action_offset),
                        report_age_ms: r.map(|r| now - r.updated_ms),
                    }
                })
                .collect();
            let remaining = (lease.lease_until_ms - now).max(0);
            let lease_text = if lease.lease_until_ms == 0 {
                if now < lease.fence_until_ms {
                    "fenced".to_owned()
                } else {
                    "none".to_owned()
                }
            } else if remaining == 0 {
                "expired".to_owned()
            } else {
                format!("{remaining} ms left")
            };
            out.push(GroupReplication {
                epochs: self.store.group_epochs(&group.name).await?,
                group,
                epoch: lease.epoch,
                lease: lease_text,
                lease_remaining_ms: remaining,
                lease_until_ms: lease.lease_until_ms,
                fence_until_ms: lease.fence_until_ms,
                members,
            });
        }
        Ok(out)
    }
}
