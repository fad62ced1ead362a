//! The delay server's TCP front: QMQ SEND_MESSAGE on its own port (QMQ: 20801).
//!
//! [`serve`] opens the engine and listens; the returned [`ServerHandle`] tells the bound
//! address (for registration with the meta server as a delay group) and shuts everything down.
//!
//! A SEND_MESSAGE body is decoded with the protocol crate; each message is scheduled at its
//! `expire_or_schedule` time when its delay flag is set, else 10 s from now (QMQ's answer to a
//! misconfigured client). The answer lists the messages not stored: CRC mismatches, schedule
//! times beyond the longest delay and oversized or malformed messages as BLOCK (with a remark
//! saying why), disk failures as STORE_ERROR. A malformed body gets PARAM_ERROR, HEARTBEAT an
//! empty SUCCESS, other commands UNKNOWN_CODE.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use qmq_protocol::codes::{command, response};
use qmq_protocol::send::{decode_send_request, encode_send_response};
use qmq_protocol::{Frame, FrameCodec, ProducerCode, SendFailure};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use parking_lot::RwLock;
use qmq_replication::{Gate, ReplicationMode};

use crate::clock::Clock;
use crate::config::DelayConfig;
use crate::dispatch::Dispatcher;
use crate::engine::{DelayEngine, NewMessage};
use crate::error::{DelayError, ScheduleError};
use crate::metrics::{DelayMetrics, FailReason};

/// QMQ's delay server port.
pub const DEFAULT_PORT: u16 = 20801;
/// Delay for messages that arrive without the delay flag (QMQ's value).
const UNFLAGGED_DELAY_MS: i64 = 10_000;

/// Settings of a delay server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (default `0.0.0.0:20801`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// The engine's settings.
    pub delay: DelayConfig,
}

impl ServerConfig {
    /// Defaults with the store in `data_dir`.
    pub fn new(data_dir: impl Into<std::path::PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            max_frame: qmq_protocol::frame::DEFAULT_MAX_FRAME,
            delay: DelayConfig::new(data_dir),
        }
    }

    /// Checks the engine's settings and that a message of the largest accepted size fits in a
    /// frame (in a producer's request, and in the forwarder's request to the broker).
    pub fn validate(&self) -> Result<(), DelayError> {
        self.delay.validate()?;
        let needed = self.delay.max_message_bytes + 8 + qmq_protocol::frame::PREFIX_LEN;
        if needed > self.max_frame {
            return Err(DelayError::Config(format!(
                "max_message_bytes ({}) does not fit in a frame of max_frame ({}) bytes",
                self.delay.max_message_bytes, self.max_frame
            )));
        }
        Ok(())
    }
}

/// What serves requests: the engine (none while a replicated server is a slave) and, for a
/// replicated server, the write gate.
struct Backend {
    engine: RwLock<Option<Arc<DelayEngine>>>,
    gate: Option<Arc<Gate>>,
    metrics: Option<Arc<DelayMetrics>>,
}

/// The client port of a replicated delay server: bound once, served by whichever engine the
/// node sets ([`Front::set_engine`]); SENDs get `BROKER_REJECT` while there is none or the
/// gate does not serve (slave, or master without a lease).
pub struct Front {
    addr: SocketAddr,
    backend: Arc<Backend>,
    cancel: CancellationToken,
    accept: Option<JoinHandle<()>>,
}

