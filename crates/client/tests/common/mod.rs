//! Shared test helpers: a real broker in a temp dir, a flaky proxy and a fake meta server.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use qmq_broker::{serve, BrokerConfig, BrokerHandle};
use qmq_client::{Connection, PullConsumer};
use qmq_protocol::codes::response;
use qmq_protocol::*;
use qmq_store::{FlushPolicy, StoreConfig};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

pub const T: Duration = Duration::from_secs(20);

/// A broker on a free loopback port; keep the TempDir alive as long as the broker. New groups
/// start at the earliest message (the tests produce before they subscribe) and retries are
/// served at once.
pub async fn broker() -> (BrokerHandle, tempfile::TempDir) {
    broker_with(|c| c.retry_delay = Duration::ZERO).await
}

/// Like [`broker`], with `change` applied to the configuration.
pub async fn broker_with(
    change: impl FnOnce(&mut BrokerConfig),
) -> (BrokerHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StoreConfig::new(dir.path());
    store.flush = FlushPolicy::SyncBeforeAck;
    let mut c = BrokerConfig::new(store);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.new_group_start = qmq_store::ResetTo::Earliest;
    change(&mut c);
    (serve(c).await.unwrap(), dir)
}

pub fn addr(b: &BrokerHandle) -> String {
    b.addr().to_string()
}

/// An address nothing listens on.
pub async fn dead_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    drop(l);
    a
}

/// Pulls `subject`/`group` from `broker` until `n` messages arrived (acking them), or panics
/// after the deadline.
pub async fn pull_n(broker: &str, subject: &str, group: &str, n: usize) -> Vec<Message> {
    let conn = Connection::connect(broker).await.unwrap();
    let mut c = PullConsumer::new(conn, subject, group, "test-puller");
    let mut out = Vec::new();
    tokio::time::timeout(T, async {
        while out.len() < n {
            let (first, msgs) = c.pull(100, Duration::from_millis(500)).await.unwrap();
            if !msgs.is_empty() {
                c.ack(first, first + msgs.len() as i64 - 1).await.unwrap();
                out.extend(msgs);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} messages on {subject}", out.len()));
    out
}

pub fn ids(msgs: &[Message]) -> HashSet<String> {
    msgs.iter().map(|m| m.message_id.clone()).collect()
}

/// A TCP proxy to `target` that, on its first connection only, forwards the client's request
/// but swallows the answer and closes the connection (a response lost in the network).
pub async fn lossy_proxy(target: String) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    let first = Arc::new(AtomicBool::new(true));
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let target = target.clone();
            let lose = first.swap(false, Ordering::SeqCst);
            tokio::spawn(async move {
                let server = TcpStream::connect(&target).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                if lose {
                    let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                    // Wait for the broker's answer, then drop it and both connections.
                    let mut buf = [0u8; 1];
                    let _ = sr.read_exact(&mut buf).await;
                    up.abort();
                    drop(cw);
                } else {
                    let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    up.abort();
                }
            });
        }
    });
    a
}

/// A fake meta server: HTTP `GET /meta/address` and TCP CLIENT_REGISTER answering with
/// `brokers` (changeable) and recording every request.
pub struct FakeMeta {
    pub http: String,
    pub brokers: Arc<Mutex<Vec<String>>>,
    pub requests: Arc<Mutex<Vec<MetaInfoRequest>>>,
}

pub async fn fake_meta(brokers: Vec<String>) -> FakeMeta {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = tcp.local_addr().unwrap().to_string();
    let brokers = Arc::new(Mutex::new(brokers));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (b, r) = (brokers.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = tcp.accept().await {
            let (b, r) = (b.clone(), r.clone());
            tokio::spawn(async move {
                let mut framed = Framed::new(s, FrameCodec::new(1 << 20));
                while let Some(Ok(frame)) = framed.next().await {
                    assert_eq!(frame.header.code, codes::command::CLIENT_REGISTER);
                    let req = MetaInfoRequest::decode(&frame.body).unwrap();
                    let resp = MetaInfoResponse {
                        timestamp: 1,
                        subject: req.subject().to_owned(),
                        consumer_group: req.consumer_group().to_owned(),
                        state: OnOfflineState::Online,
                        client_type_code: req.client_type().code() as u8,
                        groups: b
                            .lock()
                            .iter()
                            .enumerate()
                            .map(|(i, m)| BrokerGroup {
                                name: format!("g{i}"),
                                master: m.clone(),
                                update_time: 1,
                                state: BrokerState::ReadWrite,
                            })
                            .collect(),
                    };
                    r.lock().push(req);
                    let mut body = BytesMut::new();
                    resp.encode(&mut body).unwrap();
                    let out = Frame::new(frame.header.response(response::SUCCESS), body.freeze());
                    if framed.send(out).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let app = axum::Router::new().route(
        "/meta/address",
        axum::routing::get(move || {
            let a = tcp_addr.clone();
            async move { a }
        }),
    );
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(http, app).await.unwrap() });
    FakeMeta {
        http: http_addr,
        brokers,
        requests,
    }
}

/// A broker that is no longer a master (a slave, or a deposed master): it answers every
/// request with header code BROKER_REJECT (52). Counts the requests and the connections
/// the client closed.
pub struct RejectingBroker {
    pub addr: String,
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
    pub closed_by_client: Arc<std::sync::atomic::AtomicUsize>,
}

pub async fn rejecting_broker() -> RejectingBroker {
    use std::sync::atomic::AtomicUsize;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let requests = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (r, c) = (requests.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (r, c) = (r.clone(), c.clone());
            tokio::spawn(async move {
                let mut framed = Framed::new(s, FrameCodec::new(1 << 24));
                while let Some(Ok(frame)) = framed.next().await {
                    r.fetch_add(1, Ordering::SeqCst);
                    let out = Frame::new(
                        frame.header.response(response::BROKER_REJECT),
                        bytes::Bytes::new(),
                    );
                    if framed.send(out).await.is_err() {
                        return;
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    RejectingBroker {
        addr,
        requests,
        closed_by_client: closed,
    }
}

/// Polls `check` every 10 ms until it holds; panics after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < end,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A static router to `b` and a producer on it.
pub fn setup(b: &BrokerHandle) -> (Arc<qmq_client::StaticRouter>, qmq_client::Producer) {
    let router = Arc::new(qmq_client::StaticRouter::new([addr(b)]));
    let producer = qmq_client::Producer::new(router.clone(), qmq_client::ProducerConfig::default());
    (router, producer)
}

/// Asserts `group` has nothing left on `subject` (one long poll comes back empty).
pub async fn assert_drained(broker: &str, subject: &str, group: &str) {
    let conn = Connection::connect(broker).await.unwrap();
    let mut c = PullConsumer::new(conn, subject, group, "checker");
    let (_, msgs) = c.pull(10, Duration::from_millis(300)).await.unwrap();
    assert!(msgs.is_empty(), "{} left on {subject}", msgs.len());
}
