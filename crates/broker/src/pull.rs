//! Pull requests: scheduled fairly per consumer group, served from the store, and parked
//! (long poll) until their subject gets new messages or their wait runs out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use qmq_protocol::codes::response;
use qmq_protocol::{Frame, Header, PullRequest, PullResponse};
use qmq_store::{ConsumerKey, PullSpec, Pulled, Store};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::scheduler::{Deadline, FairScheduler};
use crate::tags::{message_tags, TagFilter};
use crate::BrokerError;

/// Time a request is still worth serving after its wait ends (the client's network timeout).
const NETWORK_GRACE: Duration = Duration::from_millis(2500);
/// Most messages one pull may ask for.
const MAX_REQUEST: i32 = 10_000;

/// A pull request waiting to be served.
pub struct PullJob {
    id: u64,
    request: PullRequest,
    header: Header,
    reply: mpsc::Sender<Frame>,
    wait_until: Instant,
    deadline: Instant,
    waited: bool,
}

impl Deadline for PullJob {
    fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// Pull scheduling state shared by connections and workers.
pub struct Puller {
    store: Store,
    scheduler: FairScheduler<PullJob>,
    parked: Mutex<HashMap<String, HashMap<u64, PullJob>>>,
    next_id: AtomicU64,
}

impl Puller {
    /// A puller over `store`.
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(Self {
            store,
            scheduler: FairScheduler::new(),
            parked: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Accepts a decoded pull request; answers malformed ones at once with NO_MESSAGE, as QMQ.
    pub async fn submit(
        &self,
        header: Header,
        mut request: PullRequest,
        reply: mpsc::Sender<Frame>,
    ) {
        let bad = |s: &str| s.is_empty() || s.contains(['/', '\r', '\n']);
        if bad(&request.subject)
            || bad(&request.group)
            || bad(&request.consumer_id)
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
            waited: false,
            request,
        };
        let group = format!("{}/{}", job.request.subject, job.request.group);
        self.scheduler.submit(&group, job);
    }

    /// Wakes the requests parked on `subject`: it has new messages.
    pub fn notify(&self, subject: &str) {
        let jobs: Vec<PullJob> = match self.parked.lock().remove(subject) {
            Some(m) => m.into_values().collect(),
            None => return,
        };
        for job in jobs {
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
        let parked: Vec<PullJob> = self
            .parked
            .lock()
            .drain()
            .flat_map(|(_, m)| m.into_values())
            .collect();
        for job in parked {
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

    async fn serve(self: &Arc<Self>, job: PullJob) {
        if job.reply.is_closed() {
            return;
        }
        let found = match self.find(&job.request).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, subject = %job.request.subject, "pull failed");
                Vec::new()
            }
        };
        if !found.is_empty() {
            let frame = match encode_pulled(&job.header, &found) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "encoding a pull response failed");
                    Frame::new(job.header.response(response::BROKER_ERROR), Vec::new())
                }
            };
            let _ = job.reply.send(frame).await;
            return;
        }
        if job.waited || job.request.timeout_ms <= 0 || Instant::now() >= job.wait_until {
            let _ = job
                .reply
                .send(Frame::new(
                    job.header.response(response::NO_MESSAGE),
                    Vec::new(),
                ))
                .await;
            return;
        }
        self.park(job);
    }

    /// Parks `job` until its subject gets messages or its wait ends; then it is served once more.
    fn park(self: &Arc<Self>, mut job: PullJob) {
        job.waited = true;
        let (subject, id, until) = (job.request.subject.clone(), job.id, job.wait_until);
        self.parked
            .lock()
            .entry(subject.clone())
            .or_default()
            .insert(id, job);
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            let job = {
                let mut parked = me.parked.lock();
                let job = parked.get_mut(&subject).and_then(|m| m.remove(&id));
                if parked.get(&subject).is_some_and(|m| m.is_empty()) {
                    parked.remove(&subject);
                }
                job
            };
            if let Some(job) = job {
                let group = format!("{}/{}", job.request.subject, job.request.group);
                me.scheduler.submit(&group, job);
            }
        });
    }

    /// What the consumer gets: what it pulled but never received (redelivery), else the
    /// group's next messages matching its filter.
    async fn find(&self, req: &PullRequest) -> Result<Vec<Pulled>, BrokerError> {
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
        let found = tokio::task::spawn_blocking(move || {
            let progress = store.progress(&key);
            let seen = client_last.max(progress.acked);
            if progress.pulled > seen {
                let again = store.pulled_since(&key, (seen + 1) as u64, max)?;
                if !again.is_empty() {
                    return Ok::<_, BrokerError>(again);
                }
            }
            let spec = PullSpec {
                key: &key,
                broadcast,
                max,
            };
            let pulled = match &filter {
                Some(f) => store.pull(spec, |m| f.matches(&message_tags(m)))?,
                None => store.pull(spec, |_| true)?,
            };
            Ok(pulled)
        })
        .await??;
        Ok(found)
    }
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
