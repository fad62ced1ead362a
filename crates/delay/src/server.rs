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

use crate::clock::Clock;
use crate::config::DelayConfig;
use crate::dispatch::Dispatcher;
use crate::engine::{DelayEngine, NewMessage};
use crate::error::{DelayError, ScheduleError};

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
    let engine = Arc::new(DelayEngine::open(config.delay, clock.clone(), dispatcher).await?);
    let cancel = CancellationToken::new();
    let accept = tokio::spawn(accept_loop(
        listener,
        engine.clone(),
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
    engine: Arc<DelayEngine>,
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
    engine: Arc<DelayEngine>,
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

async fn handle(frame: &Frame, engine: &DelayEngine, clock: &dyn Clock) -> Frame {
    let h = frame.header;
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
                for (id, r) in ids.into_iter().zip(engine.schedule(batch).await) {
                    if let Err(e) = r {
                        failures.push(SendFailure {
                            message_id: id,
                            code: producer_code(&e),
                            remark: e.to_string(),
                        });
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
                Frame::new(h.response(response::PARAM_ERROR), Bytes::new())
            }
        },
        command::HEARTBEAT => Frame::new(h.response(response::SUCCESS), Bytes::new()),
        _ => Frame::new(h.response(response::UNKNOWN_CODE), Bytes::new()),
    }
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
