//! Bad input, database outages, several meta servers on one database, and byte-level
//! compatibility with the Java client's captured traffic — on SQLite, PostgreSQL and MariaDB.

mod common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::{http, Backend, MetaConn, TestDb, TOKEN};
use qmq_meta::{serve, MetaConfig};
use qmq_protocol::codes::{command, response};
use qmq_protocol::{
    BrokerRequestType, BrokerRole, BrokerState, ClientType, Frame, FrameCodec, MetaInfoResponse,
    OnOfflineState,
};
use serde_json::json;
use tokio_util::codec::Decoder;

/// Captures from the official QMQ Java stack (copied from the shared spec vectors).
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");

async fn malformed_requests_get_clear_errors(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    let mut c = MetaConn::connect(&meta).await;
    c.online("g1", "127.0.0.1:30001").await;

    // Truncated CLIENT_REGISTER body: PARAM_ERROR, connection stays usable.
    let mut body = BytesMut::new();
    body.put_i16(3);
    body.put_i16(7);
    body.put_slice(b"sub");
    let resp = c.call(command::CLIENT_REGISTER, 9, body).await;
    assert_eq!(resp.header.code, response::PARAM_ERROR);
    // Unknown command code.
    let resp = c.call(77, 9, BytesMut::new()).await;
    assert_eq!(resp.header.code, response::UNKNOWN_CODE);
    // BROKER_REGISTER with an unknown role code, and with trailing garbage.
    let mut body = BytesMut::new();
    body.put_i32(1);
    body.put_i16(2);
    body.put_slice(b"gx");
    body.put_i16(3);
    body.put_slice(b"a:1");
    body.put_i32(42);
    body.put_i32(1);
    let resp = c.call(command::BROKER_REGISTER, 8, body).await;
    assert_eq!(resp.header.code, response::PARAM_ERROR);
    // Empty group name / address.
    let code = c
        .broker(
            BrokerRequestType::Online,
            "",
            "127.0.0.1:1",
            BrokerRole::Master,
            BrokerState::ReadWrite,
        )
        .await;
    assert_eq!(code, response::PARAM_ERROR);
    // Invalid subjects are refused the QMQ way: timestamp -2, offline, no groups.
    for bad in ["", "a b", "a/b", "line\nbreak"] {
        let r = c.route(ClientType::Producer, bad, "").await;
        assert_eq!(
            (r.timestamp, r.state, r.groups.len()),
            (-2, OnOfflineState::Offline, 0),
            "{bad:?}"
        );
    }
    // Nothing bad was stored.
    assert_eq!(meta.store().broker_groups().await.unwrap().len(), 1);
    assert!(meta.store().subject_routes().await.unwrap().is_empty());
    // Still serving on the same connection.
    assert_eq!(c.groups(ClientType::Producer, "s.ok").await, ["g1"]);

    // A stream that is not QMQ frames is cut off.
    let mut bad = MetaConn::connect(&meta).await;
    bad.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(bad.next().await.is_none());
    // So is an oversized frame.
    let mut big = MetaConn::connect(&meta).await;
    let mut raw = BytesMut::new();
    raw.put_i32(64 * 1024 * 1024);
    raw.put_i16(18);
    raw.put_u32(0xdec1_0ade);
    big.send_raw(&raw).await;
    assert!(big.next().await.is_none());
    // The server is fine.
    assert_eq!(c.groups(ClientType::Producer, "s.ok").await, ["g1"]);
    meta.shutdown().await;
}
on_all_backends!(malformed_requests_get_clear_errors);

