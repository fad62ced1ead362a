//! A replicated broker's life: ask the meta server for the role, prepare the store for it, run
//! it, and start over when the role changes.
//!
//! 1. Ask (GROUP_LEASE) which role this server has, in which epoch, and the epoch history.
//! 2. As a slave: cut what this store holds beyond the data it shares with the current master
//!    (the smallest start of the epochs after the one its data comes from; the cut bytes go to
//!    side files, see `qmq_store::truncate_logs`), note the current epoch as the data's epoch,
//!    open the store and copy from the master ([`super::follower`]). Clients get
//!    `BROKER_REJECT`.
//! 3. As master: note the epoch (the store's ends are where the epoch starts, which the next
//!    lease call reports), open the store and serve clients while the lease runs.
//! 4. A slave whose copy loops find it cannot continue from its own logs (behind the master's
//!    retention, or holding what the master never had: [`follower::Followed::ResyncNeeded`])
//!    stops them, closes the store, and, if the meta server still says it is a slave, asks
//!    the master's sync port for a snapshot, installs it (the old data moves to
//!    `<store dir>/resync-<unix ms>/`), notes the epoch and starts again as in 2. Logged and
//!    counted (`Gate.stats.resyncs`). A master is never resynchronised.
//! 5. Renew every `renew_every`. A slave told it is master stops copying (waiting for the copy
//!    loops to end), notes the epoch and reports its final ends; it serves clients once the
//!    meta server grants the lease (after the old master's lease surely ended). A master told it
//!    is a slave stops serving at once, closes the store and goes back to 1, where it cuts its
//!    unreplicated tail and rejoins.
//!
//! The data's epoch lives in the file `replication-epoch` in the store's directory.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use qmq_protocol::BrokerRole;
use qmq_replication::NodeStatus;
use qmq_store::LogStream;
use qmq_transport::Connection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::sync_server::{SlaveLag, SyncSettings};
use super::{follower, sync_server, Gate, ReplicationMode};
use crate::{BrokerConfig, BrokerError, BrokerHandle};
use qmq_replication::epoch::{cut_points, read_epoch, write_epoch};
use qmq_replication::{Granted, LeaseClient, Report};

/// How a replicated broker runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The broker (its `meta` is not used: a replicated broker reports by lease calls).
    pub broker: BrokerConfig,
    /// Who this server is to the meta server, and where it is.
    pub lease: LeaseClient,
    /// Address of the sync port.
    pub sync_listen: SocketAddr,
    /// When sends are acknowledged relative to the slave.
    pub mode: ReplicationMode,
    /// Time between lease calls (keep it well under the meta server's lease, 2 s by default).
    pub renew_every: Duration,
    /// Sync port settings.
    pub sync: SyncSettings,
}

/// Runs the node until `stop` is cancelled. `status` receives every change of role.
pub async fn run(
    config: NodeConfig,
    gate: Arc<Gate>,
    status: watch::Sender<NodeStatus>,
    stop: CancellationToken,
) -> Result<(), BrokerError> {
    let mut meta: Option<Connection> = None;
    // The slave's lag as the sync port sees it; one for every run, so metrics read it.
    let lag = Arc::new(SlaveLag::default());
    if let Some(m) = &config.broker.metrics {
        m.observe_replication(gate.clone(), lag.clone(), status.subscribe());
    }
    // Why the last run as a slave ended asking for a resync.
    let mut resync: Option<String> = None;
    while !stop.is_cancelled() {
        status.send_replace(NodeStatus::Starting);
        let Some(granted) = ask_role(&config, &mut meta, &stop).await else {
            break;
        };
        let answer = &granted.answer;
        let epoch = u64::try_from(answer.epoch).unwrap_or(0);
        let dir = config.broker.store.dir.clone();
        let role = answer.role;
        if let Some(reason) = resync.take() {
            if is_slave(role) {
                if let Err(e) =
                    install_snapshot(&config, &gate, &answer.master_sync, epoch, &reason).await
                {
                    tracing::error!(error = %e, master = answer.master_sync, "resync failed; retrying");
                    resync = Some(reason);
                    pause(&config, &stop).await;
                    continue;
                }
            } else {
                tracing::warn!(?role, "no resync: this broker is no longer a slave");
            }
        }
        if is_slave(role) {
            let Some(cut) = cut_points(read_epoch(&dir)?, &answer.epochs) else {
                tracing::info!(
                    epoch,
                    "waiting for the new master to report where its epoch starts"
                );
                pause(&config, &stop).await;
                continue;
            };
            if let Some((message_to, action_to)) = cut {
                truncate(&config, &gate, message_to, action_to).await?;
            }
            write_epoch(&dir, epoch)?;
        } else if !is_master(role) {
            tracing::error!(
                ?role,
                "the meta server gave this broker a role it cannot run"
            );
            pause(&config, &stop).await;
            continue;
        }
        let handle = crate::server::serve_with(config.broker.clone(), Some(gate.clone())).await?;
        let sync_stop = stop.child_token();
        // No heartbeat from a slave in this run yet.
        lag.message.store(-1, Ordering::Relaxed);
        lag.action.store(-1, Ordering::Relaxed);
        let served = sync_server::spawn(
            config.sync_listen,
            handle.store().clone(),
            gate.clone(),
            lag.clone(),
            config.sync,
            sync_stop.clone(),
        )
        .await;
        let (sync_addr, sync_task) = match served {
            Ok(s) => s,
            Err(e) => {
                let _ = handle.shutdown().await;
                return Err(e);
            }
        };
        let outcome = if is_master(role) {
            write_epoch(&dir, epoch)?;
            run_master(
                &config, &gate, &handle, epoch, sync_addr, &status, &mut meta, &stop,
            )
            .await
            .map(|()| None)
        } else {
            run_slave(
                &config, &gate, &handle, granted, sync_addr, &status, &mut meta, &stop,
            )
            .await
        };
        gate.revoke();
        sync_stop.cancel();
        let _ = sync_task.await;
        handle.shutdown().await?;
        resync = outcome?;
    }
    Ok(())
}

