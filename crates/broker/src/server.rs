//! The broker's TCP server: accepts connections, decodes frames and dispatches them to the
//! send, pull and ack handlers; registers with the meta server; retries for offline consumers.
//!
//! What one connection can make the broker hold is bounded: at most `max_in_flight` requests
//! and `max_in_flight_bytes` of request frames are in progress per connection (parked pulls
//! included); beyond that the connection is not read until one finishes (TCP backpressure).
//! A SEND frame is refused whole once its decoded size passes `max_decoded_send_bytes`.
//! Names are checked ([`crate::subjects`]) before anything is recorded or logged about them,
//! and the consumers seen are forgotten after `consumer_forget` idle.
//!
//! Acks: one connection's acks are applied one at a time in arrival order, and every ack and
//! offline retry of one consumer holds that consumer's ack lock (one of a fixed set of locks
//! picked by hash, so no map of locks grows with names). An ack may not reach past what the
//! consumer pulled: one that starts beyond it changes nothing and is answered `PARAM_ERROR`;
//! one that ends beyond it is cut to the pulled end.
//!
//! Tracing: with [`BrokerConfig::trace_spans`] set, each stored message that carries a trace
//! context (`qtrace_traceparent`, see [`qmq_trace`]) gets a `Qmq.Broker.Append` span
//! ([`APPEND_SPAN`], kind server), a child of that context, from the moment the broker accepts
//! it to the end of its append (and, with synchronous replication, of the wait for the slave);
//! attributes `subject`, `messageId`, `brokerGroup`, and `offset` (message-log offset) once
//! stored; an error status when it is not. A message without a context gets no span: the broker
//! does not start traces. The message's attributes are stored unchanged.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use parking_lot::Mutex;
use qmq_protocol::codes::{command, response};
use qmq_protocol::send::{decode_send_request_limited, encode_send_response};
use qmq_protocol::{
    AckRequest, BrokerRequestType, BrokerRole, BrokerState, Frame, FrameCodec, ProducerCode,
    PullRequest, SendFailure,
};
use qmq_store::{ConsumerKey, Store};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::Framed;

use crate::config::BrokerConfig;
use crate::dedup::{self, DedupWindow};
use crate::metrics::{BrokerMetrics, FailReason};
use crate::pull::{InFlight, PullSettings, Puller};
use crate::registration::Registration;
use crate::replication::Gate;
use crate::retry::retry_range;
use crate::subjects;
use crate::BrokerError;

/// Name of the span of one message's append (see the module docs).
pub const APPEND_SPAN: &str = "Qmq.Broker.Append";
/// Name of the broker's instrumentation scope (its tracer).
pub const TRACER_NAME: &str = "qmq-broker";

/// Number of consumer ack locks (a consumer's is picked by the hash of its key).
const ACK_LOCKS: usize = 64;

/// State shared by every connection.
struct Shared {
    config: BrokerConfig,
    store: Store,
    puller: Arc<Puller>,
    /// Subjects producers may not send to here (`*`: all), as the meta server directs.
    readonly: parking_lot::RwLock<std::collections::HashSet<String>>,
    /// Last time each consumer pulled or acked (forgotten after `consumer_forget` idle).
    seen: Mutex<HashMap<ConsumerKey, Instant>>,
    /// Serialise each consumer's acks and offline retries (see the module docs).
    ack_locks: Vec<tokio::sync::Mutex<()>>,
    started: Instant,
    /// With replication: whether this broker is the master with a running lease now (None: an
    /// unreplicated broker, always serving).
    gate: Option<Arc<Gate>>,
    /// Where the broker records its metrics, if anywhere.
    metrics: Option<Arc<BrokerMetrics>>,
    /// Ids stored recently, answered `DUPLICATE` when sent again (None: the window is off).
    dedup: Option<Arc<DedupWindow>>,
}

impl Shared {
    /// Whether clients are served now: always without replication, only as master holding
    /// a lease with it.
    fn serving(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| g.serving())
    }

    /// The lock serialising `key`'s acks and offline retries.
    fn ack_lock(&self, key: &ConsumerKey) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.ack_locks[(h.finish() % ACK_LOCKS as u64) as usize]
    }
}

/// Operations on a running broker, for operators and the meta server's directives.
#[derive(Clone)]
pub struct BrokerControl {
    shared: Arc<Shared>,
}

