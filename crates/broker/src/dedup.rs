//! The duplicate window: the message ids stored recently, per subject, so that a message sent
//! again (a producer's retry after a lost answer, the delay server's re-dispatch after a
//! crash) is answered `DUPLICATE` (QMQ's code 2, a success to the Java client and to our
//! forwarder) and not stored a second time.
//!
//! # What it holds
//!
//! A key per stored message: 96 bits of a keyed hash of its subject and id (SipHash-1-3
//! with per-process random keys, so clients cannot aim for collisions; two distinct keys
//! among a million collide with probability about 10⁻¹⁷), with a sequence number. A key
//! leaves the window `span` after it came in, or earlier when `max_ids` newer keys came
//! (oldest first).
//!
//! Whether a key is still in the window follows from its sequence number alone (below the
//! live range: expired or evicted; in a failed batch's range: never stored; in a batch's
//! range still being appended: wait), so a message costs one hash and one table lookup to
//! admit; storing a batch, failing it and expiring keys touch no key. Dead keys are swept out
//! of the table in bulk when it is full, at most once per as many inserts as the table holds.
//! The cost is [`DedupWindow::memory_bytes`]: a 16-byte entry per key plus the table's room
//! for dead ones, measured by the unit test below at a million ids: 36 bytes per id when
//! first full, at most 72 when kept full, whatever the length of subjects and ids.
//!
//! # What it does not cover
//!
//! - Retry and dead-letter subjects (`%RETRY%…`, `%DEAD_RETRY%…`): a consumer that fails a
//!   message sends it back to its group's retry subject *with the same id*, once per failure,
//!   so the same (subject, id) legitimately comes again; those subjects are exempt. Messages
//!   the broker moves to retry subjects itself do not pass through the window either.
//! - An id sent again after the window (after `span`, or after `max_ids` newer ids evicted
//!   it) is stored again.
//! - A message whose append failed with an unknown outcome (`MaybeStored`) is not in the
//!   window: its retry may store it twice, as the answer's remark says.
//!
//! # Concurrency
//!
//! A batch *reserves* its keys before it is appended ([`DedupWindow::admit`]: they get
//! numbers in its in-flight range); another batch carrying one of them gives back what it
//! reserved and waits for a batch to finish (stored: it is a duplicate; not stored: it tries
//! again), so two concurrent sends of the same id never both store it. The reservation becomes
//! the stored keys when the append succeeds ([`Reservation::commit`]) and is released when it
//! fails or is dropped.
//!
//! # Rebuilt from the log
//!
//! The window is derived from the message log: [`DedupWindow::rebuild`] reads the log's tail
//! back to `span` ago ([`qmq_store::Store::scan_messages_since`]: at most one segment of older
//! records besides) when the broker opens its store and when a slave is promoted, so it
//! survives a restart, a `kill -9` and a failover (the slave holds the master's log, with the
//! master's append times).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use qmq_protocol::wire::Reader;
use qmq_protocol::{Message, ProducerCode, SendFailure};
use siphasher::sip128::{Hasher128, SipHasher13};
use tokio::sync::Notify;

use crate::subjects;

/// A message's key in the window: 96 bits of a keyed hash of its subject and id, as three
/// 32-bit words (so that a table entry with its [`Seq`] takes 16 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key([u32; 3]);

/// A key's sequence number as the table keeps it: the low 32 bits ([`State::full_seq`] gives
/// back the rest: no entry outlives 2³² newer numbers, since a full table is swept).
type Seq = u32;

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a random-keyed hash: its first 64 bits are the table's hash.
        state.write_u64(u64::from(self.0[0]) | (u64::from(self.0[1]) << 32));
    }
}

/// Hashes a [`Key`] by its first 64 bits, already a random-keyed hash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyBuild = BuildHasherDefault<KeyHasher>;

