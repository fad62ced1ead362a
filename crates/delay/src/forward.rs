//! [`BrokerForwarder`]: the [`Dispatcher`] that forwards due messages to a realtime broker.
//!
//! Like QMQ's delay server it sends SEND_MESSAGE requests with header version 7, each message
//! as `i64 CRC-32 | stored form` with the stored bytes exactly as the producer sent them (the
//! golden capture `delay-5s` shows the Java delay server forwarding the producer's bytes
//! unchanged, delay flag and schedule time included).
//!
//! Frames are packed by bytes, not only by count: a batch is cut into requests of at most
//! `max_frame` bytes (the frame limit, 16 MiB by default, as the broker's), a message larger
//! than that on its own is sent alone and one that cannot fit a frame at all is refused as
//! [`Outcome::Permanent`] without being sent. Each message gets its own [`Outcome`]:
//! SUCCESS (not listed as failed) or DUPLICATE is [`Outcome::Stored`]; BLOCK and
//! SUBJECT_NOT_ASSIGNED are [`Outcome::Permanent`]; BUSY, READ_ONLY, STORE_ERROR, a failed
//! connection, a missing answer or a non-SUCCESS answer are [`Outcome::Transient`].

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use qmq_protocol::codes::{command, response};
use qmq_protocol::frame::{DEFAULT_MAX_FRAME, PREFIX_LEN, VERSION_7};
use qmq_protocol::send::decode_send_response;
use qmq_protocol::{Frame, FrameCodec, Header, ProducerCode};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::dispatch::{Dispatcher, DueMessage, Outcome};
use crate::error::DispatchError;

/// Bytes a message takes in a SEND_MESSAGE body: `i64 CRC | stored form`.
fn wire_len(m: &DueMessage) -> usize {
    8 + m.message.len()
}

/// Forwards due messages to the broker at one address over the QMQ protocol.
pub struct BrokerForwarder {
    addr: String,
    timeout: Duration,
    max_frame: usize,
    /// Held across a whole request/answer exchange on purpose: one exchange at a time per
    /// connection keeps answers in step with requests.
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
            max_frame: DEFAULT_MAX_FRAME,
            conn: tokio::sync::Mutex::new(None),
            opaque: AtomicI32::new(0),
        }
    }

    /// The same forwarder sending frames of at most `max_frame` bytes (default: the protocol's
    /// 16 MiB, which the broker accepts); it should not exceed the broker's frame limit.
    pub fn with_max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// The SEND_MESSAGE frame for a batch (all of it, whatever its size: see
    /// [`Self::frames`] for the cut).
    pub fn request_frame(batch: &[DueMessage], opaque: i32) -> Frame {
        let mut body = BytesMut::with_capacity(batch.iter().map(wire_len).sum());
        for m in batch {
            body.put_i64(i64::from(crc32fast::hash(&m.message)));
            body.put_slice(&m.message);
        }
        Frame::new(
            Header::request(command::SEND_MESSAGE, VERSION_7, opaque),
            body.freeze(),
        )
    }

    /// Cuts `batch` into index ranges whose frames fit `max_frame` bytes, in order; a message
    /// that does not fit with others goes alone. Messages too large for any frame are left out
    /// and returned apart.
    pub fn frames(
        batch: &[DueMessage],
        max_frame: usize,
    ) -> (Vec<std::ops::Range<usize>>, Vec<usize>) {
        let budget = max_frame.saturating_sub(PREFIX_LEN);
        let mut ranges = Vec::new();
        let mut too_large = Vec::new();
        let mut start = 0;
        let mut bytes = 0;
        for (i, m) in batch.iter().enumerate() {
            let n = wire_len(m);
            if n > budget {
                if start < i {
                    ranges.push(start..i);
                }
                too_large.push(i);
                start = i + 1;
                bytes = 0;
                continue;
            }
            if bytes + n > budget && start < i {
                ranges.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes += n;
        }
        if start < batch.len() {
            ranges.push(start..batch.len());
        }
        (ranges, too_large)
    }

    pub(crate) async fn send(&self, batch: &[DueMessage]) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Transient("not sent".into()); batch.len()];
        let (ranges, too_large) = Self::frames(batch, self.max_frame);
        for i in too_large {
            outcomes[i] = Outcome::Permanent(format!(
                "message of {} bytes does not fit in a frame of {} bytes",
                batch[i].message.len(),
                self.max_frame
            ));
        }
        for range in ranges {
            match self.exchange(&batch[range.clone()]).await {
                Ok(part) => {
                    for (slot, o) in outcomes[range].iter_mut().zip(part) {
                        *slot = o;
                    }
                }
                Err(e) => {
                    // The broker is unreachable or out of step: this part and the parts not
                    // sent yet wait for a retry.
                    let reason = e.to_string();
                    for slot in outcomes[range.start..]
                        .iter_mut()
                        .filter(|o| matches!(o, Outcome::Transient(_)))
                    {
                        *slot = Outcome::Transient(reason.clone());
                    }
                    break;
                }
            }
        }
        outcomes
    }

    /// One request/answer exchange for a part that fits a frame.
    async fn exchange(&self, batch: &[DueMessage]) -> Result<Vec<Outcome>, DispatchError> {
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
                conn.insert(Framed::new(stream, FrameCodec::new(self.max_frame)))
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
            .map(
                |m| match failures.iter().find(|f| f.message_id == m.message_id) {
                    None => Outcome::Stored,
                    Some(f) => {
                        let why =
                            format!("broker {} answered {:?}: {}", self.addr, f.code, f.remark);
                        match f.code {
                            ProducerCode::Success | ProducerCode::Duplicate => Outcome::Stored,
                            ProducerCode::Block | ProducerCode::SubjectNotAssigned => {
                                Outcome::Permanent(why)
                            }
                            ProducerCode::BrokerBusy
                            | ProducerCode::ReadOnly
                            | ProducerCode::StoreError => Outcome::Transient(why),
                        }
                    }
                },
            )
            .collect())
    }
}

