//! [`Producer`]: an async send queue drained in batches per subject, with retries that keep
//! each message's id (so a broker or consumer can recognise a duplicate), routing through a
//! [`Router`] and one circuit breaker per broker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use qmq_protocol::{ClientType, Message};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::SendError;
use crate::breaker::BreakerConfig;
use crate::brokers::{Brokers, Outcome};
use crate::message::MessageExt;
use crate::monitoring::{self, RetryReason, SendOutcome};
use crate::router::Router;
use crate::tracing_ctx::SendTrace;

/// Producer settings; the defaults are QMQ's.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Messages of one subject sent in one request (QMQ: 30).
    pub batch_size: usize,
    /// Messages waiting to be sent (QMQ: 10000).
    pub queue_capacity: usize,
    /// Tries per message before giving up (QMQ: 10).
    pub max_tries: u32,
    /// Deadline of one send request.
    pub send_timeout: Duration,
    /// Batches in flight at once.
    pub max_in_flight: usize,
    /// Pause after a failed try, multiplied by the try number. When every broker of the
    /// subject has its circuit breaker open, the pause lasts until the first one lets a probe
    /// through instead (a try refused by an open breaker never reached a broker): tries then
    /// outlast the breaker's `open_for`, so a broker or delay server restart shorter than the
    /// send timeout costs no failed send.
    pub retry_backoff: Duration,
    /// Per-broker circuit breaker settings.
    pub breaker: BreakerConfig,
    /// The application sending, stamped on every message that has no `qmq_appCode` yet (as
    /// the Java client stamps its `appCode`): consumers and the backup's message trace see who
    /// produced it. [`Client::producer`](crate::Client::producer) sets the client's.
    pub app_code: Option<String>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            batch_size: 30,
            queue_capacity: 10_000,
            max_tries: 10,
            send_timeout: Duration::from_secs(5),
            max_in_flight: 4,
            retry_backoff: Duration::from_millis(50),
            breaker: BreakerConfig::default(),
            app_code: None,
        }
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    /// The message's id.
    pub message_id: String,
    /// The broker (`host:port`) that stored it.
    pub broker: String,
    /// Tries it took (1 = first).
    pub tries: u32,
}

type Callback = Box<dyn FnOnce(Result<SendReceipt, SendError>) + Send>;

enum Reply {
    Wait(oneshot::Sender<Result<SendReceipt, SendError>>),
    Callback(Callback),
}

struct Job {
    message: Message,
    reply: Reply,
    /// When it was queued.
    queued: Instant,
    /// Its `Qmq.Produce.Send` span.
    trace: SendTrace,
}

impl Job {
    /// Records the outcome and hands `result` to the sender.
    fn complete(self, outcome: SendOutcome, result: Result<SendReceipt, SendError>) {
        monitoring::send_finished(&self.message.subject, outcome, Some(self.queued.elapsed()));
        self.trace
            .finish(result.as_ref().err().map(|e| e as &dyn std::fmt::Display));
        match self.reply {
            Reply::Wait(tx) => {
                let _ = tx.send(result);
            }
            Reply::Callback(cb) => cb(result),
        }
    }
}

/// Sends messages to QMQ brokers.
///
/// Made with [`Client::producer`](crate::Client::producer) or [`Producer::builder`] (which
/// return an error outside a Tokio runtime), or [`Producer::new`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use qmq_client::{new_message, Producer, StaticRouter};
///
/// let producer = Producer::builder(Arc::new(StaticRouter::new(["127.0.0.1:20881"])))
///     .batch_size(50)
///     .build()?;
/// let receipt = producer.send(new_message("order.created")).await?;
/// println!("stored {} on {}", receipt.message_id, receipt.broker);
/// producer.close().await;
/// # Ok(()) }
/// ```
pub struct Producer {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    app_code: Option<Arc<str>>,
}

impl Producer {
    /// A producer routing with `router`; starts its dispatcher task.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the dispatcher is spawned on the current one). Use
    /// [`Producer::builder`] (or [`Client::producer`](crate::Client::producer)), whose
    /// `build()` returns [`BuildError::NoRuntime`](crate::BuildError::NoRuntime) instead.
    pub fn new(router: Arc<dyn Router>, config: ProducerConfig) -> Self {
        Self::start(router, config, &tokio::runtime::Handle::current())
    }

