//! The broker's TCP server: accepts connections, decodes frames and dispatches them to the
//! send, pull and ack handlers; registers with the meta server; retries for offline consumers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use qmq_protocol::codes::{command, response};
use qmq_protocol::send::{decode_send_request, encode_send_response};
use qmq_protocol::{
    AckRequest, BrokerRequestType, BrokerRole, BrokerState, Frame, FrameCodec, ProducerCode,
    PullRequest, SendFailure,
};
use qmq_store::{ConsumerKey, Store};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::codec::Framed;

use crate::config::BrokerConfig;
use crate::pull::Puller;
use crate::registration::Registration;
use crate::retry::retry_range;
use crate::BrokerError;

/// State shared by every connection.
struct Shared {
    config: BrokerConfig,
    store: Store,
    puller: Arc<Puller>,
    /// Subjects producers may not send to here (`*`: all), as the meta server directs.
    readonly: parking_lot::RwLock<std::collections::HashSet<String>>,
    /// Last time each consumer pulled or acked, and whether it consumes in broadcast mode.
    seen: Mutex<HashMap<ConsumerKey, (Instant, bool)>>,
    started: Instant,
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

    /// Moves `group`'s position on `subject` to the earliest or latest message (an operator's
    /// reset-offset request). Returns the new next sequence.
    pub async fn reset_offset(
        &self,
        subject: &str,
        group: &str,
        to: qmq_store::ResetTo,
    ) -> Result<u64, BrokerError> {
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
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || store.close()).await??;
        Ok(())
    }
}

/// Opens the store, binds the listener and starts serving.
pub async fn serve(config: BrokerConfig) -> Result<BrokerHandle, BrokerError> {
    let store_config = config.store.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(store_config)).await??;
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
    let puller = Puller::new(store.clone());
    let mut tasks = puller.spawn_workers(config.pull_workers);
    let shared = Arc::new(Shared {
        store,
        puller,
        readonly: parking_lot::RwLock::new(std::collections::HashSet::new()),
        seen: Mutex::new(HashMap::new()),
        started: Instant::now(),
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

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut sink, mut frames) =
        Framed::new(stream, FrameCodec::new(shared.config.max_frame_bytes)).split();
    let (tx, mut rx) = mpsc::channel::<Frame>(1024);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.send(frame).await.is_err() {
                break;
            }
        }
    });
    loop {
        let frame = tokio::select! {
            f = frames.next() => f,
            _ = shutdown.changed() => None,
        };
        match frame {
            Some(Ok(frame)) if !frame.header.is_response() => dispatch(&shared, frame, &tx).await,
            Some(Ok(_)) => {}
            Some(Err(e)) if e.is_disconnect() => {
                tracing::debug!(%peer, error = %e, "client went away");
                break;
            }
            Some(Err(e)) => {
                tracing::warn!(%peer, error = %e, "closing connection after a bad frame");
                break;
            }
            None => break,
        }
    }
    drop(tx);
    let _ = writer.await;
}

