//! [`BrokerForwarder`]: the [`Dispatcher`] that forwards due messages to a realtime broker.
//!
//! Like QMQ's delay server it sends one SEND_MESSAGE request per batch with header version 7,
//! each message as `i64 CRC-32 | stored form` with the stored bytes exactly as the producer sent
//! them (the golden capture `delay-5s` shows the Java delay server forwarding the producer's
//! bytes unchanged, delay flag and schedule time included). A message counts as accepted when
//! the broker answers SUCCESS and does not list it as failed (or lists it as a duplicate: it is
//! already stored).

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use qmq_protocol::codes::{command, response};
use qmq_protocol::frame::VERSION_7;
use qmq_protocol::send::decode_send_response;
use qmq_protocol::{Frame, FrameCodec, Header, ProducerCode};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::dispatch::{Dispatcher, DueMessage};
use crate::error::DispatchError;

/// Forwards due messages to the broker at one address over the QMQ protocol.
pub struct BrokerForwarder {
    addr: String,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<Framed<TcpStream, FrameCodec>>>,
    opaque: AtomicI32,
}

impl BrokerForwarder {
    /// A forwarder to `addr` ("host:port"), waiting at most 5 s for an answer (QMQ's value).
    pub fn new(addr: impl Into<String>) -> Self {
        Self::with_timeout(addr, Duration::from_secs(5))
    }

    /// A forwarder to `addr` with a custom connect/answer timeout.
    pub fn with_timeout(addr: impl Into<String>, timeout: Duration) -> Self {
        Self {
            addr: addr.into(),
            timeout,
            conn: tokio::sync::Mutex::new(None),
            opaque: AtomicI32::new(0),
        }
    }

    /// The SEND_MESSAGE frame for a batch.
    pub fn request_frame(batch: &[DueMessage], opaque: i32) -> Frame {
        let mut body = BytesMut::with_capacity(batch.iter().map(|m| 8 + m.message.len()).sum());
        for m in batch {
            body.put_i64(i64::from(crc32fast::hash(&m.message)));
            body.put_slice(&m.message);
        }
        Frame::new(
            Header::request(command::SEND_MESSAGE, VERSION_7, opaque),
            body.freeze(),
        )
    }

    pub(crate) async fn send(&self, batch: &[DueMessage]) -> Result<Vec<bool>, DispatchError> {
        let err = |what: &str, e: &dyn std::fmt::Display| {
            DispatchError(format!("{what} broker {}: {e}", self.addr))
        };
        let mut conn = self.conn.lock().await;
        let framed = match conn.as_mut() {
            Some(framed) => framed,
            None => {
                let stream = tokio::time::timeout(self.timeout, TcpStream::connect(&self.addr))
                    .await
                    .map_err(|e| err("connecting to", &e))?
                    .map_err(|e| err("connecting to", &e))?;
                let _ = stream.set_nodelay(true);
                conn.insert(Framed::new(stream, FrameCodec::default()))
            }
        };
        let opaque = self.opaque.fetch_add(1, Ordering::Relaxed);
        let exchange = async {
            framed
                .send(Self::request_frame(batch, opaque))
                .await
                .map_err(|e| err("sending to", &e))?;
            loop {
                match framed.next().await {
                    Some(Ok(f)) if f.header.is_response() && f.header.opaque == opaque => {
                        return Ok(f)
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(err("reading from", &e)),
                    None => return Err(err("connection closed by", &"eof")),
                }
            }
        };
        let answer = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                *conn = None;
                return Err(e);
            }
            Err(e) => {
                *conn = None;
                return Err(err("no answer from", &e));
            }
        };
        drop(conn);
        if answer.header.code != response::SUCCESS {
            return Err(DispatchError(format!(
                "broker {} answered code {}",
                self.addr, answer.header.code
            )));
        }
        let failures =
            decode_send_response(&answer.body).map_err(|e| err("bad answer from", &e))?;
        Ok(batch
            .iter()
            .map(|m| {
                failures
                    .iter()
                    .find(|f| f.message_id == m.message_id)
                    .is_none_or(|f| f.code == ProducerCode::Duplicate)
            })
            .collect())
    }
}

impl Dispatcher for BrokerForwarder {
    fn dispatch<'a>(
        &'a self,
        batch: &'a [DueMessage],
    ) -> BoxFuture<'a, Result<Vec<bool>, DispatchError>> {
        Box::pin(self.send(batch))
    }
}

/// Forwards due messages to the realtime brokers serving each message's subject, as the meta
/// server routes it (the route a producer of that subject would get), over one
/// [`BrokerForwarder`] per broker. A message whose subject has no writable route, or whose
/// broker fails, is reported not accepted, so the engine offers it again later.
pub struct RoutedForwarder {
    router: std::sync::Arc<dyn qmq_transport::Router>,
    brokers: tokio::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<BrokerForwarder>>>,
}

impl RoutedForwarder {
    /// A forwarder asking `router` where each subject goes.
    pub fn new(router: std::sync::Arc<dyn qmq_transport::Router>) -> Self {
        Self {
            router,
            brokers: tokio::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    async fn broker(&self, addr: &str) -> std::sync::Arc<BrokerForwarder> {
        self.brokers
            .lock()
            .await
            .entry(addr.to_owned())
            .or_insert_with(|| std::sync::Arc::new(BrokerForwarder::new(addr)))
            .clone()
    }

    async fn send(&self, batch: &[DueMessage]) -> Result<Vec<bool>, DispatchError> {
        let mut accepted = vec![false; batch.len()];
        let mut by_subject: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        for (i, m) in batch.iter().enumerate() {
            by_subject.entry(m.subject.as_str()).or_default().push(i);
        }
        for (subject, idx) in by_subject {
            let groups = match self
                .router
                .route(subject, qmq_protocol::ClientType::Producer, "")
                .await
            {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(subject, error = %e, "no route for due messages; will retry");
                    continue;
                }
            };
            let Some(group) = groups.iter().find(|g| g.state.can_write()) else {
                tracing::warn!(subject, "no writable broker for due messages; will retry");
                continue;
            };
            let part: Vec<DueMessage> = idx.iter().map(|&i| batch[i].clone()).collect();
            match self.broker(&group.master).await.send(&part).await {
                Ok(ok) => {
                    for (k, &i) in idx.iter().enumerate() {
                        accepted[i] = ok.get(k).copied().unwrap_or(false);
                    }
                }
                Err(e) => {
                    tracing::warn!(subject, error = %e, "forwarding due messages failed; will retry");
                    self.router.invalidate(subject);
                }
            }
        }
        Ok(accepted)
    }
}

impl Dispatcher for RoutedForwarder {
    fn dispatch<'a>(
        &'a self,
        batch: &'a [DueMessage],
    ) -> BoxFuture<'a, Result<Vec<bool>, DispatchError>> {
        Box::pin(self.send(batch))
    }
}
