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

    async fn send(&self, batch: &[DueMessage]) -> Result<Vec<bool>, DispatchError> {
        let err = |what: &str, e: &dyn std::fmt::Display| {
            DispatchError(format!("{what} broker {}: {e}", self.addr))
        };
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            let stream = tokio::time::timeout(self.timeout, TcpStream::connect(&self.addr))
                .await
                .map_err(|e| err("connecting to", &e))?
                .map_err(|e| err("connecting to", &e))?;
            let _ = stream.set_nodelay(true);
            *conn = Some(Framed::new(stream, FrameCodec::default()));
        }
        let framed = conn.as_mut().expect("connected above");
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