impl BrokerControl {
    /// Refuses (or accepts again) new messages for every subject; pulls and acks go on.
    pub fn set_readonly(&self, readonly: bool) {
        let subjects = if readonly {
            vec!["*".to_owned()]
        } else {
            Vec::new()
        };
        self.set_readonly_subjects(subjects);
    }

    /// Refuses new messages for exactly these subjects (`*`: all of them), as the meta
    /// server's readonly marks say; pulls and acks go on.
    pub fn set_readonly_subjects(&self, subjects: Vec<String>) {
        *self.shared.readonly.write() = subjects.into_iter().collect();
    }

    /// Refills the duplicate window from the tail of the message log (a slave promoted to
    /// master: the log it copied holds what its old master stored). Returns the ids it holds.
    pub async fn rebuild_dedup_window(&self) -> Result<usize, BrokerError> {
        let Some(window) = self.shared.dedup.clone() else {
            return Ok(0);
        };
        let store = self.shared.store.clone();
        rebuild(window, store).await
    }

    /// Moves `group`'s position on `subject` to the earliest or latest message (an operator's
    /// reset-offset request). Returns the new next sequence.
    pub async fn reset_offset(
        &self,
        subject: &str,
        group: &str,
        to: qmq_store::ResetTo,
    ) -> Result<u64, BrokerError> {
        if !self.shared.serving() {
            return Err(BrokerError::NotServing);
        }
        let store = self.shared.store.clone();
        let key = ConsumerKey {
            subject: subject.to_owned(),
            group: group.to_owned(),
            consumer: String::new(),
        };
        let next = tokio::task::spawn_blocking(move || store.reset(&key, false, to)).await??;
        self.shared.puller.notify(subject);
        Ok(next)
    }
}

/// A running broker.
pub struct BrokerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl BrokerHandle {
    /// The address the broker listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The broker's store (for tools and tests).
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// A cheap handle for operating the broker while it runs (readonly marks, resets).
    pub fn control(&self) -> BrokerControl {
        BrokerControl {
            shared: self.shared.clone(),
        }
    }

    /// Pull requests dropped unserved because their deadline passed.
    pub fn expired_pulls(&self) -> u64 {
        self.shared.puller.expired()
    }

    /// Consumers the broker remembers as recently seen (for tests and monitoring).
    pub fn tracked_consumers(&self) -> usize {
        self.shared.seen.lock().len()
    }

    /// Subjects with long polls parked on them (for tests and monitoring).
    pub fn parked_subjects(&self) -> usize {
        self.shared.puller.parked_subjects()
    }

    /// Stops accepting, answers parked pulls, tells the meta server it is going offline, then
    /// flushes and checkpoints the store.
    pub async fn shutdown(self) -> Result<(), BrokerError> {
        let _ = self.shutdown.send(true);
        self.shared.puller.close();
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        if let Some(reg) = registration(&self.shared, self.addr) {
            let _ = reg
                .register(BrokerRequestType::Offline, BrokerState::None)
                .await;
        }
        if let Some(m) = &self.shared.metrics {
            m.detach_store();
        }
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || store.close()).await??;
        Ok(())
    }
}

/// Opens the store, binds the listener and starts serving.
pub async fn serve(config: BrokerConfig) -> Result<BrokerHandle, BrokerError> {
    serve_with(config, None).await
}