/// The window of recently stored message ids (see the module docs).
pub struct DedupWindow {
    span_ms: u64,
    max_ids: usize,
    /// SipHash-1-3 keys, random per process.
    hash_keys: (u64, u64),
    state: Mutex<State>,
    /// Told when a batch in flight is stored or fails: batches waiting for one look again.
    done: Notify,
}

/// What [`DedupWindow::admit`] decided for one message of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Not seen: append it (its key is reserved).
    Append,
    /// Stored within the window: answer `DUPLICATE`, do not append.
    Duplicate,
    /// The same (subject, id) as an earlier message of the same batch: do not append; its
    /// answer is the earlier one's.
    Repeat,
    /// Exempt from the window (a retry or dead-letter subject, or the window is off): append.
    Exempt,
}

/// Keys a batch reserved while it is appended: [`Reservation::commit`] them once stored;
/// dropping the reservation releases them (not stored).
pub struct Reservation {
    window: Arc<DedupWindow>,
    /// The batch's sequence numbers (start, end exclusive).
    seqs: (u64, u64),
    committed: bool,
}

impl Reservation {
    /// The batch was stored: its keys are in the window from now on. Touches no key: only
    /// the batch's range leaves the in-flight table.
    pub fn commit(mut self) {
        self.committed = true;
        self.window.state.lock().in_flight.remove(&self.seqs.0);
        self.window.done.notify_waiters();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let mut s = self.window.state.lock();
        s.in_flight.remove(&self.seqs.0);
        s.fail(self.seqs);
        drop(s);
        self.window.done.notify_waiters();
    }
}

/// What a key's sequence number says about it now.
#[derive(Debug, PartialEq, Eq)]
enum Status {
    /// Expired, evicted or its batch failed: as if absent.
    Dead,
    /// Stored within the window.
    Stored,
    /// Its batch is being appended.
    InFlight,
}

/// The window's state, under one lock. Every key admitted gets the next sequence number;
/// whether it is still in the window follows from that number alone (see [`State::status`]),
/// so storing a batch or letting a key go touches no key: dead keys are swept out of `keys`
/// in bulk when the table is full ([`State::sweep`]).
struct State {
    /// Every key with its sequence number, live or dead.
    keys: HashMap<Key, Seq, KeyBuild>,
    /// The number the next key gets.
    next_seq: u64,
    /// Keys numbered below this expired by time.
    expired_below: u64,
    /// When keys came, as (ms since the Unix epoch, the first number given at that time or
    /// later), oldest first, one per distinct time: what expiry by time reads.
    times: VecDeque<(u64, u64)>,
    /// Batches being appended: start → end (exclusive) of their numbers.
    in_flight: BTreeMap<u64, u64>,
    /// Batches that failed: start → end (exclusive); their keys are dead. Kept until they
    /// fall below the live range.
    failed: BTreeMap<u64, u64>,
    /// The newest time seen: times never go back in `times`, whatever the clock does.
    latest_ms: u64,
}

impl State {
    /// The lowest number still live: by count (the newest `max_ids`), by time, and never
    /// above a batch in flight.
    fn live_from(&self, max_ids: usize) -> u64 {
        let by_count = self.next_seq.saturating_sub(max_ids as u64);
        let cut = by_count.max(self.expired_below);
        match self.in_flight.keys().next() {
            Some(&first) => cut.min(first),
            None => cut,
        }
    }