impl Front {
    /// Binds `listen` and serves it (`max_frame`: largest frame accepted); refusals are
    /// counted in `metrics`, if given.
    pub async fn bind(
        listen: SocketAddr,
        max_frame: usize,
        clock: Arc<dyn Clock>,
        gate: Arc<Gate>,
        metrics: Option<Arc<DelayMetrics>>,
    ) -> Result<Self, DelayError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| DelayError::io("listen on", listen.to_string(), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| DelayError::io("listen on", listen.to_string(), e))?;
        let backend = Arc::new(Backend {
            engine: RwLock::new(None),
            gate: Some(gate),
            metrics,
        });
        let cancel = CancellationToken::new();
        let accept = tokio::spawn(accept_loop(
            listener,
            backend.clone(),
            clock,
            cancel.clone(),
            max_frame,
        ));
        Ok(Self {
            addr,
            backend,
            cancel,
            accept: Some(accept),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves SENDs with `engine` (None: refuse them).
    pub fn set_engine(&self, engine: Option<Arc<DelayEngine>>) {
        *self.backend.engine.write() = engine;
    }

    /// Stops listening and closes the connections.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.accept.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A running delay server.
pub struct ServerHandle {
    addr: SocketAddr,
    engine: Arc<DelayEngine>,
    cancel: CancellationToken,
    accept: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on (what to register with the meta server).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The engine behind the server.
    pub fn engine(&self) -> &Arc<DelayEngine> {
        &self.engine
    }

    /// Stops accepting connections, closes the open ones and shuts the engine down cleanly.
    pub async fn shutdown(mut self) -> Result<(), DelayError> {
        self.cancel.cancel();
        if let Some(t) = self.accept.take() {
            let _ = t.await;
        }
        self.engine.shutdown().await
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Opens the engine in `config.delay.data_dir` and serves SEND_MESSAGE on `config.listen`;
/// due messages go to `dispatcher` (e.g. [`crate::forward::BrokerForwarder`]).
pub async fn serve(
    config: ServerConfig,
    clock: Arc<dyn Clock>,
    dispatcher: Arc<dyn Dispatcher>,
) -> Result<ServerHandle, DelayError> {
    config.validate()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| DelayError::io("listen on", config.listen.to_string(), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| DelayError::io("listen on", config.listen.to_string(), e))?;
    let metrics = config.delay.metrics.clone();
    let engine = Arc::new(DelayEngine::open(config.delay, clock.clone(), dispatcher).await?);
    let cancel = CancellationToken::new();
    let backend = Arc::new(Backend {
        engine: RwLock::new(Some(engine.clone())),
        gate: None,
        metrics,
    });
    let accept = tokio::spawn(accept_loop(
        listener,
        backend,
        clock,
        cancel.clone(),
        config.max_frame,
    ));
    tracing::info!(%addr, "delay server listening");
    Ok(ServerHandle {
        addr,
        engine,
        cancel,
        accept: Some(accept),
    })
}

async fn accept_loop(
    listener: TcpListener,
    engine: Arc<Backend>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
    max_frame: usize,
) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(
                    stream,
                    peer,
                    engine.clone(),
                    clock.clone(),
                    cancel.child_token(),
                    max_frame,
                ));
            }
            Err(e) => tracing::warn!(error = %e, "accept failed"),
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    engine: Arc<Backend>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
    max_frame: usize,
) {
    let (r, w) = stream.into_split();
    let mut frames = FramedRead::new(r, FrameCodec::new(max_frame));
    let mut sink = FramedWrite::new(w, FrameCodec::new(max_frame));
    let (tx, mut rx) = mpsc::channel::<Frame>(256);
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if let Err(e) = sink.send(f).await {
                tracing::debug!(%peer, error = %e, "writing to client failed");
                return;
            }
        }
    });
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            n = frames.next() => n,
        };
        let frame = match next {
            Some(Ok(f)) => f,
            Some(Err(e)) if e.is_disconnect() => {
                tracing::debug!(%peer, error = %e, "client went away");
                break;
            }
            Some(Err(e)) => {
                tracing::warn!(%peer, error = %e, "bad frame; closing the connection");
                break;
            }
            None => break,
        };
        if frame.header.is_response() {
            continue;
        }
        let (engine, clock, tx) = (engine.clone(), clock.clone(), tx.clone());
        // Requests are handled concurrently (the writer groups their fsyncs); answers go out
        // as they complete, matched by opaque.
        tokio::spawn(async move {
            let answer = handle(&frame, &engine, clock.as_ref()).await;
            let _ = tx.send(answer).await;
        });
    }
    drop(tx);
    let _ = writer.await;
}

fn reject(frame: &Frame) -> Frame {
    Frame::new(frame.header.response(response::BROKER_REJECT), Bytes::new())
}