    /// Starts the dispatcher on `runtime`.
    pub(crate) fn start(
        router: Arc<dyn Router>,
        config: ProducerConfig,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        monitoring::describe();
        let app_code = config
            .app_code
            .as_deref()
            .filter(|a| !a.is_empty())
            .map(Arc::from);
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let brokers = Arc::new(Brokers::new(router, config.breaker));
        let worker = runtime.spawn(dispatch(rx, brokers, config));
        Self {
            tx: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
            app_code,
        }
    }

    /// Stamps the producer's application on `message` unless it names one.
    fn stamp(&self, message: &mut Message) {
        let Some(app) = &self.app_code else { return };
        let key = crate::message::keys::APP_CODE;
        if !message.attrs.iter().any(|(k, _)| k == key) {
            message.attrs.push((key.to_owned(), app.to_string()));
        }
    }

    fn sender(&self) -> Result<mpsc::Sender<Job>, SendError> {
        self.tx.lock().clone().ok_or(SendError::Closed)
    }

    /// Queues `message` (waiting for room when the queue is full) and resolves once it is
    /// stored or given up on.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits for room in the queue drops the message unsent.
    /// Once it is queued (the wait for room is over) dropping the future only drops the
    /// receipt: the message stays queued and may still be stored. Sending it again is safe:
    /// a message keeps its id through retries and resends, and a qmq-rs broker's duplicate
    /// window stores an id once (a Java QMQ broker stores it again).
    pub async fn send(&self, message: Message) -> Result<SendReceipt, SendError> {
        match self.enqueue(message).await {
            Ok(rx) => rx.await.map_err(|_| SendError::Closed)?,
            Err(e) => Err(e),
        }
    }

    /// Queues every message of `messages` in order (waiting for room in the queue as
    /// [`Producer::send`] does, so a batch larger than the queue works) and then waits for all
    /// of them. Returns one result per message, in input order: a message refused, expired or
    /// given up on gets its `Err` in its slot without failing the others. Underneath, the
    /// messages are batched per subject as any queued messages are.
    ///
    /// ```no_run
    /// # async fn demo(producer: qmq_client::Producer) {
    /// use qmq_client::new_message;
    ///
    /// let messages: Vec<_> = (0..100).map(|_| new_message("order.created")).collect();
    /// for result in producer.send_all(messages).await {
    ///     match result {
    ///         Ok(receipt) => println!("stored {}", receipt.message_id),
    ///         Err(e) => eprintln!("not stored: {e}"),
    ///     }
    /// }
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As for [`Producer::send`], per message: dropping the future leaves the messages queued
    /// so far queued (they may still be stored, and their receipts are lost) and drops the
    /// rest unsent. Resending the whole batch is safe with a broker's duplicate window, as
    /// every message keeps its id.
    pub async fn send_all(
        &self,
        messages: impl IntoIterator<Item = Message>,
    ) -> Vec<Result<SendReceipt, SendError>> {
        let mut queued = Vec::new();
        for message in messages {
            queued.push(self.enqueue(message).await);
        }
        let mut results = Vec::with_capacity(queued.len());
        for q in queued {
            results.push(match q {
                Ok(rx) => rx.await.unwrap_or(Err(SendError::Closed)),
                Err(e) => Err(e),
            });
        }
        results
    }

    /// Queues `message`, waiting for room; the receiver gets its result.
    async fn enqueue(
        &self,
        mut message: Message,
    ) -> Result<oneshot::Receiver<Result<SendReceipt, SendError>>, SendError> {
        self.stamp(&mut message);
        let trace = SendTrace::start(&mut message);
        let (reply, rx) = oneshot::channel();
        let permit = match self.sender() {
            Ok(tx) => tx.reserve_owned().await.map_err(|_| SendError::Closed),
            Err(e) => Err(e),
        };
        let permit = match permit {
            Ok(p) => p,
            Err(e) => {
                monitoring::send_finished(&message.subject, SendOutcome::Closed, None);
                trace.finish(Some(&e));
                return Err(e);
            }
        };
        monitoring::send_queue_entered();
        permit.send(Job {
            message,
            reply: Reply::Wait(reply),
            queued: Instant::now(),
            trace,
        });
        Ok(rx)
    }

