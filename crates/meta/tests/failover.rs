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
