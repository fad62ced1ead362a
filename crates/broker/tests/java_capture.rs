//! Replays what the official QMQ Java consumer and producer sent to a QMQ broker (captured on
//! loopback) against our broker, and checks that every answer the Java broker gave is given
//! again: same opaque, codes and payload.

use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use qmq_broker::{serve, BrokerConfig};
use qmq_protocol::{Frame, FrameCodec, Payload};
use qmq_store::StoreConfig;
use tokio_util::codec::{Decoder, Framed};

fn frames(name: &str) -> Vec<Frame> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../protocol/tests/vectors/send-consume")
        .join(name);
    let mut buf = BytesMut::from(&std::fs::read(path).unwrap()[..]);
    let mut codec = FrameCodec::default();
    let mut out = Vec::new();
    while let Some(f) = codec.decode(&mut buf).unwrap() {
        out.push(f);
    }
    out
}

#[tokio::test]
async fn the_java_clients_conversation_gets_the_java_brokers_answers() {
    let requests = frames("conn05_port20881_c2s_34554.bin");
    let expected = frames("conn05_port20881_s2c_20881.bin");
    let dir = tempfile::tempdir().unwrap();
    let mut c = BrokerConfig::new(StoreConfig::new(dir.path()));
    c.listen = "127.0.0.1:0".parse().unwrap();
    let broker = serve(c).await.unwrap();
    let stream = tokio::net::TcpStream::connect(broker.addr()).await.unwrap();
    let mut conn = Framed::new(stream, FrameCodec::default());
    let mut answers = Vec::new();
    let next = |n: usize| {
        let frames: Vec<Frame> = requests
            .iter()
            .filter(|f| f.header.opaque as usize == n)
            .cloned()
            .collect();
        frames.into_iter().next().unwrap()
    };
    let recv = async |conn: &mut Framed<tokio::net::TcpStream, FrameCodec>| {
        tokio::time::timeout(Duration::from_secs(10), conn.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };
    // As in the capture: two long polls (subject and retry subject) that find nothing...
    conn.send(next(0)).await.unwrap();
    conn.send(next(1)).await.unwrap();
    answers.push(recv(&mut conn).await);
    answers.push(recv(&mut conn).await);
    // ...two more, then the producer's send wakes the subject's poll...
    conn.send(next(2)).await.unwrap();
    conn.send(next(3)).await.unwrap();
    conn.send(next(4)).await.unwrap();
    answers.push(recv(&mut conn).await);
    answers.push(recv(&mut conn).await);
    // ...and the consumer acks what it got.
    conn.send(next(6)).await.unwrap();
    answers.push(recv(&mut conn).await);

    answers.sort_by_key(|f| f.header.opaque);
    let mut expected = expected;
    expected.sort_by_key(|f| f.header.opaque);
    assert_eq!(answers.len(), expected.len());
    for (got, want) in answers.iter().zip(&expected) {
        assert_eq!(
            got.header, want.header,
            "header of the answer to opaque {}",
            want.header.opaque
        );
        assert_eq!(
            Payload::decode(got).unwrap(),
            Payload::decode(want).unwrap()
        );
        assert_eq!(
            got.body, want.body,
            "body of the answer to opaque {}",
            want.header.opaque
        );
    }
    broker.shutdown().await.unwrap();
}
