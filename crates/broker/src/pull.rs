//! Pull requests: scheduled fairly per consumer group, served from the store, and parked
//! (long poll) until their subject gets new messages or their wait runs out.
//!
//! Policies applied here, as QMQ's broker does:
//! - **Retry delay**: a `%RETRY%` subject's message is served only once it has been stored for
//!   the configured retry delay; the pull stops at the first message not yet due. A long poll
//!   on a retry subject whose next message is not due yet wakes by itself when it becomes due.
//! - **New groups**: a group this broker has never seen starts at the subject's latest message
//!   (or at the earliest, by configuration or per request through `PullRequest::offset`, see
//!   [`qmq_protocol::pull::START_EARLIEST`]); on retry subjects always at the earliest.
//! - **Byte budget**: a response, new messages or redelivery, carries at most the configured
//!   number of bytes (one larger message alone), so it always fits in a frame.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use parking_lot::Mutex;
use qmq_protocol::codes::response;
use qmq_protocol::{Frame, Header, PullRequest, PullResponse};
use qmq_store::{BytesFilter, ConsumerKey, PullOptions, PullSpec, Pulled, ResetTo, Store};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::metrics::BrokerMetrics;
use crate::scheduler::{Deadline, FairScheduler};
use crate::subjects;
use crate::tags::{message_tags, TagFilter};
use crate::BrokerError;

/// Time a request is still worth serving after its wait ends (the client's network timeout).
const NETWORK_GRACE: Duration = Duration::from_millis(2500);
/// Most messages one pull may ask for.
const MAX_REQUEST: i32 = 10_000;

/// What a request holds of its connection's in-flight allowance; dropping it (when the request
/// is answered or dropped) frees the slot.
pub struct InFlight {
    _permits: Vec<OwnedSemaphorePermit>,
}

impl InFlight {
    /// Holds `permits` until dropped.
    pub fn new(permits: Vec<OwnedSemaphorePermit>) -> Self {
        Self { _permits: permits }
    }
}

/// How pulls are served.
#[derive(Debug, Clone)]
pub struct PullSettings {
    /// A retry-subject message is served this long after it was stored.
    pub retry_delay: Duration,
    /// Where a new group starts unless the request says.
    pub new_group_start: ResetTo,
    /// Most message bytes per response (a single larger message goes alone).
    pub budget: usize,
    /// The frame limit; a response that would exceed it is refused with an error log.
    pub max_frame: usize,
    /// Where pulls are counted and timed, if anywhere.
    pub metrics: Option<Arc<BrokerMetrics>>,
}

impl Default for PullSettings {
    fn default() -> Self {
        Self {
            retry_delay: Duration::from_secs(5),
            new_group_start: ResetTo::Latest,
            budget: 8 * 1024 * 1024,
            max_frame: qmq_protocol::frame::DEFAULT_MAX_FRAME,
            metrics: None,
        }
    }
}

/// A pull request waiting to be served.
pub struct PullJob {
    id: u64,
    request: PullRequest,
    header: Header,
    reply: mpsc::Sender<Frame>,
    wait_until: Instant,
    deadline: Instant,
    _in_flight: Option<InFlight>,
}

/// A parked job and the timer that will serve it again.
struct Parked {
    job: PullJob,
    timer: AbortHandle,
}

/// What a pull found.
enum Found {
    /// Messages to send.
    Messages(Vec<Pulled>),
    /// Nothing now; the next message becomes due at this time (retry subjects), if known.
    Nothing(Option<Instant>),
}

impl Deadline for PullJob {
    fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// Pull scheduling state shared by connections and workers.
pub struct Puller {
    store: Store,
    settings: PullSettings,
    scheduler: FairScheduler<PullJob>,
    parked: Mutex<HashMap<String, HashMap<u64, Parked>>>,
    next_id: AtomicU64,
}

impl Puller {
    /// A puller over `store` with default settings.
    pub fn new(store: Store) -> Arc<Self> {
        Self::with_settings(store, PullSettings::default())
    }