async fn handle(frame: &Frame, backend: &Backend, clock: &dyn Clock) -> Frame {
    let h = frame.header;
    let gate = backend.gate.as_deref();
    let metrics = backend.metrics.as_deref();
    let failed = |reason, n| {
        if let Some(m) = metrics {
            m.send_failed(reason, n);
        }
    };
    let engine = backend.engine.read().clone();
    let engine = match engine {
        Some(e) if gate.is_none_or(|g| g.serving()) => e,
        _ if h.code == command::SEND_MESSAGE => {
            failed(FailReason::NotMaster, 1);
            return reject(frame);
        }
        _ => return Frame::new(h.response(response::SUCCESS), Bytes::new()),
    };
    let engine = engine.as_ref();
    match h.code {
        command::SEND_MESSAGE => match decode_send_request(&frame.body) {
            Ok(sent) => {
                let now = clock.now_ms();
                let mut failures = Vec::new();
                let mut batch = Vec::with_capacity(sent.len());
                for s in sent {
                    if !s.crc_ok() {
                        failures.push(SendFailure {
                            message_id: s.message.message_id,
                            code: ProducerCode::Block,
                            remark: "message CRC mismatch".into(),
                        });
                        continue;
                    }
                    let schedule_ms = if s.message.flags.is_delay() {
                        s.message.expire_or_schedule
                    } else {
                        now + UNFLAGGED_DELAY_MS
                    };
                    batch.push(NewMessage {
                        subject: s.message.subject,
                        message_id: s.message.message_id,
                        schedule_ms,
                        message: s.stored,
                    });
                }
                let ids: Vec<String> = batch.iter().map(|m| m.message_id.clone()).collect();
                failed(FailReason::CrcMismatch, failures.len() as u64);
                let results = engine.schedule(batch).await;
                let replicated = match gate {
                    Some(g) => replicated(g, &results).await,
                    None => Ok(()),
                };
                if replicated.is_err() {
                    let stored = results.iter().filter(|r| r.is_ok()).count();
                    failed(FailReason::NotReplicated, stored as u64);
                }
                for (id, r) in ids.into_iter().zip(results) {
                    match (r, &replicated) {
                        (Err(e), _) => failures.push(SendFailure {
                            message_id: id,
                            code: producer_code(&e),
                            remark: e.to_string(),
                        }),
                        (Ok(_), Err(remark)) => failures.push(SendFailure {
                            message_id: id,
                            code: ProducerCode::StoreError,
                            remark: (*remark).into(),
                        }),
                        (Ok(_), Ok(())) => {}
                    }
                }
                let mut body = BytesMut::new();
                match encode_send_response(&failures, &mut body) {
                    Ok(()) => Frame::new(h.response(response::SUCCESS), body.freeze()),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode send response");
                        Frame::new(h.response(response::BROKER_ERROR), Bytes::new())
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "malformed SEND_MESSAGE body");
                failed(FailReason::Malformed, 1);
                Frame::new(h.response(response::PARAM_ERROR), Bytes::new())
            }
        },
        command::HEARTBEAT => Frame::new(h.response(response::SUCCESS), Bytes::new()),
        _ => Frame::new(h.response(response::UNKNOWN_CODE), Bytes::new()),
    }
}

/// Whether the stored messages of `results` may be acknowledged: in sync mode once the slave
/// wrote them (QMQ: every delay message waits), and only while this server still is the
/// master holding a lease. Err: the remark for every stored message.
async fn replicated(
    gate: &Gate,
    results: &[Result<crate::engine::Scheduled, ScheduleError>],
) -> Result<(), &'static str> {
    let last = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|s| s.wal_offset)
        .max();
    if let (Some(offset), ReplicationMode::Sync { .. }) = (last, gate.mode()) {
        if !gate.replicated(offset).await {
            return Err("not replicated: the slave did not confirm it in time (stored on the master only; a retry may duplicate it)");
        }
    }
    if last.is_some() && !gate.serving() {
        return Err("not acknowledged: this delay server lost its master lease");
    }
    Ok(())
}

fn producer_code(e: &ScheduleError) -> ProducerCode {
    match e {
        ScheduleError::TooFarAhead { .. }
        | ScheduleError::TooLarge { .. }
        | ScheduleError::Invalid { .. } => ProducerCode::Block,
        ScheduleError::Store(_) | ScheduleError::Closed => ProducerCode::StoreError,
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn the_largest_message_must_fit_in_a_frame() {
        let mut config = ServerConfig::new("x");
        config.validate().unwrap();
        config.delay.max_message_bytes = config.max_frame;
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("does not fit in a frame"), "{err}");
    }
}
