//! The duplicate window: the message ids stored recently, per subject, so that a message sent
//! again (a producer's retry after a lost answer, the delay server's re-dispatch after a
//! crash) is answered `DUPLICATE` (QMQ's code 2, a success to the Java client and to our
//! forwarder) and not stored a second time.
//!
//! # What it holds
//!
//! A key per stored message: a 128-bit keyed hash of its subject and id (SipHash-1-3 with
//! 128-bit output and per-process random keys, so clients cannot aim for collisions; two
//! distinct keys among a million collide with probability about 10⁻²⁷), with the time it
//! was stored. A key leaves the window `span` after it came in, or earlier when the window
//! holds `max_ids` keys and a newer one comes (oldest first). The cost is
//! [`DedupWindow::memory_bytes`]: about 70 bytes per id (measured by the unit test below at a
//! million ids: a 20-byte entry, key and slot, in one hash table plus a 24-byte time-ordered
//! queue entry, with the table's spare capacity), whatever the length of subjects and ids.
//! Per message it costs one hash of (subject, id) and three table operations under one lock
//! per batch: admit, commit, expire.
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
//! A batch *reserves* its keys before it is appended ([`DedupWindow::admit`]); another batch
//! carrying one of them waits for the outcome (stored: it is a duplicate; not stored: it tries
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

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use qmq_protocol::wire::Reader;
use qmq_protocol::{Message, ProducerCode, SendFailure};
use siphasher::sip128::{Hasher128, SipHasher13};
use tokio::sync::watch;

use crate::subjects;

/// A message's key in the window: a 128-bit keyed hash of its subject and id, as four
/// 32-bit words (so that a table entry with its [`Slot`] takes 20 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key([u32; 4]);

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

/// What the window knows of a key: [`STORED`], or the number of the batch that reserved it
/// and is being appended.
type Slot = u32;

/// The slot of a stored key.
const STORED: Slot = 0;

/// The outcome of a batch that reserved keys: `None` while it is being appended.
type Outcome = watch::Receiver<Option<bool>>;

struct State {
    /// The keys in the window, stored or reserved: one table, so that a message costs one
    /// lookup to admit, one to commit and one to expire.
    keys: HashMap<Key, Slot, KeyBuild>,
    /// The stored keys in the order they came, with when (ms since the Unix epoch).
    order: VecDeque<(u64, Key)>,
    /// Batches being appended, by number, with their outcome.
    batches: HashMap<Slot, Outcome>,
    /// The number the next batch gets (never [`STORED`]).
    next_batch: Slot,
    /// The newest time seen: times never go back in `order`, whatever the clock does.
    latest_ms: u64,
}

impl State {
    /// A number for a new batch: not [`STORED`], not in use.
    fn batch_number(&mut self) -> Slot {
        loop {
            self.next_batch = self.next_batch.wrapping_add(1);
            if self.next_batch != STORED && !self.batches.contains_key(&self.next_batch) {
                return self.next_batch;
            }
        }
    }

    /// Removes `key` if it is stored (not if a batch holds it).
    fn remove_stored(&mut self, key: Key) {
        if let Entry::Occupied(e) = self.keys.entry(key) {
            if *e.get() == STORED {
                e.remove();
            }
        }
    }
}

/// The window of recently stored message ids (see the module docs).
pub struct DedupWindow {
    span_ms: u64,
    max_ids: usize,
    /// SipHash-1-3 keys, random per process.
    hash_keys: (u64, u64),
    state: Mutex<State>,
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
    batch: Slot,
    keys: Vec<Key>,
    outcome: watch::Sender<Option<bool>>,
    committed: bool,
}

