//! Replication roles, master leases and automatic failover (GROUP_LEASE), on SQLite,
//! PostgreSQL and MariaDB: real GROUP_LEASE frames against the TCP front end, time controlled
//! by polling with deadlines.

mod common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::{http, wait_for, Backend, MetaConn, TestDb, TOKEN};
use qmq_meta::model::{now_ms, BrokerSpec};
use qmq_meta::store::Store;
use qmq_meta::{serve, MetaConfig, MetaServerHandle};
use qmq_protocol::codes::response;
use qmq_protocol::replication::GROUP_LEASE;
use qmq_protocol::{
    BrokerRole, BrokerState, ClientType, EpochStart, GroupLeaseRequest, GroupLeaseResponse,
};
use serde_json::json;

/// One server of a test group.
#[derive(Debug, Clone, Copy)]
struct Server {
    host: &'static str,
    serve_port: i32,
    sync_port: i32,
}

impl Server {
    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.serve_port)
    }

    fn sync_address(&self) -> String {
        format!("127.0.0.1:{}", self.sync_port)
    }
}

const A: Server = Server {
    host: "host-a",
    serve_port: 31001,
    sync_port: 31002,
};
const B: Server = Server {
    host: "host-b",
    serve_port: 31011,
    sync_port: 31012,
};

async fn add(store: &Store, group: &str, s: Server, role: BrokerRole) {
    let spec = BrokerSpec {
        group: group.into(),
        role: role.code(),
        hostname: s.host.into(),
        ip: "127.0.0.1".into(),
        serve_port: s.serve_port,
        sync_port: s.sync_port,
    };
    assert!(store.insert_broker(&spec).await.unwrap());
}

/// `group` with `A` as master and `B` as slave.
async fn add_pair(store: &Store, group: &str) {
    add(store, group, A, BrokerRole::Master).await;
    add(store, group, B, BrokerRole::Slave).await;
}

fn request(s: Server, role: BrokerRole, epoch: i64, msg: i64, act: i64) -> GroupLeaseRequest {
    GroupLeaseRequest {
        hostname: s.host.into(),
        serve_port: s.serve_port,
        role,
        epoch,
        message_offset: msg,
        action_offset: act,
        secret: None,
    }
}

/// Sends a GROUP_LEASE; returns the response code and, on success, the answer.
async fn lease_call(
    c: &mut MetaConn,
    req: &GroupLeaseRequest,
) -> (i16, Option<GroupLeaseResponse>) {
    let mut body = BytesMut::new();
    req.encode(&mut body).unwrap();
    let frame = c.call(GROUP_LEASE, 8, body).await;
    let answer = (frame.header.code == response::SUCCESS)
        .then(|| GroupLeaseResponse::decode(&frame.body).unwrap());
    (frame.header.code, answer)
}

/// A successful GROUP_LEASE.
async fn lease(
    c: &mut MetaConn,
    s: Server,
    role: BrokerRole,
    epoch: i64,
    msg: i64,
    act: i64,
) -> GroupLeaseResponse {
    let (code, answer) = lease_call(c, &request(s, role, epoch, msg, act)).await;
    assert_eq!(code, response::SUCCESS, "lease of {}", s.host);
    answer.unwrap()
}

fn starts(list: &[(i64, i64, i64)]) -> Vec<EpochStart> {
    list.iter()
        .map(|&(epoch, message_start, action_start)| EpochStart {
            epoch,
            message_start,
            action_start,
        })
        .collect()
}

/// The group's master address as a producer's route shows it (None: not routed).
async fn routed_master(c: &mut MetaConn, subject: &str, group: &str) -> Option<String> {
    c.route(ClientType::Producer, subject, "")
        .await
        .groups
        .into_iter()
        .find(|g| g.name == group)
        .map(|g| g.master)
}

/// Role codes by hostname of the group's `broker` rows.
async fn roles(store: &Store, group: &str) -> Vec<(String, i32)> {
    let mut r: Vec<_> = store
        .brokers(Some(group))
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.hostname, b.role))
        .collect();
    r.sort();
    r
}