async fn database_down_keeps_cached_routes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = serve(MetaConfig {
        refresh_interval_ms: 20,
        ..db.config()
    })
    .await
    .unwrap();
    let mut c = MetaConn::connect(&meta).await;
    c.online("g1", "127.0.0.1:30001").await;
    c.online("g2", "127.0.0.1:30002").await;
    assert_eq!(
        c.groups(ClientType::Producer, "s.known").await,
        ["g1", "g2"]
    );

    // Lose the database: dropped under the servers (PostgreSQL, MariaDB) or closed (SQLite).
    if backend == Backend::Sqlite {
        meta.store().close().await;
    } else {
        db.drop_now().await;
    }
    assert!(meta.store().subject_routes().await.is_err());

    // Known routes keep being served, across many failed cache refreshes.
    for _ in 0..20 {
        assert_eq!(
            c.groups(ClientType::Producer, "s.known").await,
            ["g1", "g2"]
        );
        assert_eq!(
            c.groups(ClientType::Consumer, "s.known").await,
            ["g1", "g2"]
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // New subjects cannot be assigned: an empty route, nothing invented.
    assert!(c.groups(ClientType::Producer, "s.new").await.is_empty());
    // New broker registrations fail clearly.
    let code = c
        .broker(
            BrokerRequestType::Online,
            "g3",
            "127.0.0.1:30003",
            BrokerRole::Master,
            BrokerState::ReadWrite,
        )
        .await;
    assert_eq!(code, response::BROKER_ERROR);
    // Admin calls answer 503 with the database error.
    let (status, body) = http(&meta, "POST", "/admin/brokers", Some(TOKEN), Some(json!({"group": "g9", "role": 0, "hostname": "h", "ip": "10.0.0.9", "serve_port": 1, "sync_port": 2}))).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("database"),
        "{body}"
    );
    assert_eq!(
        http(&meta, "GET", "/admin/subjects", Some(TOKEN), None)
            .await
            .0,
        503
    );
    meta.shutdown().await;

    // A meta server cannot start without its database.
    if backend != Backend::Sqlite {
        assert!(serve(db.config()).await.is_err());
    }
}
on_all_backends!(database_down_keeps_cached_routes);

async fn two_meta_servers_agree(backend: Backend) {
    let db = TestDb::new(backend).await;
    let config = MetaConfig {
        refresh_interval_ms: 50,
        ..db.config()
    };
    let a = serve(config.clone()).await.unwrap();
    let b = serve(config).await.unwrap();
    let mut ca = MetaConn::connect(&a).await;
    let mut cb = MetaConn::connect(&b).await;
    for (g, addr) in [
        ("g1", "127.0.0.1:30001"),
        ("g2", "127.0.0.1:30002"),
        ("g3", "127.0.0.1:30003"),
    ] {
        ca.online(g, addr).await;
    }
    // B learns the groups from the database.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b.store().broker_groups().await.unwrap().len() < 3
        || cb
            .route(ClientType::Consumer, "s.probe", "cg")
            .await
            .groups
            .len()
            < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server B never saw the groups"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both servers assign new subjects at the same time: they must agree.
    let subjects: Vec<String> = (0..12).map(|i| format!("s.both.{i}")).collect();
    let (ra, rb) = tokio::join!(
        async {
            let mut out = Vec::new();
            for s in &subjects {
                out.push(ca.groups(ClientType::Producer, s).await);
            }
            out
        },
        async {
            let mut out = Vec::new();
            for s in subjects.iter().rev() {
                out.push(cb.groups(ClientType::Producer, s).await);
            }
            out.reverse();
            out
        }
    );
    assert_eq!(ra, rb);
    for (s, groups) in subjects.iter().zip(&ra) {
        assert_eq!(groups.len(), 2, "{s}");
        let stored = a.store().subject_route(s).await.unwrap().unwrap();
        let mut stored = stored.groups;
        stored.sort();
        assert_eq!(&stored, groups);
    }
    // Every group got subjects (new groups are used).
    let load: Vec<usize> = ["g1", "g2", "g3"]
        .iter()
        .map(|g| ra.iter().filter(|r| r.iter().any(|x| x == g)).count())
        .collect();
    assert!(load.iter().all(|&l| l > 0), "{load:?}");
    a.shutdown().await;
    b.shutdown().await;
}
on_all_backends!(two_meta_servers_agree);

fn frames(path: &str) -> Vec<Frame> {
    let mut buf = BytesMut::from(&std::fs::read(path).unwrap()[..]);
    let mut codec = FrameCodec::default();
    let mut out = Vec::new();
    while let Some(f) = codec.decode(&mut buf).unwrap() {
        out.push(f);
    }
    assert!(buf.is_empty());
    out
}

fn encoded(f: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    f.encode_into(&mut out);
    out.to_vec()
}

