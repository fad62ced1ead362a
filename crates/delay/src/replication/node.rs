//! A replicated delay server's life: ask the meta server for the role, prepare the store for
//! it, run it, and start over when the role changes (the broker's `replication::node`, for the
//! delay tier).
//!
//! 1. Ask (GROUP_LEASE) which role this server has (delay master or delay slave), in which
//!    epoch, and the epoch history.
//! 2. As a slave: cut what this store holds beyond the data it shares with the current master
//!    ([`super::cut_unreplicated`] at the smallest message-log start of the later epochs), note
//!    the current epoch as the data's epoch (file `replication-epoch` in the data directory),
//!    open a [`Replica`] and copy from the master ([`super::follower`]). SENDs get
//!    `BROKER_REJECT`; nothing is dispatched.
//! 3. As master: note the epoch, open the engine (its due messages go to the dispatcher only
//!    while the lease runs: [`GatedDispatcher`]) and serve SENDs and the sync port while the
//!    lease runs.
//! 4. Renew every `renew_every`. A slave told it is master stops copying (waiting for the copy
//!    loops to end), flushes and closes the replica, notes the epoch, opens the engine on the
//!    same store and reports its final message-log end as the epoch's start; it serves once
//!    the meta server grants the lease. A master told it is a slave stops serving at once,
//!    shuts the engine down and goes back to 1.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use qmq_protocol::BrokerRole;
use qmq_replication::epoch::{cut_points, read_epoch, write_epoch};
use qmq_replication::NodeStatus;
use qmq_replication::{Granted, LeaseClient, ReplicationError, Report};
use qmq_transport::Connection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::sync_server::{SyncServer, SyncSettings};
use super::{follower, Gate, Replica, ReplicationMode};
use crate::clock::Clock;
use crate::dispatch::{Dispatcher, DueMessage, Outcome};
use crate::engine::DelayEngine;
use crate::error::DelayError;
use crate::error::DispatchError;
use crate::server::{Front, ServerConfig};

/// How a replicated delay server runs.
#[derive(Clone)]
pub struct NodeConfig {
    /// Client port, frame limit and engine settings.
    pub server: ServerConfig,
    /// Who this server is to the meta server (its `broker` row: role 5 or 6).
    pub lease: LeaseClient,
    /// Address of the sync port.
    pub sync_listen: SocketAddr,
    /// When SENDs are acknowledged relative to the slave.
    pub mode: ReplicationMode,
    /// Time between lease calls (keep it well under the meta server's lease).
    pub renew_every: Duration,
    /// Sync port settings.
    pub sync: SyncSettings,
}

/// Why the node stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store failed.
    #[error(transparent)]
    Delay(#[from] DelayError),
    /// The epoch file failed.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
}

/// A dispatcher that hands due messages on only while this server is the master holding a
/// lease (a deposed or cut-off master stops delivering; its messages are retried later).
pub struct GatedDispatcher {
    inner: Arc<dyn Dispatcher>,
    gate: Arc<Gate>,
}

impl GatedDispatcher {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Dispatcher>, gate: Arc<Gate>) -> Self {
        Self { inner, gate }
    }
}

impl Dispatcher for GatedDispatcher {
    fn dispatch<'a>(
        &'a self,
        batch: &'a [DueMessage],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, DispatchError>> {
        if !self.gate.serving() {
            return Box::pin(async {
                Err(DispatchError(
                    "not the delay master holding a lease; not delivering".into(),
                ))
            });
        }
        self.inner.dispatch(batch)
    }
}

fn is_master(role: BrokerRole) -> bool {
    matches!(role, BrokerRole::DelayMaster | BrokerRole::Master)
}

fn is_slave(role: BrokerRole) -> bool {
    matches!(role, BrokerRole::DelaySlave | BrokerRole::Slave)
}

fn blocking_error(e: tokio::task::JoinError) -> DelayError {
    DelayError::io("blocking task", "", std::io::Error::other(e.to_string()))
}

struct Ctx<'a> {
    config: &'a NodeConfig,
    gate: &'a Arc<Gate>,
    front: &'a Front,
    sync: &'a SyncServer,
    clock: &'a Arc<dyn Clock>,
    dispatcher: &'a Arc<dyn Dispatcher>,
    status: &'a watch::Sender<NodeStatus>,
    stop: &'a CancellationToken,
}

