//! Shared test helpers: a fresh database per test on each backend, a running meta server,
//! a QMQ TCP client and an HTTP client.
//!
//! PostgreSQL and MariaDB/MySQL are reached at the URLs `qmq_testkit` reads
//! (`QMQ_TEST_POSTGRES_URL`, `QMQ_TEST_MYSQL_URL`; loopback by default); each test creates its
//! own database on that server and drops it afterwards. `on_all_backends!` skips a backend whose
//! server does not answer (or fails, where `QMQ_TEST_REQUIRE_SERVICES=1`).

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use qmq_meta::{serve, MetaConfig, MetaServerHandle};
use qmq_protocol::codes::command;
use qmq_protocol::{
    BrokerRegisterRequest, BrokerRequestType, BrokerRole, BrokerState, ClientRequestType,
    ClientType, Frame, FrameCodec, Header, MetaInfoRequest, MetaInfoResponse,
};
use qmq_testkit::{Service, MYSQL, POSTGRES};
use sqlx::Connection;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

pub const TOKEN: &str = "test-token";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

/// A database that exists for one test and is removed afterwards.
pub struct TestDb {
    pub backend: Backend,
    /// `None` for SQLite (embedded in `dir`).
    pub url: Option<String>,
    pub dir: tempfile::TempDir,
    name: String,
}

/// The external server a backend needs; `None` for embedded SQLite.
fn service(backend: Backend) -> Option<&'static Service> {
    match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(&POSTGRES),
        Backend::MySql => Some(&MYSQL),
    }
}

/// Whether a test on `backend` can run: false, after one skip line, when its database server
/// does not answer; panics instead where services are required (see `qmq_testkit::require`).
pub fn backend_available(backend: Backend, test: &str) -> bool {
    service(backend).is_none_or(|s| qmq_testkit::require(s, test).is_some())
}

/// URL of the database the tests connect to for CREATE/DROP DATABASE.
fn admin_url(backend: Backend) -> Option<String> {
    service(backend).map(Service::url)
}

fn drop_sql(backend: Backend, name: &str) -> Option<(String, String)> {
    let admin = admin_url(backend)?;
    let sql = match backend {
        Backend::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        _ => format!("DROP DATABASE IF EXISTS {name}"),
    };
    Some((sql, admin))
}

async fn admin_exec(url: &str, sql: &str) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach {url}: {e}"));
    sqlx::raw_sql(sql)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let name = format!("qmqmeta_{:016x}", rand::random::<u64>());
        let dir = tempfile::tempdir().unwrap();
        let url = match admin_url(backend) {
            None => None,
            Some(admin) => {
                admin_exec(&admin, &format!("CREATE DATABASE {name}")).await;
                Some(qmq_testkit::with_database(&admin, &name))
            }
        };
        Self {
            backend,
            url,
            dir,
            name,
        }
    }

    /// Drops the database now (simulates losing it while servers run).
    pub async fn drop_now(&self) {
        if let Some((sql, admin)) = drop_sql(self.backend, &self.name) {
            admin_exec(&admin, &sql).await;
        }
    }

    pub fn config(&self) -> MetaConfig {
        MetaConfig {
            data_dir: self.dir.path().join("meta"),
            database_url: self.url.clone(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            tcp_addr: "127.0.0.1:0".parse().unwrap(),
            admin_tokens: vec![TOKEN.to_owned()],
            ..MetaConfig::default()
        }
    }

    pub async fn start(&self) -> MetaServerHandle {
        serve(self.config()).await.expect("meta server starts")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((sql, admin)) = drop_sql(self.backend, &self.name) {
            // Drop runs inside the test's runtime: clean up from a separate thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(admin_exec(&admin, &sql));
            })
            .join();
        }
    }
}

/// Runs a test body on every backend (each as its own #[tokio::test]); a backend whose server
/// is absent is skipped with one line (see [`backend_available`]).
#[macro_export]
macro_rules! on_all_backends {
    ($name:ident) => {
        mod $name {
            use super::common::{backend_available, Backend};
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if backend_available(Backend::Postgres, concat!(module_path!(), "::postgres")) {
                    super::$name(Backend::Postgres).await
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                if backend_available(Backend::MySql, concat!(module_path!(), "::mysql")) {
                    super::$name(Backend::MySql).await
                }
            }
        }
    };
}

/// A QMQ TCP connection to the meta server.
pub struct MetaConn {
    framed: Framed<TcpStream, FrameCodec>,
    opaque: i32,
}