    /// Queues `message` without waiting; `callback` gets the result on the producer's task (keep
    /// it short). Fails at once with [`SendError::QueueFull`] when the queue is full, as QMQ's
    /// non-blocking queue does.
    ///
    /// # Cancel safety
    ///
    /// Not async, so nothing to drop: once it returns `Ok` the message is queued and
    /// `callback` is called once with its outcome, also when the producer is closed or dropped
    /// meanwhile ([`Producer::close`] waits for it), as long as the runtime runs: a runtime
    /// shut down first drops the callback uncalled. A message resent after such a loss keeps
    /// its id, so a broker's duplicate window stores it once.
    pub fn send_with_callback(
        &self,
        mut message: Message,
        callback: impl FnOnce(Result<SendReceipt, SendError>) + Send + 'static,
    ) -> Result<(), SendError> {
        self.stamp(&mut message);
        let trace = SendTrace::start(&mut message);
        let permit = match self.sender() {
            Ok(tx) => tx.try_reserve_owned().map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SendError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => SendError::Closed,
            }),
            Err(e) => Err(e),
        };
        let permit = match permit {
            Ok(p) => p,
            Err(e) => {
                let outcome = match e {
                    SendError::QueueFull => SendOutcome::QueueFull,
                    _ => SendOutcome::Closed,
                };
                monitoring::send_finished(&message.subject, outcome, None);
                trace.finish(Some(&e));
                return Err(e);
            }
        };
        monitoring::send_queue_entered();
        permit.send(Job {
            message,
            reply: Reply::Callback(Box::new(callback)),
            queued: Instant::now(),
            trace,
        });
        Ok(())
    }

    /// Stops taking messages and waits until every queued one is stored or given up on.
    ///
    /// # Cancel safety
    ///
    /// The producer stops taking messages as soon as the future is first polled. Dropping the
    /// future then stops only the waiting: the queued messages are still sent in the
    /// background (while the runtime runs), but nothing waits for them, and a later `close`
    /// returns at once. Await `close` before the runtime shuts down to be sure every queued
    /// message was stored or given up on.
    pub async fn close(&self) {
        self.tx.lock().take();
        let worker = self.worker.lock().take();
        if let Some(w) = worker {
            if let Err(e) = w.await {
                tracing::error!(error = %e, "producer dispatcher failed");
            }
        }
    }
}