    /// Whether a range `ranges` holds `seq`.
    fn holds(ranges: &BTreeMap<u64, u64>, seq: u64) -> bool {
        ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| seq < end)
    }

    /// What `seq` is, given the live range starting at `live_from`.
    fn status(&self, seq: u64, live_from: u64) -> Status {
        if seq < live_from || Self::holds(&self.failed, seq) {
            Status::Dead
        } else if Self::holds(&self.in_flight, seq) {
            Status::InFlight
        } else {
            Status::Stored
        }
    }

    /// Notes that numbers from `seq` on come at `at_ms` (or at the latest time seen, if the
    /// clock went back).
    fn came_at(&mut self, at_ms: u64, seq: u64) {
        if at_ms > self.latest_ms || self.times.is_empty() {
            self.latest_ms = self.latest_ms.max(at_ms);
            self.times.push_back((self.latest_ms, seq));
        }
    }

    /// A batch's numbers that will never be stored: dead.
    fn fail(&mut self, (start, end): (u64, u64)) {
        if start < end {
            self.failed.insert(start, end);
        }
    }

    /// The full number of a key the table numbers `seq`: the newest number with those low
    /// 32 bits.
    fn full_seq(&self, seq: Seq) -> u64 {
        self.next_seq - u64::from((self.next_seq as Seq).wrapping_sub(seq))
    }

    /// The full number of `key`, if the table has it.
    fn seq_of(&self, key: &Key) -> Option<u64> {
        self.keys.get(key).map(|&seq| self.full_seq(seq))
    }

    /// Gives `key` the next number, sweeping dead keys first when the table is full.
    fn assign(&mut self, key: Key, max_ids: usize) {
        if self.keys.len() == self.keys.capacity() {
            self.sweep(max_ids);
        }
        self.keys.insert(key, self.next_seq as Seq);
        self.next_seq += 1;
    }

    /// Removes the keys below the live range (one pass over the table), and makes room to
    /// grow when few were dead, so that sweeps stay rare: at most one per as many inserts as
    /// the table's size.
    fn sweep(&mut self, max_ids: usize) {
        let live_from = self.live_from(max_ids);
        let before = self.keys.len();
        let next = self.next_seq;
        self.keys
            .retain(|_, seq| next - u64::from((next as Seq).wrapping_sub(*seq)) >= live_from);
        let swept = before - self.keys.len();
        if swept < before / 4 {
            self.keys.reserve(before.max(16));
        }
        let dead = self.failed.range(..live_from).map(|(&s, &e)| (s, e));
        let below: Vec<u64> = dead
            .filter(|&(_, e)| e <= live_from)
            .map(|(s, _)| s)
            .collect();
        for start in below {
            self.failed.remove(&start);
        }
    }

    /// Live stored keys: the live range less what is in flight or failed in it.
    fn stored_count(&self, max_ids: usize) -> usize {
        let live_from = self.live_from(max_ids);
        let within = |(&s, &e): (&u64, &u64)| e.saturating_sub(s.max(live_from));
        let unstored: u64 = self.in_flight.iter().map(within).sum::<u64>()
            + self.failed.iter().map(within).sum::<u64>();
        (self.next_seq - live_from).saturating_sub(unstored) as usize
    }
}

/// Milliseconds since the Unix epoch now (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether `subject`'s messages are exempt from the window (see the module docs).
pub fn exempt(subject: &str) -> bool {
    subjects::is_retry(subject) || subjects::is_dead_letter(subject)
}

impl DedupWindow {
    /// A window keeping ids for `span` (at least 1 ms), at most `max_ids` of them (at least 1).
    pub fn new(span: Duration, max_ids: usize) -> Self {
        Self {
            span_ms: (span.as_millis() as u64).max(1),
            max_ids: max_ids.max(1),
            hash_keys: (rand::random(), rand::random()),
            state: Mutex::new(State {
                keys: HashMap::default(),
                next_seq: 0,
                expired_below: 0,
                times: VecDeque::new(),
                in_flight: BTreeMap::new(),
                failed: BTreeMap::new(),
                latest_ms: 0,
            }),
            done: Notify::new(),
        }
    }

    fn key(&self, subject: &str, id: &str) -> Key {
        let mut h = SipHasher13::new_with_keys(self.hash_keys.0, self.hash_keys.1);
        h.write(subject.as_bytes());
        h.write_u8(0xff);
        h.write(id.as_bytes());
        let bits = h.finish128().as_u128();
        Key([bits as u32, (bits >> 32) as u32, (bits >> 64) as u32])
    }