/// Runs the node until `stop` is cancelled: binds the client port and the sync port once, then
/// runs the roles the meta server assigns. `status` receives every change of role.
pub async fn run(
    config: NodeConfig,
    clock: Arc<dyn Clock>,
    dispatcher: Arc<dyn Dispatcher>,
    gate: Arc<Gate>,
    status: watch::Sender<NodeStatus>,
    stop: CancellationToken,
) -> Result<(), NodeError> {
    config.server.validate()?;
    let front = Front::bind(
        config.server.listen,
        config.server.max_frame,
        clock.clone(),
        gate.clone(),
        config.server.delay.metrics.clone(),
    )
    .await?;
    let sync = SyncServer::bind(config.sync_listen, gate.clone(), config.sync).await?;
    let dispatcher: Arc<dyn Dispatcher> = Arc::new(GatedDispatcher::new(dispatcher, gate.clone()));
    let ctx = Ctx {
        config: &config,
        gate: &gate,
        front: &front,
        sync: &sync,
        clock: &clock,
        dispatcher: &dispatcher,
        status: &status,
        stop: &stop,
    };
    let outcome = run_roles(&ctx).await;
    gate.revoke();
    front.shutdown().await;
    sync.shutdown().await;
    outcome
}

async fn run_roles(ctx: &Ctx<'_>) -> Result<(), NodeError> {
    let mut meta: Option<Connection> = None;
    let dir = ctx.config.server.delay.data_dir.clone();
    while !ctx.stop.is_cancelled() {
        ctx.status.send_replace(NodeStatus::Starting);
        let Some(granted) = ask_role(ctx, &mut meta).await else {
            break;
        };
        let epoch = u64::try_from(granted.answer.epoch).unwrap_or(0);
        let role = granted.answer.role;
        if is_slave(role) {
            let Some(cut) = cut_points(read_epoch(&dir)?, &granted.answer.epochs) else {
                tracing::info!(
                    epoch,
                    "waiting for the new delay master to report where its epoch starts"
                );
                pause(ctx).await;
                continue;
            };
            if let Some((message_to, _)) = cut {
                let cfg = ctx.config.server.delay.clone();
                let report =
                    tokio::task::spawn_blocking(move || super::cut_unreplicated(&cfg, message_to))
                        .await
                        .map_err(blocking_error)??;
                ctx.gate
                    .stats
                    .truncated_bytes
                    .fetch_add(report.wal_bytes, Ordering::Relaxed);
            }
            write_epoch(&dir, epoch)?;
            match run_slave(ctx, &mut meta, granted).await? {
                Some(promoted) => run_master(ctx, &mut meta, promoted, true).await?,
                None => continue,
            }
        } else if is_master(role) {
            write_epoch(&dir, epoch)?;
            run_master(ctx, &mut meta, epoch, false).await?;
        } else {
            tracing::error!(
                ?role,
                "the meta server gave this delay server a role it cannot run"
            );
            pause(ctx).await;
        }
    }
    Ok(())
}

async fn pause(ctx: &Ctx<'_>) {
    tokio::select! {
        () = ctx.stop.cancelled() => {}
        () = tokio::time::sleep(ctx.config.renew_every) => {}
    }
}

/// Asks for the role until the meta server answers (None: stopped meanwhile).
async fn ask_role(ctx: &Ctx<'_>, meta: &mut Option<Connection>) -> Option<Granted> {
    loop {
        let report = Report {
            role: BrokerRole::DelaySlave,
            epoch: read_epoch(&ctx.config.server.delay.data_dir).unwrap_or(0),
            message_end: -1,
            action_end: -1,
        };
        let lease = &ctx.config.lease;
        match lease.call(meta, report, ctx.config.renew_every * 2).await {
            Ok(g) => return Some(g),
            Err(e) => {
                tracing::warn!(meta = %lease.meta, error = %e, "cannot learn this delay server's role; retrying")
            }
        }
        tokio::select! {
            () = ctx.stop.cancelled() => return None,
            () = tokio::time::sleep(ctx.config.renew_every) => {}
        }
    }
}