fn config(db: &TestDb) -> MetaConfig {
    MetaConfig {
        failover_check_ms: 20,
        ..db.config()
    }
}

/// A time limit for a polling loop.
struct Deadline(tokio::time::Instant, Duration);

impl Deadline {
    fn after(limit: Duration) -> Self {
        Self(tokio::time::Instant::now() + limit, limit)
    }

    /// Fails the test when the limit passed, else waits a little before the next poll.
    async fn pause(&self) {
        assert!(
            tokio::time::Instant::now() < self.0,
            "condition not met within {:?}",
            self.1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- 1. master leases, slave follows ----

async fn master_leases_and_slave_follows(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = serve(config(&db)).await.unwrap();
    add_pair(meta.store(), "g1").await;
    let mut c = MetaConn::connect(&meta).await;

    // First contact: the group is created at epoch 1, without a lease (wrong epoch).
    let r = lease(&mut c, A, BrokerRole::Master, 0, 0, 0).await;
    assert_eq!(
        (r.group.as_str(), r.role, r.epoch, r.lease_ms),
        ("g1", BrokerRole::Master, 1, 0)
    );
    assert_eq!(r.master_address, A.address());
    assert_eq!(r.master_sync, "");
    assert_eq!(r.epochs, starts(&[(1, -1, -1)]));
    let g = meta.store().broker_group("g1").await.unwrap().unwrap();
    assert_eq!(g.state, BrokerState::None, "no lease yet: not writable");

    // With the epoch: a lease of the configured length, the epoch's starts recorded.
    let r = lease(&mut c, A, BrokerRole::Master, 1, 500, 200).await;
    assert_eq!((r.role, r.epoch, r.lease_ms), (BrokerRole::Master, 1, 2000));
    assert_eq!(r.epochs, starts(&[(1, 500, 200)]));
    let state = meta.store().group_lease_state("g1").await.unwrap().unwrap();
    assert_eq!(state.state, BrokerState::ReadWrite);
    assert!(state.lease_until_ms > now_ms() + 1000, "{state:?}");
    // Clients see the master at once.
    assert_eq!(routed_master(&mut c, "s.f1", "g1").await, Some(A.address()));

    // Renewals keep the starts; a stale epoch gets no lease.
    let r = lease(&mut c, A, BrokerRole::Master, 1, 900, 300).await;
    assert_eq!(
        (r.lease_ms, r.epochs.clone()),
        (2000, starts(&[(1, 500, 200)]))
    );
    let r = lease(&mut c, A, BrokerRole::Master, 0, 900, 300).await;
    assert_eq!((r.epoch, r.lease_ms), (1, 0));

    // The slave: role slave, the master's sync address, no lease, the history.
    let r = lease(&mut c, B, BrokerRole::Slave, 1, 400, 150).await;
    assert_eq!(
        (r.group.as_str(), r.role, r.epoch, r.lease_ms),
        ("g1", BrokerRole::Slave, 1, 0)
    );
    assert_eq!(r.master_sync, A.sync_address());
    assert_eq!(r.master_address, A.address());
    assert_eq!(r.epochs, starts(&[(1, 500, 200)]));
    // A slave asking as master is still told it is a slave.
    let r = lease(&mut c, B, BrokerRole::Master, 1, 400, 150).await;
    assert_eq!((r.role, r.lease_ms), (BrokerRole::Slave, 0));

    // Every report is recorded.
    let reports = meta.store().replica_reports(Some("g1")).await.unwrap();
    assert_eq!(reports.len(), 2);
    let b = reports.iter().find(|r| r.hostname == B.host).unwrap();
    assert_eq!(
        (b.role, b.epoch, b.message_offset, b.action_offset),
        (BrokerRole::Master.code(), 1, 400, 150)
    );
    // One epoch, the master's.
    let epochs = meta.store().group_epochs("g1").await.unwrap();
    assert_eq!(epochs.len(), 1);
    assert_eq!(
        (epochs[0].hostname.as_str(), epochs[0].serve_port),
        (A.host, A.serve_port)
    );
    meta.shutdown().await;
}
on_all_backends!(master_leases_and_slave_follows);

// ---- 5. bad input ----

async fn bad_lease_requests_change_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = serve(MetaConfig {
        cluster_secret: Some("sekrit".into()),
        ..config(&db)
    })
    .await
    .unwrap();
    add_pair(meta.store(), "g1").await;
    let mut c = MetaConn::connect(&meta).await;
    let with_secret = |mut r: GroupLeaseRequest, s: Option<&str>| {
        r.secret = s.map(str::to_owned);
        r
    };

    // Unknown server (right secret): PARAM_ERROR.
    let unknown = Server {
        host: "nobody",
        ..A
    };
    let req = with_secret(
        request(unknown, BrokerRole::Master, 1, 0, 0),
        Some("sekrit"),
    );
    assert_eq!(lease_call(&mut c, &req).await.0, response::PARAM_ERROR);
    // Wrong or missing secret: BROKER_REJECT.
    for secret in [Some("wrong"), None] {
        let req = with_secret(request(A, BrokerRole::Master, 1, 0, 0), secret);
        assert_eq!(
            lease_call(&mut c, &req).await.0,
            response::BROKER_REJECT,
            "{secret:?}"
        );
    }
    // Malformed bodies: PARAM_ERROR.
    let mut good = BytesMut::new();
    with_secret(request(A, BrokerRole::Master, 1, 0, 0), Some("sekrit"))
        .encode(&mut good)
        .unwrap();
    let truncated = BytesMut::from(&good[..good.len() - 3]);
    assert_eq!(
        c.call(GROUP_LEASE, 8, truncated).await.header.code,
        response::PARAM_ERROR
    );
    let mut bad_role = BytesMut::new();
    bad_role.put_i16(6);
    bad_role.put_slice(b"host-a");
    bad_role.put_i32(A.serve_port);
    bad_role.put_i32(42);
    bad_role.put_i64(1);
    bad_role.put_i64(0);
    bad_role.put_i64(0);
    bad_role.put_i16(0);
    assert_eq!(
        c.call(GROUP_LEASE, 8, bad_role).await.header.code,
        response::PARAM_ERROR
    );
    assert_eq!(
        c.call(GROUP_LEASE, 8, BytesMut::new()).await.header.code,
        response::PARAM_ERROR
    );

    // Nothing was stored.
    assert!(meta.store().broker_groups().await.unwrap().is_empty());
    assert!(meta.store().replica_reports(None).await.unwrap().is_empty());
    assert!(meta.store().group_epochs("g1").await.unwrap().is_empty());

    // The same connection serves a correct request.
    let (code, answer) = lease_call(&mut c, &{
        let mut r = request(A, BrokerRole::Master, 0, 0, 0);
        r.secret = Some("sekrit".into());
        r
    })
    .await;
    assert_eq!(code, response::SUCCESS);
    assert_eq!(answer.unwrap().epoch, 1);
    meta.shutdown().await;
}
on_all_backends!(bad_lease_requests_change_nothing);

// ---- 2. automatic failover ----

async fn lease_state(meta: &MetaServerHandle) -> qmq_meta::model::GroupLeaseState {
    meta.store().group_lease_state("g1").await.unwrap().unwrap()
}

async fn report_age(store: &Store, s: Server) -> i64 {
    let reports = store.replica_reports(None).await.unwrap();
    let r = reports.iter().find(|r| r.hostname == s.host).unwrap();
    now_ms() - r.updated_ms
}

async fn expired_master_is_replaced_by_fresh_slave(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = serve(MetaConfig {
        lease_ms: 1000,
        lease_grace_ms: 100,
        replica_stale_ms: 800,
        ..config(&db)
    })
    .await
    .unwrap();
    add_pair(meta.store(), "g1").await;
    let mut c = MetaConn::connect(&meta).await;
    lease(&mut c, A, BrokerRole::Master, 0, 0, 0).await;
    assert_eq!(
        lease(&mut c, A, BrokerRole::Master, 1, 100, 40)
            .await
            .lease_ms,
        1000
    );
    assert_eq!(routed_master(&mut c, "s.f2", "g1").await, Some(A.address()));

    // A stale report is never promoted: the slave reports once, the master keeps renewing
    // until that report is stale, then stops.
    lease(&mut c, B, BrokerRole::Slave, 1, 90, 30).await;
    let until = Deadline::after(Duration::from_secs(10));
    loop {
        assert_eq!(
            lease(&mut c, A, BrokerRole::Master, 1, 100, 40)
                .await
                .lease_ms,
            1000
        );
        if report_age(meta.store(), B).await > 800 {
            break;
        }
        until.pause().await;
    }
    let expired = wait_for(Duration::from_secs(5), || async {
        let g = lease_state(&meta).await;
        (g.state == BrokerState::None && now_ms() > g.lease_until_ms + 100).then_some(g)
    })
    .await;
    assert!(meta.check_failover().await.unwrap().is_empty());
    assert_eq!(lease_state(&meta).await.epoch, 1);
    assert_eq!(
        routed_master(&mut c, "s.f2", "g1").await,
        None,
        "no master without lease"
    );

    // A report of another epoch is never promoted either.
    let r = lease(&mut c, B, BrokerRole::Slave, 0, 95, 35).await;
    assert_eq!((r.role, r.epoch), (BrokerRole::Slave, 1));
    assert!(meta.check_failover().await.unwrap().is_empty());
    assert_eq!(lease_state(&meta).await.epoch, 1);
    assert_eq!(
        roles(meta.store(), "g1").await,
        [("host-a".to_owned(), 0), ("host-b".to_owned(), 1)]
    );

    // A fresh report in the epoch: the checker promotes the slave.
    lease(&mut c, B, BrokerRole::Slave, 1, 120, 50).await;
    let g = wait_for(Duration::from_secs(5), || async {
        let g = lease_state(&meta).await;
        (g.epoch == 2).then_some(g)
    })
    .await;
    assert_eq!(g.master_address, B.address());
    assert_eq!((g.state, g.lease_until_ms), (BrokerState::None, 0));
    assert_eq!(g.fence_until_ms, expired.lease_until_ms + 100);
    assert_eq!(
        roles(meta.store(), "g1").await,
        [("host-a".to_owned(), 1), ("host-b".to_owned(), 0)]
    );
    let epochs = meta.store().group_epochs("g1").await.unwrap();
    assert_eq!(
        epochs
            .iter()
            .map(|e| (
                e.epoch,
                e.hostname.as_str(),
                e.message_start,
                e.action_start
            ))
            .collect::<Vec<_>>(),
        [(1, A.host, 100, 40), (2, B.host, -1, -1)]
    );

    // The old master learns it is a slave of the new one.
    let r = lease(&mut c, A, BrokerRole::Master, 1, 130, 45).await;
    assert_eq!((r.role, r.epoch, r.lease_ms), (BrokerRole::Slave, 2, 0));
    assert_eq!(r.master_sync, B.sync_address());
    assert_eq!(r.master_address, B.address());
    // The new master adopts the epoch, then leases; its first lease records the starts.
    let r = lease(&mut c, B, BrokerRole::Slave, 1, 120, 50).await;
    assert_eq!((r.role, r.epoch, r.lease_ms), (BrokerRole::Master, 2, 0));
    let r = lease(&mut c, B, BrokerRole::Master, 2, 120, 50).await;
    assert_eq!((r.role, r.epoch, r.lease_ms), (BrokerRole::Master, 2, 1000));
    assert_eq!(r.epochs, starts(&[(1, 100, 40), (2, 120, 50)]));
    // Clients are routed to the new master at once.
    let until = Deadline::after(Duration::from_secs(1));
    while routed_master(&mut c, "s.f2", "g1").await != Some(B.address()) {
        until.pause().await;
    }
    // The old master, now following epoch 2 as slave, stays a slave.
    let r = lease(&mut c, A, BrokerRole::Slave, 2, 120, 50).await;
    assert_eq!((r.role, r.lease_ms), (BrokerRole::Slave, 0));
    assert_eq!(lease_state(&meta).await.epoch, 2);
    // Nor can it take the group back with a QMQ-style BROKER_REGISTER.
    let code = c
        .broker(
            qmq_protocol::BrokerRequestType::Online,
            "g1",
            &A.address(),
            BrokerRole::Master,
            BrokerState::ReadWrite,
        )
        .await;
    assert_eq!(code, response::BROKER_REJECT);
    assert_eq!(lease_state(&meta).await.master_address, B.address());
    meta.shutdown().await;
}
on_all_backends!(expired_master_is_replaced_by_fresh_slave);

// ---- 3. two meta servers race ----

async fn two_meta_servers_promote_once_per_epoch(backend: Backend) {
    use std::sync::Arc;

    use qmq_meta::MetaCore;

    let db = TestDb::new(backend).await;
    let cfg = MetaConfig {
        lease_ms: 150,
        lease_grace_ms: 50,
        replica_stale_ms: 10_000,
        ..db.config()
    };
    let open = || async {
        match &db.url {
            Some(url) => Store::connect(url).await.unwrap(),
            None => Store::open_sqlite_dir(&cfg.data_dir).await.unwrap(),
        }
    };
    let cores = [
        Arc::new(MetaCore::new(open().await, cfg.clone()).await.unwrap()),
        Arc::new(MetaCore::new(open().await, cfg.clone()).await.unwrap()),
    ];
    let store = cores[0].store().clone();
    add_pair(&store, "g1").await;
    let call = |core: &Arc<MetaCore>, s: Server, role, epoch, offset: i64| {
        let core = core.clone();
        async move {
            core.group_lease(&request(s, role, epoch, offset, offset / 2))
                .await
                .unwrap()
        }
    };
    let (mut master, mut slave) = (A, B);
    let mut epoch = call(&cores[0], master, BrokerRole::Master, 0, 0)
        .await
        .epoch;
    assert_eq!(epoch, 1);
    for round in 0..20_i64 {
        let offset = 1000 * (round + 1);
        // The master leases (through either meta server), the slave reports.
        let leased = wait_for(Duration::from_secs(5), || {
            let core = &cores[(round % 2) as usize];
            async move {
                let r = call(core, master, BrokerRole::Master, epoch, offset).await;
                assert_eq!((r.role, r.epoch), (BrokerRole::Master, epoch));
                (r.lease_ms > 0).then_some(())
            }
        });
        leased.await;
        let r = call(&cores[1], slave, BrokerRole::Slave, epoch, offset - 10).await;
        assert_eq!((r.role, r.epoch), (BrokerRole::Slave, epoch));
        // The lease runs out.
        wait_for(Duration::from_secs(5), || async {
            let g = store.group_lease_state("g1").await.unwrap().unwrap();
            (now_ms() > g.lease_until_ms + 50).then_some(())
        })
        .await;
        // Both meta servers run the checker, three times each, at once.
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let core = cores[i % 2].clone();
                tokio::spawn(async move { core.check_failover().await.unwrap() })
            })
            .collect();
        let mut promotions = Vec::new();
        for t in tasks {
            promotions.extend(t.await.unwrap());
        }
        assert_eq!(promotions.len(), 1, "round {round}: {promotions:?}");
        assert_eq!(promotions[0].epoch, epoch + 1);
        assert_eq!(promotions[0].hostname, slave.host);
        epoch += 1;
        // The database agrees: one epoch row per epoch, one master (the promoted slave).
        let g = store.group_lease_state("g1").await.unwrap().unwrap();
        assert_eq!(g.epoch, epoch);
        let epochs: Vec<i64> = store
            .group_epochs("g1")
            .await
            .unwrap()
            .iter()
            .map(|e| e.epoch)
            .collect();
        assert_eq!(epochs, (1..=epoch).collect::<Vec<_>>());
        let brokers = store.brokers(Some("g1")).await.unwrap();
        let masters: Vec<_> = brokers.iter().filter(|b| b.role == 0).collect();
        assert_eq!(masters.len(), 1, "{brokers:?}");
        assert_eq!(masters[0].hostname, slave.host);
        assert_eq!(brokers.iter().filter(|b| b.role == 1).count(), 1);
        std::mem::swap(&mut master, &mut slave);
    }
    for core in &cores {
        core.store().close().await;
    }
}
on_all_backends!(two_meta_servers_promote_once_per_epoch);