    /// Lets the keys that came `span` or longer before `now_ms` expire.
    fn expire(&self, s: &mut State, now_ms: u64) {
        s.latest_ms = s.latest_ms.max(now_ms);
        let cutoff = s.latest_ms.saturating_sub(self.span_ms);
        while let Some(&(t, _)) = s.times.front() {
            if t > cutoff {
                break;
            }
            s.times.pop_front();
            s.expired_below = s.times.front().map_or(s.next_seq, |&(_, seq)| seq);
        }
    }

    /// Whether `subject`/`id` is in the window at `now_ms` (stored within it).
    pub fn contains(&self, subject: &str, id: &str, now_ms: u64) -> bool {
        let key = self.key(subject, id);
        let mut s = self.state.lock();
        self.expire(&mut s, now_ms);
        let live_from = s.live_from(self.max_ids);
        s.seq_of(&key)
            .is_some_and(|seq| s.status(seq, live_from) == Status::Stored)
    }

    /// Records `subject`/`id` as stored at `at_ms` (no reservation: for rebuilding and tests).
    pub fn record(&self, subject: &str, id: &str, at_ms: u64) {
        if exempt(subject) {
            return;
        }
        let key = self.key(subject, id);
        let mut guard = self.state.lock();
        let s = &mut *guard;
        let live_from = s.live_from(self.max_ids);
        if let Some(seq) = s.seq_of(&key) {
            if s.status(seq, live_from) != Status::Dead {
                return;
            }
        }
        let next = s.next_seq;
        s.came_at(at_ms, next);
        s.assign(key, self.max_ids);
    }

    /// Ids in the window (reservations aside).
    pub fn len(&self) -> usize {
        self.state.lock().stored_count(self.max_ids)
    }

    /// Whether the window holds no id.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the window's tables take now (allocated capacity, reservations included).
    pub fn memory_bytes(&self) -> usize {
        let s = self.state.lock();
        // hashbrown: one control byte per bucket besides the entry; buckets = capacity * 8/7.
        let buckets = |cap: usize| cap + cap / 7;
        let range = std::mem::size_of::<(u64, u64)>();
        buckets(s.keys.capacity()) * (std::mem::size_of::<(Key, Seq)>() + 1)
            + s.times.capacity() * range
            + (s.in_flight.len() + s.failed.len()) * range
    }

