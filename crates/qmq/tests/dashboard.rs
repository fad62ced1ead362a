//! The Grafana dashboard in `deploy/grafana/qmq-rs.json` queries only metrics that exist: every
//! `qmq_*` name in its queries is declared in the `/metrics` of a live `qmq standalone` (broker,
//! delay and meta server and the watchdog behind one endpoint; the watchdog's series exist from
//! its start) once it has seen traffic, except the replication ones, which only a replicated
//! broker has: `tests/replication.rs` checks those on a live pair.

use std::time::Duration;

use qmq_client::{new_message, send_batch, Connection, NewGroupStart, PullConsumer};

mod common;
use common::{
    dashboard_names, exposed_names, field, free_port, queried_names, sample, scrape,
    standalone_with_metrics,
};

/// Names only a replicated broker declares.
fn replication_only(name: &str) -> bool {
    name.starts_with("qmq_replication_") || name == "qmq_broker_epoch"
}

#[test]
fn the_name_extraction_sees_what_a_query_uses() {
    let d = serde_json::json!({"panels": [{"targets": [
        {"expr": "histogram_quantile(0.99, sum by (le) (rate(qmq_a_seconds_bucket{x=\"y\"}[5m])))"},
        {"expr": "sum(rate(qmq_b_total[1m])) / qmq_c"}
    ]}]});
    let got: Vec<_> = queried_names(&d).into_iter().collect();
    assert_eq!(got, ["qmq_a_seconds_bucket", "qmq_b_total", "qmq_c"]);
    let exposed =
        exposed_names("# TYPE qmq_b counter\n# TYPE qmq_a_seconds histogram\n# TYPE qmq_c gauge\n");
    for n in [
        "qmq_b_total",
        "qmq_a_seconds_bucket",
        "qmq_a_seconds_count",
        "qmq_c",
    ] {
        assert!(exposed.contains(n), "{n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_exists() {
    let wanted = dashboard_names();
    assert!(
        wanted.iter().any(|n| replication_only(n)) && wanted.iter().any(|n| !replication_only(n)),
        "{wanted:?}"
    );
    assert!(
        wanted.iter().any(|n| n.starts_with("qmq_watchdog_")),
        "{wanted:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let broker = format!("127.0.0.1:{}", free_port());
    let (_server, metrics, ready) = standalone_with_metrics(dir.path(), &broker, &[]);

    // Traffic that gives every labelled family a series: a stored message, one sent to retry and
    // one to dead letters, one sent twice (a duplicate), a refused one, a pull and its ack, a delayed message delivered.
    let conn = Connection::connect(&broker).await.unwrap();
    for subject in ["dash", "%RETRY%dash%g", "%DEAD_RETRY%dash%g"] {
        let r = send_batch(&conn, &[new_message(subject)], Duration::from_secs(10))
            .await
            .unwrap();
        r[0].as_ref().unwrap();
    }
    let twice = new_message("dash.twice");
    for _ in 0..2 {
        send_batch(&conn, std::slice::from_ref(&twice), Duration::from_secs(10))
            .await
            .unwrap();
    }
    let refused = send_batch(
        &conn,
        &[new_message(&"x".repeat(600))],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(refused[0].is_err());
    let mut consumer = PullConsumer::new(
        Connection::connect(&broker).await.unwrap(),
        "dash",
        "g",
        "c1",
    )
    .new_group_start(NewGroupStart::Earliest);
    let (first, got) = consumer.pull(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 1);
    consumer.ack(first, first).await.unwrap();
    let mut later = new_message("dash.later");
    later.flags = later.flags.with_delay(true);
    later.expire_or_schedule = later.created_time + 300;
    let delay = Connection::connect(&field(&ready, "delay")).await.unwrap();
    send_batch(&delay, &[later], Duration::from_secs(10))
        .await
        .unwrap()[0]
        .as_ref()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sample(
        &scrape(&metrics).await,
        "qmq_delay_dispatched_messages_total",
        &[("subject", "dash.later")],
    ) != Some(1.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delayed message was not dispatched"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let text = qmq_metrics::scrape(&metrics).await.unwrap().text;
    let exposed = exposed_names(&text);
    let missing: Vec<_> = wanted
        .iter()
        .filter(|n| !replication_only(n) && !exposed.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics a live server does not declare: {missing:?}"
    );
}