    /// A puller over `store` serving pulls as `settings` say.
    pub fn with_settings(store: Store, settings: PullSettings) -> Arc<Self> {
        Arc::new(Self {
            store,
            settings,
            scheduler: FairScheduler::new(),
            parked: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Accepts a decoded pull request; answers malformed ones (bad names, see
    /// [`subjects::check_consumer`]) at once with NO_MESSAGE, as QMQ. `in_flight` is held
    /// until the request is answered.
    pub async fn submit(
        &self,
        header: Header,
        mut request: PullRequest,
        reply: mpsc::Sender<Frame>,
        in_flight: Option<InFlight>,
    ) {
        if subjects::check_consumer(&request.subject, &request.group, &request.consumer_id).is_err()
            || request.request_num <= 0
        {
            let _ = reply
                .send(Frame::new(
                    header.response(response::NO_MESSAGE),
                    Vec::new(),
                ))
                .await;
            return;
        }
        request.request_num = request.request_num.min(MAX_REQUEST);
        let now = Instant::now();
        let wait = Duration::from_millis(request.timeout_ms.max(0) as u64);
        let job = PullJob {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            header,
            reply,
            wait_until: now + wait,
            deadline: now + wait + NETWORK_GRACE,
            _in_flight: in_flight,
            request,
        };
        let group = format!("{}/{}", job.request.subject, job.request.group);
        self.scheduler.submit(&group, job);
    }

    /// Wakes the requests parked on `subject`: it has new messages.
    pub fn notify(&self, subject: &str) {
        let jobs: Vec<Parked> = match self.parked.lock().remove(subject) {
            Some(m) => m.into_values().collect(),
            None => return,
        };
        for Parked { job, timer } in jobs {
            timer.abort();
            let group = format!("{}/{}", job.request.subject, job.request.group);
            self.scheduler.submit(&group, job);
        }
    }

    /// Runs `workers` tasks serving pulls until [`Puller::close`].
    pub fn spawn_workers(self: &Arc<Self>, workers: usize) -> Vec<tokio::task::JoinHandle<()>> {
        (0..workers.max(1))
            .map(|_| {
                let me = self.clone();
                tokio::spawn(async move {
                    while let Some(turn) = me.scheduler.next().await {
                        let started = Instant::now();
                        me.serve(turn.job).await;
                        me.scheduler.finish(&turn.group, started.elapsed());
                    }
                })
            })
            .collect()
    }

    /// Stops the workers and answers parked requests with NO_MESSAGE.
    pub fn close(&self) {
        self.scheduler.close();
        let parked: Vec<Parked> = self
            .parked
            .lock()
            .drain()
            .flat_map(|(_, m)| m.into_values())
            .collect();
        for Parked { job, timer } in parked {
            timer.abort();
            let _ = job.reply.try_send(Frame::new(
                job.header.response(response::NO_MESSAGE),
                Vec::new(),
            ));
        }
    }

    /// Requests dropped because their deadline passed before their turn.
    pub fn expired(&self) -> u64 {
        self.scheduler.expired()
    }

    /// Subjects with parked requests (for tests and monitoring: the map empties as requests
    /// are answered).
    pub fn parked_subjects(&self) -> usize {
        self.parked.lock().len()
    }

    /// Forgets the scheduler's idle per-group state; returns how many groups remain.
    pub fn forget_idle(&self) -> usize {
        self.scheduler.forget_idle()
    }

    async fn serve(self: &Arc<Self>, job: PullJob) {
        if job.reply.is_closed() {
            return;
        }
        let started = Instant::now();
        let found = match self.find(&job.request).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, subject = %job.request.subject, "pull failed");
                Found::Nothing(None)
            }
        };
        if let Some(m) = &self.settings.metrics {
            m.pull_process(started.elapsed());
            if let Found::Messages(found) = &found {
                if !found.is_empty() {
                    m.pulled(&job.request.subject, &job.request.group, found.len() as u64);
                }
            }
        }
        let due = match found {
            Found::Messages(found) if !found.is_empty() => {
                let frame = match encode_pulled(&job.header, &found) {
                    Ok(f) if f.body.len() + 64 <= self.settings.max_frame => f,
                    Ok(f) => {
                        tracing::error!(subject = %job.request.subject, group = %job.request.group, bytes = f.body.len(), max_frame = self.settings.max_frame, "a stored message is larger than the frame limit and cannot be delivered");
                        Frame::new(job.header.response(response::BROKER_ERROR), Vec::new())
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "encoding a pull response failed");
                        Frame::new(job.header.response(response::BROKER_ERROR), Vec::new())
                    }
                };
                let _ = job.reply.send(frame).await;
                return;
            }
            Found::Messages(_) => None,
            Found::Nothing(due) => due,
        };
        if job.request.timeout_ms <= 0 || Instant::now() >= job.wait_until {
            let _ = job
                .reply
                .send(Frame::new(
                    job.header.response(response::NO_MESSAGE),
                    Vec::new(),
                ))
                .await;
            return;
        }
        self.park(job, due);
    }