// ---- 4. fencing ----

async fn manual_promotion_waits_out_the_old_lease(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = serve(MetaConfig {
        lease_ms: 1500,
        lease_grace_ms: 300,
        ..config(&db)
    })
    .await
    .unwrap();
    add_pair(meta.store(), "g1").await;
    let mut c = MetaConn::connect(&meta).await;
    lease(&mut c, A, BrokerRole::Master, 0, 0, 0).await;
    assert_eq!(
        lease(&mut c, A, BrokerRole::Master, 1, 70, 7)
            .await
            .lease_ms,
        1500
    );
    lease(&mut c, B, BrokerRole::Slave, 1, 60, 6).await;
    let old = lease_state(&meta).await;

    // Promote while the master's lease runs.
    let (status, v) = http(
        &meta,
        "POST",
        "/admin/groups/promote",
        Some(TOKEN),
        Some(json!({"broker_group": "g1"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["epoch"], 2);
    let g = lease_state(&meta).await;
    assert_eq!(g.epoch, 2);
    assert!(
        g.fence_until_ms >= old.lease_until_ms + 300,
        "{g:?} {old:?}"
    );

    // The old master learns it is a slave on its next renewal.
    let r = lease(&mut c, A, BrokerRole::Master, 1, 80, 8).await;
    assert_eq!((r.role, r.epoch, r.lease_ms), (BrokerRole::Slave, 2, 0));
    // The new master gets no lease before the fence; it gets one right after.
    let r = lease(&mut c, B, BrokerRole::Slave, 1, 60, 6).await;
    assert_eq!((r.role, r.epoch, r.lease_ms), (BrokerRole::Master, 2, 0));
    let mut refused = 0;
    let until = Deadline::after(Duration::from_secs(5));
    let first_lease = loop {
        let sent = now_ms();
        let r = lease(&mut c, B, BrokerRole::Master, 2, 60, 6).await;
        let received = now_ms();
        if r.lease_ms > 0 {
            assert!(received >= g.fence_until_ms, "lease before the fence");
            break r;
        }
        assert!(
            sent < g.fence_until_ms,
            "no lease at {sent} after the fence"
        );
        assert_eq!(
            r.epochs[1],
            starts(&[(2, -1, -1)])[0],
            "starts wait for the lease"
        );
        refused += 1;
        until.pause().await;
    };
    assert!(refused > 0, "the fence was never in force");
    assert_eq!(first_lease.lease_ms, 1500);
    assert_eq!(first_lease.epochs, starts(&[(1, 70, 7), (2, 60, 6)]));
    assert_eq!(routed_master(&mut c, "s.f4", "g1").await, Some(B.address()));
    meta.shutdown().await;
}
on_all_backends!(manual_promotion_waits_out_the_old_lease);

// ---- 6. admin API and tools ----

fn tools(meta: &MetaServerHandle, token: &str, rest: &[&str]) -> qmq_meta::cli::ToolsArgs {
    use clap::Parser;
    let addr = meta.http_addr().to_string();
    let mut argv = vec!["tools", "--metaserver", addr.as_str(), "--token", token];
    argv.extend_from_slice(rest);
    qmq_meta::cli::ToolsArgs::try_parse_from(argv).unwrap()
}

async fn admin_promotes_and_lists_replication(backend: Backend) {
    use qmq_meta::cli::run_tools;

    let db = TestDb::new(backend).await;
    let meta = serve(config(&db)).await.unwrap();
    add_pair(meta.store(), "g1").await;
    let mut c = MetaConn::connect(&meta).await;
    lease(&mut c, A, BrokerRole::Master, 0, 0, 0).await;
    lease(&mut c, A, BrokerRole::Master, 1, 1000, 400).await;
    lease(&mut c, B, BrokerRole::Slave, 1, 750, 380).await;

    // The listing: epoch, lease, members with offsets and lag.
    let (status, v) = http(&meta, "GET", "/admin/groups/replication", Some(TOKEN), None).await;
    assert_eq!(status, 200, "{v}");
    let g = &v["data"][0];
    assert_eq!(
        (g["name"].as_str(), g["epoch"].as_i64()),
        (Some("g1"), Some(1))
    );
    assert_eq!(g["master_address"], A.address());
    assert!(g["lease"].as_str().unwrap().ends_with("ms left"), "{g}");
    assert!(g["lease_remaining_ms"].as_i64().unwrap() > 0);
    let members = g["members"].as_array().unwrap();
    let member = |host: &str| {
        members
            .iter()
            .find(|m| m["server"].as_str().unwrap().starts_with(host))
            .unwrap()
            .clone()
    };
    let (a, b) = (member(A.host), member(B.host));
    assert_eq!(
        (a["role"].as_i64(), a["message_lag"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(b["server"], format!("{}:{}", B.host, B.serve_port));
    assert_eq!(
        (b["role"].as_i64(), b["epoch"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (b["message_offset"].as_i64(), b["action_offset"].as_i64()),
        (Some(750), Some(380))
    );
    assert_eq!(
        (b["message_lag"].as_i64(), b["action_lag"].as_i64()),
        (Some(250), Some(20))
    );
    assert!(b["report_age_ms"].as_i64().unwrap() >= 0);
    assert_eq!(g["epochs"][0]["message_start"], 1000);
    // The tools print it.
    let out = run_tools(tools(&meta, TOKEN, &["list-broker-groups"]))
        .await
        .unwrap();
    assert!(out.contains("\"message_lag\": 250"), "{out}");

    // Promotion needs the token.
    let body = json!({"broker_group": "g1"});
    let (status, _) = http(
        &meta,
        "POST",
        "/admin/groups/promote",
        None,
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = http(
        &meta,
        "POST",
        "/admin/groups/promote",
        Some("nope"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 401);
    let err = run_tools(tools(&meta, "nope", &["promote", "--broker-group", "g1"]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, qmq_meta::MetaError::Remote { status: 401, .. }),
        "{err}"
    );
    // Refused targets: the master itself, an unknown group.
    let master = json!({"broker_group": "g1", "hostname": A.host, "serve_port": A.serve_port});
    let (status, v) = http(
        &meta,
        "POST",
        "/admin/groups/promote",
        Some(TOKEN),
        Some(master),
    )
    .await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("not the slave"),
        "{v}"
    );
    let other = json!({"broker_group": "nope"});
    let (status, _) = http(
        &meta,
        "POST",
        "/admin/groups/promote",
        Some(TOKEN),
        Some(other),
    )
    .await;
    assert_eq!(status, 404);
    // Nothing changed.
    assert_eq!(lease_state(&meta).await.epoch, 1);

    // A slave whose report is of another epoch is refused.
    lease(&mut c, B, BrokerRole::Slave, 0, 750, 380).await;
    let err = run_tools(tools(
        &meta,
        TOKEN,
        &[
            "promote",
            "--broker-group",
            "g1",
            "--hostname",
            B.host,
            "--serve-port",
            "31011",
        ],
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no fresh report"), "{err}");
    assert_eq!(lease_state(&meta).await.epoch, 1);

    // With a fresh report, the tools promote it.
    lease(&mut c, B, BrokerRole::Slave, 1, 760, 390).await;
    let out = run_tools(tools(
        &meta,
        TOKEN,
        &[
            "promote",
            "--broker-group",
            "g1",
            "--hostname",
            B.host,
            "--serve-port",
            "31011",
        ],
    ))
    .await
    .unwrap();
    assert!(out.contains("\"epoch\": 2"), "{out}");
    assert_eq!(
        roles(meta.store(), "g1").await,
        [("host-a".to_owned(), 1), ("host-b".to_owned(), 0)]
    );
    let (_, v) = http(&meta, "GET", "/admin/groups/replication", Some(TOKEN), None).await;
    let g = &v["data"][0];
    assert_eq!(
        (g["epoch"].as_i64(), g["lease"].as_str()),
        (Some(2), Some("fenced"))
    );
    assert_eq!(g["master_address"], B.address());
    assert_eq!(g["epochs"].as_array().unwrap().len(), 2);
    meta.shutdown().await;
}
on_all_backends!(admin_promotes_and_lists_replication);