    /// Decides, for each `(subject, id)` of a batch in order, whether to append it, and
    /// reserves the keys of those to append. A key another batch has reserved is waited for:
    /// once that batch is stored the message is a duplicate; if it failed, this one may go.
    pub async fn admit<'a>(
        self: &Arc<Self>,
        batch: &[(&'a str, &'a str)],
        now_ms: impl Fn() -> u64,
    ) -> (Vec<Admission>, Reservation) {
        // Hashed once: a batch that waits for another's outcome looks again with the same keys.
        let keys: Vec<Option<Key>> = batch
            .iter()
            .map(|(subject, id)| (!exempt(subject)).then(|| self.key(subject, id)))
            .collect();
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            {
                let mut guard = self.state.lock();
                let s = &mut *guard;
                let now = now_ms();
                self.expire(s, now);
                let live_from = s.live_from(self.max_ids);
                let start = s.next_seq;
                s.came_at(now, start);
                let mut admissions = Vec::with_capacity(batch.len());
                let mut blocked = false;
                for key in keys.iter() {
                    let Some(key) = key else {
                        admissions.push(Admission::Exempt);
                        continue;
                    };
                    let admission = match s.seq_of(key) {
                        // An earlier message of this batch.
                        Some(seq) if seq >= start => Admission::Repeat,
                        Some(seq) => match s.status(seq, live_from) {
                            Status::Stored => Admission::Duplicate,
                            Status::InFlight => {
                                blocked = true;
                                break;
                            }
                            Status::Dead => Admission::Append,
                        },
                        None => Admission::Append,
                    };
                    if admission == Admission::Append {
                        s.assign(*key, self.max_ids);
                    }
                    admissions.push(admission);
                }
                let seqs = (start, s.next_seq);
                if !blocked {
                    if seqs.0 < seqs.1 {
                        s.in_flight.insert(seqs.0, seqs.1);
                    }
                    return (
                        admissions,
                        Reservation {
                            window: self.clone(),
                            seqs,
                            committed: false,
                        },
                    );
                }
                // Another batch holds one of the keys: give back ours (they die) and wait
                // for a batch to finish; registered before the lock is let go, so that no
                // outcome is missed.
                s.fail(seqs);
                done.as_mut().enable();
            }
            done.await;
        }
    }

    /// Empties the window and fills it from the message log: every message stored in the
    /// last `span` (at `now_ms`), by the time the store appended it. Returns how many ids it
    /// holds and how many bytes of the log were read. Blocking I/O: call it from a blocking
    /// thread.
    pub fn rebuild(
        &self,
        store: &qmq_store::Store,
        now_ms: u64,
    ) -> Result<(usize, u64), qmq_store::StoreError> {
        {
            let mut guard = self.state.lock();
            let s = &mut *guard;
            // Stored keys only: batches being appended keep their reservations.
            let in_flight = &s.in_flight;
            let next = s.next_seq;
            s.keys.retain(|_, seq| {
                State::holds(
                    in_flight,
                    next - u64::from((next as Seq).wrapping_sub(*seq)),
                )
            });
            s.failed.clear();
            s.times.clear();
            s.latest_ms = 0;
            s.expired_below = s.in_flight.keys().next().copied().unwrap_or(s.next_seq);
        }
        let since = now_ms.saturating_sub(self.span_ms);
        let read = store.scan_messages_since(since, |subject, at_ms, body| {
            if exempt(subject) {
                return;
            }
            if let Some(id) = stored_message_id(body) {
                self.record(subject, &id, at_ms);
            }
        })?;
        let mut s = self.state.lock();
        self.expire(&mut s, now_ms);
        Ok((s.stored_count(self.max_ids), read))
    }
}

/// The id of a message in the broker's stored form, if it decodes.
fn stored_message_id(body: &[u8]) -> Option<String> {
    Message::decode_stored(&mut Reader::new(body))
        .ok()
        .map(|m| m.message_id)
}

/// A batch's accepted messages as the SEND handler holds them: id, subject, stored bytes,
/// reliable flag.
pub(crate) type Accepted = (String, String, Bytes, bool);

