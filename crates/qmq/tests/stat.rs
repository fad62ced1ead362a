//! `qmq stat` against `qmq standalone` (free ports, temporary directory): after 10 messages
//! sent and 4 consumed by a consumer the meta server knows, the report shows the subject, the
//! group's lag of 6 and its online consumer, read from the meta server's admin API and the
//! metrics endpoint.

use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qmq_client::{
    new_message, send_batch, Connection, Consumer, ConsumerConfig, MetaRouter, MetaRouterConfig,
    NewGroupStart,
};
use serde_json::Value;

mod common;
use common::{field, free_port, metrics_addr, qmq, Proc};

const SUBJECT: &str = "stat.orders";
const GROUP: &str = "billing";
const CONSUMER_ID: &str = "stat-consumer-1";

/// Runs `qmq` with `args` to completion (off the async workers).
async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || qmq().args(&args).env("RUST_LOG", "warn").output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The consumer group `(subject, group)` of a `qmq stat --json` report.
fn group<'a>(report: &'a Value, subject: &str, group: &str) -> Option<&'a Value> {
    report["consumer_groups"]
        .as_array()?
        .iter()
        .find(|g| g["subject"] == subject && g["group"] == group)
}

/// Whether the report shows what the test did: the group 6 behind with its consumer online.
fn settled(report: &Value) -> bool {
    group(report, SUBJECT, GROUP)
        .is_some_and(|g| g["lag_messages"] == 6 && g["online_consumers"] == 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_shows_subject_lag_and_online_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("127.0.0.1:{}", free_port());
    let mut cmd = qmq();
    cmd.args([
        "standalone",
        "--backup-http-listen",
        "127.0.0.1:0",
        "--flush",
        "sync",
        "--listen",
        &broker,
    ])
    .args(["--meta-http-listen", "127.0.0.1:0"])
    .args(["--meta-tcp-listen", "127.0.0.1:0"])
    .args(["--admin-token", "secret"])
    .args(["--delay-listen", &format!("127.0.0.1:{}", free_port())])
    .args(["--metrics-listen", "127.0.0.1:0"])
    .arg("--data-dir")
    .arg(dir.path());
    let server = Proc::spawn(cmd);
    let metrics = metrics_addr(&server);
    let (_, ready) = server.wait_line("qmq standalone ready", 0, Duration::from_secs(30));
    let http = field(&ready, "http");

    // 10 messages straight to the broker.
    let conn = Connection::connect(&broker).await.unwrap();
    let batch: Vec<_> = (0..10).map(|_| new_message(SUBJECT)).collect();
    for r in send_batch(&conn, &batch, Duration::from_secs(10))
        .await
        .unwrap()
    {
        r.unwrap();
    }

    // A consumer routed by the meta server (so it is registered there) takes 4 and acks them.
    let router = Arc::new(MetaRouter::new(MetaRouterConfig {
        client_id: CONSUMER_ID.to_owned(),
        ..MetaRouterConfig::new(&http, "stat-test")
    }));
    let consumer = Consumer::new(
        router,
        ConsumerConfig {
            consumer_id: CONSUMER_ID.to_owned(),
            ..ConsumerConfig::default()
        },
    );
    let mut pull = consumer
        .pull_client(SUBJECT, GROUP)
        .await
        .unwrap()
        .new_group_start(NewGroupStart::Earliest);
    let mut taken = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while taken < 4 {
        assert!(
            Instant::now() < deadline,
            "only {taken} of 4 messages pulled"
        );
        if let Some(b) = pull.pull(4 - taken, Duration::from_secs(2)).await.unwrap() {
            taken += b.messages.len() as i32;
            pull.ack(&b).await.unwrap();
        }
    }
    assert_eq!(taken, 4);

    // The meta server records the consumer as it registers: poll until the report shows it.
    let stat = |json: bool| {
        let mut args: Vec<String> = ["stat", "--metaserver", &http, "--token", "secret"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--metrics".to_owned(), metrics.clone()]);
        args.extend(["--interval".to_owned(), "100ms".to_owned()]);
        if json {
            args.push("--json".to_owned());
        }
        args
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let out = run(stat(true)).await;
        assert!(
            out.status.success(),
            "qmq stat failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
        if settled(&report) || Instant::now() >= deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let subject = report["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subject"] == SUBJECT)
        .unwrap_or_else(|| panic!("no subject {SUBJECT}: {report:#}"));
    assert_eq!(subject["received_total"], 10, "{report:#}");
    assert_eq!(subject["backlog_messages"], 6, "{report:#}");
    assert_eq!(subject["consumer_groups"], serde_json::json!([GROUP]));
    assert!(
        !subject["broker_groups"].as_array().unwrap().is_empty(),
        "the subject has a route: {report:#}"
    );

    let g = group(&report, SUBJECT, GROUP).unwrap_or_else(|| panic!("no group: {report:#}"));
    assert_eq!(g["lag_messages"], 6, "{report:#}");
    assert_eq!(g["unacked_messages"], 0, "{report:#}");
    assert_eq!(g["online_consumers"], 1, "{report:#}");
    let clients: Vec<&Value> = g["consumers"].as_array().unwrap().iter().collect();
    assert_eq!(clients.len(), 1, "{report:#}");
    assert_eq!(clients[0]["client_id"], CONSUMER_ID);
    assert_eq!(clients[0]["online"], true);

    let groups = report["broker_groups"].as_array().unwrap();
    assert!(
        groups
            .iter()
            .any(|g| g["kind"] == "normal" && g["master_address"] == broker.as_str()),
        "the realtime broker group with its master: {report:#}"
    );
    let endpoint = &report["endpoints"][0];
    assert_eq!(endpoint["address"], metrics.as_str());
    assert_eq!(endpoint["error"], Value::Null);
    assert_eq!(endpoint["broker_role"], "master");
    // Nothing was scheduled: no delay backlog (absent where the delay metrics are not served).
    let pending = &report["delay"]["pending_messages"];
    assert!(pending.is_null() || *pending == 0, "{report:#}");

    // The text form: the group's row with 1 of 1 consumers online and 6 behind.
    let out = run(stat(false)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let row = stdout
        .split("\nCONSUMER GROUPS\n")
        .nth(1)
        .and_then(|s| s.lines().find(|l| l.starts_with(SUBJECT)))
        .unwrap_or_else(|| panic!("no consumer group row: {stdout}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..4], [SUBJECT, GROUP, "1/1", "6"], "{stdout}");

    // A wrong token is refused with the meta server's word.
    let mut bad = stat(true);
    let at = bad.iter().position(|a| a == "secret").unwrap();
    bad[at] = "wrong".to_owned();
    let out = run(bad).await;
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("asking the meta server"),
        "{}",
        text(&out.stderr)
    );

    consumer.shutdown().await;
}
