//! `Client::connect` against working and broken meta servers, and producers and consumers built
//! from a client, end to end against a real broker.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use qmq_client::*;
use qmq_protocol::ClientRequestType;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// An HTTP server whose `/meta/address` answers `answer` (any other path: 404).
async fn http_answering(answer: &'static str) -> String {
    let app = axum::Router::new().route(
        "/meta/address",
        axum::routing::get(move || async move { answer }),
    );
    serve(app).await
}

async fn serve(app: axum::Router) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    a
}

/// Connects with a short timeout; returns the error and its text.
async fn connect_err(meta_http: &str) -> (ConnectError, String) {
    let err = Client::builder(meta_http)
        .app_code("app")
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect_err("connect should fail");
    let text = err.to_string();
    assert!(
        text.contains(meta_http),
        "the error names the address {meta_http}: {text}"
    );
    (err, text)
}

#[tokio::test]
async fn connects_to_a_meta_server_and_finds_its_tcp_address() {
    let meta = fake_meta(vec![]).await;
    let client = Client::connect(&meta.http, "app").await.unwrap();
    assert_eq!(client.meta_http(), meta.http);
    let (host, port) = client.meta_address().rsplit_once(':').unwrap();
    assert_eq!(host, "127.0.0.1");
    assert!(port.parse::<u16>().is_ok());
    // Clones share one router.
    let clone = client.clone();
    assert!(Arc::ptr_eq(&client.router(), &clone.router()));
}

#[tokio::test]
async fn a_closed_port_fails_at_once_naming_the_address() {
    let dead = dead_addr().await;
    let (err, text) = connect_err(&dead).await;
    assert!(
        matches!(
            err,
            ConnectError::Meta(DiscoveryError::HttpUnreachable { .. })
        ),
        "{err:?}"
    );
    assert!(text.contains("cannot reach"), "{text}");
}

#[tokio::test]
async fn a_silent_server_fails_when_the_timeout_runs_out() {
    // Accepts connections (the kernel does, from the backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let err = Client::builder(&addr)
        .app_code("app")
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await
        .expect_err("nothing answers");
    match &err {
        ConnectError::Meta(DiscoveryError::Timeout { url, after, step }) => {
            assert!(url.contains(&addr), "{url}");
            assert_eq!(*after, Duration::from_millis(300));
            assert_eq!(step, "waiting for the HTTP answer");
        }
        other => panic!("{other:?}"),
    }
    drop(silent);
}

#[tokio::test]
async fn an_http_server_that_is_not_a_meta_server_is_a_clear_error() {
    // 200 with something that is not host:port.
    let garbage = http_answering("<html>hello</html>").await;
    let (err, text) = connect_err(&garbage).await;
    match &err {
        ConnectError::Meta(DiscoveryError::BadAnswer { answer, .. }) => {
            assert_eq!(answer, "<html>hello</html>")
        }
        other => panic!("{other:?}"),
    }
    assert!(text.contains("not the meta server's TCP address"), "{text}");

    // No /meta/address at all.
    let other_app = serve(axum::Router::new()).await;
    let (err, text) = connect_err(&other_app).await;
    assert!(
        matches!(
            err,
            ConnectError::Meta(DiscoveryError::Status { status: 404, .. })
        ),
        "{err:?}"
    );
    assert!(text.contains("HTTP 404"), "{text}");

    // Not HTTP: a line of text, then the connection closes.
    let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = raw.accept().await {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        }
    });
    let (err, text) = connect_err(&raw_addr).await;
    assert!(
        matches!(err, ConnectError::Meta(DiscoveryError::Http { .. })),
        "{err:?}"
    );
    assert!(text.contains("did not answer over HTTP"), "{text}");
}

#[tokio::test]
async fn a_dead_tcp_address_behind_a_working_http_endpoint_is_a_clear_error() {
    let dead: &'static str = Box::leak(dead_addr().await.into_boxed_str());
    let meta_http = http_answering(dead).await;
    let (err, text) = connect_err(&meta_http).await;
    match &err {
        ConnectError::Meta(DiscoveryError::TcpUnreachable { addr, .. }) => assert_eq!(addr, dead),
        other => panic!("{other:?}"),
    }
    assert!(
        text.contains(dead),
        "the error names the TCP address: {text}"
    );
}

#[tokio::test]
async fn an_app_code_is_required() {
    let meta = fake_meta(vec![]).await;
    let err = Client::builder(&meta.http).connect().await.unwrap_err();
    assert!(matches!(err, ConnectError::NoAppCode), "{err:?}");
}

#[test]
fn outside_a_runtime_connect_and_build_are_errors_not_panics() {
    // Polled by an executor that is not Tokio's.
    let err = futures::executor::block_on(Client::connect("127.0.0.1:1", "app")).unwrap_err();
    assert!(matches!(err, ConnectError::NoRuntime), "{err:?}");

    let router: Arc<dyn Router> = Arc::new(StaticRouter::new(["127.0.0.1:1"]));
    let err = Producer::builder(router.clone()).build().err();
    assert!(
        matches!(err, Some(BuildError::NoRuntime { what: "Producer" })),
        "{err:?}"
    );
    let err = Consumer::builder(router).build().err();
    assert!(
        matches!(err, Some(BuildError::NoRuntime { what: "Consumer" })),
        "{err:?}"
    );

    // A client made on a runtime, its builders used after that runtime is gone.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(async {
        let meta = fake_meta(vec![]).await;
        Client::connect(&meta.http, "app").await.unwrap()
    });
    drop(runtime);
    assert!(matches!(
        client.producer().build(),
        Err(BuildError::NoRuntime { .. })
    ));
    assert!(matches!(
        client.consumer().build(),
        Err(BuildError::NoRuntime { .. })
    ));
}

#[tokio::test]
async fn a_producer_and_a_consumer_from_a_client_send_and_consume_end_to_end() {
    let (b, _dir) = broker().await;
    let meta = fake_meta(vec![addr(&b)]).await;
    let client = Client::connect(&meta.http, "client-test").await.unwrap();

    let consumer = client
        .consumer()
        .pull_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    consumer
        .subscribe(
            "c.e2e",
            "g",
            move |m: ReceivedMessage| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((
                        m.message_id.clone(),
                        m.get_string("body").map(str::to_owned),
                    ));
                    Ok(())
                }
            },
            SubscribeOptions::default(),
        )
        .await
        .unwrap();

    let producer = client.producer().batch_size(10).build().unwrap();
    let mut m = new_message("c.e2e");
    m.set_string("body", "hello").unwrap();
    let receipt = producer.send(m).await.unwrap();
    assert_eq!(receipt.broker, addr(&b));

    let (id, body) = tokio::time::timeout(T, rx.recv())
        .await
        .expect("delivered")
        .unwrap();
    assert_eq!(id, receipt.message_id);
    assert_eq!(body.as_deref(), Some("hello"));

    // Both registered through the client's meta server, as its application.
    {
        let reqs = meta.requests.lock();
        assert!(reqs.iter().all(|r| r.app_code() == "client-test"));
        assert!(reqs.iter().any(|r| r.client_type() == ClientType::Producer
            && r.request_type() == ClientRequestType::Online));
        assert!(reqs
            .iter()
            .any(|r| r.client_type() == ClientType::Consumer && r.consumer_group() == "g"));
    }
    consumer.shutdown().await;
    producer.close().await;
}