impl Reservation {
    /// The batch was stored at `now_ms`: its keys enter the window.
    pub fn commit(mut self, now_ms: u64) {
        self.committed = true;
        let window = &self.window;
        let mut guard = window.state.lock();
        let s = &mut *guard;
        s.latest_ms = s.latest_ms.max(now_ms);
        let at = s.latest_ms;
        for &key in &self.keys {
            if let Some(slot) = s.keys.get_mut(&key) {
                *slot = STORED;
                s.order.push_back((at, key));
            }
        }
        window.evict_beyond_max(s);
        s.batches.remove(&self.batch);
        drop(guard);
        let _ = self.outcome.send(Some(true));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let mut guard = self.window.state.lock();
        let s = &mut *guard;
        for key in &self.keys {
            if let Entry::Occupied(e) = s.keys.entry(*key) {
                if *e.get() == self.batch {
                    e.remove();
                }
            }
        }
        s.batches.remove(&self.batch);
        drop(guard);
        let _ = self.outcome.send(Some(false));
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
                order: VecDeque::new(),
                batches: HashMap::new(),
                next_batch: STORED,
                latest_ms: 0,
            }),
        }
    }

    fn key(&self, subject: &str, id: &str) -> Key {
        let mut h = SipHasher13::new_with_keys(self.hash_keys.0, self.hash_keys.1);
        h.write(subject.as_bytes());
        h.write_u8(0xff);
        h.write(id.as_bytes());
        let bits = h.finish128().as_u128();
        Key([
            bits as u32,
            (bits >> 32) as u32,
            (bits >> 64) as u32,
            (bits >> 96) as u32,
        ])
    }

    /// Drops the keys older than the window at `now_ms`.
    fn expire(&self, s: &mut State, now_ms: u64) {
        s.latest_ms = s.latest_ms.max(now_ms);
        let cutoff = s.latest_ms.saturating_sub(self.span_ms);
        while let Some(&(t, key)) = s.order.front() {
            if t > cutoff {
                break;
            }
            s.order.pop_front();
            s.remove_stored(key);
        }
    }

    /// Drops the oldest stored keys beyond `max_ids`.
    fn evict_beyond_max(&self, s: &mut State) {
        while s.order.len() > self.max_ids {
            if let Some((_, old)) = s.order.pop_front() {
                s.remove_stored(old);
            }
        }
    }

    /// Whether `subject`/`id` is in the window at `now_ms` (stored within it).
    pub fn contains(&self, subject: &str, id: &str, now_ms: u64) -> bool {
        let key = self.key(subject, id);
        let mut s = self.state.lock();
        self.expire(&mut s, now_ms);
        s.keys.get(&key) == Some(&STORED)
    }

    /// Records `subject`/`id` as stored at `at_ms` (no reservation: for rebuilding and tests).
    pub fn record(&self, subject: &str, id: &str, at_ms: u64) {
        if exempt(subject) {
            return;
        }
        let key = self.key(subject, id);
        let mut guard = self.state.lock();
        let s = &mut *guard;
        if let Entry::Vacant(v) = s.keys.entry(key) {
            v.insert(STORED);
            s.latest_ms = s.latest_ms.max(at_ms);
            s.order.push_back((s.latest_ms, key));
            self.evict_beyond_max(s);
        }
    }

    /// Ids in the window (reservations aside).
    pub fn len(&self) -> usize {
        self.state.lock().order.len()
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
        buckets(s.keys.capacity()) * (std::mem::size_of::<(Key, Slot)>() + 1)
            + s.order.capacity() * std::mem::size_of::<(u64, Key)>()
            + buckets(s.batches.capacity()) * (std::mem::size_of::<(Slot, Outcome)>() + 1)
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
            let waiting: Option<Outcome>;
            {
                let mut guard = self.state.lock();
                let s = &mut *guard;
                self.expire(s, now_ms());
                let number = s.batch_number();
                let mut admissions = Vec::with_capacity(batch.len());
                let mut reserved: Vec<Key> = Vec::with_capacity(batch.len());
                let mut other = None;
                for key in keys.iter() {
                    let Some(key) = key else {
                        admissions.push(Admission::Exempt);
                        continue;
                    };
                    match s.keys.entry(*key) {
                        Entry::Vacant(v) => {
                            v.insert(number);
                            reserved.push(*key);
                            admissions.push(Admission::Append);
                        }
                        Entry::Occupied(o) => match *o.get() {
                            STORED => admissions.push(Admission::Duplicate),
                            n if n == number => admissions.push(Admission::Repeat),
                            n => {
                                other = Some(n);
                                break;
                            }
                        },
                    }
                }
                let Some(other) = other else {
                    let (outcome, rx) = watch::channel(None);
                    s.batches.insert(number, rx);
                    return (
                        admissions,
                        Reservation {
                            window: self.clone(),
                            batch: number,
                            keys: reserved,
                            outcome,
                            committed: false,
                        },
                    );
                };
                // Another batch holds one of the keys: give back ours and wait for its outcome.
                for key in &reserved {
                    s.keys.remove(key);
                }
                // A batch's keys and its outcome come and go under the same lock, so the
                // outcome is there; were it not, looking again after a yield is still safe.
                waiting = s.batches.get(&other).cloned();
            }
            // Stored or not, look again: the key is then stored or free. A dropped sender
            // (its batch gone) has released its keys too.
            match waiting {
                Some(mut outcome) => {
                    let _ = outcome.wait_for(Option::is_some).await;
                }
                None => tokio::task::yield_now().await,
            }
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
            let mut s = self.state.lock();
            // Stored keys only: batches being appended keep their reservations.
            s.keys.retain(|_, slot| *slot != STORED);
            s.order.clear();
            s.latest_ms = 0;
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
        Ok((s.order.len(), read))
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
        let per_id = w.memory_bytes() as f64 / n as f64;
        println!(
            "window memory at {n} ids: {} bytes, {per_id:.1} per id",
            w.memory_bytes()
        );
        assert!(
            per_id >= 40.0,
            "accounts for the key and queue entry: {per_id}"
        );
        assert!(per_id <= 80.0, "stated as about 70 bytes per id: {per_id}");
        // Full: the next id evicts the oldest, memory does not grow.
        let before = w.memory_bytes();
        w.record("subject", "one-more", 2);
        assert_eq!(w.len(), n);
        assert!(!w.contains("subject", "id-0", 2));
        assert_eq!(w.memory_bytes(), before);
    }

    #[tokio::test]
    async fn repeats_in_a_batch_and_duplicates_after_commit() {
        let w = Arc::new(DedupWindow::new(Duration::from_secs(120), 100));
        let batch = [("s", "a"), ("s", "b"), ("s", "a"), ("%RETRY%s%g", "a")];
        let (adm, r) = w.admit(&batch, || 10).await;
        use Admission::*;
        assert_eq!(adm, vec![Append, Append, Repeat, Exempt]);
        r.commit(10);
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
        first.commit(10);
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
        third.commit(10);
        first.commit(10);
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
        pending.commit(10);
        assert!(
            w.contains("s", "a", 10),
            "the reservation survived the rebuild"
        );
    }
}