/// Replaces the (closed) store with `master`'s snapshot and notes `epoch` as its data's epoch.
async fn install_snapshot(
    config: &NodeConfig,
    gate: &Gate,
    master: &str,
    epoch: u64,
    reason: &str,
) -> Result<(), BrokerError> {
    tracing::warn!(master, reason, "resync: asking the master for a snapshot");
    let snapshot = follower::fetch_snapshot(master).await?;
    let (message_start, action_end) = (snapshot.messages.start, snapshot.consumers.action_end);
    let store = config.broker.store.clone();
    // The store was closed; a task of the last run may still hold a handle for a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let moved = loop {
        let (store, snapshot) = (store.clone(), snapshot.clone());
        let installed = tokio::task::spawn_blocking(move || {
            qmq_store::Store::install_snapshot(&store, &snapshot)
        })
        .await?;
        match installed {
            Err(qmq_store::StoreError::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other?,
        }
    };
    write_epoch(&config.broker.store.dir, epoch)?;
    gate.stats.resyncs.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        master,
        epoch,
        message_start,
        action_end,
        old_data = ?moved,
        "resync: installed the master's snapshot; copying from there"
    );
    Ok(())
}

fn is_master(role: BrokerRole) -> bool {
    matches!(role, BrokerRole::Master | BrokerRole::DelayMaster)
}

fn is_slave(role: BrokerRole) -> bool {
    matches!(role, BrokerRole::Slave | BrokerRole::DelaySlave)
}

async fn pause(config: &NodeConfig, stop: &CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(config.renew_every) => {}
    }
}

