//! `qmq standalone --metrics-listen`: the broker's counters move by exactly what was sent,
//! refused, pulled, acked and put in retry or dead letters, and a group's lag is what it has
//! not been handed yet; the delay server's counters, lateness and backlog and the meta
//! server's request counts are served from the same endpoint. Scrapes are parsed with a
//! Prometheus text-format parser.

use std::time::Duration;

use qmq_client::{new_message, send_batch, Connection, PullConsumer, SendError};

mod common;
use common::{field, free_port, sample, scrape, standalone_with_metrics};

const SUBJECT: &str = "metrics.orders";
const GROUP: &str = "g1";

/// Sends `n` messages to `subject` in one SEND frame; returns the per-message outcomes.
async fn send(conn: &Connection, subject: &str, n: usize) -> Vec<Result<(), SendError>> {
    let batch: Vec<_> = (0..n).map(|_| new_message(subject)).collect();
    send_batch(conn, &batch, Duration::from_secs(10))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_lag_follow_what_clients_did() {
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("127.0.0.1:{}", free_port());
    let (_server, metrics, _) = standalone_with_metrics(
        dir.path(),
        &broker,
        &["--flush", "sync", "--admin-token", "secret"],
    );

    let before = scrape(&metrics).await;
    assert_eq!(
        sample(&before, "qmq_broker_role", &[("role", "master")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&before, "qmq_broker_role", &[("role", "slave")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&before, "qmq_send_invalid_frames_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &before,
            "qmq_received_messages_total",
            &[("subject", SUBJECT)]
        ),
        None,
        "no series before the first message"
    );

    let conn = Connection::connect(&broker).await.unwrap();
    // 10 messages, 2 put in the group's retry subject, 1 in its dead-letter subject (as a
    // consumer does), and 1 with a subject too long to accept.
    for r in send(&conn, SUBJECT, 10).await {
        r.unwrap();
    }
    for r in send(&conn, &format!("%RETRY%{SUBJECT}%{GROUP}"), 2).await {
        r.unwrap();
    }
    for r in send(&conn, &format!("%DEAD_RETRY%{SUBJECT}%{GROUP}"), 1).await {
        r.unwrap();
    }
    let refused = send(&conn, &"x".repeat(600), 1).await;
    assert!(refused[0].is_err(), "an over-long subject is refused");

    // The group takes 6 and acks them, then takes 2 more and keeps them unacked.
    let consumer_conn = Connection::connect(&broker).await.unwrap();
    let mut consumer = PullConsumer::new(consumer_conn, SUBJECT, GROUP, "c1")
        .new_group_start(qmq_client::NewGroupStart::Earliest);
    let (first, got) = consumer.pull(6, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 6);
    consumer.ack(first, first + 5).await.unwrap();
    let (_, got) = consumer.pull(2, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 2);

    let after = scrape(&metrics).await;
    let s = &after;
    let group = [("subject", SUBJECT), ("group", GROUP)];
    assert_eq!(
        sample(s, "qmq_received_messages_total", &[("subject", SUBJECT)]),
        Some(10.0)
    );
    assert_eq!(sample(s, "qmq_retry_messages_total", &group), Some(2.0));
    assert_eq!(sample(s, "qmq_dead_messages_total", &group), Some(1.0));
    assert_eq!(
        sample(
            s,
            "qmq_send_failed_total",
            &[("subject", "_unknown"), ("reason", "illegal_subject")]
        ),
        Some(1.0)
    );
    assert_eq!(sample(s, "qmq_pulled_messages_total", &group), Some(8.0));
    assert_eq!(sample(s, "qmq_acked_messages_total", &group), Some(6.0));
    // Lag: 10 stored, 8 handed out (2 of them unacked).
    assert_eq!(sample(s, "qmq_consumer_lag_messages", &group), Some(2.0));
    assert_eq!(
        sample(s, "qmq_consumer_unacked_messages", &group),
        Some(2.0)
    );
    let lag_seconds = sample(s, "qmq_consumer_lag_seconds", &group).unwrap();
    assert!(
        lag_seconds > 0.0 && lag_seconds.is_finite(),
        "the oldest unhanded message has an age: {lag_seconds}"
    );
    // Four SEND frames were answered; three of them stored something; two pulls served.
    assert_eq!(sample(s, "qmq_send_process_seconds_count", &[]), Some(4.0));
    assert_eq!(sample(s, "qmq_store_append_seconds_count", &[]), Some(3.0));
    assert_eq!(sample(s, "qmq_pull_process_seconds_count", &[]), Some(2.0));
    // `--flush sync`: each stored SEND was fsynced before its answer (sequential SENDs share no
    // group commit), and each pull and ack fsynced the action log.
    let fsyncs = |log| sample(s, "qmq_store_flush_seconds_count", &[("log", log)]).unwrap();
    assert!(fsyncs("message") >= 3.0, "{}", fsyncs("message"));
    assert!(fsyncs("action") >= 2.0, "{}", fsyncs("action"));
    assert!(sample(s, "qmq_active_connections", &[]).unwrap() >= 2.0);

    // Consuming the rest: no lag left, and its age reads 0.
    consumer.ack(first + 6, first + 7).await.unwrap();
    let (first, got) = consumer.pull(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 2);
    consumer.ack(first, first + 1).await.unwrap();
    let done = scrape(&metrics).await;
    assert_eq!(
        sample(&done, "qmq_pulled_messages_total", &group),
        Some(10.0)
    );
    assert_eq!(
        sample(&done, "qmq_acked_messages_total", &group),
        Some(10.0)
    );
    assert_eq!(
        sample(&done, "qmq_consumer_lag_messages", &group),
        Some(0.0)
    );
    assert_eq!(sample(&done, "qmq_consumer_lag_seconds", &group), Some(0.0));
    assert_eq!(
        sample(&done, "qmq_consumer_unacked_messages", &group),
        Some(0.0)
    );
}

/// A histogram's cumulative bucket counts, by upper bound.
fn buckets(scrape: &prometheus_parse::Scrape, name: &str) -> Vec<(f64, f64)> {
    scrape
        .samples
        .iter()
        .find_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h) if s.metric == name => {
                Some(h.iter().map(|b| (b.less_than, b.count)).collect())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no histogram {name}"))
}

/// Scrapes `addr` until `cond` holds, for at most 60 s (a deadline, not a pace).
async fn scrape_until(
    addr: &str,
    what: &str,
    cond: impl Fn(&prometheus_parse::Scrape) -> bool,
) -> prometheus_parse::Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = scrape(addr).await;
        if cond(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last scrape: {:?}",
            s.samples
                .iter()
                .filter(|x| x.metric.starts_with("qmq_delay") || x.metric.starts_with("qmq_meta"))
                .map(|x| (&x.metric, &x.labels, &x.value))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A message for the delay server, due `delay_ms` after its creation.
fn delayed(subject: &str, delay_ms: i64) -> qmq_protocol::Message {
    let mut m = new_message(subject);
    m.flags = m.flags.with_delay(true);
    m.expire_or_schedule = m.created_time + delay_ms;
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_and_meta_metrics_share_the_standalone_endpoint() {
    const LATER: &str = "metrics.later";
    const SOON: usize = 5;
    const HALF_HOUR: usize = 2;
    const FIVE_HOURS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("127.0.0.1:{}", free_port());
    let (_server, metrics, ready) = standalone_with_metrics(dir.path(), &broker, &[]);

    let before = scrape(&metrics).await;
    // The broker and the delay server registered (online) before "ready"; nobody failed over.
    assert!(
        sample(
            &before,
            "qmq_meta_requests_total",
            &[("kind", "broker_online")]
        )
        .unwrap()
            >= 2.0
    );
    for trigger in ["lease_expired", "manual"] {
        assert_eq!(
            sample(&before, "qmq_meta_failovers_total", &[("trigger", trigger)]),
            Some(0.0)
        );
    }
    assert_eq!(
        sample(&before, "qmq_meta_store_errors_total", &[]),
        Some(0.0)
    );
    for kind in ["normal", "delay"] {
        assert_eq!(
            sample(
                &before,
                "qmq_meta_broker_groups",
                &[("kind", kind), ("state", "rw")]
            ),
            Some(1.0),
            "{kind}"
        );
    }
    assert_eq!(
        sample(&before, "qmq_delay_pending_messages", &[]),
        Some(0.0)
    );
    // The backup's followers, in the same endpoint, from their start.
    for (group, stream) in [
        ("broker-1", "index"),
        ("broker-1", "action"),
        ("delay-1", "index"),
    ] {
        assert!(
            sample(
                &before,
                "qmq_backup_sync_errors_total",
                &[("group", group), ("stream", stream)]
            )
            .is_some(),
            "{group} {stream}"
        );
    }
    assert_eq!(
        sample(&before, "qmq_broker_role", &[("role", "master")]),
        Some(1.0),
        "the broker's metrics are there too"
    );

    // 5 messages due in 1.5 s, 2 in half an hour, 3 in five hours, 1 too far ahead.
    let mut batch: Vec<_> = (0..SOON).map(|_| delayed(LATER, 1_500)).collect();
    batch.extend((0..HALF_HOUR).map(|_| delayed(LATER, 30 * 60_000)));
    batch.extend((0..FIVE_HOURS).map(|_| delayed(LATER, 5 * 3_600_000)));
    batch.push(delayed(LATER, 3 * 365 * 86_400_000));
    let conn = Connection::connect(&field(&ready, "delay")).await.unwrap();
    let results = send_batch(&conn, &batch, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        results[..results.len() - 1].iter().all(|r| r.is_ok()),
        "{results:?}"
    );
    assert!(
        results[results.len() - 1].is_err(),
        "too far ahead is refused"
    );
    let sent = (SOON + HALF_HOUR + FIVE_HOURS) as f64;

    let s = scrape(&metrics).await;
    let subject = [("subject", LATER)];
    assert_eq!(
        sample(&s, "qmq_delay_received_messages_total", &subject),
        Some(sent)
    );
    assert_eq!(
        sample(
            &s,
            "qmq_delay_send_failed_total",
            &[("reason", "too_far_ahead")]
        ),
        Some(1.0)
    );
    assert!(sample(&s, "qmq_delay_append_seconds_count", &[]).unwrap() >= 1.0);

    // The five due soon reach the broker; the others stay in the backlog, in their windows.
    let s = scrape_until(&metrics, "the due messages dispatched", |s| {
        sample(s, "qmq_delay_dispatched_messages_total", &subject) == Some(SOON as f64)
            && sample(s, "qmq_delay_pending_messages", &[]) == Some((HALF_HOUR + FIVE_HOURS) as f64)
            && sample(s, "qmq_delay_due_messages", &[("within", "1m")]) == Some(0.0)
            && sample(s, "qmq_delay_due_messages", &[("within", "1h")]) == Some(HALF_HOUR as f64)
    })
    .await;
    assert_eq!(
        sample(&s, "qmq_delay_due_messages", &[("within", "1d")]),
        Some((HALF_HOUR + FIVE_HOURS) as f64)
    );
    assert_eq!(
        sample(&s, "qmq_delay_lateness_seconds_count", &[]),
        Some(SOON as f64)
    );
    let late = buckets(&s, "qmq_delay_lateness_seconds");
    let at = |le: f64| late.iter().find(|(b, _)| *b == le).map(|(_, n)| *n);
    assert_eq!(
        at(5.0),
        Some(SOON as f64),
        "each was at most 5 s late: {late:?}"
    );
    assert_eq!(
        sample(&s, "qmq_received_messages_total", &subject),
        Some(SOON as f64),
        "the broker stored what the delay server dispatched"
    );
    assert_eq!(
        sample(
            &s,
            "qmq_delay_send_failed_total",
            &[("reason", "crc_mismatch")]
        ),
        None
    );
    // The delay server found the subject's route as clients do: the meta server's address
    // over HTTP, then CLIENT_REGISTER.
    for kind in ["http_address", "client_register"] {
        let n = sample(&s, "qmq_meta_requests_total", &[("kind", kind)]);
        assert!(n.is_some_and(|n| n >= 1.0), "{kind}: {n:?}");
    }
}
