//! The follower against a real broker's sync port: everything sent gets indexed; a follower
//! killed while messages keep coming resumes from its stored offset with neither gap nor
//! duplicate; a broker that goes away is retried and caught up with; garbage from a "broker"
//! is an error, not a panic; dead letters are replayed to their broker's retry subject. Every
//! wait is on the follower's offset reaching the broker's log end, with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use qmq_backup::brokers::{Brokers, GroupAddrs};
use qmq_backup::dead::{self, Replay};
use qmq_backup::follower::{self, FollowerConfig, FollowerHandle};
use qmq_backup::server::{BackupConfig, BackupServer};
use qmq_backup::{BackupError, EventKind, IndexStore, RangeQuery, RecordAction};
use qmq_broker::config::BrokerConfig;
use qmq_broker::replication::sync_server::{self, SlaveLag, SyncSettings};
use qmq_broker::replication::{Gate, ReplicationMode};
use qmq_broker::{serve_with, BrokerHandle};
use qmq_protocol::codes::{command, response};
use qmq_protocol::send::{decode_send_response, encode_send_request};
use qmq_protocol::{Frame, FrameCodec, Message, MessageFlags};
use qmq_store::{FlushPolicy, LogStream, StoreConfig};
use qmq_transport::Connection;
use tokio::net::TcpListener;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// Deadline of every wait.
const T: Duration = Duration::from_secs(20);

struct Broker {
    _dir: tempfile::TempDir,
    broker: BrokerHandle,
    gate: Arc<Gate>,
    client: Connection,
    sync_addr: SocketAddr,
    sync_stop: CancellationToken,
}