/// As [`serve`], for a replicated broker: clients are served only while `gate` says so
/// (otherwise every SEND, PULL and ACK is answered `BROKER_REJECT`), and sends wait for the
/// slave as the gate's mode says.
pub async fn serve_with(
    config: BrokerConfig,
    gate: Option<Arc<Gate>>,
) -> Result<BrokerHandle, BrokerError> {
    let store_config = config.store.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(store_config)).await??;
    let dedup = dedup_window(&config, &store).await?;
    store.spawn_maintenance()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| BrokerError::Io {
            op: "bind broker port",
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| BrokerError::Io {
        op: "local address",
        source,
    })?;
    let puller = Puller::with_settings(
        store.clone(),
        PullSettings {
            retry_delay: config.retry_delay,
            new_group_start: config.new_group_start,
            budget: config.pull_budget(),
            max_frame: config.max_frame_bytes,
            metrics: config.metrics.clone(),
        },
    );
    if let Some(m) = &config.metrics {
        m.attach_store(store.clone());
    }
    let mut tasks = puller.spawn_workers(config.pull_workers);
    let shared = Arc::new(Shared {
        store,
        puller,
        readonly: parking_lot::RwLock::new(std::collections::HashSet::new()),
        seen: Mutex::new(HashMap::new()),
        ack_locks: (0..ACK_LOCKS)
            .map(|_| tokio::sync::Mutex::new(()))
            .collect(),
        started: Instant::now(),
        gate,
        metrics: config.metrics.clone(),
        dedup,
        config,
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    tasks.push(tokio::spawn(accept_loop(
        listener,
        shared.clone(),
        shutdown_rx,
    )));
    tasks.push(tokio::spawn(offline_sweeper(shared.clone())));
    if let Some(reg) = registration(&shared, addr) {
        // Register before returning, so clients asking the meta server find this broker at once.
        let online = reg
            .register(BrokerRequestType::Online, state(&shared))
            .await;
        if let Err(e) = &online {
            tracing::warn!(meta = %reg.meta, error = %e, "meta server registration failed; retrying");
        }
        let s = shared.clone();
        let beat = reg.heartbeat_loop(
            shared.config.heartbeat_interval,
            online.is_ok(),
            move || state(&s),
        );
        tasks.push(tokio::spawn(beat));
    }
    tracing::info!(%addr, group = %shared.config.group, "broker listening");
    Ok(BrokerHandle {
        addr,
        shared,
        shutdown,
        tasks,
    })
}

/// The duplicate window `config` asks for, filled from the log's tail (None: off).
async fn dedup_window(
    config: &BrokerConfig,
    store: &Store,
) -> Result<Option<Arc<DedupWindow>>, BrokerError> {
    if config.dedup_window.is_zero() {
        return Ok(None);
    }
    let window = Arc::new(DedupWindow::new(
        config.dedup_window,
        config.dedup_window_max_ids,
    ));
    rebuild(window.clone(), store.clone()).await?;
    Ok(Some(window))
}

/// Refills `window` from `store`'s log tail on a blocking thread; returns the ids it holds.
async fn rebuild(window: Arc<DedupWindow>, store: Store) -> Result<usize, BrokerError> {
    let started = std::time::Instant::now();
    let (ids, read) =
        tokio::task::spawn_blocking(move || window.rebuild(&store, dedup::now_ms())).await??;
    tracing::info!(ids, log_bytes_read = read, elapsed = ?started.elapsed(), "duplicate window rebuilt");
    Ok(ids)
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, peer, shared.clone(), shutdown.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// What a request is: the ack worker takes acks, everything else is dispatched at once.
type AckJob = (Frame, InFlight);

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _counted = shared.metrics.as_ref().map(|m| m.connection());
    let (mut sink, mut frames) =
        Framed::new(stream, FrameCodec::new(shared.config.max_frame_bytes)).split();
    let max_in_flight = shared.config.max_in_flight.max(1);
    let (tx, mut rx) = mpsc::channel::<Frame>(max_in_flight + 16);
    let mut writer = Some(tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            sink.send(frame).await?;
        }
        Ok::<(), qmq_protocol::FrameError>(())
    }));
    let count = Arc::new(Semaphore::new(max_in_flight));
    let byte_limit = shared
        .config
        .max_in_flight_bytes
        .max(shared.config.max_frame_bytes)
        .min(u32::MAX as usize) as u32;
    let bytes = Arc::new(Semaphore::new(byte_limit as usize));
    let (ack_tx, ack_rx) = mpsc::channel::<AckJob>(max_in_flight);
    let acker = tokio::spawn(ack_worker(shared.clone(), ack_rx, tx.clone()));
    loop {
        let frame = tokio::select! {
            f = frames.next() => f,
            _ = shutdown.changed() => None,
            w = wait_writer(&mut writer), if writer.is_some() => {
                writer = None;
                writer_ended(peer, w);
                break;
            }
        };
        let frame = match frame {
            Some(Ok(frame)) if !frame.header.is_response() => frame,
            Some(Ok(_)) => continue,
            Some(Err(e)) if e.is_disconnect() => {
                tracing::debug!(%peer, error = %e, "client went away");
                break;
            }
            Some(Err(e)) => {
                tracing::warn!(%peer, error = %e, "closing connection after a bad frame");
                break;
            }
            None => break,
        };
        // Backpressure: wait for room before taking on this request (the socket is not read
        // meanwhile), but stop if the writer fails or the broker shuts down.
        let need = (frame.body.len().max(1)).min(byte_limit as usize) as u32;
        let permits = async {
            let c = count.clone().acquire_owned().await;
            let b = bytes.clone().acquire_many_owned(need).await;
            match (c, b) {
                (Ok(c), Ok(b)) => Some(InFlight::new(vec![c, b])),
                _ => None,
            }
        };
        let in_flight = tokio::select! {
            p = permits => p,
            _ = shutdown.changed() => None,
            w = wait_writer(&mut writer), if writer.is_some() => {
                writer = None;
                writer_ended(peer, w);
                None
            }
        };
        let Some(in_flight) = in_flight else { break };
        dispatch(&shared, frame, &tx, &ack_tx, in_flight).await;
    }
    drop(tx);
    drop(ack_tx);
    let _ = acker.await;
    if let Some(w) = writer {
        writer_ended(peer, w.await);
    }
}

