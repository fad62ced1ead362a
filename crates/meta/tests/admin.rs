//! Admin API, tools CLI, BROKER_ACQUIRE_META, reset-offset delivery and client state, on
//! SQLite, PostgreSQL and MariaDB.

mod common;

use bytes::BytesMut;
use clap::Parser;
use common::{http, Backend, MetaConn, TestDb, TOKEN};
use qmq_meta::cli::{run_tools, ToolsArgs};
use qmq_meta::MetaError;
use qmq_protocol::codes::{command, response};
use qmq_protocol::{
    BrokerAcquireMetaRequest, BrokerAcquireMetaResponse, BrokerRole, ClientType, OnOfflineState,
};
use serde_json::json;

fn master() -> serde_json::Value {
    json!({"group": "g1", "role": 0, "hostname": "host-a", "ip": "10.0.0.1", "serve_port": 20881, "sync_port": 20882})
}

async fn admin_requires_a_valid_token(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    for token in [None, Some("wrong"), Some("")] {
        let (status, body) = http(&meta, "POST", "/admin/brokers", token, Some(master())).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["status"], -1);
        assert!(
            body["message"].as_str().unwrap().contains("unauthorized"),
            "{body}"
        );
        for path in [
            "/admin/brokers",
            "/admin/subjects",
            "/admin/consumers",
            "/admin/broker-groups",
        ] {
            assert_eq!(http(&meta, "GET", path, token, None).await.0, 401);
        }
        let (status, _) = http(
            &meta,
            "POST",
            "/admin/readonly/mark",
            token,
            Some(json!({"broker_group": "g1"})),
        )
        .await;
        assert_eq!(status, 401);
    }
    // Nothing was changed by the refused calls.
    let (status, body) = http(&meta, "GET", "/admin/brokers", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"], json!([]));
    assert!(meta.store().readonly_settings().await.unwrap().is_empty());
    meta.shutdown().await;

    // A server without configured tokens refuses every admin call.
    let meta = qmq_meta::serve(qmq_meta::MetaConfig {
        admin_tokens: vec![],
        ..db.config()
    })
    .await
    .unwrap();
    let (status, body) = http(&meta, "GET", "/admin/brokers", Some(TOKEN), None).await;
    assert_eq!(status, 401);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("no admin tokens"));
    meta.shutdown().await;
}
on_all_backends!(admin_requires_a_valid_token);

