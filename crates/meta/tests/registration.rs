//! Who may register broker groups: with a cluster secret configured, BROKER_REGISTER (online,
//! heartbeat, offline) is accepted only with the secret or from a trusted address.

mod common;

use common::{Backend, MetaConn, TestDb};
use qmq_protocol::codes::response;
use qmq_protocol::{BrokerRequestType, BrokerRole, BrokerState, ClientType};

const SECRET: &str = "cluster-secret-for-tests";

fn config(db: &TestDb, trusted: &[&str]) -> qmq_meta::MetaConfig {
    qmq_meta::MetaConfig {
        min_group_num: 1,
        cluster_secret: Some(SECRET.to_owned()),
        trusted_broker_addrs: trusted.iter().map(|a| a.parse().unwrap()).collect(),
        ..db.config()
    }
}

async fn register(
    c: &mut MetaConn,
    kind: BrokerRequestType,
    group: &str,
    addr: &str,
    secret: Option<&str>,
) -> i16 {
    let state = if kind == BrokerRequestType::Offline {
        BrokerState::None
    } else {
        BrokerState::ReadWrite
    };
    c.broker_with_secret(kind, group, addr, BrokerRole::Master, state, secret)
        .await
}

#[tokio::test]
async fn spoofed_offline_of_a_real_group_is_refused() {
    let db = TestDb::new(Backend::Sqlite).await;
    let meta = qmq_meta::serve(config(&db, &[])).await.unwrap();
    let mut real = MetaConn::connect(&meta).await;
    let online = BrokerRequestType::Online;
    assert_eq!(
        register(&mut real, online, "g1", "127.0.0.1:30001", Some(SECRET)).await,
        response::SUCCESS
    );
    assert_eq!(real.groups(ClientType::Consumer, "s.a").await, ["g1"]);

    let mut attacker = MetaConn::connect(&meta).await;
    let offline = BrokerRequestType::Offline;
    for secret in [None, Some("wrong"), Some("cluster-secret-for-test")] {
        let code = register(&mut attacker, offline, "g1", "127.0.0.1:30001", secret).await;
        assert_eq!(code, response::BROKER_REJECT, "{secret:?}");
    }
    let stored = meta.store().broker_group("g1").await.unwrap().unwrap();
    assert_eq!(stored.state, BrokerState::ReadWrite);
    assert_eq!(real.groups(ClientType::Producer, "s.a").await, ["g1"]);
    assert_eq!(attacker.groups(ClientType::Consumer, "s.a").await, ["g1"]);

    // The real server, with the secret, can still heartbeat and go offline.
    let beat = BrokerRequestType::Heartbeat;
    assert_eq!(
        register(&mut real, beat, "g1", "127.0.0.1:30001", Some(SECRET)).await,
        response::SUCCESS
    );
    assert_eq!(
        register(&mut real, offline, "g1", "127.0.0.1:30001", Some(SECRET)).await,
        response::SUCCESS
    );
    let stored = meta.store().broker_group("g1").await.unwrap().unwrap();
    assert_eq!(stored.state, BrokerState::None);
    meta.shutdown().await;
}

#[tokio::test]
async fn spoofed_new_group_is_refused() {
    let db = TestDb::new(Backend::Sqlite).await;
    let meta = qmq_meta::serve(config(&db, &[])).await.unwrap();
    let mut attacker = MetaConn::connect(&meta).await;
    for kind in [BrokerRequestType::Online, BrokerRequestType::Heartbeat] {
        for secret in [None, Some("guess")] {
            let code = register(&mut attacker, kind, "evil", "10.6.6.6:20881", secret).await;
            assert_eq!(code, response::BROKER_REJECT, "{kind:?} {secret:?}");
        }
    }
    assert!(meta.store().broker_group("evil").await.unwrap().is_none());
    assert!(attacker
        .groups(ClientType::Producer, "s.new")
        .await
        .is_empty());
    meta.shutdown().await;
}

#[tokio::test]
async fn a_trusted_address_registers_without_the_secret() {
    let db = TestDb::new(Backend::Sqlite).await;
    let meta = qmq_meta::serve(config(&db, &["127.0.0.2"])).await.unwrap();
    let online = BrokerRequestType::Online;

    let mut java = MetaConn::connect_from(&meta, "127.0.0.2".parse().unwrap()).await;
    assert_eq!(
        register(&mut java, online, "java", "127.0.0.2:20881", None).await,
        response::SUCCESS
    );
    // A wrong secret is refused even from a trusted address.
    assert_eq!(
        register(&mut java, online, "java", "127.0.0.2:20881", Some("bad")).await,
        response::BROKER_REJECT
    );
    let mut other = MetaConn::connect_from(&meta, "127.0.0.3".parse().unwrap()).await;
    assert_eq!(
        register(&mut other, online, "other", "127.0.0.3:20881", None).await,
        response::BROKER_REJECT
    );
    assert_eq!(
        register(
            &mut other,
            BrokerRequestType::Offline,
            "java",
            "127.0.0.2:20881",
            None
        )
        .await,
        response::BROKER_REJECT
    );
    assert!(meta.store().broker_group("other").await.unwrap().is_none());
    let java_group = meta.store().broker_group("java").await.unwrap().unwrap();
    assert_eq!(java_group.state, BrokerState::ReadWrite);
    meta.shutdown().await;
}

#[tokio::test]
async fn without_secret_or_trusted_list_registration_is_open_as_in_qmq() {
    let db = TestDb::new(Backend::Sqlite).await;
    let meta = db.start().await;
    let mut c = MetaConn::connect(&meta).await;
    let online = BrokerRequestType::Online;
    assert_eq!(
        register(&mut c, online, "g", "127.0.0.1:30001", None).await,
        response::SUCCESS
    );
    assert_eq!(
        register(&mut c, online, "g", "127.0.0.1:30001", Some("ignored")).await,
        response::SUCCESS
    );
    meta.shutdown().await;
}