type Writer = tokio::task::JoinHandle<Result<(), qmq_protocol::FrameError>>;

/// Waits for the connection's writer to end (never, if it already has).
async fn wait_writer(
    writer: &mut Option<Writer>,
) -> Result<Result<(), qmq_protocol::FrameError>, tokio::task::JoinError> {
    match writer.as_mut() {
        Some(w) => w.await,
        None => std::future::pending().await,
    }
}

/// Logs why a connection's writer stopped: a response that cannot be sent closes the
/// connection, and says so, instead of leaving its requests unanswered.
fn writer_ended(
    peer: SocketAddr,
    result: Result<Result<(), qmq_protocol::FrameError>, tokio::task::JoinError>,
) {
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_disconnect() => tracing::debug!(%peer, error = %e, "client went away"),
        Ok(Err(e)) => {
            tracing::error!(%peer, error = %e, "sending a response failed; closing the connection")
        }
        Err(e) => tracing::error!(%peer, error = %e, "connection writer failed"),
    }
}

/// Applies one connection's acks one at a time, in the order they arrived.
async fn ack_worker(
    shared: Arc<Shared>,
    mut acks: mpsc::Receiver<AckJob>,
    tx: mpsc::Sender<Frame>,
) {
    while let Some((frame, in_flight)) = acks.recv().await {
        let header = frame.header;
        let code = match AckRequest::decode_for_version(header.version, &frame.body) {
            Ok(ack) => match handle_ack(&shared, ack).await {
                Ok(AckOutcome::Applied) => response::SUCCESS,
                Ok(AckOutcome::Refused) => response::PARAM_ERROR,
                Err(e) => {
                    tracing::error!(error = %e, "ack failed");
                    response::BROKER_ERROR
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "malformed ack request");
                response::PARAM_ERROR
            }
        };
        let _ = tx
            .send(Frame::new(header.response(code), Bytes::new()))
            .await;
        drop(in_flight);
    }
}

async fn dispatch(
    shared: &Arc<Shared>,
    frame: Frame,
    tx: &mpsc::Sender<Frame>,
    acks: &mpsc::Sender<AckJob>,
    in_flight: InFlight,
) {
    let header = frame.header;
    let client_request = matches!(
        header.code,
        command::SEND_MESSAGE | command::PULL_MESSAGE | command::ACK_REQUEST
    );
    if client_request && !shared.serving() {
        // A slave, or a master without a lease: the client must ask the meta server again.
        let _ = tx
            .send(Frame::new(
                header.response(response::BROKER_REJECT),
                Bytes::new(),
            ))
            .await;
        drop(in_flight);
        return;
    }
    match header.code {
        command::SEND_MESSAGE => {
            let (shared, tx) = (shared.clone(), tx.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let reply = handle_send(&shared, &frame).await;
                if let Some(m) = &shared.metrics {
                    m.send_process(started.elapsed());
                }
                let _ = tx.send(reply).await;
                drop(in_flight);
            });
        }
        command::PULL_MESSAGE => match PullRequest::decode(header.version, &frame.body) {
            Ok(req) => {
                // Checked before anything is recorded about the names.
                if subjects::check_consumer(&req.subject, &req.group, &req.consumer_id).is_ok() {
                    touch(shared, &req.subject, &req.group, &req.consumer_id);
                }
                shared
                    .puller
                    .submit(header, req, tx.clone(), Some(in_flight))
                    .await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "malformed pull request");
                let _ = tx
                    .send(Frame::new(
                        header.response(response::PARAM_ERROR),
                        Bytes::new(),
                    ))
                    .await;
            }
        },
        command::ACK_REQUEST => {
            if acks.send((frame, in_flight)).await.is_err() {
                tracing::debug!("ack worker gone; dropping an ack");
            }
        }
        command::HEARTBEAT => {
            let _ = tx
                .send(Frame::new(header.response(response::SUCCESS), Bytes::new()))
                .await;
        }
        _ => {
            let _ = tx
                .send(Frame::new(
                    header.response(response::UNKNOWN_CODE),
                    Bytes::new(),
                ))
                .await;
        }
    }
}