/// Runs as master of `epoch` until deposed or stopped. `promoted`: the first lease call
/// reports the final message-log end as the epoch's start.
async fn run_master(
    ctx: &Ctx<'_>,
    meta: &mut Option<Connection>,
    epoch: u64,
    promoted: bool,
) -> Result<(), NodeError> {
    let engine = Arc::new(
        DelayEngine::open(
            ctx.config.server.delay.clone(),
            ctx.clock.clone(),
            ctx.dispatcher.clone(),
        )
        .await?,
    );
    if promoted {
        tracing::warn!(
            epoch,
            wal_end = engine.wal_end(),
            "promoted to delay master; every due message not known dispatched will be delivered"
        );
    }
    ctx.gate.become_master(epoch);
    if promoted {
        ctx.gate.promoted();
    }
    ctx.front.set_engine(Some(engine.clone()));
    ctx.sync.set_engine(Some(engine.clone()));
    let mut announced = false;
    loop {
        let report = Report {
            role: BrokerRole::DelayMaster,
            epoch,
            message_end: engine.wal_end() as i64,
            action_end: 0,
        };
        match ctx
            .config
            .lease
            .call(meta, report, ctx.config.renew_every)
            .await
        {
            Ok(g) if is_master(g.answer.role) && g.answer.epoch == epoch as i64 => {
                if g.answer.lease_ms > 0 {
                    ctx.gate
                        .extend_lease(g.sent, Duration::from_millis(g.answer.lease_ms as u64));
                    if !announced && ctx.gate.serving() {
                        announced = true;
                        let (addr, sync) = (ctx.front.local_addr(), ctx.sync.local_addr());
                        tracing::info!(epoch, %addr, "serving as delay master");
                        ctx.status
                            .send_replace(NodeStatus::Master { epoch, addr, sync });
                    }
                }
            }
            Ok(g) => {
                tracing::warn!(epoch, new_epoch = g.answer.epoch, role = ?g.answer.role,
                    "this delay server is no longer the master; stepping down");
                break;
            }
            Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
        }
        tokio::select! {
            () = ctx.stop.cancelled() => break,
            () = tokio::time::sleep(ctx.config.renew_every) => {}
        }
    }
    ctx.gate.revoke();
    ctx.front.set_engine(None);
    ctx.sync.set_engine(None);
    engine.shutdown().await?;
    Ok(())
}

/// Runs as slave until promoted (returns the new epoch, with the replica closed) or until
/// the master changes or `stop` (None).
async fn run_slave(
    ctx: &Ctx<'_>,
    meta: &mut Option<Connection>,
    granted: Granted,
) -> Result<Option<u64>, NodeError> {
    let epoch = u64::try_from(granted.answer.epoch).unwrap_or(0);
    let master = granted.answer.master_sync.clone();
    let cfg = ctx.config.server.delay.clone();
    let replica = tokio::task::spawn_blocking(move || Replica::open(cfg))
        .await
        .map_err(blocking_error)??;
    let replica = Arc::new(Mutex::new(replica));
    ctx.sync.set_replica(Some(replica.clone()));
    let copying = ctx.stop.child_token();
    let follower = tokio::spawn(follower::follow(
        master.clone(),
        replica.clone(),
        ctx.gate.clone(),
        copying.clone(),
    ));
    ctx.status.send_replace(NodeStatus::Slave {
        epoch,
        master: master.clone(),
        addr: ctx.front.local_addr(),
        sync: ctx.sync.local_addr(),
    });
    let mut promoted = None;
    loop {
        tokio::select! {
            () = ctx.stop.cancelled() => break,
            () = tokio::time::sleep(ctx.config.renew_every) => {}
        }
        let report = Report {
            role: BrokerRole::DelaySlave,
            epoch,
            message_end: replica.lock().wal_end() as i64,
            action_end: 0,
        };
        let g = match ctx
            .config
            .lease
            .call(meta, report, ctx.config.renew_every)
            .await
        {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "lease call failed");
                continue;
            }
        };
        let a = &g.answer;
        if is_master(a.role) {
            promoted = Some(u64::try_from(a.epoch).unwrap_or(0));
            break;
        }
        if a.master_sync != master || a.epoch != epoch as i64 {
            tracing::warn!(
                epoch = a.epoch,
                master = a.master_sync,
                "the delay group's master changed; restarting as its slave"
            );
            break;
        }
    }
    // Stop copying first, so the message-log end reported next is final.
    copying.cancel();
    let _ = follower.await;
    ctx.sync.set_replica(None);
    drop(replica);
    if let Some(new_epoch) = promoted {
        write_epoch(&ctx.config.server.delay.data_dir, new_epoch)?;
        tracing::warn!(
            epoch = new_epoch,
            "promoted to delay master; stopped copying from the old master"
        );
    }
    Ok(promoted)
}
