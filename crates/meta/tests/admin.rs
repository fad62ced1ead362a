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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(meta.http_addr())
        .await
        .unwrap();
    let req = format!(
        "POST /management HTTP/1.1\r\nHost: meta\r\nX-Api-Token: {token}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap()
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
    assert_eq!(
        java_form(&meta, TOKEN, "action=Explode").await["status"],
        -1
    );
    assert_eq!(java_form(&meta, TOKEN, "").await["status"], -1);
    meta.shutdown().await;
}
on_all_backends!(java_tools_management_endpoint);
