//! Due messages go to the broker that serves their subject; a subject without a writable
//! broker is a transient failure (so the engine offers it again, and never dead-letters it for
//! an outage).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use qmq_delay::{Dispatcher, DueMessage, Outcome, RoutedForwarder};
use qmq_protocol::codes::response;
use qmq_protocol::send::decode_send_request;
use qmq_protocol::{
    BrokerGroup, BrokerState, ClientType, Frame, FrameCodec, Message, MessageFlags,
};
use qmq_transport::{RouteError, Router};
use tokio_util::codec::Framed;

/// A broker that stores nothing and records the subjects it was sent.
async fn fake_broker() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut framed = Framed::new(stream, FrameCodec::default());
                while let Some(Ok(frame)) = framed.next().await {
                    for m in decode_send_request(&frame.body).unwrap() {
                        seen.lock().push(m.message.subject.clone());
                    }
                    let reply = Frame::new(frame.header.response(response::SUCCESS), Bytes::new());
                    framed.send(reply).await.unwrap();
                }
            });
        }
    });
    (addr, got)
}

/// Routes subject "a" to one broker and "b" to another; nothing else.
struct TwoRoutes {
    a: String,
    b: String,
}

impl Router for TwoRoutes {
    fn route<'a>(
        &'a self,
        subject: &'a str,
        _client_type: ClientType,
        _group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<BrokerGroup>, RouteError>> {
        let master = match subject {
            "a" => Some(self.a.clone()),
            "b" => Some(self.b.clone()),
            _ => None,
        };
        Box::pin(async move {
            Ok(master
                .map(|master| BrokerGroup {
                    name: master.clone(),
                    master,
                    update_time: 0,
                    state: BrokerState::ReadWrite,
                })
                .into_iter()
                .collect())
        })
    }

    fn invalidate(&self, _subject: &str) {}
}

fn due(subject: &str, id: &str) -> DueMessage {
    let m = Message {
        flags: MessageFlags(0).with_delay(true),
        subject: subject.into(),
        message_id: id.into(),
        ..Message::default()
    };
    let mut stored = BytesMut::new();
    m.encode_stored(&mut stored).unwrap();
    DueMessage {
        subject: subject.into(),
        message_id: id.into(),
        due_ms: 0,
        message: stored.freeze(),
    }
}

#[tokio::test]
async fn each_subject_goes_to_its_own_broker() {
    let (a, got_a) = fake_broker().await;
    let (b, got_b) = fake_broker().await;
    let forwarder = RoutedForwarder::new(Arc::new(TwoRoutes { a, b }));
    let batch = [
        due("a", "1"),
        due("b", "2"),
        due("nowhere", "3"),
        due("a", "4"),
    ];
    let outcomes = forwarder.dispatch(&batch).await.unwrap();
    assert!(outcomes[0].is_stored() && outcomes[1].is_stored() && outcomes[3].is_stored());
    assert!(matches!(outcomes[2], Outcome::Transient(_)), "{outcomes:?}");
    assert_eq!(*got_a.lock(), ["a", "a"]);
    assert_eq!(*got_b.lock(), ["b"]);
}