impl Dispatcher for BrokerForwarder {
    fn dispatch<'a>(
        &'a self,
        batch: &'a [DueMessage],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, DispatchError>> {
        Box::pin(async move { Ok(self.send(batch).await) })
    }
}

/// Forwards due messages to the realtime brokers serving each message's subject, as the meta
/// server routes it (the route a producer of that subject would get), over one
/// [`BrokerForwarder`] per broker. A subject without a writable broker, or whose route cannot be
/// asked for, is a transient failure (an outage must not make dead letters); a subject that
/// cannot even be encoded in a route request is a permanent one. When the broker says a subject
/// is not assigned to it, or fails, the route is asked again next time.
pub struct RoutedForwarder {
    router: std::sync::Arc<dyn qmq_transport::Router>,
    max_frame: usize,
    brokers: tokio::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<BrokerForwarder>>>,
}

impl RoutedForwarder {
    /// A forwarder asking `router` where each subject goes.
    pub fn new(router: std::sync::Arc<dyn qmq_transport::Router>) -> Self {
        Self {
            router,
            max_frame: DEFAULT_MAX_FRAME,
            brokers: tokio::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The same forwarder sending frames of at most `max_frame` bytes.
    pub fn with_max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame;
        self
    }

    async fn broker(&self, addr: &str) -> std::sync::Arc<BrokerForwarder> {
        self.brokers
            .lock()
            .await
            .entry(addr.to_owned())
            .or_insert_with(|| {
                std::sync::Arc::new(BrokerForwarder::new(addr).with_max_frame(self.max_frame))
            })
            .clone()
    }

    async fn send(&self, batch: &[DueMessage]) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Transient("not sent".into()); batch.len()];
        let mut by_subject: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        for (i, m) in batch.iter().enumerate() {
            by_subject.entry(m.subject.as_str()).or_default().push(i);
        }
        for (subject, idx) in by_subject {
            let set = |outcomes: &mut Vec<Outcome>, o: Outcome| {
                for &i in &idx {
                    outcomes[i] = o.clone();
                }
            };
            let groups = match self
                .router
                .route(subject, qmq_protocol::ClientType::Producer, "")
                .await
            {
                Ok(g) => g,
                Err(qmq_transport::RouteError::Encode(e)) => {
                    tracing::warn!(subject, error = %e, "subject cannot be routed");
                    set(&mut outcomes, Outcome::Permanent(format!("no route: {e}")));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(subject, error = %e, "no route for due messages; will retry");
                    set(&mut outcomes, Outcome::Transient(format!("no route: {e}")));
                    continue;
                }
            };
            let Some(group) = groups.iter().find(|g| g.state.can_write()) else {
                tracing::warn!(subject, "no writable broker for due messages; will retry");
                set(
                    &mut outcomes,
                    Outcome::Transient("no writable broker for the subject".into()),
                );
                continue;
            };
            let part: Vec<DueMessage> = idx.iter().map(|&i| batch[i].clone()).collect();
            let got = self.broker(&group.master).await.send(&part).await;
            if got.iter().any(|o| !o.is_stored()) {
                tracing::warn!(subject, broker = %group.master, "broker did not store every due message; asking the route again");
                self.router.invalidate(subject);
            }
            for (&i, o) in idx.iter().zip(got) {
                outcomes[i] = o;
            }
        }
        outcomes
    }
}

impl Dispatcher for RoutedForwarder {
    fn dispatch<'a>(
        &'a self,
        batch: &'a [DueMessage],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, DispatchError>> {
        Box::pin(async move { Ok(self.send(batch).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(len: usize) -> DueMessage {
        DueMessage {
            subject: "s".into(),
            message_id: "m".into(),
            due_ms: 0,
            message: bytes::Bytes::from(vec![0u8; len]),
        }
    }

    #[test]
    fn batches_are_cut_by_bytes_and_a_message_too_large_for_any_frame_is_set_apart() {
        let max = 1000;
        // Budget per frame: 1000 - 24 = 976 bytes, 8 of them per message for its CRC.
        let batch = [due(400), due(400), due(400), due(2000), due(900), due(10)];
        let (ranges, too_large) = BrokerForwarder::frames(&batch, max);
        assert_eq!(ranges, [0..2, 2..3, 4..6]);
        assert_eq!(too_large, [3]);
        for r in &ranges {
            let bytes: usize = batch[r.clone()].iter().map(wire_len).sum();
            assert!(bytes + PREFIX_LEN <= max, "{r:?}");
        }
        let (ranges, too_large) = BrokerForwarder::frames(&[], max);
        assert!(ranges.is_empty() && too_large.is_empty());
    }
}