async fn brokers_are_added_listed_replaced_and_acquired(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    let (status, body) = http(&meta, "POST", "/admin/brokers", Some(TOKEN), Some(master())).await;
    assert_eq!(status, 200, "{body}");
    let slave = json!({"group": "g1", "role": 1, "hostname": "host-b", "ip": "10.0.0.2", "serve_port": 20881, "sync_port": 20882});
    assert_eq!(
        http(&meta, "POST", "/admin/brokers", Some(TOKEN), Some(slave))
            .await
            .0,
        200
    );

    // Duplicates: same role in the group, same host:port elsewhere.
    let dup_role = json!({"group": "g1", "role": 0, "hostname": "host-c", "ip": "10.0.0.3", "serve_port": 20881, "sync_port": 20882});
    let (status, body) = http(&meta, "POST", "/admin/brokers", Some(TOKEN), Some(dup_role)).await;
    assert_eq!(status, 409, "{body}");
    let dup_host = json!({"group": "g2", "role": 0, "hostname": "host-a", "ip": "10.0.0.1", "serve_port": 20881, "sync_port": 20882});
    assert_eq!(
        http(&meta, "POST", "/admin/brokers", Some(TOKEN), Some(dup_host))
            .await
            .0,
        409
    );
    // Invalid input.
    for bad in [
        json!({"group": "", "role": 0, "hostname": "h", "ip": "10.0.0.9", "serve_port": 1, "sync_port": 2}),
        json!({"group": "g3", "role": 99, "hostname": "h", "ip": "10.0.0.9", "serve_port": 1, "sync_port": 2}),
        json!({"group": "g3", "role": 0, "hostname": "h", "ip": "not-an-ip", "serve_port": 1, "sync_port": 2}),
        json!({"group": "g3", "role": 0, "hostname": "h", "ip": "10.0.0.9", "serve_port": 5, "sync_port": 5}),
        json!({"group": "g3"}),
    ] {
        let (status, body) = http(&meta, "POST", "/admin/brokers", Some(TOKEN), Some(bad)).await;
        assert_eq!(status, 400, "{body}");
    }
    let (status, body) = http(
        &meta,
        "POST",
        "/admin/brokers",
        Some(TOKEN),
        Some(json!("{not json")),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    let (_, list) = http(&meta, "GET", "/admin/brokers?group=g1", Some(TOKEN), None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);

    // BROKER_ACQUIRE_META: masters get no sync source, slaves get the master's sync address.
    let mut c = MetaConn::connect(&meta).await;
    let acquire = |host: &str, port: i32| {
        let mut body = BytesMut::new();
        BrokerAcquireMetaRequest {
            hostname: host.into(),
            port,
        }
        .encode(&mut body)
        .unwrap();
        body
    };
    let resp = c
        .call(command::BROKER_ACQUIRE_META, 8, acquire("host-a", 20881))
        .await;
    assert_eq!(resp.header.code, response::SUCCESS);
    let m = BrokerAcquireMetaResponse::decode(&resp.body).unwrap();
    assert_eq!(
        (m.name.as_str(), m.master.as_str(), m.role),
        ("g1", "", BrokerRole::Master)
    );
    let resp = c
        .call(command::BROKER_ACQUIRE_META, 8, acquire("host-b", 20881))
        .await;
    let m = BrokerAcquireMetaResponse::decode(&resp.body).unwrap();
    assert_eq!(
        (m.name.as_str(), m.master.as_str(), m.role),
        ("g1", "10.0.0.1:20882", BrokerRole::Slave)
    );
    // Unknown broker: refused clearly, connection stays usable.
    let resp = c
        .call(command::BROKER_ACQUIRE_META, 8, acquire("stranger", 1))
        .await;
    assert_eq!(resp.header.code, response::PARAM_ERROR);
    assert!(resp.body.is_empty());

    // replace-broker (manual failover): the master role moves to host-c.
    let new_master = json!({"group": "g1", "role": 0, "hostname": "host-c", "ip": "10.0.0.3", "serve_port": 20881, "sync_port": 20882});
    let (status, body) = http(
        &meta,
        "POST",
        "/admin/brokers/replace",
        Some(TOKEN),
        Some(new_master),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["hostname"], "host-a");
    let resp = c
        .call(command::BROKER_ACQUIRE_META, 8, acquire("host-b", 20881))
        .await;
    let m = BrokerAcquireMetaResponse::decode(&resp.body).unwrap();
    assert_eq!(m.master, "10.0.0.3:20882");
    let unknown_role = json!({"group": "g1", "role": 4, "hostname": "host-d", "ip": "10.0.0.4", "serve_port": 20881, "sync_port": -1});
    assert_eq!(
        http(
            &meta,
            "POST",
            "/admin/brokers/replace",
            Some(TOKEN),
            Some(unknown_role)
        )
        .await
        .0,
        404
    );
    meta.shutdown().await;
}
on_all_backends!(brokers_are_added_listed_replaced_and_acquired);

async fn reset_offset_is_recorded_for_the_brokers(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    let mut c = MetaConn::connect(&meta).await;
    c.online("g1", "127.0.0.1:30001").await;
    c.online("g2", "127.0.0.1:30002").await;
    let _ = c.groups(ClientType::Consumer, "s.reset").await;
    let req =
        |action: &str| json!({"subject": "s.reset", "consumer_group": "cg", "action": action});

    // Unknown subject, bad action, missing group: refused, nothing recorded.
    let (status, _) = http(
        &meta,
        "POST",
        "/admin/reset-offset",
        Some(TOKEN),
        Some(json!({"subject": "s.unknown", "consumer_group": "cg", "action": "LATEST"})),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        http(
            &meta,
            "POST",
            "/admin/reset-offset",
            Some(TOKEN),
            Some(req("SIDEWAYS"))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        http(
            &meta,
            "POST",
            "/admin/reset-offset",
            Some(TOKEN),
            Some(json!({"subject": "s.reset", "consumer_group": "", "action": "LATEST"}))
        )
        .await
        .0,
        400
    );
    assert!(meta
        .store()
        .reset_offsets_after(0)
        .await
        .unwrap()
        .is_empty());

    let (status, first) = http(
        &meta,
        "POST",
        "/admin/reset-offset",
        Some(TOKEN),
        Some(req("LATEST")),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let (_, second) = http(
        &meta,
        "POST",
        "/admin/reset-offset",
        Some(TOKEN),
        Some(req("EARLIEST")),
    )
    .await;
    let (id1, id2) = (
        first["data"]["id"].as_i64().unwrap(),
        second["data"]["id"].as_i64().unwrap(),
    );
    assert!(id2 > id1);

    // Both groups serving the subject see both requests, in order; after the last id, none.
    let addr = meta.http_addr().to_string();
    for group in ["g1", "g2"] {
        let d = qmq_meta::broker_api::fetch_directives(&addr, group, 0)
            .await
            .unwrap();
        let actions: Vec<_> = d.reset_offsets.iter().map(|r| (r.id, r.action)).collect();
        assert_eq!(
            actions,
            [
                (id1, qmq_meta::model::ResetAction::Latest),
                (id2, qmq_meta::model::ResetAction::Earliest)
            ]
        );
        assert_eq!(d.last_id, id2);
        let d = qmq_meta::broker_api::fetch_directives(&addr, group, id1)
            .await
            .unwrap();
        assert_eq!(d.reset_offsets.len(), 1);
        assert!(qmq_meta::broker_api::fetch_directives(&addr, group, id2)
            .await
            .unwrap()
            .reset_offsets
            .is_empty());
    }
    // A group not serving the subject gets nothing; bad parameters are refused.
    let d = qmq_meta::broker_api::fetch_directives(&addr, "elsewhere", 0)
        .await
        .unwrap();
    assert!(!d.registered && d.reset_offsets.is_empty());
    let (status, _) = http(
        &meta,
        "GET",
        "/broker/directives?group=g1&after=x",
        None,
        None,
    )
    .await;
    assert_eq!(status, 400);
    meta.shutdown().await;
}
on_all_backends!(reset_offset_is_recorded_for_the_brokers);

async fn databases_consumers_and_client_state(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    let add =
        json!({"type": "mysql", "host": "db1", "port": 3306, "username": "u", "password": "p"});
    let (status, body) = http(&meta, "POST", "/admin/dbs", Some(TOKEN), Some(add.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["url"], "mysql://db1:3306");
    assert_eq!(body["data"]["password"], "", "passwords are not echoed");
    assert_eq!(
        http(&meta, "POST", "/admin/dbs", Some(TOKEN), Some(add))
            .await
            .0,
        409
    );
    let dbs = meta.store().client_dbs().await.unwrap();
    assert_eq!(
        (dbs.len(), dbs[0].password.as_str(), dbs[0].room.as_str()),
        (1, "p", "default")
    );
    // A database name (PostgreSQL outboxes) goes into the URL; a strange one is refused.
    let pg = json!({"type": "postgres", "host": "db2", "port": 5432, "username": "u",
        "password": "p", "database": "shop_1"});
    let (status, body) = http(&meta, "POST", "/admin/dbs", Some(TOKEN), Some(pg)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["url"], "postgres://db2:5432/shop_1");
    let bad = json!({"type": "postgres", "host": "db3", "port": 5432, "username": "u",
        "password": "p", "database": "a/b"});
    assert_eq!(
        http(&meta, "POST", "/admin/dbs", Some(TOKEN), Some(bad))
            .await
            .0,
        400
    );
    assert_eq!(meta.store().client_dbs().await.unwrap().len(), 2);

    let mut c = MetaConn::connect(&meta).await;
    c.online("g1", "127.0.0.1:30001").await;
    let r = c.route(ClientType::Consumer, "s.c", "cg1").await;
    assert_eq!(r.state, OnOfflineState::Online);
    let _ = c.route(ClientType::Producer, "s.c", "").await;
    let (_, consumers) = http(
        &meta,
        "GET",
        "/admin/consumers?subject=s.c",
        Some(TOKEN),
        None,
    )
    .await;
    let list = consumers["data"].as_array().unwrap();
    assert_eq!(list.len(), 1, "producers are not consumers: {consumers}");
    assert_eq!(list[0]["consumer_group"], "cg1");
    assert_eq!(list[0]["clients"][0]["client_id"], "client-1");
    assert_eq!(list[0]["clients"][0]["app_code"], "app");

    // Operators switch the group offline; the consumer is told so in its next registration.
    let off = json!({"client_id": "*", "subject": "s.c", "consumer_group": "cg1", "offline": true});
    assert_eq!(
        http(&meta, "POST", "/admin/client-state", Some(TOKEN), Some(off))
            .await
            .0,
        200
    );
    assert_eq!(
        c.route(ClientType::Consumer, "s.c", "cg1").await.state,
        OnOfflineState::Offline
    );
    let (_, consumers) = http(&meta, "GET", "/admin/consumers", Some(TOKEN), None).await;
    assert_eq!(consumers["data"][0]["clients"][0]["offline"], true);
    let on = json!({"client_id": "*", "subject": "s.c", "consumer_group": "cg1", "offline": false});
    assert_eq!(
        http(&meta, "POST", "/admin/client-state", Some(TOKEN), Some(on))
            .await
            .0,
        200
    );
    assert_eq!(
        c.route(ClientType::Consumer, "s.c", "cg1").await.state,
        OnOfflineState::Online
    );
    meta.shutdown().await;
}
on_all_backends!(databases_consumers_and_client_state);

fn tools(meta: &qmq_meta::MetaServerHandle, token: &str, rest: &[&str]) -> ToolsArgs {
    let addr = meta.http_addr().to_string();
    let mut argv = vec!["tools", "--metaserver", addr.as_str(), "--token", token];
    argv.extend_from_slice(rest);
    ToolsArgs::try_parse_from(argv).unwrap()
}

async fn tools_cli_drives_the_admin_api(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    let add = [
        "add-broker",
        "--broker-group",
        "g1",
        "--role",
        "0",
        "--hostname",
        "h1",
        "--ip",
        "10.1.1.1",
        "--serve-port",
        "20881",
        "--sync-port",
        "20882",
    ];
    let err = run_tools(tools(&meta, "bad", &add)).await.unwrap_err();
    assert!(
        matches!(err, MetaError::Remote { status: 401, .. }),
        "{err}"
    );
    assert!(meta.store().brokers(None).await.unwrap().is_empty());

    let out = run_tools(tools(&meta, TOKEN, &add)).await.unwrap();
    assert!(out.contains("\"hostname\": \"h1\""), "{out}");
    let err = run_tools(tools(&meta, TOKEN, &add)).await.unwrap_err();
    assert!(
        matches!(err, MetaError::Remote { status: 409, .. }),
        "{err}"
    );
    let out = run_tools(tools(
        &meta,
        TOKEN,
        &["list-brokers", "--broker-group", "g1"],
    ))
    .await
    .unwrap();
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["ip"], "10.1.1.1");

    // Java tools' option spellings are accepted too.
    let java = [
        "replace-broker",
        "--brokerGroup",
        "g1",
        "--role",
        "0",
        "--hostname",
        "h2",
        "--ip",
        "10.1.1.2",
        "--servePort",
        "20881",
        "--syncPort",
        "20882",
    ];
    run_tools(tools(&meta, TOKEN, &java)).await.unwrap();
    assert_eq!(
        meta.store().brokers(Some("g1")).await.unwrap()[0].hostname,
        "h2"
    );

    let mut c = MetaConn::connect(&meta).await;
    c.online("g1", "127.0.0.1:30001").await;
    let _ = c.groups(ClientType::Consumer, "s.t").await;
    run_tools(tools(
        &meta,
        TOKEN,
        &["mark-readonly", "--broker-group", "g1"],
    ))
    .await
    .unwrap();
    assert!(c.groups(ClientType::Producer, "s.t").await.is_empty());
    run_tools(tools(
        &meta,
        TOKEN,
        &["unmark-readonly", "--broker-group", "g1"],
    ))
    .await
    .unwrap();
    assert_eq!(c.groups(ClientType::Producer, "s.t").await, ["g1"]);
    run_tools(tools(
        &meta,
        TOKEN,
        &[
            "reset-offset",
            "--subject",
            "s.t",
            "--group",
            "cg",
            "--action",
            "earliest",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(meta.store().reset_offsets_after(0).await.unwrap().len(), 1);
    run_tools(tools(
        &meta,
        TOKEN,
        &[
            "add-db",
            "--host",
            "db",
            "--port",
            "3306",
            "--username",
            "u",
            "--password",
            "p",
        ],
    ))
    .await
    .unwrap();
    let subjects = run_tools(tools(&meta, TOKEN, &["list-subjects"]))
        .await
        .unwrap();
    assert!(subjects.contains("s.t"));
    let consumers = run_tools(tools(&meta, TOKEN, &["list-consumers", "--subject", "s.t"]))
        .await
        .unwrap();
    assert!(
        consumers.contains("\"consumer_group\": \"cg\""),
        "{consumers}"
    );
    let groups = run_tools(tools(&meta, TOKEN, &["list-broker-groups"]))
        .await
        .unwrap();
    assert!(groups.contains("127.0.0.1:30001"));
    run_tools(tools(
        &meta,
        TOKEN,
        &[
            "set-client-state",
            "--subject",
            "s.t",
            "--group",
            "cg",
            "--state",
            "offline",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(
        c.route(ClientType::Consumer, "s.t", "cg").await.state,
        OnOfflineState::Offline
    );

    // Unreachable server: a clear error, no panic.
    meta.shutdown().await;
    let err = run_tools(
        ToolsArgs::try_parse_from([
            "tools",
            "--metaserver",
            "127.0.0.1:1",
            "--token",
            TOKEN,
            "list-subjects",
        ])
        .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, MetaError::Http(_)), "{err}");
}
on_all_backends!(tools_cli_drives_the_admin_api);

async fn standalone_broker_registers_itself(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    let local = qmq_meta::standalone::default_local_broker("localhost", "127.0.0.1");
    meta.register_local_broker(&local).await.unwrap();
    // Idempotent: every start may call it.
    meta.register_local_broker(&local).await.unwrap();
    let mut c = MetaConn::connect(&meta).await;
    let mut body = BytesMut::new();
    BrokerAcquireMetaRequest {
        hostname: "localhost".into(),
        port: 20881,
    }
    .encode(&mut body)
    .unwrap();
    let resp = c.call(command::BROKER_ACQUIRE_META, 8, body).await;
    let m = BrokerAcquireMetaResponse::decode(&resp.body).unwrap();
    assert_eq!(
        (m.name.as_str(), m.role),
        ("standalone", BrokerRole::Master)
    );
    // A different server on the same host:port is refused.
    let other = qmq_meta::model::BrokerSpec {
        group: "other".into(),
        ..local
    };
    assert!(matches!(
        meta.register_local_broker(&other).await,
        Err(MetaError::Conflict(_))
    ));
    meta.shutdown().await;
}
on_all_backends!(standalone_broker_registers_itself);

/// What the Java `tools.sh` sends: a form POST to /management with X-Api-Token.
async fn java_form(
    meta: &qmq_meta::MetaServerHandle,
    token: &str,
    form: &str,
) -> serde_json::Value {
    management(meta, Some(token), form).await
}

/// A form POST to /management, with or without the X-Api-Token header.
async fn management(
    meta: &qmq_meta::MetaServerHandle,
    token: Option<&str>,
    form: &str,
) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(meta.http_addr())
        .await
        .unwrap();
    let token = token
        .map(|t| format!("X-Api-Token: {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST /management HTTP/1.1\r\nHost: meta\r\n{token}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body = out.split_once("\r\n\r\n").unwrap().1;
    if out.contains("content-type: application/json") {
        serde_json::from_str(body).unwrap()
    } else {
        serde_json::Value::String(body.to_owned())
    }
}

async fn java_tools_management_endpoint(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    let add = "action=AddBroker&brokerGroup=g1&role=0&hostname=h1&ip=10.2.2.2&servePort=20881&syncPort=20882";
    let refused = java_form(&meta, "nope", add).await;
    assert_eq!(refused["status"], -1);
    assert!(refused["message"]
        .as_str()
        .unwrap()
        .contains("invalid api token"));
    assert!(meta.store().brokers(None).await.unwrap().is_empty());
    assert_eq!(java_form(&meta, TOKEN, add).await["status"], 0);
    let dup = java_form(&meta, TOKEN, add).await;
    assert_eq!(dup["status"], -1, "{dup}");
    let listed = java_form(&meta, TOKEN, "action=ListBrokers&brokerGroup=g1").await;
    assert_eq!(listed["data"][0]["hostname"], "h1");
    let mut c = MetaConn::connect(&meta).await;
    c.online("g1", "127.0.0.1:30001").await;
    let _ = c.groups(ClientType::Consumer, "s.j").await;
    assert_eq!(
        java_form(
            &meta,
            TOKEN,
            "action=MarkReadonlyBrokerGroup&brokerGroup=g1"
        )
        .await["status"],
        0
    );
    assert!(c.groups(ClientType::Producer, "s.j").await.is_empty());
    assert_eq!(
        java_form(
            &meta,
            TOKEN,
            "action=UnMarkReadonlyBrokerGroup&brokerGroup=g1"
        )
        .await["status"],
        0
    );
    assert_eq!(
        java_form(
            &meta,
            TOKEN,
            "action=ResetOffset&subject=s.j&group=cg&code=2"
        )
        .await["status"],
        0
    );
    assert_eq!(
        java_form(
            &meta,
            TOKEN,
            "action=ResetOffset&subject=s.j&group=cg&code=3"
        )
        .await["status"],
        -1
    );
    assert_eq!(
        meta.store().reset_offsets_after(0).await.unwrap()[0].action,
        qmq_meta::model::ResetAction::Earliest
    );
    let db_add = "action=AddDb&type=mysql&host=db&port=3306&username=u&password=p%26w";
    assert_eq!(java_form(&meta, TOKEN, db_add).await["status"], 0);
    assert_eq!(meta.store().client_dbs().await.unwrap()[0].password, "p&w");
    // As QMQ: plain text for a missing or unknown action.
    assert_eq!(
        java_form(&meta, TOKEN, "action=Explode").await,
        json!("unknown action: Explode")
    );
    assert_eq!(
        java_form(&meta, TOKEN, "").await,
        json!("need provide action param")
    );
    meta.shutdown().await;
}
on_all_backends!(java_tools_management_endpoint);

/// One group per new subject and no periodic reload: route changes reach clients only if
/// the admin action updates the cache itself.
fn route_config(db: &TestDb) -> qmq_meta::MetaConfig {
    qmq_meta::MetaConfig {
        min_group_num: 1,
        refresh_interval_ms: 3_600_000,
        ..db.config()
    }
}

fn groups(names: &[&str]) -> Vec<String> {
    names.iter().map(|g| (*g).to_owned()).collect()
}

/// Stores routes directly, as if another meta server had assigned them.
/// Registers broker groups g1, g2 and g3 as online (the connection keeps them registered).
async fn three_groups_online(meta: &qmq_meta::MetaServerHandle) -> MetaConn {
    let mut c = MetaConn::connect(meta).await;
    for (i, g) in ["g1", "g2", "g3"].into_iter().enumerate() {
        c.online(g, &format!("127.0.0.1:{}", 30001 + i)).await;
    }
    c
}

async fn seed_routes(meta: &qmq_meta::MetaServerHandle, routes: &[(&str, &[&str])]) {
    for (subject, names) in routes {
        assert!(meta
            .store()
            .insert_subject_route(subject, &groups(names))
            .await
            .unwrap());
    }
}

/// The stored groups of a subject's route, sorted.
async fn stored(meta: &qmq_meta::MetaServerHandle, subject: &str) -> Vec<String> {
    let mut names = meta
        .store()
        .subject_route(subject)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{subject} has a route"))
        .groups;
    names.sort();
    names
}

fn message(reply: &serde_json::Value) -> &str {
    reply["message"].as_str().unwrap_or_default()
}

async fn management_lists_need_no_token(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = qmq_meta::serve(route_config(&db)).await.unwrap();
    let add = "action=AddBroker&brokerGroup=g1&role=0&hostname=h1&ip=10.2.2.2&servePort=20881&syncPort=20882";
    assert_eq!(java_form(&meta, TOKEN, add).await["status"], 0);
    let mut c = MetaConn::connect(&meta).await;
    c.online("g1", "127.0.0.1:30001").await;
    c.online("g2", "127.0.0.1:30002").await;
    seed_routes(&meta, &[("s.l", &["g1"])]).await;

    for token in [None, Some("wrong")] {
        let brokers = management(&meta, token, "action=ListBrokers").await;
        assert_eq!(brokers["status"], 0, "{brokers}");
        assert_eq!(brokers["data"][0]["hostname"], "h1");
        let listed = management(&meta, token, "action=ListBrokerGroups").await;
        assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
        let routes = management(&meta, token, "action=ListSubjectRoutes").await;
        assert_eq!(routes[0]["subject"], "s.l", "{routes}");

        // Every other action still needs the token, and changes nothing without it.
        for form in [
            "action=AddBroker&brokerGroup=g2&role=0&hostname=h2&ip=10.2.2.3&servePort=20881&syncPort=20882",
            "action=AddSubjectBrokerGroup&brokerGroup=g2&subject=s.l",
            "action=RemoveSubjectBrokerGroup&brokerGroup=g1&subject=*",
            "action=ExtendSubjectRoute&relatedSubject=*&relatedBrokerGroup=g1&newBrokerGroup=g2",
            "action=MarkReadonlyBrokerGroup&brokerGroup=g1",
            "action=AddNewSubject&subject=s.n&tag=t",
        ] {
            let refused = management(&meta, token, form).await;
            assert_eq!(refused["status"], -1, "{form}: {refused}");
            assert!(message(&refused).contains("unauthorized"), "{refused}");
        }
    }
    assert_eq!(meta.store().brokers(None).await.unwrap().len(), 1);
    assert_eq!(stored(&meta, "s.l").await, ["g1"]);
    assert!(meta.store().readonly_settings().await.unwrap().is_empty());
    // The JSON admin API keeps requiring a token for its lists.
    assert_eq!(
        http(&meta, "GET", "/admin/subjects", None, None).await.0,
        401
    );
    meta.shutdown().await;
}
on_all_backends!(management_lists_need_no_token);

async fn add_subject_broker_group_over_management(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = qmq_meta::serve(route_config(&db)).await.unwrap();
    let mut c = MetaConn::connect(&meta).await;
    c.online("g1", "127.0.0.1:30001").await;
    c.online("g2", "127.0.0.1:30002").await;
    let first = c.groups(ClientType::Consumer, "s.a").await;
    assert_eq!(first.len(), 1, "{first:?}");
    let other = if first[0] == "g1" { "g2" } else { "g1" };
    let add = |group: &str, subject: &str| {
        format!("action=AddSubjectBrokerGroup&brokerGroup={group}&subject={subject}")
    };

    // Bad input: nothing is written.
    // QMQ answers this action with the bare route or {"error": ...}.
    let error = |v: &serde_json::Value| v["error"].as_str().unwrap_or_default().to_owned();
    let missing = java_form(&meta, TOKEN, "action=AddSubjectBrokerGroup&subject=s.a").await;
    assert!(error(&missing).contains("required"), "{missing}");
    let unknown = java_form(&meta, TOKEN, &add("nope", "s.a")).await;
    assert!(error(&unknown).contains("does not exist"), "{unknown}");
    let unrouted = java_form(&meta, TOKEN, &add(other, "s.none")).await;
    assert!(error(&unrouted).contains("has no route yet"), "{unrouted}");
    assert!(meta
        .store()
        .subject_route("s.none")
        .await
        .unwrap()
        .is_none());
    let mut d = MetaConn::connect(&meta).await;
    let code = d
        .broker(
            qmq_protocol::BrokerRequestType::Online,
            "d1",
            "127.0.0.1:30009",
            BrokerRole::DelayMaster,
            qmq_protocol::BrokerState::ReadWrite,
        )
        .await;
    assert_eq!(code, 0);
    assert!(!error(&java_form(&meta, TOKEN, &add("d1", "s.a")).await).is_empty());
    assert_eq!(stored(&meta, "s.a").await, first);

    // The group joins the route; clients asking the meta server get it at once.
    let added = java_form(&meta, TOKEN, &add(other, "s.a")).await;
    assert_eq!(added["subject"], "s.a", "{added}");
    assert_eq!(added["version"], 2);
    assert_eq!(added["brokerGroups"], json!([first[0].as_str(), other]));
    assert_eq!(stored(&meta, "s.a").await, ["g1", "g2"]);
    assert_eq!(c.groups(ClientType::Producer, "s.a").await, ["g1", "g2"]);
    assert_eq!(c.groups(ClientType::Consumer, "s.a").await, ["g1", "g2"]);
    let listed = management(&meta, None, "action=ListSubjectRoutes").await;
    assert_eq!(listed[0]["brokerGroups"].as_array().unwrap().len(), 2);

    // Adding it again changes nothing: no duplicate, no new version.
    let again = java_form(&meta, TOKEN, &add(other, "s.a")).await;
    assert_eq!(again["version"], 2, "{again}");
    let route = meta.store().subject_route("s.a").await.unwrap().unwrap();
    assert_eq!((route.version, route.groups.len()), (2, 2));
    meta.shutdown().await;
}
on_all_backends!(add_subject_broker_group_over_management);

async fn remove_subject_broker_group_over_management(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = qmq_meta::serve(route_config(&db)).await.unwrap();
    let mut c = three_groups_online(&meta).await;
    seed_routes(
        &meta,
        &[
            ("s.r1", &["g1", "g2"]),
            ("s.r2", &["g1", "g3"]),
            ("s.r3", &["g1"]),
            ("s.r4", &["g2"]),
        ],
    )
    .await;
    assert_eq!(c.groups(ClientType::Producer, "s.r1").await, ["g1", "g2"]);
    let remove = |group: &str, subject: &str| {
        format!("action=RemoveSubjectBrokerGroup&brokerGroup={group}&subject={subject}")
    };

    // One subject.
    let one = java_form(&meta, TOKEN, &remove("g2", "s.r1")).await;
    assert_eq!(one["status"], 0, "{one}");
    assert_eq!(one["data"][0]["brokerGroups"], json!(["g1"]));
    assert_eq!(stored(&meta, "s.r1").await, ["g1"]);
    assert_eq!(c.groups(ClientType::Producer, "s.r1").await, ["g1"]);
    assert_eq!(stored(&meta, "s.r4").await, ["g2"], "other routes keep g2");

    // Never the last group; never a subject without a route.
    let last = java_form(&meta, TOKEN, &remove("g1", "s.r1")).await;
    assert_eq!(last["status"], -1);
    assert!(message(&last).contains("s.r1"), "{last}");
    assert!(message(&last).contains("last broker group"), "{last}");
    assert_eq!(stored(&meta, "s.r1").await, ["g1"]);
    let unrouted = java_form(&meta, TOKEN, &remove("g1", "s.none")).await;
    assert_eq!(unrouted["status"], -1);
    assert!(
        message(&unrouted).contains("has no route yet"),
        "{unrouted}"
    );
    let missing = java_form(
        &meta,
        TOKEN,
        "action=RemoveSubjectBrokerGroup&brokerGroup=g1",
    )
    .await;
    assert_eq!(missing["status"], -1);

    // Every subject: removed where another group remains, refused per subject elsewhere.
    let any = java_form(&meta, TOKEN, &remove("g1", "*")).await;
    assert_eq!(any["status"], -1, "{any}");
    let why = message(&any);
    assert!(why.contains("s.r1: ") && why.contains("s.r3: "), "{why}");
    assert!(!why.contains("s.r2"), "{why}");
    assert!(why.contains("removed from 1"), "{why}");
    assert_eq!(stored(&meta, "s.r2").await, ["g3"]);
    assert_eq!(c.groups(ClientType::Consumer, "s.r2").await, ["g3"]);
    assert_eq!(stored(&meta, "s.r1").await, ["g1"]);
    assert_eq!(stored(&meta, "s.r3").await, ["g1"]);
    assert_eq!(stored(&meta, "s.r4").await, ["g2"]);

    // A group no route contains: nothing to do.
    let none = java_form(&meta, TOKEN, &remove("g9", "*")).await;
    assert_eq!(none["status"], 0, "{none}");
    assert_eq!(none["data"], json!([]));
    meta.shutdown().await;
}
on_all_backends!(remove_subject_broker_group_over_management);

async fn extend_subject_route_over_management(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = qmq_meta::serve(route_config(&db)).await.unwrap();
    let mut c = three_groups_online(&meta).await;
    seed_routes(
        &meta,
        &[
            ("s.e1", &["g1"]),
            ("s.e2", &["g1", "g3"]),
            ("s.e3", &["g2"]),
            ("s.e4", &["g1"]),
        ],
    )
    .await;
    assert_eq!(c.groups(ClientType::Producer, "s.e1").await, ["g1"]);
    let extend = |subject: &str, related: &str, new: &str| {
        format!(
            "action=ExtendSubjectRoute&relatedSubject={subject}&relatedBrokerGroup={related}&newBrokerGroup={new}"
        )
    };

    let unknown = java_form(&meta, TOKEN, &extend("*", "g1", "nope")).await;
    assert_eq!(unknown["status"], -1);
    assert!(message(&unknown).contains("does not exist"), "{unknown}");
    let missing = java_form(
        &meta,
        TOKEN,
        "action=ExtendSubjectRoute&relatedSubject=*&newBrokerGroup=g3",
    )
    .await;
    assert_eq!(missing["status"], -1);
    assert!(message(&missing).contains("required"), "{missing}");

    // Every route with g1 and without g3 gets g3: s.e1 and s.e4 (s.e2 has it, s.e3 lacks g1).
    let all = java_form(&meta, TOKEN, &extend("*", "g1", "g3")).await;
    assert_eq!(all["status"], 0, "{all}");
    assert_eq!(all["data"]["updated"], 2, "{all}");
    assert_eq!(all["data"]["subjects"], json!(["s.e1", "s.e4"]));
    assert!(message(&all).contains("2 subjects"), "{all}");
    assert_eq!(stored(&meta, "s.e1").await, ["g1", "g3"]);
    assert_eq!(stored(&meta, "s.e4").await, ["g1", "g3"]);
    assert_eq!(stored(&meta, "s.e2").await, ["g1", "g3"]);
    assert_eq!(stored(&meta, "s.e3").await, ["g2"]);
    assert_eq!(
        meta.store()
            .subject_route("s.e2")
            .await
            .unwrap()
            .unwrap()
            .version,
        1,
        "a route that has the group already is not rewritten"
    );
    assert_eq!(c.groups(ClientType::Producer, "s.e1").await, ["g1", "g3"]);
    let again = java_form(&meta, TOKEN, &extend("*", "g1", "g3")).await;
    assert_eq!(again["data"]["updated"], 0, "{again}");

    // One subject only.
    let one = java_form(&meta, TOKEN, &extend("s.e3", "g2", "g1")).await;
    assert_eq!(one["data"]["updated"], 1, "{one}");
    assert_eq!(stored(&meta, "s.e3").await, ["g1", "g2"]);
    let unrelated = java_form(&meta, TOKEN, &extend("s.e1", "g2", "g2")).await;
    assert_eq!(unrelated["data"]["updated"], 0, "{unrelated}");
    assert_eq!(stored(&meta, "s.e1").await, ["g1", "g3"]);
    meta.shutdown().await;
}
on_all_backends!(extend_subject_route_over_management);

async fn tools_cli_edits_subject_routes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = qmq_meta::serve(route_config(&db)).await.unwrap();
    let mut c = three_groups_online(&meta).await;
    seed_routes(&meta, &[("s.t1", &["g1"]), ("s.t2", &["g1"])]).await;
    let add = [
        "add-subject-broker-group",
        "--broker-group",
        "g2",
        "--subject",
        "s.t1",
    ];
    let err = run_tools(tools(&meta, "bad", &add)).await.unwrap_err();
    assert!(
        matches!(&err, MetaError::Remote { message, .. } if message.contains("unauthorized")),
        "{err}"
    );
    let out = run_tools(tools(&meta, TOKEN, &add)).await.unwrap();
    assert!(out.contains("\"g2\""), "{out}");
    assert_eq!(c.groups(ClientType::Producer, "s.t1").await, ["g1", "g2"]);

    // Java spellings of the options.
    let extend = [
        "extend-subject-route",
        "--relatedSubject",
        "*",
        "--relatedBrokerGroup",
        "g1",
        "--newBrokerGroup",
        "g3",
    ];
    let out = run_tools(tools(&meta, TOKEN, &extend)).await.unwrap();
    let outcome: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcome["updated"], 2, "{out}");
    assert_eq!(stored(&meta, "s.t2").await, ["g1", "g3"]);
    let remove = [
        "remove-subject-broker-group",
        "--brokerGroup",
        "g1",
        "--subject",
        "*",
    ];
    run_tools(tools(&meta, TOKEN, &remove)).await.unwrap();
    assert_eq!(stored(&meta, "s.t1").await, ["g2", "g3"]);
    assert_eq!(stored(&meta, "s.t2").await, ["g3"]);
    let last = [
        "remove-subject-broker-group",
        "--broker-group",
        "g3",
        "--subject",
        "s.t2",
    ];
    let err = run_tools(tools(&meta, TOKEN, &last)).await.unwrap_err();
    assert!(
        matches!(&err, MetaError::Remote { message, .. } if message.contains("last broker group")),
        "{err}"
    );
    meta.shutdown().await;
}
on_all_backends!(tools_cli_edits_subject_routes);

/// `/management` answers in QMQ's shapes (bare arrays, camelCase, enum names), so scripts that
/// parse the Java `tools.sh` output keep working; the native admin API keeps its envelope.
async fn management_answers_in_qmq_shapes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = qmq_meta::serve(route_config(&db)).await.unwrap();
    let mut c = MetaConn::connect(&meta).await;
    c.online("g1", "127.0.0.1:30001").await;
    assert_eq!(c.groups(ClientType::Consumer, "s.q").await, ["g1"]);

    let add = "action=AddBroker&brokerGroup=g1&role=0&hostname=h1&ip=10.2.2.2&servePort=20881&syncPort=20882";
    let added = java_form(&meta, TOKEN, add).await;
    let broker = json!({"group": "g1", "role": "MASTER", "hostname": "h1", "ip": "10.2.2.2",
                        "servePort": 20881, "syncPort": 20882});
    assert_eq!(added, json!({"status": 0, "message": "", "data": broker}));
    let listed = management(&meta, None, "action=ListBrokers").await;
    assert_eq!(
        listed,
        json!({"status": 0, "message": "", "data": [broker]})
    );

    let groups = management(&meta, None, "action=ListBrokerGroups").await;
    let g = &groups[0];
    assert!(g["updateTime"].as_i64().unwrap() > 0, "{groups}");
    let mut expected = json!([{"groupName": "g1", "master": "127.0.0.1:30001", "slaves": [],
        "updateTime": g["updateTime"], "brokerState": "RW", "tag": "", "kind": "NORMAL",
        "ext": null}]);
    assert_eq!(groups, expected);

    let routes = management(&meta, None, "action=ListSubjectRoutes").await;
    let r = &routes[0];
    expected = json!([{"subject": "s.q", "brokerGroups": ["g1"], "version": 1,
        "updateTime": r["updateTime"]}]);
    assert_eq!(routes, expected);

    let done = java_form(
        &meta,
        TOKEN,
        "action=MarkReadonlyBrokerGroup&brokerGroup=g1",
    )
    .await;
    assert_eq!(done, json!({"status": 0, "message": "", "data": "success"}));
    let refused = management(&meta, Some("nope"), "action=AddBroker").await;
    assert_eq!(refused["status"], -1);
    assert_eq!(refused["data"], serde_json::Value::Null);

    // The native admin API is unchanged: envelope and snake_case.
    let (status, native) = http(&meta, "GET", "/admin/broker-groups", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(native["status"], 0);
    assert_eq!(native["data"][0]["master_address"], "127.0.0.1:30001");
    meta.shutdown().await;
}
on_all_backends!(management_answers_in_qmq_shapes);

/// AddNewSubject (refused as "unsupported action" before): records a subject and its tag.
async fn add_new_subject_over_management(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = qmq_meta::serve(route_config(&db)).await.unwrap();
    let added = java_form(&meta, TOKEN, "action=AddNewSubject&subject=s.new&tag=blue").await;
    assert_eq!(added["data"]["name"], "s.new", "{added}");
    assert_eq!(added["data"]["tag"], "blue");
    assert!(added["data"]["updateTime"].as_i64().unwrap() > 0);
    let infos = meta.store().subject_infos().await.unwrap();
    assert_eq!(
        (infos[0].subject.as_str(), infos[0].tag.as_str()),
        ("s.new", "blue")
    );

    // Again with another tag: refused as QMQ does, with the subject as it is; nothing changes.
    let again = java_form(&meta, TOKEN, "action=AddNewSubject&subject=s.new&tag=red").await;
    assert!(again["error"].is_string(), "{again}");
    assert_eq!(again["data"]["tag"], "blue", "{again}");
    let infos = meta.store().subject_infos().await.unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].tag, "blue");

    for bad in [
        "action=AddNewSubject&tag=x",
        "action=AddNewSubject&subject=s.ok",
        "action=AddNewSubject&subject=s.ok&tag=",
        "action=AddNewSubject&subject=a/b&tag=x",
        "action=AddNewSubject&subject=%25RETRY%25s%25g&tag=x",
        "action=AddNewSubject&subject=s.ok&tag=a%20b",
    ] {
        let refused = java_form(&meta, TOKEN, bad).await;
        assert!(refused["error"].is_string(), "{bad}: {refused}");
    }
    let refused = management(&meta, None, "action=AddNewSubject&subject=s.x&tag=t").await;
    assert_eq!(refused["status"], -1);
    assert_eq!(meta.store().subject_infos().await.unwrap().len(), 1);

    // The native admin API and the tools CLI add subjects too.
    let (status, native) = http(
        &meta,
        "POST",
        "/admin/subjects",
        Some(TOKEN),
        Some(json!({"subject": "s.cli", "tag": "green"})),
    )
    .await;
    assert_eq!(status, 200, "{native}");
    assert_eq!(native["data"]["tag"], "green");
    let out = run_tools(tools(
        &meta,
        TOKEN,
        &["add-new-subject", "--subject", "s.tool", "--tag", "t1"],
    ))
    .await
    .unwrap();
    assert!(out.contains("\"t1\""), "{out}");
    assert_eq!(meta.store().subject_infos().await.unwrap().len(), 3);
    meta.shutdown().await;
}
on_all_backends!(add_new_subject_over_management);

/// The lease table: one holder at a time, renewal by the holder, take-over only after the lease
/// time (by the database's clock) or a release.
async fn leases_have_one_holder(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    let store = meta.store();
    assert_eq!(store.lease_holder("wd").await.unwrap(), None);
    assert!(
        store.acquire_lease("wd", "a", 60_000).await.unwrap(),
        "first taker"
    );
    assert!(
        !store.acquire_lease("wd", "b", 60_000).await.unwrap(),
        "held by a"
    );
    assert!(
        store.acquire_lease("wd", "a", 60_000).await.unwrap(),
        "a renews"
    );
    assert!(
        store.acquire_lease("other", "b", 60_000).await.unwrap(),
        "leases are separate"
    );
    assert_eq!(
        store.lease_holder("wd").await.unwrap().as_deref(),
        Some("a")
    );
    store.release_lease("wd", "b").await.unwrap();
    assert_eq!(
        store.lease_holder("wd").await.unwrap().as_deref(),
        Some("a"),
        "not b's"
    );
    store.release_lease("wd", "a").await.unwrap();
    assert_eq!(store.lease_holder("wd").await.unwrap().as_deref(), Some(""));
    assert!(
        store.acquire_lease("wd", "b", 60_000).await.unwrap(),
        "free: b takes it"
    );
    assert!(!store.acquire_lease("wd", "a", 60_000).await.unwrap());
    // With a lease of -1 ms every holder counts as expired: a takes over.
    assert!(
        store.acquire_lease("wd", "a", -1).await.unwrap(),
        "expired: a takes over"
    );
    assert_eq!(
        store.lease_holder("wd").await.unwrap().as_deref(),
        Some("a")
    );
    assert!(store.acquire_lease("wd", "", 1).await.is_err());
    meta.shutdown().await;
}
on_all_backends!(leases_have_one_holder);
