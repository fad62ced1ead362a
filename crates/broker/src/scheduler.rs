//! Fair scheduling of work per consumer group (QMQ's "actor" model, in async Rust).
//!
//! Every consumer group (subject + group) is an actor with its own FIFO mailbox of jobs. Workers
//! always serve the ready group that has used the least service time so far (start-time fair
//! queueing), one job of a group at a time. A group with 100 consumers therefore queues 100 jobs in
//! one mailbox and gets the same share of the workers as a group with 2 consumers: it cannot starve
//! it. Jobs carry a deadline; a job whose deadline has passed when its turn comes is dropped unserved
//! (its client has given up waiting anyway, and serving it would only deepen the backlog).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A unit of work with the moment after which it is no longer worth doing.
pub trait Deadline {
    /// When this job expires; it is dropped if its turn comes later than this.
    fn deadline(&self) -> Instant;
}

/// Per-group mailboxes served fairly by any number of workers.
pub struct FairScheduler<J> {
    state: Mutex<State<J>>,
    ready: Notify,
}

struct Mailbox<J> {
    jobs: VecDeque<J>,
    /// Service time used so far, in nanoseconds of virtual time.
    used: u64,
    /// A worker is serving one of this group's jobs now.
    busy: bool,
}

struct State<J> {
    groups: HashMap<Arc<str>, Mailbox<J>>,
    /// Groups with jobs and no worker, ordered by least used time first (ties: first come).
    queue: BinaryHeap<Reverse<(u64, u64, Arc<str>)>>,
    /// Virtual time: the used time of the group served last, the floor for groups that wake up.
    clock: u64,
    arrivals: u64,
    closed: bool,
    expired: u64,
}

/// A job handed to a worker; report how long it took with [`FairScheduler::finish`].
pub struct Turn<J> {
    /// The consumer group the job belongs to.
    pub group: Arc<str>,
    /// The job to run.
    pub job: J,
}

impl<J: Deadline> Default for FairScheduler<J> {
    fn default() -> Self {
        Self::new()
    }
}