fn touch(shared: &Shared, subject: &str, group: &str, consumer: &str) {
    let key = ConsumerKey {
        subject: subject.to_owned(),
        group: group.to_owned(),
        consumer: consumer.to_owned(),
    };
    shared.seen.lock().insert(key, Instant::now());
}

/// Stores a batch and answers with the messages that were not stored. A malformed batch is
/// refused whole (its message boundaries cannot be trusted); within a well-formed batch, each
/// bad message is refused on its own and the rest are stored.
async fn handle_send(shared: &Shared, frame: &Frame) -> Frame {
    let header = frame.header;
    let messages =
        match decode_send_request_limited(&frame.body, shared.config.max_decoded_send_bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "malformed send request");
                if let Some(m) = &shared.metrics {
                    m.invalid_frame();
                }
                return Frame::new(header.response(response::BROKER_ERROR), Bytes::new());
            }
        };
    let mut failures = Vec::new();
    let mut accepted = Vec::new();
    // Only with tracing on: one entry per accepted message, its Append span if it carries a
    // context.
    let tracer = shared
        .config
        .trace_spans
        .then(|| qmq_trace::tracer(TRACER_NAME, env!("CARGO_PKG_VERSION")));
    let mut traces: Vec<Option<opentelemetry::Context>> = Vec::new();
    let readonly = shared.readonly.read().clone();
    let all_readonly = readonly.contains("*");
    for m in messages {
        let refuse = |code, remark: &str, reason: FailReason| {
            if let Some(metrics) = &shared.metrics {
                let subject = &m.message.subject;
                let known = subjects::check_subject(subject).is_ok()
                    && shared.store.subject_len(subject) > 0;
                metrics.send_failed(subject, known, reason, 1);
            }
            SendFailure {
                message_id: m.message.message_id.clone(),
                code,
                remark: remark.to_owned(),
            }
        };
        if all_readonly || readonly.contains(&m.message.subject) {
            failures.push(refuse(
                ProducerCode::ReadOnly,
                "BROKER READ ONLY",
                FailReason::Readonly,
            ));
        } else if !m.crc_ok() {
            failures.push(refuse(
                ProducerCode::Block,
                "message CRC mismatch",
                FailReason::CrcMismatch,
            ));
        } else if m.stored.len() > shared.config.max_message_bytes {
            failures.push(refuse(
                ProducerCode::Block,
                "message too large",
                FailReason::TooLarge,
            ));
        } else if let Err(e) = subjects::check_subject(&m.message.subject) {
            failures.push(refuse(
                ProducerCode::SubjectNotAssigned,
                &e.to_string(),
                FailReason::IllegalSubject,
            ));
        } else {
            if let Some(tracer) = &tracer {
                traces.push(start_append(tracer, &shared.config.group, &m.message));
            }
            accepted.push((
                m.message.message_id.clone(),
                m.message.subject.clone(),
                m.stored,
                m.message.flags.is_reliable(),
            ));
        }
    }
    // The window may drop messages from `accepted`: their spans are ended (not stored: already
    // there) and the rest stay aligned with what is appended.
    let traced_ids: Vec<String> = if traces.is_empty() {
        Vec::new()
    } else {
        accepted.iter().map(|(id, _, _, _)| id.clone()).collect()
    };
    let (reservation, dropped) = dedup::filter(
        shared.dedup.as_ref(),
        &mut accepted,
        &mut failures,
        |subject| {
            if let Some(m) = &shared.metrics {
                m.duplicate(subject);
            }
        },
    )
    .await;
    if dropped > 0 && !traces.is_empty() {
        traces = realign_traces(traces, &traced_ids, &accepted);
    }
    if !accepted.is_empty() {
        let batch = accepted.iter().map(|(_, s, b, _)| (s.as_str(), &b[..]));
        let appending = Instant::now();
        let appended = shared.store.append(batch).await;
        if let Some(m) = &shared.metrics {
            m.store_append(appending.elapsed());
        }
        match appended {
            Ok(placed) => {
                if let Some(r) = reservation {
                    r.commit();
                }
                for (cx, p) in traces.iter().zip(&placed) {
                    if let Some(cx) = cx {
                        let offset = i64::try_from(p.offset).unwrap_or(i64::MAX);
                        qmq_trace::set_attributes(cx, || vec![KeyValue::new("offset", offset)]);
                    }
                }
                let mut subjects: Vec<&str> =
                    accepted.iter().map(|(_, s, _, _)| s.as_str()).collect();
                subjects.dedup();
                for s in subjects {
                    shared.puller.notify(s);
                }
                if let Some(m) = &shared.metrics {
                    count_by_subject(accepted.iter().map(|(_, s, _, _)| s.as_str()), |s, n| {
                        m.stored(s, n)
                    });
                }
                if let Some(gate) = &shared.gate {
                    let before = failures.len();
                    wait_for_slave(gate, &accepted, &placed, &mut failures).await;
                    if let (Some(m), true) = (&shared.metrics, failures.len() > before) {
                        let reliable = accepted.iter().filter(|(_, _, _, r)| *r);
                        count_by_subject(reliable.map(|(_, s, _, _)| s.as_str()), |s, n| {
                            m.send_failed(s, true, FailReason::NotReplicated, n)
                        });
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "storing messages failed");
                // The store's `Failed` means not stored: a retry cannot duplicate. Only when a
                // failed write could not be cut away is the outcome unknown; the remark says so.
                let remark = match e {
                    qmq_store::StoreError::MaybeStored { .. } => {
                        "store error, outcome unknown: a retry may duplicate"
                    }
                    _ => "store error, not stored",
                };
                for (id, _, _, _) in &accepted {
                    failures.push(SendFailure {
                        message_id: id.clone(),
                        code: ProducerCode::StoreError,
                        remark: remark.into(),
                    });
                }
                if let Some(m) = &shared.metrics {
                    count_by_subject(accepted.iter().map(|(_, s, _, _)| s.as_str()), |s, n| {
                        let known = shared.store.subject_len(s) > 0;
                        m.send_failed(s, known, FailReason::StoreError, n)
                    });
                }
            }
        }
    }
    let serving = shared.serving();
    if traces.iter().any(Option::is_some) {
        end_appends(traces, &accepted, &failures, serving);
    }
    if !serving {
        // The lease ended while the batch was stored: no acknowledgement from a master that
        // may have been replaced (what it stored is cut when it rejoins as a slave).
        return Frame::new(header.response(response::BROKER_REJECT), Bytes::new());
    }
    let mut body = BytesMut::new();
    match encode_send_response(&failures, &mut body) {
        Ok(()) => Frame::new(header.response(response::SUCCESS), body.freeze()),
        Err(e) => {
            tracing::error!(error = %e, "encoding a send response failed");
            Frame::new(header.response(response::BROKER_ERROR), Bytes::new())
        }
    }
}