impl Broker {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StoreConfig::new(dir.path());
        store.flush = FlushPolicy::SyncBeforeAck;
        let mut config = BrokerConfig::new(store);
        config.listen = "127.0.0.1:0".parse().unwrap();
        let gate = Arc::new(Gate::new(ReplicationMode::Async));
        gate.become_master(1);
        gate.extend_lease(tokio::time::Instant::now(), Duration::from_secs(3600));
        let broker = serve_with(config, Some(gate.clone())).await.unwrap();
        let client = Connection::connect(&broker.addr().to_string())
            .await
            .unwrap();
        let mut b = Self {
            _dir: dir,
            broker,
            gate,
            client,
            sync_addr: "127.0.0.1:0".parse().unwrap(),
            sync_stop: CancellationToken::new(),
        };
        b.start_sync().await;
        b
    }

    /// (Re)starts the sync port, on the same address after the first time.
    async fn start_sync(&mut self) {
        self.sync_stop = CancellationToken::new();
        let settings = SyncSettings {
            poll: Duration::from_millis(200),
            ..SyncSettings::default()
        };
        let (addr, _task) = sync_server::spawn(
            self.sync_addr,
            self.broker.store().clone(),
            self.gate.clone(),
            Arc::new(SlaveLag::default()),
            settings,
            self.sync_stop.clone(),
        )
        .await
        .unwrap();
        self.sync_addr = addr;
    }

    fn log_end(&self) -> u64 {
        self.broker.store().log_end(LogStream::Message)
    }

    async fn send(&self, subject: &str, ids: impl IntoIterator<Item = String>) {
        let messages: Vec<Message> = ids
            .into_iter()
            .map(|id| Message {
                flags: MessageFlags(0),
                created_time: chrono_now(),
                expire_or_schedule: chrono_now() + 60_000,
                subject: subject.into(),
                message_id: id,
                tags: vec![],
                attrs: vec![("body".into(), "b".into())],
            })
            .collect();
        let mut body = BytesMut::new();
        encode_send_request(&messages, &mut body).unwrap();
        let resp = self
            .client
            .request(command::SEND_MESSAGE, body.freeze(), T)
            .await
            .unwrap();
        assert_eq!(resp.header.code, response::SUCCESS);
        assert!(decode_send_response(&resp.body).unwrap().is_empty());
    }

    async fn shutdown(self) {
        self.sync_stop.cancel();
        self.broker.shutdown().await.unwrap();
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn ids(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

/// Waits until the follower's stored offset reaches `end`.
async fn caught_up(f: &FollowerHandle, end: u64) {
    let mut offset = f.offset();
    tokio::time::timeout(T, offset.wait_for(|o| *o >= end))
        .await
        .unwrap_or_else(|_| panic!("the follower did not reach {end}"))
        .unwrap();
}

fn fast(group: &str, addr: SocketAddr) -> FollowerConfig {
    let mut c = FollowerConfig::new(group, addr.to_string());
    c.backoff_max = Duration::from_millis(200);
    c
}

/// Every id of `subject` exactly once, in sequence order.
fn assert_indexed_once(store: &IndexStore, subject: &str, expected: &[String]) {
    let page = store
        .range(&RangeQuery::new(subject, 0, i64::MAX, 100_000))
        .unwrap();
    let mut got: Vec<_> = page
        .entries
        .iter()
        .map(|e| (e.sequence, e.message_id.clone()))
        .collect();
    got.sort();
    let want: Vec<_> = expected
        .iter()
        .enumerate()
        .map(|(i, id)| (i as u64, id.clone()))
        .collect();
    assert_eq!(got, want);
    for id in expected {
        assert_eq!(store.by_id(id).unwrap().len(), 1, "{id}");
    }
}

#[tokio::test]
async fn a_killed_follower_resumes_with_neither_gap_nor_duplicate() {
    let b = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(IndexStore::open(&dir.path().join("i.redb"), None).unwrap());
    b.send("orders", ids("a", 0..50)).await;

    let f = follower::spawn(
        store.clone(),
        fast("g", b.sync_addr),
        CancellationToken::new(),
    )
    .unwrap();
    caught_up(&f, b.log_end()).await;
    assert_indexed_once(&store, "orders", &ids("a", 0..50));

    // Killed; messages keep coming.
    f.abort();
    f.join().await;
    let at_kill = store.offset("g", qmq_backup::INDEX_STREAM).unwrap();
    for batch in 0..4 {
        b.send("orders", ids("a", 50 + batch * 25..75 + batch * 25))
            .await;
    }
    assert_eq!(
        store.offset("g", qmq_backup::INDEX_STREAM).unwrap(),
        at_kill
    );

    // A new follower (as after a restart) takes up from the stored offset.
    let stop = CancellationToken::new();
    let f = follower::spawn(store.clone(), fast("g", b.sync_addr), stop.clone()).unwrap();
    caught_up(&f, b.log_end()).await;
    assert_indexed_once(&store, "orders", &ids("a", 0..150));
    stop.cancel();
    f.join().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_server_restarted_on_its_data_dir_catches_up_after_the_broker_was_down() {
    let mut b = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = |addr: SocketAddr| {
        let mut c = BackupConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
        c.groups = vec![fast("g", addr)];
        c
    };
    b.send("s", ids("x", 0..20)).await;
    let server = BackupServer::start(config(b.sync_addr), CancellationToken::new())
        .await
        .unwrap();
    caught_up(server.follower("g").unwrap(), b.log_end()).await;
    server.shutdown().await;

    // Backup stopped; the broker's sync port goes down too; messages arrive meanwhile.
    b.sync_stop.cancel();
    b.send("s", ids("x", 20..40)).await;
    let server = BackupServer::start(config(b.sync_addr), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(server.store().len().unwrap(), 20, "kept across the restart");
    // The follower retries until the sync port is back, then catches up.
    b.send("s", ids("x", 40..45)).await;
    b.start_sync().await;
    caught_up(server.follower("g").unwrap(), b.log_end()).await;
    assert_indexed_once(server.store(), "s", &ids("x", 0..45));
    server.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_group_followed_at_another_address_goes_on_where_it_was() {
    let b = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = BackupConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    config.groups = vec![fast("g", b.sync_addr)];
    let mut server = BackupServer::start(config, CancellationToken::new())
        .await
        .unwrap();
    b.send("s", ids("x", 0..30)).await;
    caught_up(server.follower("g").unwrap(), b.log_end()).await;

    // A second sync port of the same log (as a group's other member holds the same log at the
    // same offsets): the group moves there, and the same address again changes nothing.
    let other_stop = CancellationToken::new();
    let (other, _task) = sync_server::spawn(
        "127.0.0.1:0".parse().unwrap(),
        b.broker.store().clone(),
        b.gate.clone(),
        Arc::new(SlaveLag::default()),
        SyncSettings::default(),
        other_stop.clone(),
    )
    .await
    .unwrap();
    server.follow(fast("g", other)).await.unwrap();
    server.follow(fast("g", other)).await.unwrap();
    assert_eq!(server.followed(), [("g".to_string(), other.to_string())]);
    b.sync_stop.cancel();
    b.send("s", ids("x", 30..60)).await;
    caught_up(server.follower("g").unwrap(), b.log_end()).await;
    assert_indexed_once(server.store(), "s", &ids("x", 0..60));
    server.shutdown().await;
    other_stop.cancel();
    b.shutdown().await;
}

/// A "broker" that answers every request with `SUCCESS` and `body`.
async fn fake_broker(body: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut framed = Framed::new(socket, FrameCodec::default());
                while let Some(Ok(req)) = framed.next().await {
                    let header = req.header.response(response::SUCCESS);
                    if framed.send(Frame::new(header, body)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn garbage_from_a_broker_is_an_error_not_a_panic() {
    let cases: [&'static [u8]; 4] = [
        b"",
        b"\x00\x00\x00\x05",
        // size 4 but only 2 bytes of records follow
        b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x10\x01\x02",
        // a whole record with an empty subject
        b"\x00\x00\x00\x14\x00\x00\x00\x00\x00\x00\x00\x10\
          \x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00",
    ];
    for body in cases {
        let addr = fake_broker(body).await;
        let conn = Connection::connect(&addr.to_string()).await.unwrap();
        let err = follower::fetch(&conn, &addr.to_string(), 0, T)
            .await
            .unwrap_err();
        assert!(matches!(err, BackupError::BadAnswer { .. }), "{err}");
    }
    // An answer that goes backwards.
    let addr = fake_broker(b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05").await;
    let conn = Connection::connect(&addr.to_string()).await.unwrap();
    let err = follower::fetch(&conn, &addr.to_string(), 10, T)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BackupError::WentBackwards { next: 5, .. }),
        "{err}"
    );

    // An offset past the broker's end (its data was replaced) is named as such.
    let b = Broker::start().await;
    b.send("s", ids("x", 0..1)).await;
    let conn = Connection::connect(&b.sync_addr.to_string()).await.unwrap();
    let beyond = b.log_end() + 100;
    let err = follower::fetch(&conn, &b.sync_addr.to_string(), beyond, T)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BackupError::BeyondEnd { offset, .. } if offset == beyond),
        "{err}"
    );
    b.shutdown().await;

    // A follower of garbage keeps running, stores nothing and moves no offset.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(IndexStore::open(&dir.path().join("i.redb"), None).unwrap());
    let addr = fake_broker(b"\x00\x00\x00\x05").await;
    let stop = CancellationToken::new();
    let f = follower::spawn(store.clone(), fast("g", addr), stop.clone()).unwrap();
    let conn = Connection::connect(&addr.to_string()).await.unwrap();
    // One more bad answer seen here; the follower has had the same.
    assert!(follower::fetch(&conn, &addr.to_string(), 0, T)
        .await
        .is_err());
    stop.cancel();
    f.join().await;
    assert!(store.is_empty().unwrap());
    assert_eq!(store.offset("g", qmq_backup::INDEX_STREAM).unwrap(), None);
}

// ---- consumption records (sync type 1) ----

fn consumer(subject: &str, group: &str, id: &str) -> qmq_store::ConsumerKey {
    qmq_store::ConsumerKey {
        subject: subject.into(),
        group: group.into(),
        consumer: id.into(),
    }
}

impl Broker {
    fn action_end(&self) -> u64 {
        self.broker.store().log_end(LogStream::Action)
    }

    /// Pulls up to `max` messages for `key`; returns (pull seq, consume seq) pairs.
    fn pull(&self, key: &qmq_store::ConsumerKey, max: usize) -> Vec<(u64, u64)> {
        self.broker
            .store()
            .pull(
                qmq_store::PullSpec {
                    key,
                    broadcast: false,
                    max,
                },
                |_| true,
            )
            .unwrap()
            .iter()
            .map(|p| (p.pull_seq, p.sequence))
            .collect()
    }

    fn ack(&self, key: &qmq_store::ConsumerKey, last: u64) {
        self.broker.store().ack(key, last).unwrap();
    }
}

/// The (consumer group, action) pairs recorded for `seq` of `subject`, sorted.
fn recorded(store: &IndexStore, subject: &str, seq: u64) -> Vec<(String, RecordAction)> {
    let mut v: Vec<_> = store
        .records("g", subject, seq)
        .unwrap()
        .into_iter()
        .map(|r| (r.consumer_group, r.action))
        .collect();
    v.sort_by_key(|(g, a)| (g.clone(), *a == RecordAction::Ack));
    v
}

fn pair(g: &str, a: RecordAction) -> (String, RecordAction) {
    (g.to_string(), a)
}

#[tokio::test]
async fn pulls_and_acks_of_two_groups_are_recorded_on_the_right_messages() {
    use RecordAction::{Ack, Pull};
    let b = Broker::start().await;
    b.send("orders", ids("a", 0..10)).await;
    let (ka, kb) = (
        consumer("orders", "ga", "c1"),
        consumer("orders", "gb", "c2"),
    );
    let first = b.pull(&ka, 4);
    let second = b.pull(&ka, 6);
    assert_eq!(first.len() + second.len(), 10);
    // ga acks its first six messages only; gb pulls and acks all ten.
    b.ack(&ka, second[1].0);
    let all = b.pull(&kb, 10);
    b.ack(&kb, all[9].0);

    let dir = tempfile::tempdir().unwrap();
    let mut config = BackupConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    config.groups = vec![fast("g", b.sync_addr)];
    let server = BackupServer::start(config, CancellationToken::new())
        .await
        .unwrap();
    caught_up(server.follower("g").unwrap(), b.log_end()).await;
    caught_up(server.action_follower("g").unwrap(), b.action_end()).await;
    let store = server.store();
    for seq in 0..10u64 {
        let want = if seq < 6 {
            vec![
                pair("ga", Pull),
                pair("ga", Ack),
                pair("gb", Pull),
                pair("gb", Ack),
            ]
        } else {
            vec![pair("ga", Pull), pair("gb", Pull), pair("gb", Ack)]
        };
        assert_eq!(recorded(store, "orders", seq), want, "sequence {seq}");
    }
    // The life of one message: stored, then both groups' pulls before their acks.
    let life = store.life("a-0").unwrap();
    let kinds: Vec<EventKind> = life.events.iter().map(|e| e.event).collect();
    assert_eq!(kinds[..2], [EventKind::Created, EventKind::Stored]);
    assert_eq!(kinds.iter().filter(|k| **k == EventKind::Pulled).count(), 2);
    assert_eq!(kinds.iter().filter(|k| **k == EventKind::Acked).count(), 2);
    for g in ["ga", "gb"] {
        let at = |k: EventKind| {
            life.events
                .iter()
                .position(|e| e.event == k && e.consumer_group.as_deref() == Some(g))
                .unwrap()
        };
        assert!(at(EventKind::Pulled) < at(EventKind::Acked), "{g}");
    }
    server.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_restarted_action_follower_has_neither_gap_nor_duplicate() {
    let b = Broker::start().await;
    b.send("s", ids("x", 0..40)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(IndexStore::open(&dir.path().join("i.redb"), None).unwrap());
    let k = consumer("s", "grp", "c");
    let p = b.pull(&k, 10);
    b.ack(&k, p[9].0);
    let f = follower::spawn_stream(
        store.clone(),
        fast("g", b.sync_addr),
        follower::Stream::Action,
        CancellationToken::new(),
    )
    .unwrap();
    caught_up(&f, b.action_end()).await;
    f.abort();
    f.join().await;
    let at_kill = store.offset("g", qmq_backup::ACTION_STREAM).unwrap();
    assert_eq!(at_kill, Some(b.action_end()));
    // Consumption goes on while the follower is down.
    for _ in 0..3 {
        let p = b.pull(&k, 10);
        b.ack(&k, p[p.len() - 1].0);
    }
    assert_eq!(
        store.offset("g", qmq_backup::ACTION_STREAM).unwrap(),
        at_kill
    );
    let stop = CancellationToken::new();
    let f = follower::spawn_stream(
        store.clone(),
        fast("g", b.sync_addr),
        follower::Stream::Action,
        stop.clone(),
    )
    .unwrap();
    caught_up(&f, b.action_end()).await;
    for seq in 0..40u64 {
        let got: Vec<_> = store
            .records("g", "s", seq)
            .unwrap()
            .into_iter()
            .map(|r| (r.consumer_group, r.consumer_id, r.action))
            .collect();
        assert_eq!(
            got,
            [
                ("grp".to_string(), "c".to_string(), RecordAction::Pull),
                ("grp".to_string(), "c".to_string(), RecordAction::Ack),
            ],
            "sequence {seq}"
        );
    }
    stop.cancel();
    f.join().await;
    b.shutdown().await;
}

fn action_record(payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    r.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    r.extend_from_slice(payload);
    r
}

#[tokio::test]
async fn garbage_action_bytes_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(IndexStore::open(&dir.path().join("i.redb"), None).unwrap());
    let good = action_record(
        &qmq_store::action::Action::Ack {
            key: consumer("s", "g", "c"),
            first: 0,
            last: 0,
        }
        .encode(),
    );
    let mut bad_crc = good.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    let mut zero_len = good.clone();
    zero_len[..4].copy_from_slice(&[0, 0, 0, 0]);
    let cases: Vec<Vec<u8>> = vec![
        good[..5].to_vec(),                     // a torn header
        good[..good.len() - 1].to_vec(),        // a torn payload
        bad_crc,                                // a CRC mismatch
        zero_len,                               // an empty record
        action_record(b"\x09\x00\x00"),         // not an action
        [good.clone(), vec![0xff; 3]].concat(), // a good record then junk
    ];
    for bytes in &cases {
        let err = store.apply_actions("g", 0, 0, bytes, 1).unwrap_err();
        assert!(matches!(err, BackupError::BadActions { .. }), "{err}");
    }
    assert_eq!(store.offset("g", qmq_backup::ACTION_STREAM).unwrap(), None);
    // The good record alone is taken.
    store.apply_actions("g", 0, 0, &good, 1).unwrap();
    assert_eq!(
        store.offset("g", qmq_backup::ACTION_STREAM).unwrap(),
        Some(good.len() as u64)
    );

    // A follower fed garbage by a "broker" keeps running and moves no offset.
    let store = Arc::new(IndexStore::open(&dir.path().join("j.redb"), None).unwrap());
    // A sync chunk of 4 bytes from offset 0: a torn record header.
    let addr =
        fake_broker(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04").await;
    let stop = CancellationToken::new();
    let f = follower::spawn_stream(
        store.clone(),
        fast("g", addr),
        follower::Stream::Action,
        stop.clone(),
    )
    .unwrap();
    let conn = Connection::connect(&addr.to_string()).await.unwrap();
    let chunk = follower::fetch_actions(&conn, &addr.to_string(), 0, T)
        .await
        .unwrap();
    let err = store.apply_actions("g", 0, 0, &chunk.bytes, 1).unwrap_err();
    assert!(
        matches!(err, BackupError::BadActions { offset: 0, .. }),
        "{err}"
    );
    stop.cancel();
    f.join().await;
    assert_eq!(store.offset("g", qmq_backup::ACTION_STREAM).unwrap(), None);
}

// ---- dead letters replayed to a real broker ----

/// Indexes two dead letters of `orders` for consumer group `cg` held by broker group `bg`
/// (as a type-6 chunk would bring them): tried 3 times, one a delay message.
fn dead_letters(store: &IndexStore) -> Vec<Message> {
    let now = chrono_now();
    let letters: Vec<Message> = (0..2)
        .map(|i| Message {
            flags: MessageFlags::default().with_tags(true).with_delay(i == 0),
            created_time: now - 1_000 + i,
            expire_or_schedule: now - 500,
            subject: "%DEAD_RETRY%orders%cg".into(),
            message_id: format!("dead-{i}"),
            tags: vec!["red".into()],
            attrs: vec![
                ("order".into(), format!("4{i}")),
                ("qmq_times".into(), "3".into()),
                ("body".into(), format!("body {i}")),
            ],
        })
        .collect();
    let records = letters
        .iter()
        .enumerate()
        .map(|(i, m)| qmq_protocol::StoredRecord {
            sequence: i as i64,
            subject: "%DEAD_RETRY%orders%cg".into(),
            stored: m.to_stored().unwrap(),
        })
        .collect();
    store
        .apply_messages(
            "bg",
            0,
            &qmq_protocol::SyncMessagesChunk { next: 10, records },
            false,
        )
        .unwrap();
    letters
}

fn replay_all() -> Replay {
    Replay {
        subject: "orders".into(),
        group: "cg".into(),
        ids: vec![],
        from: 0,
        to: i64::MAX,
    }
}

#[tokio::test]
async fn dead_letters_are_replayed_to_the_retry_subject_of_their_broker() {
    let b = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(IndexStore::open(&dir.path().join("i.redb"), None).unwrap());
    let letters = dead_letters(&store);
    let retry = "%RETRY%orders%cg";
    let brokers = Brokers::new(T);

    // No client address for the group: every letter says so, nothing is sent.
    brokers.set(
        "bg",
        GroupAddrs {
            sync: b.sync_addr.to_string(),
            client: None,
        },
    );
    let end = b.log_end();
    let out = dead::replay(store.clone(), &brokers, replay_all())
        .await
        .unwrap();
    assert_eq!(out.len(), 2, "{out:?}");
    for o in &out {
        let error = o.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("client address") && error.contains("bg"),
            "{o:?}"
        );
        assert_eq!(o.retry_subject, retry);
    }
    assert_eq!(b.log_end(), end, "nothing was stored");
    assert!(brokers
        .fetch("bg", retry, vec![0, 1])
        .await
        .unwrap()
        .is_empty());

    // With the client address: both stored on the retry subject, in order.
    brokers.set(
        "bg",
        GroupAddrs {
            sync: b.sync_addr.to_string(),
            client: Some(b.broker.addr().to_string()),
        },
    );
    let out = dead::replay(store.clone(), &brokers, replay_all())
        .await
        .unwrap();
    let done: Vec<(&str, &str, u64, Option<&str>)> = out
        .iter()
        .map(|o| {
            (
                o.message_id.as_str(),
                o.broker_group.as_str(),
                o.sequence,
                o.error.as_deref(),
            )
        })
        .collect();
    assert_eq!(done, [("dead-0", "bg", 0, None), ("dead-1", "bg", 1, None)]);
    let mut stored = brokers.fetch("bg", retry, vec![0, 1, 2]).await.unwrap();
    stored.sort_by_key(|r| r.sequence);
    assert_eq!(
        stored.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [0, 1],
        "each letter once"
    );
    for (record, letter) in stored.iter().zip(&letters) {
        assert_eq!(record.subject, retry);
        let m =
            Message::decode_stored(&mut qmq_protocol::wire::Reader::new(&record.stored)).unwrap();
        assert_eq!(m.subject, retry);
        assert_eq!(m.message_id, letter.message_id);
        assert_eq!(m.tags, letter.tags);
        assert!(!m.flags.is_delay(), "{m:?}");
        let attr = |k: &str| {
            m.attrs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(attr("qmq_times"), None, "{m:?}");
        for (k, v) in letter.attrs.iter().filter(|(k, _)| k != "qmq_times") {
            assert_eq!(attr(k), Some(v.as_str()), "{k}: {m:?}");
        }
    }

    // By id: only that one, again (a replay is not deduplicated).
    let mut one = replay_all();
    one.ids = vec!["dead-1".into()];
    let out = dead::replay(store.clone(), &brokers, one).await.unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].message_id.as_str(), out[0].error.as_deref()),
        ("dead-1", None)
    );
    let again = brokers.fetch("bg", retry, vec![2, 3]).await.unwrap();
    assert_eq!(again.len(), 1);
    let m = Message::decode_stored(&mut qmq_protocol::wire::Reader::new(&again[0].stored)).unwrap();
    assert_eq!(m.message_id, "dead-1");

    // Another consumer group has no letters: nothing to do.
    let mut other = replay_all();
    other.group = "nobody".into();
    assert!(dead::replay(store.clone(), &brokers, other)
        .await
        .unwrap()
        .is_empty());
    b.shutdown().await;
}
