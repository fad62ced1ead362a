//! `qmq standalone` runs the backup by default: messages sent with `qmq send` are found by
//! `qmq query --id` (polled until indexed, with a deadline) and listed by `qmq query
//! --subject`; the index survives a restart and takes up where it stopped; `--backup-enabled
//! false` runs none. `qmq backup --meta` follows a replicated group from its slave (index and
//! consumption records). `qmq trace`
//! shows a delay message consumed by two groups, one of them failing it twice, in order:
//! created, delayed until its time, stored, pulled by both, two retry copies, acked. A dead
//! letter is listed with its property (found by `qmq query --key`), its body read from the
//! broker, replayed with the admin token (refused without) and then consumed.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{field, free_port, qmq, standalone_command, Member, Proc};

fn run(args: &[&str]) -> Output {
    qmq().args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn standalone(dir: &std::path::Path, extra: &[&str]) -> (Proc, String, String) {
    let broker = format!("127.0.0.1:{}", free_port());
    let mut cmd = standalone_command(dir, &broker);
    cmd.args(["--flush", "sync"]).args(extra);
    let server = Proc::spawn(cmd);
    let (_, ready) = server.wait_line("qmq standalone ready", 0, Duration::from_secs(30));
    (server, broker, ready)
}

#[test]
fn sent_messages_are_found_by_id_and_by_subject() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, broker, ready) = standalone(dir.path(), &[]);
    // The existing fields are unchanged; the backup's address comes last.
    for key in ["broker", "http", "tcp", "delay"] {
        field(&ready, key);
    }
    let backup = field(&ready, "backup");

    let mut ids = Vec::new();
    for body in ["one", "two", "three"] {
        ids.push(send(&broker, "orders", body));
    }

    // Indexed shortly after: poll each id until it is found, within a deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        loop {
            let out = run(&["query", "--backup", &backup, "--id", id]);
            assert!(out.status.success(), "{out:?}");
            let table = stdout(&out);
            if table.lines().skip(1).any(|l| l.starts_with(id.as_str())) {
                let row = table.lines().find(|l| l.starts_with(id.as_str())).unwrap();
                let cells: Vec<&str> = row.split_whitespace().collect();
                assert_eq!(cells[1], "orders", "{table}");
                assert_eq!(cells[3], "broker-1", "{table}");
                break;
            }
            assert!(Instant::now() < deadline, "{id} was never indexed: {table}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // All three by subject, in sequence order; JSON too.
    let out = run(&[
        "query",
        "--backup",
        &backup,
        "--subject",
        "orders",
        "--from",
        "0",
    ]);
    assert!(out.status.success(), "{out:?}");
    let table = stdout(&out);
    let listed: Vec<&str> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(listed, ids, "{table}");
    let out = run(&[
        "query",
        "--backup",
        &backup,
        "--subject",
        "orders",
        "--from",
        "0",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let seqs: Vec<u64> = json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [0, 1, 2]);

    // A bad time is the server's refusal, reported.
    let out = run(&[
        "query",
        "--backup",
        &backup,
        "--subject",
        "orders",
        "--from",
        "yesterday",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad time"));

    // The backup's metrics count what it indexed and where its followers are.
    let text = metrics_text(&backup);
    let indexed = metric(
        &text,
        "qmq_backup_indexed_messages_total{group=\"broker-1\"}",
    );
    assert!(indexed >= 3.0, "{text}");
    let offset = metric(
        &text,
        "qmq_backup_sync_offset{group=\"broker-1\",stream=\"index\"}",
    );
    assert!(offset > 0.0, "{text}");
    assert!(text.contains("qmq_backup_sync_errors_total"), "{text}");
    server.terminate();
}

/// The backup's `GET /metrics` text.
fn metrics_text(backup: &str) -> String {
    let (status, body) = raw_get(backup, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// One HTTP/1.1 `GET path` from `addr`: the status and the body.
fn raw_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// The value of the series `series` (name and labels as printed) in `text`.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

fn send(broker: &str, subject: &str, body: &str) -> String {
    sent(&["send", "--broker", broker, "--subject", subject, body])
}

/// Runs `qmq <args>` (a send), which must succeed; the id it printed (`sent <id>`, with
/// `due <time>` after it for a delay message).
fn sent(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    text.trim()
        .strip_prefix("sent ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected send output {text:?}"))
        .to_owned()
}

/// The ids `qmq query --subject` lists, once `expected` many are indexed (polled, with a
/// deadline).
fn listed(backup: &str, subject: &str, expected: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(&[
            "query",
            "--backup",
            backup,
            "--subject",
            subject,
            "--from",
            "0",
        ]);
        assert!(out.status.success(), "{out:?}");
        let table = stdout(&out);
        let ids: Vec<String> = table
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with('('))
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect();
        if ids.len() >= expected {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "never {expected} indexed: {table}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_index_survives_a_restart_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, broker, ready) = standalone(dir.path(), &[]);
    let mut ids = vec![send(&broker, "s", "a"), send(&broker, "s", "b")];
    assert_eq!(listed(&field(&ready, "backup"), "s", 2), ids);
    server.terminate();

    // Started again on the same directory (other ports): what was indexed is still there,
    // and messages sent now are added, none twice.
    let (mut server, broker, ready) = standalone(dir.path(), &[]);
    let backup = field(&ready, "backup");
    ids.push(send(&broker, "s", "c"));
    assert_eq!(listed(&backup, "s", 3), ids);
    server.terminate();
}

#[test]
fn the_backup_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _, ready) = standalone(dir.path(), &["--backup-enabled", "false"]);
    assert!(!ready.contains("backup"), "{ready}");
    assert!(!dir.path().join("backup").exists());
    server.terminate();
}

#[test]
fn qmq_backup_follows_a_replicated_group_from_its_slave() {
    const TOKEN: &str = "backup-test-token";
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = qmq();
    cmd.args(["meta", "--meta-http-listen", "127.0.0.1:0"])
        .args(["--meta-tcp-listen", "127.0.0.1:0", "--admin-token", TOKEN])
        .args(["--advertised-host", "127.0.0.1", "--data-dir"])
        .arg(tmp.path().join("meta"));
    let mut meta = Proc::spawn(cmd);
    let (_, ready) = meta.wait_line("ready", 0, Duration::from_secs(30));
    let (http, tcp) = (field(&ready, "http"), field(&ready, "tcp"));
    let members = [0, 1].map(|i| Member {
        port: free_port(),
        sync: free_port(),
        dir: tmp.path().join(format!("node{i}")),
    });
    for (role, m) in [("0", &members[0]), ("1", &members[1])] {
        let out = qmq()
            .args(["tools", "--metaserver", &http, "--token", TOKEN])
            .args(["add-broker", "--broker-group", "bg", "--role", role])
            .args(["--hostname", "127.0.0.1", "--ip", "127.0.0.1"])
            .args(["--serve-port", &m.port.to_string()])
            .args(["--sync-port", &m.sync.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let start = |m: &Member| {
        let mut cmd = qmq();
        cmd.args([
            "broker",
            "--flush",
            "sync",
            "--group",
            "bg",
            "--replication",
            "async",
        ])
        .args(["--listen", &m.addr(), "--sync-listen", &m.sync_addr()])
        .args(["--hostname", "127.0.0.1", "--meta", &tcp, "--data-dir"])
        .arg(&m.dir);
        Proc::spawn(cmd)
    };
    let mut master = start(&members[0]);
    master.wait_line("master epoch=1", 0, Duration::from_secs(30));
    let mut slave = start(&members[1]);
    slave.wait_line("slave epoch=1", 0, Duration::from_secs(30));

    let mut cmd = qmq();
    cmd.args(["backup", "--meta", &http, "--token", TOKEN])
        .args(["--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("backup"));
    let mut backup = Proc::spawn(cmd);
    let (_, ready) = backup.wait_line("qmq backup ready", 0, Duration::from_secs(30));
    assert_eq!(
        field(&ready, "following"),
        format!("bg={}", members[1].sync_addr()),
        "the slave is followed"
    );
    let ids: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|b| send(&members[0].addr(), "replicated", b))
        .collect();
    assert_eq!(listed(&field(&ready, "http"), "replicated", 3), ids);
    // The consumption records come from the slave's copy of the action log.
    let out = run(&[
        "consume",
        "--broker",
        &members[0].addr(),
        "-s",
        "replicated",
        "-g",
        "readers",
        "--count",
        "3",
    ]);
    assert!(out.status.success(), "{out:?}");
    let http_backup = field(&ready, "http");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !trace_events(&http_backup, &ids[2])
        .iter()
        .any(|e| is(e, "acked", "readers"))
    {
        assert!(Instant::now() < deadline, "no ack seen through the slave");
        std::thread::sleep(Duration::from_millis(100));
    }
    backup.terminate();
    slave.terminate();
    master.terminate();
    meta.terminate();
}

/// The `qmq trace --json` events of `id` (none while it is not indexed).
fn trace_events(backup: &str, id: &str) -> Vec<serde_json::Value> {
    let out = run(&["trace", id, "--backup", backup, "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["events"].as_array().cloned().unwrap_or_default()
}

fn is(e: &serde_json::Value, event: &str, group: &str) -> bool {
    e["event"] == event && e["consumer_group"] == group
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_shows_a_delayed_message_stored_pulled_by_two_groups_retried_and_acked() {
    use qmq_client::{
        Consumer, ConsumerConfig, HandleError, MessageExt, MetaRouter, MetaRouterConfig,
        ReceivedMessage, SubscribeOptions,
    };
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let (mut server, _broker, ready) = standalone(dir.path(), &["--retry-delay-secs", "1"]);
    let (http, backup) = (field(&ready, "http"), field(&ready, "backup"));
    let id = sent(&[
        "send",
        "--meta",
        &http,
        "--subject",
        "traced",
        "--delay",
        "2s",
        "hello",
    ]);

    // Group "ok" takes it at once; group "flaky" fails the first two deliveries.
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(&http, "test")));
    let consumer = Consumer::new(router, ConsumerConfig::default());
    let options = || SubscribeOptions {
        new_group_start: qmq_client::NewGroupStart::Earliest,
        ..SubscribeOptions::default()
    };
    let ok = |_m: ReceivedMessage| async { Ok(()) };
    let flaky = |m: ReceivedMessage| async move {
        if m.times() < 3 {
            Err(HandleError::msg(format!("failing delivery {}", m.times())))
        } else {
            Ok(())
        }
    };
    consumer
        .subscribe("traced", "ok", ok, options())
        .await
        .unwrap();
    consumer
        .subscribe("traced", "flaky", flaky, options())
        .await
        .unwrap();

    // Wait (with a deadline) until the backup holds both groups' last acks.
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = tokio::task::block_in_place(|| trace_events(&backup, &id));
        // The second retry copy (the third delivery) acked.
        let retries: Vec<_> = events.iter().filter(|e| is(e, "retry", "flaky")).collect();
        let done = retries.len() == 2
            && events.iter().any(|e| {
                is(e, "acked", "flaky")
                    && e["subject"] == retries[1]["subject"]
                    && e["sequence"] == retries[1]["sequence"]
            });
        if done && events.iter().any(|e| is(e, "acked", "ok")) {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "the trace never completed: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    consumer.shutdown().await;

    let at = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        events
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("missing step in {events:#?}"))
    };
    let stored = at(&|e| e["event"] == "stored");
    let pulled_ok = at(&|e| is(e, "pulled", "ok"));
    let pulled_flaky = at(&|e| is(e, "pulled", "flaky") && e["copy"] == "original");
    let first_retry = at(&|e| is(e, "retry", "flaky"));
    let last_retry = events
        .iter()
        .rposition(|e| is(e, "retry", "flaky"))
        .unwrap();
    let last_ack = events
        .iter()
        .rposition(|e| is(e, "acked", "flaky"))
        .unwrap();
    assert_eq!(events[0]["event"], "created", "{events:#?}");
    // `qmq send --meta` produces as the application qmq-cli.
    assert_eq!(events[0]["app_code"], "qmq-cli", "{events:#?}");
    // The host the message id names (the CLI's ids are QMQ-style).
    assert!(events[0]["producer_host"].is_string(), "{events:#?}");
    assert_eq!(events[1]["event"], "delayed", "{events:#?}");
    // Held by the delay server (followed too), then stored by the broker at its time.
    assert_eq!(events[1]["broker_group"], "delay-1", "{events:#?}");
    let created = events[0]["time"].as_i64().unwrap();
    let until = events[1]["delayed_until"].as_i64().unwrap();
    assert!(until >= created + 1_500, "{events:#?}");
    assert_eq!(stored, 2, "{events:#?}");
    assert_eq!(events[stored]["time"].as_i64(), Some(until), "{events:#?}");
    assert!(stored < pulled_ok && stored < pulled_flaky, "{events:#?}");
    assert!(pulled_flaky < first_retry, "{events:#?}");
    assert!(last_retry < last_ack, "{events:#?}");
    assert_eq!(events[last_ack]["copy"], "retry", "{events:#?}");
    assert_eq!(
        events[last_ack]["sequence"], events[last_retry]["sequence"],
        "{events:#?}"
    );

    // The readable form: the same steps, one line each, in the same order.
    let out = run(&["trace", &id, "--backup", &backup]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let steps: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap_or(""))
        .collect();
    // (Nothing happens to the message any more: the text shows the same steps.)
    assert_eq!(steps.len(), events.len(), "{text}");
    assert_eq!(steps[0], "created", "{text}");
    assert_eq!(steps[1], "delayed", "{text}");
    assert!(text.contains("by app qmq-cli on host "), "{text}");
    assert_eq!(steps[stored], "stored", "{text}");
    assert_eq!(steps[first_retry], "retry", "{text}");
    assert_eq!(steps[last_ack], "acked", "{text}");
    assert!(text.contains("by group flaky consumer"), "{text}");
    assert!(text.contains("failed it: %RETRY%traced%flaky"), "{text}");

    // Unknown ids are an error.
    let out = run(&["trace", "no-such-id", "--backup", &backup]);
    assert!(!out.status.success(), "{out:?}");
    server.terminate();
}

/// `GET path` from the backup: status and JSON.
fn backup_get(backup: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = raw_get(backup, path);
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_read_replayed_and_consumed() {
    use qmq_client::{
        Consumer, ConsumerConfig, HandleError, MessageExt, MetaRouter, MetaRouterConfig,
        ReceivedMessage, SubscribeOptions,
    };
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let (mut server, broker, ready) = standalone(
        dir.path(),
        &["--retry-delay-secs", "1", "--admin-token", "sesame"],
    );
    let (http, backup) = (field(&ready, "http"), field(&ready, "backup"));
    let id = sent(&[
        "send",
        "--broker",
        &broker,
        "--subject",
        "orders",
        "-p",
        "order=42",
        "the body",
    ]);

    // Group "doomed" fails every delivery and gives up after one retry.
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(&http, "test")));
    let options = || SubscribeOptions {
        new_group_start: qmq_client::NewGroupStart::Earliest,
        ..SubscribeOptions::default()
    };
    let failing = Consumer::new(
        router.clone(),
        ConsumerConfig {
            max_retry_num: 1,
            ..ConsumerConfig::default()
        },
    );
    failing
        .subscribe(
            "orders",
            "doomed",
            |_m: ReceivedMessage| async { Err(HandleError::msg("no")) },
            options(),
        )
        .await
        .unwrap();

    // Listed, with its property, once indexed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let out = run(&[
            "dead",
            "list",
            "--backup",
            &backup,
            "--subject",
            "orders",
            "--group",
            "doomed",
            "--json",
        ]);
        assert!(out.status.success(), "{out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let list = json["dead_letters"].as_array().cloned().unwrap_or_default();
        if !list.is_empty() {
            break list;
        }
        assert!(Instant::now() < deadline, "no dead letter listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    failing.shutdown().await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    let dead = &listed[0];
    assert_eq!(dead["message_id"], id.as_str());
    assert_eq!(dead["consumer_group"], "doomed");
    assert_eq!(dead["subject"], "%DEAD_RETRY%orders%doomed");
    assert_eq!(
        dead["details"]["properties"],
        serde_json::json!([["order", "42"]]),
        "{dead:#?}"
    );
    let text = stdout(&run(&[
        "dead",
        "list",
        "--backup",
        &backup,
        "--subject",
        "orders",
    ]));
    assert!(
        text.contains(&id) && text.contains("%DEAD_RETRY%orders%doomed"),
        "{text}"
    );

    // Found by its property, not by another value.
    let by_key = |kv: &str| {
        let out = run(&[
            "query",
            "--backup",
            &backup,
            "--subject",
            "orders",
            "--key",
            kv,
            "--json",
        ]);
        assert!(out.status.success(), "{out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["messages"].as_array().cloned().unwrap_or_default()
    };
    let found = tokio::task::block_in_place(|| by_key("order=42"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0]["message_id"], id.as_str());
    assert!(tokio::task::block_in_place(|| by_key("order=43")).is_empty());

    // Its body, read from the broker.
    let path = format!(
        "/v1/message?group={}&subject=%25DEAD_RETRY%25orders%25doomed&sequence={}",
        dead["broker_group"].as_str().unwrap(),
        dead["sequence"]
    );
    let (status, detail) = tokio::task::block_in_place(|| backup_get(&backup, &path));
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["body"], "the body", "{detail}");
    assert_eq!(detail["source"], "broker", "{detail}");
    assert_eq!(detail["attrs"]["order"], "42", "{detail}");

    // Replay needs the token.
    let replay = |token: &str| {
        run(&[
            "dead",
            "replay",
            "--backup",
            &backup,
            "--subject",
            "orders",
            "--group",
            "doomed",
            "--id",
            &id,
            "--token",
            token,
        ])
    };
    let refused = tokio::task::block_in_place(|| replay("wrong"));
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("admin token"),
        "{refused:?}"
    );

    // The group, fixed, gets it again from its retry subject once replayed.
    let got: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let fixed = Consumer::new(router, ConsumerConfig::default());
    {
        let got = got.clone();
        fixed
            .subscribe(
                "orders",
                "doomed",
                move |m: ReceivedMessage| {
                    let got = got.clone();
                    async move {
                        let body = m.body_text().unwrap_or_default();
                        got.lock().unwrap().push((m.message_id.clone(), body));
                        Ok(())
                    }
                },
                options(),
            )
            .await
            .unwrap();
    }
    let out = tokio::task::block_in_place(|| replay("sesame"));
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("to %RETRY%orders%doomed"),
        "{}",
        stdout(&out)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the replayed letter never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fixed.shutdown().await;
    assert_eq!(
        got.lock().unwrap().clone(),
        vec![(id.clone(), "the body".to_owned())]
    );
    let text = tokio::task::block_in_place(|| metrics_text(&backup));
    assert_eq!(
        metric(&text, "qmq_backup_replayed_total{result=\"sent\"}"),
        1.0,
        "{text}"
    );
    server.terminate();
}

#[test]
fn a_message_waiting_in_the_delay_server_is_found_before_it_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _broker, ready) = standalone(dir.path(), &[]);
    let (http, backup) = (field(&ready, "http"), field(&ready, "backup"));
    let id = sent(&[
        "send",
        "--meta",
        &http,
        "--subject",
        "later",
        "--delay",
        "1h",
        "-p",
        "k=v",
        "tomorrow",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = trace_events(&backup, &id);
        if events.iter().any(|e| e["event"] == "delayed") {
            break events;
        }
        assert!(Instant::now() < deadline, "never indexed: {events:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(events.len(), 2, "created and delayed only: {events:#?}");
    assert_eq!(events[0]["event"], "created");
    let delayed = &events[1];
    let until = delayed["delayed_until"].as_i64().unwrap();
    let created = events[0]["time"].as_i64().unwrap();
    assert!(until >= created + 3_500_000, "{delayed}");
    assert_eq!(delayed["broker_group"], "delay-1", "{delayed}");
    let text = stdout(&run(&["trace", &id, "--backup", &backup]));
    assert!(text.contains("delayed") && text.contains("until"), "{text}");

    // QMQ's delay query lists it; the realtime query of the subject too (in the delay group).
    let q = "/api/message?backupQuery=%7B%22subject%22%3A%22later%22%2C%22isDelay%22%3Atrue%2C%22len%22%3A10%7D";
    let (status, answer) = backup_get(&backup, q);
    assert_eq!(status, 200);
    let list = answer["list"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "{answer}");
    assert_eq!(list[0]["messageId"], id.as_str());
    assert_eq!(list[0]["brokerGroup"], "delay-1");
    server.terminate();
}