async fn dispatch(mut rx: mpsc::Receiver<Job>, brokers: Arc<Brokers>, config: ProducerConfig) {
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut running = JoinSet::new();
    let batch = config.batch_size.max(1);
    while let Some(first) = rx.recv().await {
        monitoring::send_queue_left();
        let mut jobs = vec![first];
        while jobs.len() < batch * config.max_in_flight.max(1) {
            match rx.try_recv() {
                Ok(job) => {
                    monitoring::send_queue_left();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut by_subject: HashMap<(String, bool), Vec<Job>> = HashMap::new();
        for job in jobs {
            let key = (job.message.subject.clone(), job.message.flags.is_delay());
            by_subject.entry(key).or_default().push(job);
        }
        for ((subject, delay), mut jobs) in by_subject {
            while !jobs.is_empty() {
                let rest = jobs.split_off(jobs.len().min(batch));
                let chunk = std::mem::replace(&mut jobs, rest);
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let brokers = brokers.clone();
                let config = config.clone();
                let subject = subject.clone();
                running.spawn(async move {
                    send_with_retries(&brokers, &config, &subject, delay, chunk).await;
                    drop(permit);
                });
            }
        }
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

/// Sends one batch of one subject until every message is stored, refused for good, expired or
/// out of tries. Retries keep the message ids.
async fn send_with_retries(
    brokers: &Brokers,
    config: &ProducerConfig,
    subject: &str,
    delay: bool,
    mut pending: Vec<Job>,
) {
    let client_type = if delay {
        ClientType::DelayProducer
    } else {
        ClientType::Producer
    };
    let mut tries = 0;
    loop {
        tries += 1;
        let now = chrono::Utc::now();
        let (expired, live): (Vec<Job>, Vec<Job>) = pending
            .into_iter()
            .partition(|j| j.message.expire_time().is_some_and(|t| t <= now));
        for job in expired {
            let id = job.message.message_id.clone();
            job.complete(SendOutcome::Expired, Err(SendError::Expired(id)));
        }
        pending = live;
        if pending.is_empty() {
            return;
        }
        // The copies that go on the wire, each carrying the context of this try's span.
        let (messages, try_traces): (Vec<Message>, Vec<_>) = pending
            .iter()
            .map(|j| {
                let mut m = j.message.clone();
                let t = j.trace.start_try(&mut m, tries);
                (m, t)
            })
            .unzip();
        // Why each message still pending failed this try.
        let mut reasons = Vec::new();
        let mut refused_by_breakers = false;
        let last_error = match brokers
            .send_once(subject, client_type, &messages, config.send_timeout)
            .await
        {
            Ok((broker, outcomes)) => {
                let mut again = Vec::new();
                let mut last = None;
                for ((job, outcome), try_trace) in pending.into_iter().zip(outcomes).zip(try_traces)
                {
                    match &outcome {
                        Outcome::Stored => try_trace.finish(Some(&broker), None),
                        Outcome::Failed(e) | Outcome::Retry(e) => try_trace.finish(None, Some(e)),
                    }
                    match outcome {
                        Outcome::Stored => {
                            let receipt = SendReceipt {
                                message_id: job.message.message_id.clone(),
                                broker: broker.clone(),
                                tries,
                            };
                            job.complete(SendOutcome::Ok, Ok(receipt));
                        }
                        Outcome::Failed(e) => job.complete(SendOutcome::Refused, Err(e)),
                        Outcome::Retry(e) => {
                            reasons.push(RetryReason::of(&e));
                            last = Some(e.to_string());
                            again.push(job);
                        }
                    }
                }
                pending = again;
                last.unwrap_or_default()
            }
            Err(e) => {
                if matches!(e, SendError::Encode(_)) {
                    // Some message cannot be put on the wire: it fails alone, and the others
                    // go again at once (no try counted, no broker blamed).
                    let bad = unencodable(&messages);
                    if bad.iter().any(Option::is_some) {
                        for t in try_traces {
                            t.finish(None, Some(&e));
                        }
                        let mut rest = Vec::new();
                        for (job, error) in pending.into_iter().zip(bad) {
                            match error {
                                Some(error) => job
                                    .complete(SendOutcome::Refused, Err(SendError::Encode(error))),
                                None => rest.push(job),
                            }
                        }
                        pending = rest;
                        tries -= 1;
                        continue;
                    }
                }
                tracing::debug!(subject, tries, error = %e, "send try failed");
                refused_by_breakers = matches!(e, SendError::BrokersUnavailable(_));
                for t in try_traces {
                    t.finish(None, Some(&e));
                }
                reasons = vec![RetryReason::of(&e); pending.len()];
                e.to_string()
            }
        };
        if pending.is_empty() {
            return;
        }
        if tries >= config.max_tries {
            for job in pending {
                job.complete(
                    SendOutcome::GaveUp,
                    Err(SendError::GaveUp {
                        tries,
                        last: last_error.clone(),
                    }),
                );
            }
            return;
        }
        for reason in reasons {
            monitoring::send_retried(subject, reason, 1);
        }
        let reopen = match refused_by_breakers {
            true => brokers.reopens_at(subject, client_type).await,
            false => None,
        };
        tokio::time::sleep(retry_pause(config, tries, reopen)).await;
    }
}

/// Why each of `messages` cannot be encoded, if it cannot.
fn unencodable(messages: &[Message]) -> Vec<Option<qmq_protocol::EncodeError>> {
    let mut scratch = bytes::BytesMut::new();
    messages
        .iter()
        .map(|m| {
            scratch.clear();
            m.encode_with_crc(&mut scratch).err()
        })
        .collect()
}

/// The pause after failed try number `tries`: `retry_backoff × tries`, or, when every broker
/// had its breaker open and the first reopens at `reopen`, until then (a few ms after, so
/// the try finds it half-open).
pub(crate) fn retry_pause(
    config: &ProducerConfig,
    tries: u32,
    reopen: Option<tokio::time::Instant>,
) -> Duration {
    let backoff = config.retry_backoff * tries;
    match reopen {
        Some(at) => {
            backoff.max(at.saturating_duration_since(tokio::time::Instant::now()) + REOPEN_SLACK)
        }
        None => backoff,
    }
}

/// How long after a breaker's open period ends a try waiting for it goes.
const REOPEN_SLACK: Duration = Duration::from_millis(1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::CircuitBreaker;
    use tokio::time::Instant;

    /// One batch sent like `send_with_retries` does, against one broker behind `breaker` that
    /// is down until `up_at` (each request takes 1 ms); `aware`: pause as the producer does,
    /// else the old pause (`retry_backoff × tries` whatever refused the try). Returns the
    /// tries it took, or Err(tries) when it gave up.
    async fn send_through(
        config: &ProducerConfig,
        breaker: &CircuitBreaker,
        up_at: Instant,
        aware: bool,
    ) -> Result<u32, u32> {
        let mut tries = 0;
        loop {
            tries += 1;
            let refused = !breaker.try_acquire();
            if !refused {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if Instant::now() >= up_at {
                    breaker.on_success();
                    return Ok(tries);
                }
                breaker.on_failure();
            }
            if tries >= config.max_tries {
                return Err(tries);
            }
            let reopen = match refused && aware {
                true => breaker.open_until(),
                false => None,
            };
            tokio::time::sleep(retry_pause(config, tries, reopen)).await;
        }
    }

    /// Batches sent every 10 ms for 10 s while the broker is down for 4.9 s from t = 1 s
    /// (default producer and breaker settings); returns how many gave up.
    async fn outage(aware: bool) -> usize {
        let config = Arc::new(ProducerConfig::default());
        assert!(Duration::from_millis(4_900) < config.send_timeout);
        let breaker = Arc::new(CircuitBreaker::new(config.breaker));
        let t0 = Instant::now();
        let up_at = t0 + Duration::from_millis(5_900);
        let mut batches = JoinSet::new();
        for i in 0..1_000u64 {
            let at = t0 + Duration::from_millis(10 * i);
            let (config, breaker) = (config.clone(), breaker.clone());
            let down_from = t0 + Duration::from_secs(1);
            batches.spawn(async move {
                tokio::time::sleep_until(at).await;
                // Up before the outage: a batch sent then is stored at once.
                let up = if Instant::now() < down_from {
                    Instant::now()
                } else {
                    up_at
                };
                send_through(&config, &breaker, up, aware).await
            });
        }
        let mut gave_up = 0;
        while let Some(r) = batches.join_next().await {
            if r.unwrap().is_err() {
                gave_up += 1;
            }
        }
        gave_up
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_shorter_than_the_send_timeout_costs_no_send() {
        assert_eq!(outage(true).await, 0);
        // The pause the producer had before: its tries (~2.25 s) ran out while the breaker
        // (open for 5 s) refused them.
        assert!(outage(false).await > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_try_refused_by_open_breakers_waits_until_the_first_reopens() {
        let config = ProducerConfig::default();
        assert_eq!(retry_pause(&config, 3, None), config.retry_backoff * 3);
        let reopen = Instant::now() + Duration::from_secs(4);
        let pause = retry_pause(&config, 3, Some(reopen));
        assert!(pause >= Duration::from_secs(4), "{pause:?}");
        assert!(pause <= Duration::from_secs(4) + Duration::from_millis(10));
        // A breaker reopening sooner than the backoff does not shorten it.
        let soon = Instant::now() + Duration::from_millis(1);
        assert_eq!(
            retry_pause(&config, 3, Some(soon)),
            config.retry_backoff * 3
        );
    }
}