/// The spans of the messages still in `accepted` after the duplicate window dropped some
/// (`traces` and `ids` were aligned with the batch before, and the window keeps the order); the
/// spans of dropped messages end here, without an error: the message was already stored.
fn realign_traces(
    traces: Vec<Option<opentelemetry::Context>>,
    ids: &[String],
    accepted: &[dedup::Accepted],
) -> Vec<Option<opentelemetry::Context>> {
    let mut before = ids.iter().zip(traces);
    let mut kept = Vec::with_capacity(accepted.len());
    for (id, _, _, _) in accepted {
        for (old_id, cx) in before.by_ref() {
            if old_id == id {
                kept.push(cx);
                break;
            }
            if let Some(cx) = cx {
                qmq_trace::end(&cx, None, None);
            }
        }
    }
    for (_, cx) in before {
        if let Some(cx) = cx {
            qmq_trace::end(&cx, None, None);
        }
    }
    kept
}

/// Starts the `Qmq.Broker.Append` span of `message` if it carries a trace context.
fn start_append(
    tracer: &BoxedTracer,
    group: &str,
    message: &qmq_protocol::Message,
) -> Option<opentelemetry::Context> {
    let parent = qmq_trace::carried(message)?;
    Some(qmq_trace::start(
        tracer,
        APPEND_SPAN,
        SpanKind::Server,
        &parent,
        || {
            vec![
                KeyValue::new("subject", message.subject.clone()),
                KeyValue::new("messageId", message.message_id.clone()),
                KeyValue::new("brokerGroup", group.to_owned()),
            ]
        },
    ))
}

