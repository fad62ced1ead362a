//! `qmq standalone --metrics-listen`: the broker's counters move by exactly what was sent,
//! refused, pulled, acked and put in retry or dead letters, and a group's lag is what it has
//! not been handed yet. Scrapes are parsed with a Prometheus text-format parser.

use std::time::Duration;

use qmq_client::{new_message, send_batch, Connection, PullConsumer, SendError};

mod common;
use common::{free_port, metrics_addr, qmq, sample, scrape, Proc};

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
    let mut cmd = qmq();
    cmd.args(["standalone", "--flush", "sync", "--listen", &broker])
        .args(["--meta-http-listen", "127.0.0.1:0"])
        .args(["--meta-tcp-listen", "127.0.0.1:0"])
        .args(["--admin-token", "secret"])
        .args(["--delay-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path());
    let server = Proc::spawn(cmd);
    let metrics = metrics_addr(&server);
    server.wait_line("qmq standalone ready", 0, Duration::from_secs(30));

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
