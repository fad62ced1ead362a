//! The watchdog's scan against real PostgreSQL, MariaDB and SQLite outboxes and a real broker:
//! rows left by a producer whose broker was down, rows written exactly as QMQ's Java producer
//! writes them, malformed rows, rows the broker answers BLOCK for, and the grace period.

mod common;

use std::time::{Duration, Instant};

use common::*;
use qmq_client::idempotent::Dialect;
use qmq_client::outbox::status;
use qmq_client::{new_message, MessageExt, SendError};
use qmq_protocol::ProducerCode;
use qmq_watchdog::{Outbox, ScanOptions, ScanReport, WatchdogMetrics};
use tokio_util::sync::CancellationToken;

fn quick() -> ScanOptions {
    ScanOptions {
        grace: Duration::ZERO,
        rate: 1000,
        ..ScanOptions::default()
    }
}

/// Scans until `done(total so far)` holds (a row inserted in the database's current
/// millisecond is not yet older than a zero grace period), or panics after the deadline.
async fn scan_until(
    outbox: &Outbox,
    producer: &qmq_client::Producer,
    options: &ScanOptions,
    done: impl Fn(&ScanReport) -> bool,
) -> ScanReport {
    let deadline = Instant::now() + T;
    let mut total = ScanReport::default();
    loop {
        let r = outbox
            .scan(producer, options, &CancellationToken::new())
            .await
            .unwrap();
        total.sent += r.sent;
        total.invalid += r.invalid;
        total.blocked += r.blocked;
        total.busy += r.busy;
        total.failed += r.failed;
        if done(&total) {
            return total;
        }
        assert!(
            Instant::now() < deadline,
            "scans did not get there: {total:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Broker down at commit: the row stays; once the broker is back the watchdog sends it, the
/// row is deleted and the message is stored exactly once, with `qmq_sequence` = row id.
async fn broker_down_then_back(dialect: Dialect, test: &str) {
    with_outbox(dialect, test, |db| async move {
        let addr = free_addr();
        let subject = unique("wd.down");
        let mut m = new_message(&subject);
        m.set_string("order", "A-1").unwrap();
        m.add_tag("vip").unwrap();
        let id = m.message_id.clone();
        let deliveries = commit_one(&db, producer(&addr.to_string(), 2), m).await;
        assert!(deliveries[0].result.is_err(), "broker is down");
        let rows = db.rows().await;
        assert_eq!(rows.len(), 1);
        let row = rows[0].0;
        assert_eq!(rows[0].1, i64::from(status::PENDING));

        let (b, _dir) = broker_on(addr).await;
        let outbox = Outbox::connect(&db.url, &db.table, "test").await.unwrap();
        let p = producer(&addr.to_string(), 3);
        let r = scan_until(&outbox, &p, &quick(), |r| r.sent == 1).await;
        assert_eq!(
            r,
            ScanReport {
                sent: 1,
                ..Default::default()
            }
        );
        assert!(db.rows().await.is_empty(), "sent rows are deleted");
        let got = pull_exactly(&addr.to_string(), &subject, "g", 1).await;
        assert_eq!(got[0].message_id, id);
        assert_eq!(got[0].get_string("order"), Some("A-1"));
        assert_eq!(got[0].tags, vec!["vip".to_owned()]);
        assert_eq!(got[0].get_i64("qmq_sequence"), Some(row));
        // Nothing left: another scan sends nothing.
        let again = outbox
            .scan(&p, &quick(), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(again, ScanReport::default());
        b.shutdown().await.unwrap();
    })
    .await;
}
on_all_databases!(broker_down_then_back);

/// A row inserted exactly as QMQ's Java producer writes it (Gson JSON, longs as strings, ints
/// and booleans as JSON values) is sent by our watchdog.
async fn java_row_is_resent(dialect: Dialect, test: &str) {
    with_outbox(dialect, test, |db| async move {
        let (b, _dir) = broker_on("127.0.0.1:0".parse().unwrap()).await;
        let addr = b.addr().to_string();
        let subject = unique("wd.java");
        let created = chrono_ms();
        let java = format!(
            r#"{{"messageId":"190603.154239.10.0.0.1.3920.0","subject":"{subject}","tags":["java"],"storeAtFailed":false,"durable":true,"attrs":{{"qmq_createTime":"{created}","qmq_expireTime":"{}","qmq_appCode":"java-app","count":5,"ok":true,"name":"héllo"}}}}"#,
            created + 15 * 60_000
        );
        let row = db.insert_raw(&java, 0, 0).await;
        let outbox = Outbox::connect(&db.url, &db.table, "test").await.unwrap();
        let p = producer(&addr, 3);
        scan_until(&outbox, &p, &quick(), |r| r.sent == 1).await;
        assert!(db.rows().await.is_empty());
        let got = pull_exactly(&addr, &subject, "g", 1).await;
        let m = &got[0];
        assert_eq!(m.message_id, "190603.154239.10.0.0.1.3920.0");
        assert_eq!(m.tags, vec!["java".to_owned()]);
        assert_eq!(m.created_time, created);
        assert_eq!(m.get_string("qmq_appCode"), Some("java-app"));
        assert_eq!(m.get_i32("count"), Some(5));
        assert!(m.get_bool("ok"));
        assert_eq!(m.get_string("name"), Some("héllo"));
        assert_eq!(m.get_i64("qmq_sequence"), Some(row));
        b.shutdown().await.unwrap();
    })
    .await;
}
on_all_databases!(java_row_is_resent);

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Malformed rows are marked invalid (−2) once and never tried again; rows that are not
/// pending are never sent; a valid row among them is sent.
async fn malformed_rows_are_marked(dialect: Dialect, test: &str) {
    with_outbox(dialect, test, |db| async move {
        let (b, _dir) = broker_on("127.0.0.1:0".parse().unwrap()).await;
        let addr = b.addr().to_string();
        let subject = unique("wd.bad");
        let valid =
            |id: &str| format!(r#"{{"messageId":"{id}","subject":"{subject}","attrs":{{}}}}"#);
        let empty = db.insert_raw("", 0, 0).await;
        let not_json = db.insert_raw("{not json", 0, 0).await;
        let no_id = db
            .insert_raw(&format!(r#"{{"subject":"{subject}"}}"#), 0, 0)
            .await;
        let placeholder = db
            .insert_raw(r#"{"messageId":"p1","subject":"${order.subject}"}"#, 0, 0)
            .await;
        let worn_out = db.insert_raw(&valid("worn"), 0, 1000).await;
        let blocked = db.insert_raw(&valid("blocked"), status::BLOCKED, 1).await;
        let busy = db.insert_raw(&valid("busy"), status::BROKER_BUSY, 1).await;
        let good = db.insert_raw(&valid("good"), 0, 3).await;

        let outbox = Outbox::connect(&db.url, &db.table, "test").await.unwrap();
        let p = producer(&addr, 3);
        let r = scan_until(&outbox, &p, &quick(), |r| r.sent + r.invalid == 6).await;
        assert_eq!(
            r,
            ScanReport {
                sent: 1,
                invalid: 5,
                ..Default::default()
            }
        );
        let rows = db.rows().await;
        let state = |id| rows.iter().find(|r| r.0 == id).map(|r| (r.1, r.2));
        let invalid = i64::from(status::INVALID);
        assert_eq!(state(empty), Some((invalid, 1)));
        assert_eq!(state(not_json), Some((invalid, 1)));
        assert_eq!(state(no_id), Some((invalid, 1)));
        assert_eq!(state(placeholder), Some((invalid, 1)));
        assert_eq!(state(worn_out), Some((invalid, 1001)));
        assert_eq!(
            state(blocked),
            Some((i64::from(status::BLOCKED), 1)),
            "untouched"
        );
        assert_eq!(
            state(busy),
            Some((i64::from(status::BROKER_BUSY), 1)),
            "untouched"
        );
        assert_eq!(state(good), None, "sent and deleted");
        let got = pull_exactly(&addr, &subject, "g", 1).await;
        assert_eq!(got[0].message_id, "good");
        // Marked rows are not retried: the next scan finds nothing to do.
        let again = outbox
            .scan(&p, &quick(), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(again, ScanReport::default());
        assert_eq!(db.rows().await.len(), 7);
        b.shutdown().await.unwrap();
    })
    .await;
}
on_all_databases!(malformed_rows_are_marked);

/// BLOCK is final. The broker refuses messages over its `max_message_bytes` with BLOCK: the
/// transactional producer marks such a row blocked (−100) at commit and the watchdog never
/// sends it; a pending row the watchdog resends and gets BLOCK for is marked blocked, counted
/// as `blocked` in its metrics, and not tried again. Nothing is stored.
async fn block_is_final(dialect: Dialect, test: &str) {
    with_outbox(dialect, test, |db| async move {
        let (b, _dir) = broker_with("127.0.0.1:0".parse().unwrap(), |c| {
            c.max_message_bytes = 1024;
        })
        .await;
        let addr = b.addr().to_string();
        let subject = unique("wd.block");
        let big = |id: &str| {
            let mut m = new_message(&subject);
            m.message_id = id.to_owned();
            m.set_string("payload", &"x".repeat(4096)).unwrap();
            m
        };

        // At commit: the broker answers BLOCK, the producer marks the row.
        let deliveries = commit_one(&db, producer(&addr, 3), big("at-commit")).await;
        assert!(
            matches!(
                deliveries[0].result,
                Err(SendError::Refused {
                    code: ProducerCode::Block,
                    ..
                })
            ),
            "{:?}",
            deliveries[0].result
        );
        let blocked_at_commit = deliveries[0].row_id;
        let blocked = i64::from(status::BLOCKED);
        assert_eq!(db.rows().await, vec![(blocked_at_commit, blocked, 1)]);

        // Broker down at commit: the row stays pending for the watchdog.
        let deliveries = commit_one(&db, producer(&free_addr().to_string(), 1), big("later")).await;
        assert!(deliveries[0].result.is_err(), "broker is down");
        let pending = deliveries[0].row_id;
        assert_eq!(db.rows().await[1], (pending, i64::from(status::PENDING), 0));

        let registry = qmq_metrics::Registry::new();
        let metrics = std::sync::Arc::new(WatchdogMetrics::new(&registry));
        let outbox = Outbox::connect(&db.url, &db.table, "test")
            .await
            .unwrap()
            .with_metrics(metrics);
        let p = producer(&addr, 3);
        let r = scan_until(&outbox, &p, &quick(), |r| r.blocked == 1).await;
        assert_eq!(
            r,
            ScanReport {
                blocked: 1,
                ..Default::default()
            },
            "the row blocked at commit is not sent"
        );
        assert_eq!(
            db.rows().await,
            vec![(blocked_at_commit, blocked, 1), (pending, blocked, 1)]
        );
        let text = registry.encode().unwrap();
        assert!(
            text.contains("qmq_watchdog_rows_total{outcome=\"blocked\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("qmq_watchdog_rows_total{outcome=\"sent\"} 0\n"),
            "{text}"
        );
        // Blocked rows are never tried again.
        let again = outbox
            .scan(&p, &quick(), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(again, ScanReport::default());
        assert_eq!(
            db.rows().await,
            vec![(blocked_at_commit, blocked, 1), (pending, blocked, 1)]
        );
        pull_exactly(&addr, &subject, "g", 0).await;
        b.shutdown().await.unwrap();
    })
    .await;
}
on_all_databases!(block_is_final);

/// Rows younger than the grace period are left to their producer; a failed resend counts an
/// error and keeps the row pending.
async fn grace_period_and_failed_resends(dialect: Dialect, test: &str) {
    with_outbox(dialect, test, |db| async move {
        let subject = unique("wd.grace");
        let content = format!(r#"{{"messageId":"m1","subject":"{subject}"}}"#);
        let row = db.insert_raw(&content, 0, 0).await;
        let dead = free_addr().to_string();
        let outbox = Outbox::connect(&db.url, &db.table, "test").await.unwrap();
        let p = producer(&dead, 1);
        let patient = ScanOptions {
            grace: Duration::from_secs(3600),
            ..quick()
        };
        let r = outbox
            .scan(&p, &patient, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(r, ScanReport::default(), "young rows are left alone");
        let r = scan_until(&outbox, &p, &quick(), |r| r.failed == 1).await;
        assert_eq!(r.sent, 0);
        assert_eq!(
            db.rows().await,
            vec![(row, 0, 1)],
            "still pending, one error counted"
        );
    })
    .await;
}
on_all_databases!(grace_period_and_failed_resends);

/// At most `rate` rows per second: 12 rows at 10/s take at least one second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_are_rate_limited() {
    with_outbox(Dialect::Sqlite, "scans_are_rate_limited", |db| async move {
        let (b, _dir) = broker_on("127.0.0.1:0".parse().unwrap()).await;
        let subject = unique("wd.rate");
        for i in 0..12 {
            db.insert_raw(
                &format!(r#"{{"messageId":"r{i}","subject":"{subject}"}}"#),
                0,
                0,
            )
            .await;
        }
        let outbox = Outbox::connect(&db.url, &db.table, "test").await.unwrap();
        let p = producer(&b.addr().to_string(), 3);
        let slow = ScanOptions {
            rate: 10,
            batch_size: 5,
            ..quick()
        };
        let started = Instant::now();
        scan_until(&outbox, &p, &slow, |r| r.sent == 12).await;
        assert!(
            started.elapsed() >= Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
        pull_exactly(&b.addr().to_string(), &subject, "g", 12).await;
        b.shutdown().await.unwrap();
    })
    .await;
}