impl<J: Deadline> FairScheduler<J> {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                groups: HashMap::new(),
                queue: BinaryHeap::new(),
                clock: 0,
                arrivals: 0,
                closed: false,
                expired: 0,
            }),
            ready: Notify::new(),
        }
    }

    /// Queues `job` in `group`'s mailbox.
    pub fn submit(&self, group: &str, job: J) {
        let mut st = self.state.lock();
        let clock = st.clock;
        let key: Arc<str> = match st.groups.get_key_value(group) {
            Some((k, _)) => k.clone(),
            None => Arc::from(group),
        };
        let mailbox = st.groups.entry(key.clone()).or_insert_with(|| Mailbox {
            jobs: VecDeque::new(),
            used: clock,
            busy: false,
        });
        let was_idle = mailbox.jobs.is_empty() && !mailbox.busy;
        mailbox.jobs.push_back(job);
        if was_idle {
            // A group waking up starts at the current virtual time: it gets no credit for the
            // time it was idle, so it cannot monopolise the workers now.
            mailbox.used = mailbox.used.max(clock);
            let used = mailbox.used;
            st.arrivals += 1;
            let arrival = st.arrivals;
            st.queue.push(Reverse((used, arrival, key)));
            drop(st);
            self.ready.notify_one();
        }
    }

    /// Waits for the next job to serve; `None` once the scheduler is closed and drained.
    pub async fn next(&self) -> Option<Turn<J>> {
        loop {
            let notified = self.ready.notified();
            if let Some(turn) = self.try_next() {
                return Some(turn);
            }
            if self.state.lock().closed {
                return None;
            }
            notified.await;
        }
    }

    fn try_next(&self) -> Option<Turn<J>> {
        let now = Instant::now();
        let mut st = self.state.lock();
        while let Some(Reverse((used, _, group))) = st.queue.pop() {
            st.clock = st.clock.max(used);
            let Some(mailbox) = st.groups.get_mut(&group) else {
                continue;
            };
            let mut expired = 0;
            let mut found = None;
            while let Some(job) = mailbox.jobs.pop_front() {
                if job.deadline() <= now {
                    expired += 1;
                    continue;
                }
                found = Some(job);
                break;
            }
            mailbox.busy = found.is_some();
            st.expired += expired;
            if let Some(job) = found {
                return Some(Turn { group, job });
            }
        }
        None
    }

    /// Records that a worker finished `group`'s job after `took`, and re-queues the group if it has
    /// more work. Every [`Turn`] must be finished exactly once.
    pub fn finish(&self, group: &Arc<str>, took: Duration) {
        let mut st = self.state.lock();
        st.arrivals += 1;
        let arrival = st.arrivals;
        let Some(mailbox) = st.groups.get_mut(group) else {
            return;
        };
        mailbox.busy = false;
        // At least one nanosecond, so that a group of instant jobs still takes turns.
        mailbox.used = mailbox
            .used
            .saturating_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1));
        if mailbox.jobs.is_empty() {
            return;
        }
        let used = mailbox.used;
        st.queue.push(Reverse((used, arrival, group.clone())));
        drop(st);
        self.ready.notify_one();
    }

    /// Stops handing out work once the mailboxes are drained; idle workers get `None`.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_waiters();
    }

    /// Forgets groups with no queued or running job (their fairness credit goes with them; a
    /// group waking up starts at the current virtual time anyway), so the mailboxes, keyed by
    /// client-chosen names, do not outlive the traffic. Returns how many remain.
    pub fn forget_idle(&self) -> usize {
        let mut st = self.state.lock();
        st.groups.retain(|_, m| m.busy || !m.jobs.is_empty());
        st.groups.len()
    }

    /// How many jobs were dropped because their deadline had passed.
    pub fn expired(&self) -> u64 {
        self.state.lock().expired
    }

    /// Jobs waiting in `group`'s mailbox.
    pub fn queued(&self, group: &str) -> usize {
        self.state
            .lock()
            .groups
            .get(group)
            .map_or(0, |m| m.jobs.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Job {
        id: usize,
        deadline: Instant,
    }

    impl Deadline for Job {
        fn deadline(&self) -> Instant {
            self.deadline
        }
    }

    fn job(id: usize) -> Job {
        Job {
            id,
            deadline: Instant::now() + Duration::from_secs(60),
        }
    }

    /// Serves every queued job with one worker, each taking `cost`, and returns the groups in the
    /// order they were served.
    fn drain(s: &FairScheduler<Job>, cost: Duration) -> Vec<(String, usize)> {
        let mut order = Vec::new();
        while let Some(turn) = s.try_next() {
            order.push((turn.group.to_string(), turn.job.id));
            s.finish(&turn.group, cost);
        }
        order
    }

    #[test]
    fn a_crowded_group_cannot_starve_a_small_one() {
        let s = FairScheduler::new();
        for i in 0..100 {
            s.submit("big", job(i));
        }
        for i in 0..2 {
            s.submit("small", job(i));
        }
        let order = drain(&s, Duration::from_millis(1));
        assert_eq!(order.len(), 102);
        let small: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|(_, (g, _))| g == "small")
            .map(|(i, _)| i)
            .collect();
        // Alternating turns: the small group's two jobs are served within the first four turns.
        assert_eq!(small.len(), 2);
        assert!(small[1] < 4, "small group served at turns {small:?}");
        // Within a group, jobs keep their order.
        let big: Vec<usize> = order
            .iter()
            .filter(|(g, _)| g == "big")
            .map(|(_, id)| *id)
            .collect();
        assert_eq!(big, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_group_that_wakes_up_gets_no_credit_for_idling() {
        let s = FairScheduler::new();
        for i in 0..10 {
            s.submit("a", job(i));
        }
        // "a" runs alone for a while and accumulates used time.
        for _ in 0..5 {
            let turn = s.try_next().unwrap();
            s.finish(&turn.group, Duration::from_millis(10));
        }
        for i in 0..10 {
            s.submit("b", job(i));
        }
        let order = drain(&s, Duration::from_millis(10));
        // "b" does not get to run ten times in a row to catch up: turns interleave.
        let first_six: Vec<&str> = order.iter().take(6).map(|(g, _)| g.as_str()).collect();
        assert!(first_six.contains(&"a"), "order {first_six:?}");
        assert!(first_six.contains(&"b"), "order {first_six:?}");
    }

    #[test]
    fn idle_groups_are_forgotten_and_busy_ones_kept() {
        let s = FairScheduler::new();
        for i in 0..1000 {
            s.submit(&format!("g{i}"), job(i));
        }
        s.submit("busy", job(0));
        s.submit("busy", job(1));
        let mut busy = None;
        while let Some(turn) = s.try_next() {
            if &*turn.group == "busy" && busy.is_none() {
                busy = Some(turn.group);
                continue;
            }
            s.finish(&turn.group, Duration::from_millis(1));
        }
        assert_eq!(
            s.forget_idle(),
            1,
            "only the group with a job running stays"
        );
        let busy = busy.unwrap();
        s.finish(&busy, Duration::from_millis(1));
        assert_eq!(s.try_next().unwrap().job.id, 1, "its queued job survives");
    }

    #[test]
    fn one_job_per_group_at_a_time() {
        let s = FairScheduler::new();
        s.submit("g", job(0));
        s.submit("g", job(1));
        let turn = s.try_next().unwrap();
        assert!(
            s.try_next().is_none(),
            "second job of a busy group handed out"
        );
        s.finish(&turn.group, Duration::from_millis(1));
        assert_eq!(s.try_next().unwrap().job.id, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_jobs_are_dropped_unserved() {
        let s = FairScheduler::new();
        let now = Instant::now();
        s.submit(
            "g",
            Job {
                id: 0,
                deadline: now + Duration::from_millis(100),
            },
        );
        s.submit(
            "g",
            Job {
                id: 1,
                deadline: now + Duration::from_secs(10),
            },
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        let turn = s.next().await.unwrap();
        assert_eq!(turn.job.id, 1);
        assert_eq!(s.expired(), 1);
    }

    #[tokio::test]
    async fn workers_wake_on_submit_and_stop_on_close() {
        let s = Arc::new(FairScheduler::<Job>::new());
        let worker = {
            let s = s.clone();
            tokio::spawn(async move {
                let mut served = Vec::new();
                while let Some(turn) = s.next().await {
                    served.push(turn.job.id);
                    s.finish(&turn.group, Duration::from_micros(1));
                    if served.len() == 3 {
                        s.close();
                    }
                }
                served
            })
        };
        for i in 0..3 {
            s.submit("g", job(i));
        }
        assert_eq!(worker.await.unwrap(), vec![0, 1, 2]);
    }
}