    /// Parks `job` until its subject gets messages, its wait ends, or `due` (when the next
    /// retry message becomes due); then it is served again.
    fn park(self: &Arc<Self>, mut job: PullJob, due: Option<Instant>) {
        // A fresh id per parking, so a timer from an earlier parking never finds this one.
        job.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (subject, id) = (job.request.subject.clone(), job.id);
        let until = due.map_or(job.wait_until, |d| d.min(job.wait_until));
        let mut parked = self.parked.lock();
        let me = self.clone();
        let sub = subject.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            let job = {
                let mut parked = me.parked.lock();
                let job = parked.get_mut(&sub).and_then(|m| m.remove(&id));
                if parked.get(&sub).is_some_and(|m| m.is_empty()) {
                    parked.remove(&sub);
                }
                job
            };
            if let Some(Parked { job, .. }) = job {
                let group = format!("{}/{}", job.request.subject, job.request.group);
                me.scheduler.submit(&group, job);
            }
        })
        .abort_handle();
        parked
            .entry(subject)
            .or_default()
            .insert(id, Parked { job, timer });
    }

    /// What the consumer gets: what it pulled but never received (redelivery), else the
    /// group's next messages matching its filter (due ones only, on a retry subject).
    async fn find(&self, req: &PullRequest) -> Result<Found, BrokerError> {
        let store = self.store.clone();
        let key = ConsumerKey {
            subject: req.subject.clone(),
            group: req.group.clone(),
            consumer: req.consumer_id.clone(),
        };
        let broadcast = req.broadcast;
        let max = req.request_num as usize;
        let client_last = req.pull_offset_last;
        let filter = req
            .tag_filter()
            .map(|(t, tags)| TagFilter::new(t, tags.to_vec()));
        let retry = subjects::is_retry(&req.subject);
        let delay_ms = u64::try_from(self.settings.retry_delay.as_millis()).unwrap_or(u64::MAX);
        let new_group = if retry {
            ResetTo::Earliest
        } else {
            match req.offset {
                qmq_protocol::pull::START_EARLIEST => ResetTo::Earliest,
                qmq_protocol::pull::START_LATEST => ResetTo::Latest,
                _ => self.settings.new_group_start,
            }
        };
        let budget = self.settings.budget;
        let found = tokio::task::spawn_blocking(move || {
            let progress = store.progress(&key);
            let seen = client_last.max(progress.acked);
            if progress.pulled > seen {
                let again = store.pulled_since_within(&key, (seen + 1) as u64, max, budget)?;
                if !again.is_empty() {
                    return Ok::<_, BrokerError>(Found::Messages(again));
                }
            }
            let spec = PullSpec {
                key: &key,
                broadcast,
                max,
            };
            let now_ms = now_ms();
            let options = PullOptions {
                not_after_ms: retry.then(|| now_ms.saturating_sub(delay_ms)),
                max_bytes: budget,
                new_group,
            };
            let pulled = match &filter {
                Some(f) => store.pull_with(
                    spec,
                    options,
                    &BytesFilter(|m: &[u8]| f.matches(&message_tags(m))),
                )?,
                None => store.pull_with(spec, options, &BytesFilter(|_: &[u8]| true))?,
            };
            if !pulled.is_empty() || !retry {
                return Ok(Found::Messages(pulled));
            }
            // Nothing due: when does the group's next message become due?
            let next = store.position(&key, broadcast);
            let due = store
                .read(&key.subject, next, 1)?
                .first()
                .map(|m| m.appended_at_ms.saturating_add(delay_ms));
            Ok(Found::Nothing(due.map(|due_ms| {
                Instant::now() + Duration::from_millis(due_ms.saturating_sub(now_ms) + 1)
            })))
        })
        .await??;
        Ok(found)
    }
}

/// Wall-clock time in ms since the Unix epoch (the store's append times use the same clock).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The SUCCESS response carrying `pulled` (pull-log sequences consecutive from the first),
/// each message laid out for the requester's protocol version (older clients get no tags).
fn encode_pulled(request: &Header, pulled: &[Pulled]) -> Result<Frame, BrokerError> {
    let mut body =
        BytesMut::with_capacity(16 + pulled.iter().map(|p| p.message.len()).sum::<usize>());
    PullResponse::encode_head(pulled[0].pull_seq as i64, &mut body);
    for p in pulled {
        qmq_protocol::pull::append_stored_for_version(&p.message, request.version, &mut body)?;
    }
    Ok(Frame::new(
        request.response(response::SUCCESS),
        body.freeze(),
    ))
}
