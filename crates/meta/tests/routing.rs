//! Routes, broker registration, heartbeats and readonly marks over the real TCP protocol,
//! on SQLite, PostgreSQL and MariaDB.

mod common;

use std::time::Duration;

use common::{http, Backend, MetaConn, TestDb, TOKEN};
use qmq_meta::serve;
use qmq_protocol::{BrokerRequestType, BrokerRole, BrokerState, ClientType, OnOfflineState};
use serde_json::json;

async fn routes_follow_min_group_num(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    let mut c = MetaConn::connect(&meta).await;

    // No group at all: an empty route, not an error.
    assert!(c.groups(ClientType::Producer, "s.none").await.is_empty());

    // One group: min.group.num (2) is capped at what exists.
    c.online("g1", "127.0.0.1:30001").await;
    assert_eq!(c.groups(ClientType::Producer, "s.a").await, ["g1"]);
    let r = c.route(ClientType::Producer, "s.a", "").await;
    assert_eq!(r.groups[0].master, "127.0.0.1:30001");
    assert_eq!(r.groups[0].state, BrokerState::ReadWrite);
    assert_eq!(r.client_type_code, 1);
    assert_eq!(r.state, OnOfflineState::Online);

    // A second group: the route is extended to two groups, and kept.
    c.online("g2", "127.0.0.1:30002").await;
    assert_eq!(c.groups(ClientType::Producer, "s.a").await, ["g1", "g2"]);
    // A third group: routes already at min.group.num are not changed ...
    c.online("g3", "127.0.0.1:30003").await;
    assert_eq!(c.groups(ClientType::Producer, "s.a").await, ["g1", "g2"]);
    assert_eq!(c.groups(ClientType::Consumer, "s.a").await, ["g1", "g2"]);
    // ... and the new, empty group is used for new subjects.
    assert!(c
        .groups(ClientType::Producer, "s.b")
        .await
        .contains(&"g3".to_owned()));
    // Retry subjects share their subject's route; the response echoes the asked subject.
    let retry = c.route(ClientType::Consumer, "%RETRY%s.a%cg", "cg").await;
    assert_eq!(retry.subject, "%RETRY%s.a%cg");
    let mut names: Vec<_> = retry.groups.into_iter().map(|g| g.name).collect();
    names.sort();
    assert_eq!(names, ["g1", "g2"]);

    // Stable across restarts.
    meta.shutdown().await;
    let meta = db.start().await;
    let mut c = MetaConn::connect(&meta).await;
    assert_eq!(c.groups(ClientType::Producer, "s.a").await, ["g1", "g2"]);
    let (status, subjects) = http(&meta, "GET", "/admin/subjects", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = subjects["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["subject"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["s.a", "s.b"]);
    meta.shutdown().await;
}
on_all_backends!(routes_follow_min_group_num);

async fn delay_and_realtime_groups_are_separate(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    let mut c = MetaConn::connect(&meta).await;
    c.online("rt", "127.0.0.1:30001").await;
    let code = c
        .broker(
            BrokerRequestType::Online,
            "delay-1",
            "127.0.0.1:30801",
            BrokerRole::DelayMaster,
            BrokerState::ReadWrite,
        )
        .await;
    assert_eq!(code, 0);
    assert_eq!(
        c.groups(ClientType::DelayProducer, "s.d").await,
        ["delay-1"]
    );
    let r = c.route(ClientType::DelayProducer, "s.d", "").await;
    assert_eq!(r.client_type_code, 4);
    assert_eq!(c.groups(ClientType::Producer, "s.d").await, ["rt"]);
    assert_eq!(c.groups(ClientType::Consumer, "s.d").await, ["rt"]);
    // A delay server cannot join a realtime group's name.
    let code = c
        .broker(
            BrokerRequestType::Online,
            "rt",
            "127.0.0.1:30001",
            BrokerRole::DelayMaster,
            BrokerState::ReadWrite,
        )
        .await;
    assert_ne!(code, 0);
    meta.shutdown().await;
}
on_all_backends!(delay_and_realtime_groups_are_separate);

async fn readonly_groups_serve_consumers_only(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    let mut c = MetaConn::connect(&meta).await;
    c.online("g1", "127.0.0.1:30001").await;
    c.online("g2", "127.0.0.1:30002").await;
    assert_eq!(c.groups(ClientType::Producer, "s.r").await, ["g1", "g2"]);

    let mark = json!({"broker_group": "g1", "subject": "s.r"});
    let (status, _) = http(
        &meta,
        "POST",
        "/admin/readonly/mark",
        Some(TOKEN),
        Some(mark.clone()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(c.groups(ClientType::Producer, "s.r").await, ["g2"]);
    assert_eq!(c.groups(ClientType::Consumer, "s.r").await, ["g1", "g2"]);
    // Other subjects still produce to g1.
    assert_eq!(
        c.groups(ClientType::Producer, "s.other").await,
        ["g1", "g2"]
    );

    // The broker learns its readonly subjects from the directives endpoint.
    let d = qmq_meta::broker_api::fetch_directives(&meta.http_addr().to_string(), "g1", 0)
        .await
        .unwrap();
    assert!(d.registered);
    assert_eq!(d.readonly_subjects, ["s.r"]);

    // `*` marks every subject; new subjects avoid the group entirely.
    let all = json!({"broker_group": "g2"});
    assert_eq!(
        http(
            &meta,
            "POST",
            "/admin/readonly/mark",
            Some(TOKEN),
            Some(all.clone())
        )
        .await
        .0,
        200
    );
    assert!(c.groups(ClientType::Producer, "s.r").await.is_empty());
    assert_eq!(c.groups(ClientType::Consumer, "s.new").await, ["g1"]);

    // Unmark restores producers.
    assert_eq!(
        http(
            &meta,
            "POST",
            "/admin/readonly/unmark",
            Some(TOKEN),
            Some(mark)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        http(
            &meta,
            "POST",
            "/admin/readonly/unmark",
            Some(TOKEN),
            Some(all)
        )
        .await
        .0,
        200
    );
    assert_eq!(c.groups(ClientType::Producer, "s.r").await, ["g1", "g2"]);

    // Unknown group: refused.
    let (status, body) = http(
        &meta,
        "POST",
        "/admin/readonly/mark",
        Some(TOKEN),
        Some(json!({"broker_group": "nope"})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    meta.shutdown().await;
}
on_all_backends!(readonly_groups_serve_consumers_only);

async fn heartbeat_timeout_marks_group_unavailable(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = serve(qmq_meta::MetaConfig {
        heartbeat_timeout_ms: 300,
        ..db.config()
    })
    .await
    .unwrap();
    let mut c = MetaConn::connect(&meta).await;
    c.online("g1", "127.0.0.1:30001").await;
    c.online("g2", "127.0.0.1:30002").await;
    assert_eq!(c.groups(ClientType::Producer, "s.h").await, ["g1", "g2"]);

    // g2 keeps heartbeating, g1 goes silent: g1 becomes NRW and leaves every route.
    let state_of = |meta_http: String, group: &'static str| async move {
        let (_, v) = common::http_raw(&meta_http, "/admin/broker-groups").await;
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == group)
            .map(|g| g["state"].as_str().unwrap().to_owned())
    };
    let http_addr = meta.http_addr().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let code = c
            .broker(
                BrokerRequestType::Heartbeat,
                "g2",
                "127.0.0.1:30002",
                BrokerRole::Master,
                BrokerState::ReadWrite,
            )
            .await;
        assert_eq!(code, 0);
        // Wait for what clients see (the cache follows the database).
        if c.groups(ClientType::Producer, "s.h").await == ["g2"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "g1 never timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        state_of(http_addr.clone(), "g1").await.as_deref(),
        Some("NRW")
    );
    assert_eq!(
        state_of(http_addr.clone(), "g2").await.as_deref(),
        Some("RW")
    );
    assert_eq!(c.groups(ClientType::Producer, "s.h").await, ["g2"]);
    assert_eq!(c.groups(ClientType::Consumer, "s.h").await, ["g2"]);

    // A heartbeat brings it back.
    let code = c
        .broker(
            BrokerRequestType::Heartbeat,
            "g1",
            "127.0.0.1:30001",
            BrokerRole::Master,
            BrokerState::ReadWrite,
        )
        .await;
    assert_eq!(code, 0);
    assert_eq!(c.groups(ClientType::Producer, "s.h").await, ["g1", "g2"]);

    // A broker reporting itself readonly (state R) is kept for consumers only.
    let code = c
        .broker(
            BrokerRequestType::Heartbeat,
            "g1",
            "127.0.0.1:30001",
            BrokerRole::Master,
            BrokerState::Read,
        )
        .await;
    assert_eq!(code, 0);
    assert_eq!(c.groups(ClientType::Producer, "s.h").await, ["g2"]);
    assert_eq!(c.groups(ClientType::Consumer, "s.h").await, ["g1", "g2"]);

    // Offline: gone for everyone.
    let code = c
        .broker(
            BrokerRequestType::Offline,
            "g2",
            "127.0.0.1:30002",
            BrokerRole::Master,
            BrokerState::ReadWrite,
        )
        .await;
    assert_eq!(code, 0);
    assert!(c
        .groups(ClientType::Consumer, "s.h")
        .await
        .iter()
        .all(|g| g != "g2"));
    meta.shutdown().await;
}
on_all_backends!(heartbeat_timeout_marks_group_unavailable);

async fn duplicate_group_names_are_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    let mut c = MetaConn::connect(&meta).await;
    c.online("dup", "127.0.0.1:30001").await;
    // Another master claiming the live group's name is refused, and changes nothing.
    for kind in [
        BrokerRequestType::Online,
        BrokerRequestType::Heartbeat,
        BrokerRequestType::Offline,
    ] {
        let code = c
            .broker(
                kind,
                "dup",
                "127.0.0.1:39999",
                BrokerRole::Master,
                BrokerState::ReadWrite,
            )
            .await;
        assert_eq!(code, qmq_protocol::codes::response::BROKER_REJECT);
    }
    let r = c.route(ClientType::Producer, "s.dup", "").await;
    assert_eq!(r.groups.len(), 1);
    assert_eq!(r.groups[0].master, "127.0.0.1:30001");
    assert_eq!(r.groups[0].state, BrokerState::ReadWrite);
    // Once the group is offline, a replacement master may take the name over.
    let code = c
        .broker(
            BrokerRequestType::Offline,
            "dup",
            "127.0.0.1:30001",
            BrokerRole::Master,
            BrokerState::ReadWrite,
        )
        .await;
    assert_eq!(code, 0);
    c.online("dup", "127.0.0.1:39999").await;
    let r = c.route(ClientType::Producer, "s.dup", "").await;
    assert_eq!(r.groups[0].master, "127.0.0.1:39999");
    // Slaves' registrations are acknowledged and do not touch the group.
    let code = c
        .broker(
            BrokerRequestType::Online,
            "dup",
            "127.0.0.1:40000",
            BrokerRole::Slave,
            BrokerState::ReadWrite,
        )
        .await;
    assert_eq!(code, 0);
    let r = c.route(ClientType::Producer, "s.dup", "").await;
    assert_eq!(r.groups[0].master, "127.0.0.1:39999");
    meta.shutdown().await;
}
on_all_backends!(duplicate_group_names_are_refused);

/// The issue's scenario: an operator takes a group out of a subject's route, and producer and
/// consumer registrations (which top routes up to `min.group.num`, 2 here) must not put it
/// back, not even after a restart or when the group re-registers; a newly live group may still
/// top the route up, and adding the removed group back ends its exclusion.
async fn a_removed_group_stays_out_of_the_route(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    let mut c = MetaConn::connect(&meta).await;
    c.online("broker-1", "127.0.0.1:30001").await;
    c.online("broker-2", "127.0.0.1:30002").await;
    let both = ["broker-1", "broker-2"];
    assert_eq!(c.groups(ClientType::Producer, "s.x").await, both);

    let edit = |group: &str| json!({"broker_group": group, "subject": "s.x"});
    let (status, body) = http(
        &meta,
        "POST",
        "/admin/subject-routes/remove-group",
        Some(TOKEN),
        Some(edit("broker-1")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["groups"], json!(["broker-2"]), "{body}");
    assert_eq!(body["data"][0]["excluded"], json!(["broker-1"]), "{body}");
    let removed = meta.store().subject_route("s.x").await.unwrap().unwrap();
    assert_eq!(removed.groups, ["broker-2"]);
    assert_eq!(removed.excluded, ["broker-1"]);

    for _ in 0..20 {
        assert_eq!(c.groups(ClientType::Producer, "s.x").await, ["broker-2"]);
        assert_eq!(c.groups(ClientType::Consumer, "s.x").await, ["broker-2"]);
    }
    // The removed group going offline and online again changes nothing either.
    c.broker(
        BrokerRequestType::Offline,
        "broker-1",
        "127.0.0.1:30001",
        BrokerRole::Master,
        BrokerState::None,
    )
    .await;
    c.online("broker-1", "127.0.0.1:30001").await;
    assert_eq!(c.groups(ClientType::Producer, "s.x").await, ["broker-2"]);
    let after = meta.store().subject_route("s.x").await.unwrap().unwrap();
    assert_eq!(after, removed, "the route was written again");
    // Other subjects still get the group.
    assert_eq!(c.groups(ClientType::Producer, "s.other").await, both);

    // The exclusion is stored: a restarted server keeps it.
    meta.shutdown().await;
    let meta = db.start().await;
    let mut c = MetaConn::connect(&meta).await;
    c.online("broker-1", "127.0.0.1:30001").await;
    c.online("broker-2", "127.0.0.1:30002").await;
    for _ in 0..5 {
        assert_eq!(c.groups(ClientType::Producer, "s.x").await, ["broker-2"]);
    }

    // min.group.num still applies with the groups that are not excluded.
    c.online("broker-3", "127.0.0.1:30003").await;
    assert_eq!(
        c.groups(ClientType::Producer, "s.x").await,
        ["broker-2", "broker-3"]
    );

    // Adding the group back ends the exclusion.
    let (status, body) = http(
        &meta,
        "POST",
        "/admin/subject-routes/add-group",
        Some(TOKEN),
        Some(edit("broker-1")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"].get("excluded").is_none(), "{body}");
    assert_eq!(
        c.groups(ClientType::Producer, "s.x").await,
        ["broker-1", "broker-2", "broker-3"]
    );
    let back = meta.store().subject_route("s.x").await.unwrap().unwrap();
    assert!(back.excluded.is_empty(), "{back:?}");

    // Removing another group excludes that one only; the route is long enough already.
    let (status, body) = http(
        &meta,
        "POST",
        "/admin/subject-routes/remove-group",
        Some(TOKEN),
        Some(edit("broker-3")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        c.groups(ClientType::Producer, "s.x").await,
        ["broker-1", "broker-2"]
    );
    let now = meta.store().subject_route("s.x").await.unwrap().unwrap();
    assert_eq!(now.excluded, ["broker-3"]);
    meta.shutdown().await;
}
on_all_backends!(a_removed_group_stays_out_of_the_route);

/// `remove-subject-broker-group --subject '*'` excludes the group from every route it left;
/// routes that kept it (their last group) get no exclusion.
async fn removing_a_group_from_every_route_excludes_it_everywhere(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    let mut c = MetaConn::connect(&meta).await;
    c.online("g1", "127.0.0.1:30001").await;
    assert_eq!(c.groups(ClientType::Producer, "s.only").await, ["g1"]);
    c.online("g2", "127.0.0.1:30002").await;
    assert_eq!(c.groups(ClientType::Producer, "s.a").await, ["g1", "g2"]);
    assert_eq!(c.groups(ClientType::Producer, "s.b").await, ["g1", "g2"]);
    let (status, body) = http(
        &meta,
        "POST",
        "/admin/subject-routes/remove-group",
        Some(TOKEN),
        Some(json!({"broker_group": "g1", "subject": "*"})),
    )
    .await;
    // s.only was not asked for since g2 came online: g1 is its last group and stays.
    assert_ne!(status, 200, "{body}");
    assert_eq!(body["status"], -1, "{body}");
    let why = body["message"].as_str().unwrap();
    assert!(
        why.contains("s.only") && why.contains("removed from 2"),
        "{why}"
    );
    for s in ["s.a", "s.b"] {
        for _ in 0..5 {
            assert_eq!(c.groups(ClientType::Producer, s).await, ["g2"], "{s}");
        }
        let r = meta.store().subject_route(s).await.unwrap().unwrap();
        assert_eq!(r.excluded, ["g1"], "{s}");
    }
    // Not excluded where it stayed: that route is topped up as usual.
    assert_eq!(c.groups(ClientType::Producer, "s.only").await, ["g1", "g2"]);
    let r = meta.store().subject_route("s.only").await.unwrap().unwrap();
    assert!(r.excluded.is_empty(), "{r:?}");
    meta.shutdown().await;
}
on_all_backends!(removing_a_group_from_every_route_excludes_it_everywhere);
