//! One multiplexed QMQ connection: many requests in flight, responses matched by `opaque`.
//!
//! A writer task owns the socket's write half and a reader task its read half; callers get a
//! future per request. When the connection breaks, every pending request fails with
//! [`ConnectionError::Closed`] and later requests fail at once, so a caller can reconnect.
//! [`Connection::close`] ends both tasks and the socket at once, for a caller that stops
//! trusting a peer (a broker that answers BROKER_REJECT is no longer the master).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use qmq_protocol::frame::VERSION_9;
use qmq_protocol::{Frame, FrameCodec, FrameError, Header};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// Why a request on a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Connecting failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The connection is closed (peer gone, protocol error or dropped).
    #[error("connection to {0} closed")]
    Closed(String),
    /// No response within the deadline.
    #[error("request to {addr} timed out after {after:?}")]
    Timeout {
        /// The peer.
        addr: String,
        /// The time waited.
        after: Duration,
    },
}

type Pending = Arc<Mutex<Option<HashMap<i32, oneshot::Sender<Frame>>>>>;

/// A multiplexed connection to a QMQ server (meta server, broker or delay server).
#[derive(Clone)]
pub struct Connection {
    addr: String,
    outbound: mpsc::Sender<Frame>,
    pending: Pending,
    next_opaque: Arc<AtomicI32>,
    version: i16,
    stop: CancellationToken,
}

impl Connection {
    /// Connects to `addr` (`host:port`) and starts the reader and writer tasks.
    ///
    /// # Panics
    ///
    /// When polled outside a Tokio runtime: the tasks are spawned on the current one.
    pub async fn connect(addr: &str) -> Result<Self, ConnectionError> {
        Self::connect_with(addr, VERSION_9, qmq_protocol::frame::DEFAULT_MAX_FRAME).await
    }

    /// Connects speaking protocol `version` and accepting frames up to `max_frame` bytes.
    ///
    /// # Panics
    ///
    /// When polled outside a Tokio runtime, as [`Connection::connect`].
    pub async fn connect_with(
        addr: &str,
        version: i16,
        max_frame: usize,
    ) -> Result<Self, ConnectionError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnectionError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (mut sink, mut stream) = Framed::new(stream, FrameCodec::new(max_frame)).split();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (outbound, mut rx) = mpsc::channel::<Frame>(1024);
        let stop = CancellationToken::new();

        let writer_pending = pending.clone();
        let writer_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = writer_stop.cancelled() => break,
                    frame = rx.recv() => match frame {
                        Some(frame) => frame,
                        None => break,
                    },
                };
                if let Err(e) = sink.send(frame).await {
                    tracing::debug!(error = %e, "connection write failed");
                    break;
                }
            }
            fail_all(&writer_pending);
        });
        let reader_pending = pending.clone();
        let reader_stop = stop.clone();
        let peer = addr.to_owned();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = reader_stop.cancelled() => break,
                    next = stream.next() => next,
                };
                match next {
                    Some(Ok(frame)) if frame.header.is_response() => {
                        let waiter = reader_pending
                            .lock()
                            .as_mut()
                            .and_then(|p| p.remove(&frame.header.opaque));
                        if let Some(w) = waiter {
                            let _ = w.send(frame);
                        }
                    }
                    Some(Ok(_request)) => {} // servers do not send us requests we serve
                    Some(Err(e)) => {
                        log_read_error(&peer, &e);
                        break;
                    }
                    None => break,
                }
            }
            fail_all(&reader_pending);
        });
        Ok(Self {
            addr: addr.to_owned(),
            outbound,
            pending,
            next_opaque: Arc::new(AtomicI32::new(0)),
            version,
            stop,
        })
    }

    /// The peer address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection is still usable.
    pub fn is_open(&self) -> bool {
        self.pending.lock().is_some() && !self.outbound.is_closed() && !self.stop.is_cancelled()
    }

    /// Closes the connection for every clone: pending requests fail with
    /// [`ConnectionError::Closed`], later ones fail at once, and the socket is shut. Dropping
    /// the last clone does not close the socket while the peer keeps it open (the reader task
    /// owns it), so a caller that abandons a peer closes it explicitly.
    pub fn close(&self) {
        self.stop.cancel();
        fail_all(&self.pending);
    }

    /// Sends a request with command `code` and `body`; resolves with the response frame.
    pub async fn request(
        &self,
        code: i16,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Frame, ConnectionError> {
        let opaque = self.next_opaque.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match self.pending.lock().as_mut() {
            Some(p) => p.insert(opaque, tx),
            None => return Err(ConnectionError::Closed(self.addr.clone())),
        };
        let frame = Frame::new(Header::request(code, self.version, opaque), body);
        if self.outbound.send(frame).await.is_err() {
            self.forget(opaque);
            return Err(ConnectionError::Closed(self.addr.clone()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(ConnectionError::Closed(self.addr.clone())),
            Err(_) => {
                self.forget(opaque);
                Err(ConnectionError::Timeout {
                    addr: self.addr.clone(),
                    after: timeout,
                })
            }
        }
    }

    fn forget(&self, opaque: i32) {
        if let Some(p) = self.pending.lock().as_mut() {
            p.remove(&opaque);
        }
    }
}

fn fail_all(pending: &Pending) {
    // Dropping the senders wakes every waiter with an error.
    pending.lock().take();
}

fn log_read_error(peer: &str, e: &FrameError) {
    tracing::warn!(peer, error = %e, "closing connection after a read error");
}