/// Asks for the role until the meta server answers (None: stopped meanwhile).
async fn ask_role(
    config: &NodeConfig,
    meta: &mut Option<Connection>,
    stop: &CancellationToken,
) -> Option<Granted> {
    loop {
        let dir = &config.broker.store.dir;
        let report = Report {
            role: BrokerRole::Slave,
            epoch: read_epoch(dir).unwrap_or(0),
            message_end: -1,
            action_end: -1,
        };
        match config
            .lease
            .call(meta, report, config.renew_every * 2)
            .await
        {
            Ok(g) => return Some(g),
            Err(e) => {
                tracing::warn!(meta = %config.lease.meta, error = %e, "cannot learn this broker's role; retrying")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(config.renew_every) => {}
        }
    }
}

async fn truncate(
    config: &NodeConfig,
    gate: &Gate,
    message_to: u64,
    action_to: u64,
) -> Result<(), BrokerError> {
    let store = config.broker.store.clone();
    let cut = tokio::task::spawn_blocking(move || {
        qmq_store::truncate_logs(&store, message_to, action_to)
    })
    .await??;
    let bytes = cut.message_bytes + cut.action_bytes;
    if bytes > 0 {
        gate.stats
            .truncated_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        tracing::warn!(
            message_bytes = cut.message_bytes,
            action_bytes = cut.action_bytes,
            side_files = ?cut.side_files,
            "cut this broker's unreplicated tail before rejoining as a slave: those messages and \
             consumer actions were never on the new master"
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_master(
    config: &NodeConfig,
    gate: &Gate,
    handle: &BrokerHandle,
    epoch: u64,
    sync: SocketAddr,
    status: &watch::Sender<NodeStatus>,
    meta: &mut Option<Connection>,
    stop: &CancellationToken,
) -> Result<(), BrokerError> {
    gate.become_master(epoch);
    let mut announced = false;
    loop {
        let report = Report {
            role: BrokerRole::Master,
            epoch,
            message_end: handle.store().log_end(LogStream::Message) as i64,
            action_end: handle.store().log_end(LogStream::Action) as i64,
        };
        match config.lease.call(meta, report, config.renew_every).await {
            Ok(g) if is_master(g.answer.role) && g.answer.epoch == epoch as i64 => {
                if g.answer.lease_ms > 0 {
                    gate.extend_lease(g.sent, Duration::from_millis(g.answer.lease_ms as u64));
                    announce(&mut announced, gate, status, epoch, handle.addr(), sync);
                }
            }
            Ok(g) => {
                gate.revoke();
                tracing::warn!(epoch, new_epoch = g.answer.epoch, role = ?g.answer.role,
                    "this broker is no longer the master; stepping down");
                return Ok(());
            }
            Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(config.renew_every) => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_slave(
    config: &NodeConfig,
    gate: &Arc<Gate>,
    handle: &BrokerHandle,
    granted: Granted,
    sync: SocketAddr,
    status: &watch::Sender<NodeStatus>,
    meta: &mut Option<Connection>,
    stop: &CancellationToken,
) -> Result<Option<String>, BrokerError> {
    let mut epoch = u64::try_from(granted.answer.epoch).unwrap_or(0);
    let master = granted.answer.master_sync.clone();
    let copying = stop.child_token();
    let follower = tokio::spawn(follower::follow(
        master.clone(),
        handle.store().clone(),
        gate.clone(),
        copying.clone(),
    ));
    status.send_replace(NodeStatus::Slave {
        epoch,
        master: master.clone(),
        addr: handle.addr(),
        sync,
    });
    let mut follower = Some(follower);
    let mut role = BrokerRole::Slave;
    let mut announced = false;
    let mut resync = None;
    loop {
        let following = async {
            match follower.as_mut() {
                Some(f) => f.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(config.renew_every) => {}
            ended = following => {
                follower = None;
                match ended {
                    Ok(follower::Followed::ResyncNeeded { reason }) => {
                        resync = Some(reason);
                        break;
                    }
                    Ok(follower::Followed::Stopped) => {}
                    Err(e) => tracing::error!(error = %e, "the copy loops failed"),
                }
                continue;
            }
        }
        let report = Report {
            role,
            epoch,
            message_end: handle.store().log_end(LogStream::Message) as i64,
            action_end: handle.store().log_end(LogStream::Action) as i64,
        };
        let g = match config.lease.call(meta, report, config.renew_every).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "lease call failed");
                continue;
            }
        };
        let a = &g.answer;
        if is_master(a.role) {
            let new_epoch = u64::try_from(a.epoch).unwrap_or(0);
            if let Some(f) = follower.take() {
                // Promoted: stop copying first, so the ends reported next are final.
                copying.cancel();
                let _ = f.await;
                tracing::warn!(
                    epoch = new_epoch,
                    "promoted to master; stopped copying from the old master"
                );
                // What the old master stored is in the copied log: the duplicate window holds
                // its ids (with their append times) before this broker serves a send.
                if let Err(e) = handle.control().rebuild_dedup_window().await {
                    tracing::error!(error = %e, "rebuilding the duplicate window failed; serving without the old master's ids");
                }
            }
            if new_epoch != epoch || role != a.role {
                epoch = new_epoch;
                role = a.role;
                write_epoch(&config.broker.store.dir, epoch)?;
                gate.become_master(epoch);
                gate.promoted();
                // The next call reports the final ends as this epoch's start.
                continue;
            }
            if a.lease_ms > 0 {
                gate.extend_lease(g.sent, Duration::from_millis(a.lease_ms as u64));
                announce(&mut announced, gate, status, epoch, handle.addr(), sync);
            }
        } else if follower.is_none() || a.master_sync != master || a.epoch != epoch as i64 {
            // The master changed (or this server was promoted and then demoted): start over.
            tracing::warn!(
                epoch = a.epoch,
                master = a.master_sync,
                "the group's master changed; restarting as its slave"
            );
            break;
        }
    }
    copying.cancel();
    if let Some(f) = follower {
        let _ = f.await;
    }
    Ok(resync)
}

/// Reports the master status once, when its first lease makes it serve clients.
fn announce(
    announced: &mut bool,
    gate: &Gate,
    status: &watch::Sender<NodeStatus>,
    epoch: u64,
    addr: SocketAddr,
    sync: SocketAddr,
) {
    if !*announced && gate.serving() {
        *announced = true;
        tracing::info!(epoch, %addr, "serving as master");
        status.send_replace(NodeStatus::Master { epoch, addr, sync });
    }
}