/// Passes a SEND batch's accepted messages through `window` (if any): drops duplicates (each
/// answered `DUPLICATE` in `failures`) and repeats within the batch (answered as the first
/// copy; `on_duplicate` is told each duplicate's subject), and returns the reservation to commit once the rest is stored, with how many were
/// dropped.
pub(crate) async fn filter(
    window: Option<&Arc<DedupWindow>>,
    accepted: &mut Vec<Accepted>,
    failures: &mut Vec<SendFailure>,
    mut on_duplicate: impl FnMut(&str),
) -> (Option<Reservation>, usize) {
    let Some(window) = window else {
        return (None, 0);
    };
    let (admissions, reservation) = {
        let batch: Vec<(&str, &str)> = accepted
            .iter()
            .map(|(id, subject, _, _)| (subject.as_str(), id.as_str()))
            .collect();
        window.admit(&batch, now_ms).await
    };
    let before = accepted.len();
    let mut admitted = admissions.into_iter();
    accepted.retain(|(id, subject, _, _)| match admitted.next() {
        Some(Admission::Duplicate) => {
            on_duplicate(subject);
            failures.push(SendFailure {
                message_id: id.clone(),
                code: ProducerCode::Duplicate,
                remark: "duplicate message id: already stored".into(),
            });
            false
        }
        Some(Admission::Repeat) => false,
        _ => true,
    });
    (Some(reservation), before - accepted.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_expire_after_the_span() {
        let w = DedupWindow::new(Duration::from_secs(120), 1000);
        w.record("s", "a", 1_000);
        assert!(w.contains("s", "a", 1_000));
        assert!(w.contains("s", "a", 120_999));
        assert!(!w.contains("s", "a", 121_000), "expired at span");
        assert!(w.is_empty());
    }

    #[test]
    fn keyed_by_subject_and_id() {
        let w = DedupWindow::new(Duration::from_secs(120), 1000);
        w.record("s", "a", 1);
        assert!(!w.contains("t", "a", 1));
        assert!(!w.contains("s", "b", 1));
        // No ambiguity between where the subject ends and the id starts.
        w.record("ab", "c", 1);
        assert!(!w.contains("a", "bc", 1));
    }

    #[test]
    fn retry_subjects_are_exempt() {
        let w = DedupWindow::new(Duration::from_secs(120), 1000);
        w.record("%RETRY%s%g", "a", 1);
        w.record("%DEAD_RETRY%s%g", "a", 1);
        assert!(w.is_empty());
    }

    #[test]
    fn oldest_evicted_beyond_max_ids() {
        let w = DedupWindow::new(Duration::from_secs(120), 3);
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            w.record("s", id, i as u64);
        }
        assert_eq!(w.len(), 3);
        assert!(!w.contains("s", "a", 4), "oldest evicted");
        for id in ["b", "c", "d"] {
            assert!(w.contains("s", id, 4), "{id}");
        }
    }

    #[test]
    fn a_clock_step_back_does_not_reorder() {
        let w = DedupWindow::new(Duration::from_millis(100), 10);
        w.record("s", "a", 1_000);
        w.record("s", "b", 500); // stamped 1_000: times never go back
        assert!(w.contains("s", "b", 1_099));
        assert!(!w.contains("s", "b", 1_100));
    }

    #[test]
    fn memory_at_a_million_ids() {
        let n = 1_000_000;
        let w = DedupWindow::new(Duration::from_secs(120), n);
        for i in 0..n {
            w.record("subject", &format!("id-{i}"), 1);
        }
        assert_eq!(w.len(), n);
        let first = w.memory_bytes() as f64 / n as f64;
        // Keep it full for three more millions: the oldest are evicted, dead keys swept in
        // bulk; memory reaches its steady state and stays bounded.
        let mut most = 0;
        for i in n..4 * n {
            w.record("subject", &format!("id-{i}"), 2);
            if i % 1000 == 0 {
                most = most.max(w.memory_bytes());
            }
        }
        assert_eq!(w.len(), n);
        assert!(!w.contains("subject", &format!("id-{}", 3 * n - 1), 2));
        assert!(w.contains("subject", &format!("id-{}", 3 * n), 2));
        let steady = most as f64 / n as f64;
        println!("window memory at {n} ids: {first:.1} bytes per id when first full, at most {steady:.1} when kept full");
        assert!(
            first >= 16.0,
            "accounts for a 16-byte entry per id: {first}"
        );
        assert!(
            steady <= 80.0,
            "stated as at most about 72 bytes per id: {steady}"
        );
    }

    #[tokio::test]
    async fn repeats_in_a_batch_and_duplicates_after_commit() {
        let w = Arc::new(DedupWindow::new(Duration::from_secs(120), 100));
        let batch = [("s", "a"), ("s", "b"), ("s", "a"), ("%RETRY%s%g", "a")];
        let (adm, r) = w.admit(&batch, || 10).await;
        use Admission::*;
        assert_eq!(adm, vec![Append, Append, Repeat, Exempt]);
        r.commit();
        let (adm, r) = w.admit(&batch, || 11).await;
        assert_eq!(adm, vec![Duplicate, Duplicate, Duplicate, Exempt]);
        drop(r);
        assert_eq!(w.len(), 2);
    }

    #[tokio::test]
    async fn a_failed_batch_releases_its_ids() {
        let w = Arc::new(DedupWindow::new(Duration::from_secs(120), 100));
        let (adm, r) = w.admit(&[("s", "a")], || 10).await;
        assert_eq!(adm, vec![Admission::Append]);
        drop(r); // the append failed
        let (adm, _r) = w.admit(&[("s", "a")], || 11).await;
        assert_eq!(adm, vec![Admission::Append]);
    }

    #[tokio::test]
    async fn a_concurrent_send_of_a_reserved_id_waits_for_the_outcome() {
        let w = Arc::new(DedupWindow::new(Duration::from_secs(120), 100));
        let (_, first) = w.admit(&[("s", "a")], || 10).await;
        let w2 = w.clone();
        let second = tokio::spawn(async move {
            let (adm, _r) = w2.admit(&[("s", "b"), ("s", "a")], || 10).await;
            adm
        });
        // The second batch cannot decide while the first is pending.
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        first.commit();
        assert_eq!(
            second.await.unwrap(),
            vec![Admission::Append, Admission::Duplicate]
        );

        // And when the first fails, the second stores it.
        let (_, first) = w.admit(&[("s", "c")], || 10).await;
        let w2 = w.clone();
        let second = tokio::spawn(async move { w2.admit(&[("s", "c")], || 10).await.0 });
        tokio::task::yield_now().await;
        drop(first);
        assert_eq!(second.await.unwrap(), vec![Admission::Append]);
    }

    #[tokio::test]
    async fn a_waiting_batch_gives_back_its_other_keys() {
        let w = Arc::new(DedupWindow::new(Duration::from_secs(120), 100));
        let (_, first) = w.admit(&[("s", "a")], || 10).await;
        let w2 = w.clone();
        let second = tokio::spawn(async move { w2.admit(&[("s", "b"), ("s", "a")], || 10).await });
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        // While the second waits for "a", it holds no reservation of "b": a third batch may
        // store "b" meanwhile.
        let (adm, third) = w.admit(&[("s", "b")], || 10).await;
        assert_eq!(adm, vec![Admission::Append]);
        third.commit();
        first.commit();
        let (adm, r) = second.await.unwrap();
        assert_eq!(adm, vec![Admission::Duplicate, Admission::Duplicate]);
        drop(r);
        assert_eq!(w.len(), 2);
    }

    #[tokio::test]
    async fn a_rebuild_keeps_the_reservations_of_batches_being_appended() {
        let dir = tempfile::tempdir().unwrap();
        let store = qmq_store::Store::open(qmq_store::StoreConfig::new(dir.path())).unwrap();
        let w = Arc::new(DedupWindow::new(Duration::from_secs(120), 100));
        w.record("s", "old", 1);
        let (_, pending) = w.admit(&[("s", "a")], || 10).await;
        w.rebuild(&store, 10).unwrap();
        assert!(!w.contains("s", "old", 10), "the empty log holds nothing");
        pending.commit();
        assert!(
            w.contains("s", "a", 10),
            "the reservation survived the rebuild"
        );
    }

    #[test]
    fn sequence_numbers_carry_over_32_bits() {
        let w = DedupWindow::new(Duration::from_secs(120), 100);
        {
            let mut s = w.state.lock();
            s.next_seq = u64::from(u32::MAX) - 2;
            s.expired_below = s.next_seq;
        }
        for id in ["a", "b", "c", "d", "e"] {
            w.record("s", id, 1);
        }
        assert_eq!(w.len(), 5);
        for id in ["a", "b", "c", "d", "e"] {
            assert!(w.contains("s", id, 1), "{id}");
        }
    }

    #[test]
    fn dead_keys_are_swept_so_the_table_stays_small() {
        let w = DedupWindow::new(Duration::from_secs(120), 10);
        for i in 0..100_000 {
            w.record("s", &i.to_string(), 1);
        }
        assert_eq!(w.len(), 10);
        let capacity = w.state.lock().keys.capacity();
        assert!(capacity < 100, "{capacity}");
        for i in 99_990..100_000 {
            assert!(w.contains("s", &i.to_string(), 1));
        }
        assert!(!w.contains("s", "99989", 1));
    }
}
