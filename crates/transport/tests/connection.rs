//! The multiplexed connection against a loopback server that answers out of order, and the
//! static router, with nothing of the client crate in the build.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use qmq_protocol::frame::DEFAULT_MAX_FRAME;
use qmq_protocol::{ClientType, Frame, FrameCodec};
use qmq_transport::{Connection, ConnectionError, Router, StaticRouter};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

const WAIT: Duration = Duration::from_secs(10);

/// A server that reads `batch` requests, then answers them last first, echoing each body;
/// it closes the connection when the client sends an empty body.
async fn reversing_server(batch: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(socket, FrameCodec::new(DEFAULT_MAX_FRAME));
        loop {
            let mut requests = Vec::new();
            while requests.len() < batch {
                match framed.next().await {
                    Some(Ok(frame)) if frame.body.is_empty() => return,
                    Some(Ok(frame)) => requests.push(frame),
                    _ => return,
                }
            }
            for req in requests.into_iter().rev() {
                let header = req.header.response(0);
                framed.send(Frame::new(header, req.body)).await.unwrap();
            }
        }
    });
    addr
}

#[tokio::test]
async fn responses_find_their_requests_in_any_order() {
    let addr = reversing_server(3).await;
    let conn = Connection::connect(&addr).await.unwrap();
    assert_eq!(conn.addr(), addr);
    let ask = |body: &'static str| {
        let conn = conn.clone();
        async move { conn.request(10, Bytes::from(body), WAIT).await }
    };
    let (a, b, c) = tokio::join!(ask("a"), ask("b"), ask("c"));
    assert_eq!(a.unwrap().body, Bytes::from("a"));
    assert_eq!(b.unwrap().body, Bytes::from("b"));
    assert_eq!(c.unwrap().body, Bytes::from("c"));
    assert!(conn.is_open());
}

#[tokio::test]
async fn a_closed_connection_fails_pending_and_later_requests() {
    let addr = reversing_server(2).await;
    let conn = Connection::connect(&addr).await.unwrap();
    // One request waits for a second that never comes; the empty body makes the server hang up.
    let pending = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.request(10, Bytes::from("x"), WAIT).await })
    };
    let hang_up = conn.request(10, Bytes::new(), WAIT).await;
    assert!(
        matches!(hang_up, Err(ConnectionError::Closed(_))),
        "{hang_up:?}"
    );
    let pending = pending.await.unwrap();
    assert!(
        matches!(pending, Err(ConnectionError::Closed(_))),
        "{pending:?}"
    );
    assert!(!conn.is_open());
    let later = conn.request(10, Bytes::from("y"), WAIT).await;
    assert!(
        matches!(later, Err(ConnectionError::Closed(_))),
        "{later:?}"
    );
}

#[tokio::test]
async fn static_router_answers_every_subject_with_its_addresses() {
    let router = StaticRouter::new(["127.0.0.1:1", "127.0.0.1:2"]);
    let groups = router
        .route("any.subject", ClientType::Producer, "")
        .await
        .unwrap();
    let masters: Vec<&str> = groups.iter().map(|g| g.master.as_str()).collect();
    assert_eq!(masters, ["127.0.0.1:1", "127.0.0.1:2"]);
}

#[tokio::test]
async fn close_fails_pending_requests_and_shuts_the_socket() {
    // A server that never answers and reports when the client hung up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (hung_up, mut hung_up_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(socket, FrameCodec::new(DEFAULT_MAX_FRAME));
        while let Some(Ok(_)) = framed.next().await {}
        let _ = hung_up.send(());
    });
    let conn = Connection::connect(&addr).await.unwrap();
    let pending = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.request(10, Bytes::from("x"), WAIT).await })
    };
    // Another clone stays alive: closing must not wait for every clone to be dropped.
    let other = conn.clone();
    tokio::task::yield_now().await;
    conn.close();
    assert!(!other.is_open());
    let pending = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert!(
        matches!(pending, Err(ConnectionError::Closed(_))),
        "{pending:?}"
    );
    let later = other.request(10, Bytes::from("y"), WAIT).await;
    assert!(
        matches!(later, Err(ConnectionError::Closed(_))),
        "{later:?}"
    );
    tokio::time::timeout(WAIT, &mut hung_up_rx)
        .await
        .expect("the server sees the socket closed")
        .unwrap();
}