/// Ends the Append spans of a batch (`traces`: one per accepted message): with an error status
/// for the messages answered as failed, or all of them when the broker stopped serving.
fn end_appends(
    traces: Vec<Option<opentelemetry::Context>>,
    accepted: &[(String, String, Bytes, bool)],
    failures: &[SendFailure],
    serving: bool,
) {
    for (cx, (id, _, _, _)) in traces.iter().zip(accepted) {
        let Some(cx) = cx else { continue };
        let failure = failures.iter().find(|f| &f.message_id == id);
        let error: Option<&dyn std::fmt::Display> = match failure {
            Some(f) => Some(&f.remark),
            None if !serving => Some(&"not acknowledged: the broker stopped serving"),
            None => None,
        };
        qmq_trace::end(cx, error, None);
    }
}

/// Calls `record` once per distinct subject of `subjects` with how many times it occurs.
fn count_by_subject<'a>(
    subjects: impl Iterator<Item = &'a str>,
    mut record: impl FnMut(&str, u64),
) {
    let mut counts: Vec<(&str, u64)> = Vec::new();
    for s in subjects {
        match counts.iter_mut().find(|(c, _)| *c == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    for (s, n) in counts {
        record(s, n);
    }
}

/// With synchronous replication, waits until the slave holds the batch's reliable messages
/// (QMQ's rule: messages flagged unreliable are answered at once); if it does not in time and
/// the gate says so, those messages are answered as not replicated.
async fn wait_for_slave(
    gate: &Gate,
    accepted: &[(String, String, Bytes, bool)],
    placed: &[qmq_store::Appended],
    failures: &mut Vec<SendFailure>,
) {
    let last = accepted
        .iter()
        .zip(placed)
        .filter(|((_, _, _, reliable), _)| *reliable)
        .map(|(_, p)| p.offset)
        .max();
    let Some(last) = last else { return };
    if gate.replicated(last).await {
        return;
    }
    for (id, _, _, _) in accepted.iter().filter(|(_, _, _, reliable)| *reliable) {
        failures.push(SendFailure {
            message_id: id.clone(),
            code: ProducerCode::StoreError,
            remark: "not replicated to the slave in time: stored on the master only, a retry may \
                     duplicate"
                .into(),
        });
    }
}

/// What became of an ack.
enum AckOutcome {
    /// Applied (or a duplicate, or a heartbeat).
    Applied,
    /// Refused: bad names, or it starts beyond what the consumer pulled; nothing changed.
    Refused,
}

/// Acks a pull-log range. Sequences the ack skips (the consumer lost them) go to the retry
/// subject first, as QMQ does (not for broadcast consumers: nobody else would take them).
/// Unlike QMQ, the range is checked against what the consumer pulled (see the module docs).
async fn handle_ack(shared: &Shared, ack: AckRequest) -> Result<AckOutcome, BrokerError> {
    if let Err(e) = subjects::check_consumer(&ack.subject, &ack.group, &ack.consumer_id) {
        tracing::debug!(error = %e, "ack with an invalid name refused");
        return Ok(AckOutcome::Refused);
    }
    touch(shared, &ack.subject, &ack.group, &ack.consumer_id);
    if ack.pull_offset_begin < 0 || ack.pull_offset_last < 0 {
        return Ok(AckOutcome::Applied); // heartbeat
    }
    let key = ConsumerKey {
        subject: ack.subject,
        group: ack.group,
        consumer: ack.consumer_id,
    };
    let _serial = shared.ack_lock(&key).lock().await;
    let progress = shared.store.progress(&key);
    if ack.pull_offset_last <= progress.acked {
        return Ok(AckOutcome::Applied); // duplicate
    }
    if ack.pull_offset_begin > progress.pulled {
        tracing::warn!(subject = %key.subject, group = %key.group, consumer = %key.consumer, begin = ack.pull_offset_begin, last = ack.pull_offset_last, pulled = progress.pulled, "ack beyond what the consumer pulled refused");
        return Ok(AckOutcome::Refused);
    }
    if ack.pull_offset_last > progress.pulled {
        tracing::warn!(subject = %key.subject, group = %key.group, consumer = %key.consumer, last = ack.pull_offset_last, pulled = progress.pulled, "ack cut to what the consumer pulled");
    }
    let last = ack.pull_offset_last.min(progress.pulled) as u64;
    let first_unacked = (progress.acked + 1) as u64;
    // Acked by the consumer itself: from its range's start (what it skipped goes to retry).
    let consumer_acked =
        ack.pull_offset_last.min(progress.pulled) - progress.acked.max(ack.pull_offset_begin - 1);
    if ack.pull_offset_begin > first_unacked as i64 && !ack.broadcast {
        let lost_last = (ack.pull_offset_begin - 1) as u64;
        let moved = retry_range(
            &shared.store,
            &key,
            first_unacked,
            lost_last,
            shared.config.pull_budget(),
        )
        .await?;
        tracing::warn!(subject = %key.subject, group = %key.group, consumer = %key.consumer, moved, "lost acks sent to retry");
        if let Some(m) = &shared.metrics {
            m.retried(&key.subject, &key.group, moved as u64);
        }
        if moved > 0 {
            let retry = if subjects::is_retry(&key.subject) {
                key.subject.clone()
            } else {
                subjects::retry_subject(&key.subject, &key.group)
            };
            shared.puller.notify(&retry);
        }
    }
    let store = shared.store.clone();
    let (subject, group) = (key.subject.clone(), key.group.clone());
    tokio::task::spawn_blocking(move || store.ack(&key, last)).await??;
    if let Some(m) = &shared.metrics {
        m.acked(&subject, &group, u64::try_from(consumer_acked).unwrap_or(0));
    }
    Ok(AckOutcome::Applied)
}

/// Consumers not seen for the lease: what they pulled and did not ack goes to retry. Also
/// forgets consumers and scheduler state idle for long.
async fn offline_sweeper(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.consumer_check_interval);
    loop {
        tick.tick().await;
        if !shared.serving() {
            // A slave's consumer state is the master's, replayed: it moves nothing itself.
            continue;
        }
        if let Err(e) = sweep_offline(&shared).await {
            tracing::error!(error = %e, "offline consumer check failed");
        }
        forget_idle(&shared);
    }
}

/// Forgets consumers not seen for `consumer_forget` (never less than the lease, so the
/// offline check still sees them first) and the scheduler's idle groups.
fn forget_idle(shared: &Shared) {
    let now = Instant::now();
    let keep = shared
        .config
        .consumer_forget
        .max(shared.config.consumer_lease);
    shared
        .seen
        .lock()
        .retain(|_, last| now.duration_since(*last) < keep);
    shared.puller.forget_idle();
}

/// One pass of the offline check. Returns how many messages went to retry.
async fn sweep_offline(shared: &Shared) -> Result<usize, BrokerError> {
    let mut moved = 0;
    // Broadcast consumers have a position of their own: a group key naming the consumer.
    let broadcast: HashSet<ConsumerKey> = shared
        .store
        .groups()
        .into_iter()
        .filter(|g| !g.key.consumer.is_empty())
        .map(|g| g.key)
        .collect();
    for c in shared.store.consumers() {
        if c.acked >= c.pulled || broadcast.contains(&c.key) {
            continue;
        }
        let offline = |shared: &Shared| {
            let last_seen = shared
                .seen
                .lock()
                .get(&c.key)
                .copied()
                .unwrap_or(shared.started);
            Instant::now().duration_since(last_seen) >= shared.config.consumer_lease
        };
        if !offline(shared) {
            continue;
        }
        let _serial = shared.ack_lock(&c.key).lock().await;
        // Look again under the lock: an ack may have come in meanwhile.
        let now = shared.store.progress(&c.key);
        if now.acked >= now.pulled || !offline(shared) {
            continue;
        }
        let n = retry_range(
            &shared.store,
            &c.key,
            (now.acked + 1) as u64,
            now.pulled as u64,
            shared.config.pull_budget(),
        )
        .await?;
        tracing::info!(subject = %c.key.subject, group = %c.key.group, consumer = %c.key.consumer, moved = n, "offline consumer's messages sent to retry");
        if let Some(m) = &shared.metrics {
            m.retried(&c.key.subject, &c.key.group, n as u64);
        }
        moved += n;
    }
    if moved > 0 {
        let subjects: Vec<String> = shared.store.subjects();
        for s in subjects.iter().filter(|s| crate::subjects::is_retry(s)) {
            shared.puller.notify(s);
        }
    }
    Ok(moved)
}

/// How this broker registers with its meta server, if it has one.
fn registration(shared: &Shared, addr: SocketAddr) -> Option<Registration> {
    Some(Registration {
        meta: shared.config.meta.clone()?,
        group: shared.config.group.clone(),
        address: shared
            .config
            .advertised
            .clone()
            .unwrap_or_else(|| addr.to_string()),
        role: BrokerRole::Master,
        secret: shared.config.cluster_secret.clone(),
    })
}

/// What the broker reports: read-only while every subject is marked readonly.
fn state(shared: &Shared) -> BrokerState {
    if shared.readonly.read().contains("*") {
        BrokerState::Read
    } else {
        BrokerState::ReadWrite
    }
}