/// Replays the Java client's and servers' captured requests and compares our answers with
/// the Java meta server's (timestamps aside).
async fn java_captures_get_java_answers(backend: Backend) {
    let db = TestDb::new(backend).await;
    let meta = db.start().await;
    let mut c = MetaConn::connect(&meta).await;

    // Broker and delay server heartbeats: byte-identical answers.
    for (req, resp) in [
        (
            "send-consume/conn06_port20880_c2s_58590.bin",
            "send-consume/conn06_port20880_s2c_20880.bin",
        ),
        (
            "delay-5s/conn06_port20880_c2s_34926.bin",
            "delay-5s/conn06_port20880_s2c_20880.bin",
        ),
    ] {
        let raw = std::fs::read(format!("{VECTORS}/{req}")).unwrap();
        c.send_raw(&raw).await;
        let ours = c.next().await.unwrap();
        assert_eq!(
            encoded(&ours),
            std::fs::read(format!("{VECTORS}/{resp}")).unwrap(),
            "{req}"
        );
    }

    // Client registrations: consumer, retry consumer, producer; delay producer and the delay
    // server's producer lookup.
    for (req, resp) in [
        (
            "send-consume/conn04_port20880_c2s_43074.bin",
            "send-consume/conn04_port20880_s2c_20880.bin",
        ),
        (
            "delay-5s/conn03_port20880_c2s_59326.bin",
            "delay-5s/conn03_port20880_s2c_20880.bin",
        ),
        (
            "delay-5s/conn09_port20880_c2s_59342.bin",
            "delay-5s/conn09_port20880_s2c_20880.bin",
        ),
    ] {
        let expected = frames(&format!("{VECTORS}/{resp}"));
        let raw = std::fs::read(format!("{VECTORS}/{req}")).unwrap();
        c.send_raw(&raw).await;
        for want in &expected {
            let got = c.next().await.unwrap();
            assert_eq!(got.header, want.header, "{req}");
            let (mut got, mut want) = (
                MetaInfoResponse::decode(&got.body).unwrap(),
                MetaInfoResponse::decode(&want.body).unwrap(),
            );
            assert!(got.timestamp > 0);
            got.timestamp = 0;
            want.timestamp = 0;
            for g in got.groups.iter_mut().chain(want.groups.iter_mut()) {
                g.update_time = 0;
            }
            assert_eq!(got, want, "{req}");
        }
    }

    // HTTP discovery, replaying the Java client's request bytes.
    let raw = std::fs::read(format!(
        "{VECTORS}/send-consume/conn02_port18080_c2s_52066.bin"
    ))
    .unwrap();
    let mut s = tokio::net::TcpStream::connect(meta.http_addr())
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(&raw).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut text = String::new();
    while !text.ends_with(&format!("127.0.0.1:{}", meta.tcp_addr().port())) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed: {text}");
        text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(body, format!("127.0.0.1:{}", meta.tcp_addr().port()));
    assert_eq!(meta.advertised_tcp_address(), body);
    meta.shutdown().await;

    // An advertised host overrides the bind address.
    let meta = serve(MetaConfig {
        advertised_host: Some("meta.example".into()),
        ..db.config()
    })
    .await
    .unwrap();
    let (status, body) = http(&meta, "GET", "/meta/address", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!(format!("meta.example:{}", meta.tcp_addr().port()))
    );
    meta.shutdown().await;
}
on_all_backends!(java_captures_get_java_answers);

#[tokio::test]
async fn sqlite_database_is_created_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let config = MetaConfig {
        data_dir: dir.path().join("nested/meta"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        tcp_addr: "127.0.0.1:0".parse().unwrap(),
        ..MetaConfig::default()
    };
    let meta = serve(config.clone()).await.unwrap();
    assert!(dir.path().join("nested/meta/meta.db").exists());
    let mut c = MetaConn::connect(&meta).await;
    c.online("g1", "127.0.0.1:30001").await;
    meta.shutdown().await;
    // Reopened (migrations already applied), the data is there.
    let meta = serve(config).await.unwrap();
    assert_eq!(meta.store().broker_groups().await.unwrap()[0].name, "g1");
    meta.shutdown().await;
    // A bad URL is a configuration error.
    let bad = MetaConfig {
        database_url: Some("oracle://x".into()),
        ..MetaConfig::default()
    };
    assert!(matches!(
        serve(bad).await,
        Err(qmq_meta::MetaError::Config(_))
    ));
}