async fn dispatch(shared: &Arc<Shared>, frame: Frame, tx: &mpsc::Sender<Frame>) {
    let header = frame.header;
    match header.code {
        command::SEND_MESSAGE => {
            let (shared, tx) = (shared.clone(), tx.clone());
            tokio::spawn(async move {
                let reply = handle_send(&shared, &frame).await;
                let _ = tx.send(reply).await;
            });
        }
        command::PULL_MESSAGE => match PullRequest::decode(header.version, &frame.body) {
            Ok(req) => {
                touch(
                    shared,
                    &req.subject,
                    &req.group,
                    &req.consumer_id,
                    req.broadcast,
                );
                shared.puller.submit(header, req, tx.clone()).await;
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
            let (shared, tx) = (shared.clone(), tx.clone());
            tokio::spawn(async move {
                let code = match AckRequest::decode_for_version(header.version, &frame.body) {
                    Ok(ack) => match handle_ack(&shared, ack).await {
                        Ok(()) => response::SUCCESS,
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
            });
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

fn touch(shared: &Shared, subject: &str, group: &str, consumer: &str, broadcast: bool) {
    let key = ConsumerKey {
        subject: subject.to_owned(),
        group: group.to_owned(),
        consumer: consumer.to_owned(),
    };
    shared.seen.lock().insert(key, (Instant::now(), broadcast));
}

/// Stores a batch and answers with the messages that were not stored. A malformed batch is
/// refused whole (its message boundaries cannot be trusted); within a well-formed batch, each
/// bad message is refused on its own and the rest are stored.
async fn handle_send(shared: &Shared, frame: &Frame) -> Frame {
    let header = frame.header;
    let messages = match decode_send_request(&frame.body) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "malformed send request");
            return Frame::new(header.response(response::BROKER_ERROR), Bytes::new());
        }
    };
    let mut failures = Vec::new();
    let mut accepted = Vec::new();
    let readonly = shared.readonly.read().clone();
    let all_readonly = readonly.contains("*");
    for m in messages {
        let refuse = |code, remark: &str| SendFailure {
            message_id: m.message.message_id.clone(),
            code,
            remark: remark.to_owned(),
        };
        if all_readonly || readonly.contains(&m.message.subject) {
            failures.push(refuse(ProducerCode::ReadOnly, "BROKER READ ONLY"));
        } else if !m.crc_ok() {
            failures.push(refuse(ProducerCode::Block, "message CRC mismatch"));
        } else if m.stored.len() > shared.config.max_message_bytes {
            failures.push(refuse(ProducerCode::Block, "message too large"));
        } else if m.message.subject.is_empty() || m.message.subject.contains(['\r', '\n']) {
            failures.push(refuse(ProducerCode::SubjectNotAssigned, "invalid subject"));
        } else {
            accepted.push((
                m.message.message_id.clone(),
                m.message.subject.clone(),
                m.stored,
            ));
        }
    }
    if !accepted.is_empty() {
        let batch = accepted.iter().map(|(_, s, b)| (s.as_str(), &b[..]));
        match shared.store.append(batch).await {
            Ok(_) => {
                let mut subjects: Vec<&str> = accepted.iter().map(|(_, s, _)| s.as_str()).collect();
                subjects.dedup();
                for s in subjects {
                    shared.puller.notify(s);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "storing messages failed");
                for (id, _, _) in &accepted {
                    failures.push(SendFailure {
                        message_id: id.clone(),
                        code: ProducerCode::StoreError,
                        remark: "store error".into(),
                    });
                }
            }
        }
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

/// Acks a pull-log range. Sequences the ack skips (the consumer lost them) go to the retry
/// subject first, as QMQ does (not for broadcast consumers: nobody else would take them).
async fn handle_ack(shared: &Shared, ack: AckRequest) -> Result<(), BrokerError> {
    touch(
        shared,
        &ack.subject,
        &ack.group,
        &ack.consumer_id,
        ack.broadcast,
    );
    let key = ConsumerKey {
        subject: ack.subject,
        group: ack.group,
        consumer: ack.consumer_id,
    };
    if ack.pull_offset_last < 0 {
        return Ok(());
    }
    let last = ack.pull_offset_last as u64;
    let progress = shared.store.progress(&key);
    if ack.pull_offset_last <= progress.acked {
        return Ok(()); // duplicate
    }
    let first_unacked = (progress.acked + 1) as u64;
    if ack.pull_offset_begin > first_unacked as i64 && !ack.broadcast {
        let lost_last = (ack.pull_offset_begin - 1) as u64;
        let moved = retry_range(&shared.store, &key, first_unacked, lost_last).await?;
        tracing::warn!(subject = %key.subject, group = %key.group, consumer = %key.consumer, moved, "lost acks sent to retry");
    }
    let store = shared.store.clone();
    tokio::task::spawn_blocking(move || store.ack(&key, last)).await??;
    Ok(())
}

/// Consumers not seen for the lease: what they pulled and did not ack goes to retry.
async fn offline_sweeper(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.consumer_check_interval);
    loop {
        tick.tick().await;
        if let Err(e) = sweep_offline(&shared).await {
            tracing::error!(error = %e, "offline consumer check failed");
        }
    }
}

/// One pass of the offline check. Returns how many messages went to retry.
async fn sweep_offline(shared: &Shared) -> Result<usize, BrokerError> {
    let now = Instant::now();
    let mut moved = 0;
    for c in shared.store.consumers() {
        if c.acked >= c.pulled {
            continue;
        }
        let (last_seen, broadcast) = shared
            .seen
            .lock()
            .get(&c.key)
            .copied()
            .unwrap_or((shared.started, false));
        if broadcast || now.duration_since(last_seen) < shared.config.consumer_lease {
            continue;
        }
        let n = retry_range(&shared.store, &c.key, (c.acked + 1) as u64, c.pulled as u64).await?;
        tracing::info!(subject = %c.key.subject, group = %c.key.group, consumer = %c.key.consumer, moved = n, "offline consumer's messages sent to retry");
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