impl MetaConn {
    pub async fn connect(handle: &MetaServerHandle) -> Self {
        let stream = TcpStream::connect(handle.tcp_addr()).await.unwrap();
        Self {
            framed: Framed::new(stream, FrameCodec::default()),
            opaque: 0,
        }
    }

    /// Sends a request and waits (bounded) for its response.
    pub async fn call(&mut self, code: i16, version: i16, body: BytesMut) -> Frame {
        self.opaque += 1;
        let header = Header::request(code, version, self.opaque);
        self.framed
            .send(Frame::new(header, body.freeze()))
            .await
            .unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(10), self.framed.next())
            .await
            .expect("response within 10 s")
            .expect("connection open")
            .expect("valid frame");
        assert!(frame.header.is_response());
        assert_eq!(frame.header.opaque, self.opaque);
        assert_eq!(frame.header.request_code, code);
        frame
    }

    /// Next frame or None when the server closed the connection.
    pub async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(10), self.framed.next())
            .await
            .expect("answer within 10 s")
            .and_then(Result::ok)
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.framed.get_mut().write_all(bytes).await.unwrap();
    }

    /// A connection to the meta server's TCP port from the local address `from` (any
    /// 127.x.y.z works on Linux), to test address-based trust.
    pub async fn connect_from(handle: &MetaServerHandle, from: std::net::IpAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(std::net::SocketAddr::new(from, 0)).unwrap();
        let stream = socket.connect(handle.tcp_addr()).await.unwrap();
        Self {
            framed: Framed::new(stream, FrameCodec::default()),
            opaque: 0,
        }
    }

    pub async fn broker(
        &mut self,
        kind: BrokerRequestType,
        group: &str,
        addr: &str,
        role: BrokerRole,
        state: BrokerState,
    ) -> i16 {
        self.broker_with_secret(kind, group, addr, role, state, None)
            .await
    }

    /// A BROKER_REGISTER carrying `secret` in its extension block (none: QMQ's plain body).
    pub async fn broker_with_secret(
        &mut self,
        kind: BrokerRequestType,
        group: &str,
        addr: &str,
        role: BrokerRole,
        state: BrokerState,
        secret: Option<&str>,
    ) -> i16 {
        let mut body = BytesMut::new();
        BrokerRegisterRequest {
            request_type: kind,
            group_name: group.into(),
            broker_address: addr.into(),
            role,
            state,
        }
        .encode_with_secret(secret, &mut body)
        .unwrap();
        self.call(command::BROKER_REGISTER, 8, body)
            .await
            .header
            .code
    }

    /// Registers a live realtime master group.
    pub async fn online(&mut self, group: &str, addr: &str) {
        let code = self
            .broker(
                BrokerRequestType::Online,
                group,
                addr,
                BrokerRole::Master,
                BrokerState::ReadWrite,
            )
            .await;
        assert_eq!(code, 0, "online of {group}");
    }

    pub async fn route(
        &mut self,
        client_type: ClientType,
        subject: &str,
        group: &str,
    ) -> MetaInfoResponse {
        let req = MetaInfoRequest::new(
            "client-1",
            client_type,
            ClientRequestType::Online,
            subject,
            "app",
            group,
        );
        let mut body = BytesMut::new();
        req.encode(&mut body).unwrap();
        let resp = self.call(command::CLIENT_REGISTER, 9, body).await;
        assert_eq!(resp.header.code, 0);
        MetaInfoResponse::decode(&resp.body).unwrap()
    }

    /// Group names of a route, sorted.
    pub async fn groups(&mut self, client_type: ClientType, subject: &str) -> Vec<String> {
        let group = if client_type == ClientType::Consumer {
            "cg"
        } else {
            ""
        };
        let mut names: Vec<String> = self
            .route(client_type, subject, group)
            .await
            .groups
            .into_iter()
            .map(|g| g.name)
            .collect();
        names.sort();
        names
    }
}

/// An admin/API HTTP call: returns (status, JSON body).
pub async fn http(
    handle: &MetaServerHandle,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(handle.http_addr()).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: meta\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("X-Api-Token: {t}\r\n"));
    }
    req.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let payload = text.split_once("\r\n\r\n").unwrap().1;
    let payload = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(payload)
    } else {
        payload.to_owned()
    };
    let json = serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload));
    (status, json)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = s.split_once("\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// Polls `check` until it returns Some, at most `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET with the test token against a `host:port`.
pub async fn http_raw(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, bytes) = qmq_meta_test_send(addr, path).await;
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn qmq_meta_test_send(addr: &str, path: &str) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.0\r\nHost: meta\r\nX-Api-Token: {TOKEN}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status = std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap();
    let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (status, out[at + 4..].to_vec())
}
