//! The `qmq` executable as a user runs it: start, send, kill -9 or SIGTERM, restart, consume.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use qmq_client::{new_message, send_batch, Connection, PullConsumer};

/// Starts `qmq standalone` and waits for its "ready" line.
fn start(dir: &std::path::Path, port: u16) -> Child {
    start_with_line(dir, port).0
}

/// Starts `qmq standalone`; returns it and its "ready" line.
fn start_with_line(dir: &std::path::Path, port: u16) -> (Child, String) {
    let mut child = standalone(dir, port)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("ready"), "unexpected first line {line:?}");
    (child, line)
}

/// The `qmq standalone` command on `dir`, its broker on `port` and its delay server on the
/// next port.
fn standalone(dir: &std::path::Path, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qmq"));
    command
        .args([
            "standalone",
            "--backup-http-listen",
            "127.0.0.1:0",
            "--flush",
            "sync",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "--meta-http-listen",
            "127.0.0.1:0",
            "--meta-tcp-listen",
            "127.0.0.1:0",
            "--admin-token",
            "secret",
            "--delay-listen",
        ])
        // The delay server keeps its port across restarts, as in production: the meta server
        // does not let a live group move to another address.
        .arg(format!("127.0.0.1:{}", port + 1))
        .arg("--data-dir")
        .arg(dir);
    command
}

async fn send_n(addr: &str, subject: &str, range: std::ops::Range<usize>) {
    let conn = Connection::connect(addr).await.unwrap();
    let all: Vec<_> = range
        .map(|i| {
            let mut m = new_message(subject);
            m.set_attr("body", i.to_string());
            m
        })
        .collect();
    for chunk in all.chunks(30) {
        for r in send_batch(&conn, chunk, Duration::from_secs(10))
            .await
            .unwrap()
        {
            r.unwrap();
        }
    }
}

async fn drain(addr: &str, subject: &str, group: &str, expect: usize) -> Vec<usize> {
    let conn = Connection::connect(addr).await.unwrap();
    let mut consumer = PullConsumer::new(conn, subject, group, "c1")
        .new_group_start(qmq_client::NewGroupStart::Earliest);
    let mut got = Vec::new();
    while got.len() < expect {
        let want = (expect - got.len()).min(100) as i32;
        let (first, ms) = consumer.pull(want, Duration::from_secs(5)).await.unwrap();
        assert!(!ms.is_empty(), "only {} of {expect} messages", got.len());
        consumer
            .ack(first, first + ms.len() as i64 - 1)
            .await
            .unwrap();
        got.extend(
            ms.iter()
                .map(|m| m.attr("body").unwrap().parse::<usize>().unwrap()),
        );
    }
    got
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port_pair();
    let addr = format!("127.0.0.1:{port}");
    let mut server = start(dir.path(), port);
    send_n(&addr, "k9", 0..500).await;
    server.kill().unwrap(); // SIGKILL: no flush, no checkpoint
    server.wait().unwrap();

    let mut server = start(dir.path(), port);
    let got = drain(&addr, "k9", "g", 500).await;
    assert_eq!(got, (0..500).collect::<Vec<_>>());
    server.kill().unwrap();
    server.wait().unwrap();
}

#[tokio::test]
async fn a_second_process_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port_pair();
    let addr = format!("127.0.0.1:{port}");
    let mut server = start(dir.path(), port);
    let second = standalone(dir.path(), common::free_port_pair())
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use"), "unexpected error: {stderr}");
    // The first one is unharmed.
    send_n(&addr, "locked", 0..10).await;
    assert_eq!(
        drain(&addr, "locked", "g", 10).await,
        (0..10).collect::<Vec<_>>()
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Sends SIGTERM and checks the graceful shutdown exits 0.
fn sigterm_exits_0(server: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server.wait().unwrap();
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
}

#[tokio::test]
async fn sigterm_checkpoints_and_a_restart_resumes_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port_pair();
    let addr = format!("127.0.0.1:{port}");
    let mut server = start(dir.path(), port);
    send_n(&addr, "st", 0..100).await;
    assert_eq!(drain(&addr, "st", "g", 40).await.len(), 40);
    sigterm_exits_0(&mut server);
    assert!(
        std::fs::read_dir(dir.path().join("broker/checkpoint"))
            .unwrap()
            .count()
            > 0
    );

    let mut server = start(dir.path(), port);
    let rest = drain(&addr, "st", "g", 60).await;
    assert_eq!(rest, (40..100).collect::<Vec<_>>());
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Names that once bricked a broker (a directory name over 255 bytes): one message under each,
/// and a consumer group and id of 300 bytes, then `kill -9` and SIGTERM; every restart succeeds
/// and every message is there.
#[tokio::test]
async fn over_long_names_from_clients_never_brick_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port_pair();
    let addr = format!("127.0.0.1:{port}");
    let subjects = ["q".repeat(256), "主".repeat(100)];
    let group = "g".repeat(300);
    let mut server = start(dir.path(), port);
    for s in &subjects {
        send_n(&addr, s, 0..3).await;
    }
    assert_eq!(drain(&addr, &subjects[0], &group, 1).await, [0]);
    server.kill().unwrap();
    server.wait().unwrap();

    let mut server = start(dir.path(), port);
    send_n(&addr, "after", 0..1).await;
    sigterm_exits_0(&mut server);

    let mut server = start(dir.path(), port);
    assert_eq!(drain(&addr, &subjects[0], &group, 2).await, [1, 2]);
    assert_eq!(drain(&addr, &subjects[1], "g", 3).await, [0, 1, 2]);
    assert_eq!(drain(&addr, "after", "g", 1).await, [0]);
    server.kill().unwrap();
    server.wait().unwrap();
}

/// The value after `key` in the ready line (`... meta http 127.0.0.1:1234 tcp ...`).
fn field(line: &str, key: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == key).unwrap();
    words[i + 1].to_owned()
}

/// Asks the meta server (TCP) for a producer route of `subject`, as the Java client does;
/// returns the one broker group's master address.
async fn route(meta_tcp: &str, subject: &str) -> String {
    route_for(meta_tcp, subject, qmq_protocol::ClientType::Producer).await
}

/// Like [`route`] for a given client type (delay producers get delay servers).
async fn route_for(meta_tcp: &str, subject: &str, client: qmq_protocol::ClientType) -> String {
    let route = routes(meta_tcp, subject, client).await;
    assert_eq!(route.groups.len(), 1, "{route:?}");
    route.groups[0].master.clone()
}

/// The meta server's answer (TCP CLIENT_REGISTER, as the Java client asks) for `subject`.
async fn routes(
    meta_tcp: &str,
    subject: &str,
    client: qmq_protocol::ClientType,
) -> qmq_protocol::MetaInfoResponse {
    use bytes::BytesMut;
    use qmq_protocol::codes::{command, response};
    use qmq_protocol::{ClientRequestType, MetaInfoRequest, MetaInfoResponse};

    let meta = Connection::connect(meta_tcp).await.unwrap();
    let mut body = BytesMut::new();
    MetaInfoRequest::new(
        "test-client",
        client,
        ClientRequestType::Online,
        subject,
        "test-app",
        "",
    )
    .encode(&mut body)
    .unwrap();
    let resp = meta
        .request(
            command::CLIENT_REGISTER,
            body.freeze(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(resp.header.code, response::SUCCESS);
    MetaInfoResponse::decode(&resp.body).unwrap()
}

#[tokio::test]
async fn a_client_finds_the_broker_through_the_meta_server_as_the_java_client_does() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port_pair();
    let (mut server, line) = start_with_line(dir.path(), port);
    // 1. Discovery over HTTP, as the Java client: GET /meta/address answers host:port.
    let http = field(&line, "http");
    let mut s = tokio::net::TcpStream::connect(&http).await.unwrap();
    s.write_all(b"GET /meta/address HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert!(
        reply.starts_with("HTTP/1.") && reply.contains(" 200 "),
        "{reply}"
    );
    let meta_tcp = reply.rsplit("\r\n\r\n").next().unwrap().trim().to_owned();
    // 2. CLIENT_REGISTER for a producer of a new subject: the route names our broker.
    let broker = route(&meta_tcp, "via.meta").await;
    assert!(broker.ends_with(&format!(":{port}")), "{broker}");
    // 3. Send and consume through the address the route gave.
    send_n(&broker, "via.meta", 0..3).await;
    assert_eq!(drain(&broker, "via.meta", "g", 3).await, vec![0, 1, 2]);
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Runs `qmq tools` against the meta server at `http`.
fn tools(http: &str, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qmq"))
        .args(["tools", "--metaserver", http, "--token", token])
        .args(args)
        .output()
        .unwrap()
}

/// Sends one message to `subject`; true when the broker stored it.
async fn try_send(addr: &str, subject: &str) -> bool {
    let conn = Connection::connect(addr).await.unwrap();
    let m = new_message(subject);
    send_batch(&conn, &[m], Duration::from_secs(5))
        .await
        .unwrap()[0]
        .is_ok()
}

/// Polls `check` every 100 ms until it holds; fails after `limit`.
async fn eventually<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut check: impl FnMut() -> F,
) {
    let end = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < end,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn admin_tools_need_a_token_and_readonly_and_reset_reach_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port_pair();
    let addr = format!("127.0.0.1:{port}");
    let (mut server, line) = start_with_line(dir.path(), port);
    let http = field(&line, "http");
    // A wrong token is refused and changes nothing.
    let refused = tools(
        &http,
        "wrong",
        &[
            "mark-readonly",
            "--broker-group",
            "broker-1",
            "--subject",
            "ro",
        ],
    );
    assert!(!refused.status.success());
    assert!(try_send(&addr, "ro").await);
    // The right token marks the subject readonly; the broker refuses it within a few seconds.
    let ok = tools(
        &http,
        "secret",
        &[
            "mark-readonly",
            "--broker-group",
            "broker-1",
            "--subject",
            "ro",
        ],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    eventually(Duration::from_secs(15), || async {
        !try_send(&addr, "ro").await
    })
    .await;
    assert!(
        try_send(&addr, "other").await,
        "other subjects still accepted"
    );
    // reset-offset to earliest makes a group see its consumed messages again.
    let meta_tcp = field(&line, "tcp");
    assert_eq!(route(&meta_tcp, "rs").await, addr);
    send_n(&addr, "rs", 0..3).await;
    assert_eq!(drain(&addr, "rs", "g", 3).await, vec![0, 1, 2]);
    let ok = tools(
        &http,
        "secret",
        &[
            "reset-offset",
            "--subject",
            "rs",
            "--group",
            "g",
            "--action",
            "earliest",
        ],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    eventually(Duration::from_secs(15), || async {
        let conn = Connection::connect(&addr).await.unwrap();
        let mut c = PullConsumer::new(conn, "rs", "g", "c2");
        let (_, ms) = c.pull(10, Duration::from_millis(200)).await.unwrap();
        !ms.is_empty()
    })
    .await;
    server.kill().unwrap();
    server.wait().unwrap();
}

#[tokio::test]
async fn a_delay_message_is_routed_to_the_delay_server_and_delivered_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port_pair();
    let addr = format!("127.0.0.1:{port}");
    let (mut server, line) = start_with_line(dir.path(), port);
    // Delay producers are routed to the delay server, as the Java client would be.
    let delay = route_for(
        &field(&line, "tcp"),
        "later",
        qmq_protocol::ClientType::DelayProducer,
    )
    .await;
    assert_eq!(delay, field(&line, "delay"));
    // A message due in 1.5 s goes to the delay server...
    let mut m = new_message("later");
    m.set_attr("body", "0");
    let due = m.created_time + 1500;
    m.flags = m.flags.with_delay(true);
    m.expire_or_schedule = due;
    let conn = Connection::connect(&delay).await.unwrap();
    send_batch(&conn, &[m], Duration::from_secs(5))
        .await
        .unwrap()[0]
        .as_ref()
        .unwrap();
    // ...and reaches consumers of the broker once due, not before.
    let got = drain(&addr, "later", "g", 1).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(got, vec![0]);
    assert!(now >= due, "delivered {} ms early", due - now);
    server.kill().unwrap();
    server.wait().unwrap();
}

#[tokio::test]
async fn a_failed_message_comes_back_through_the_delay_server_after_its_retry_delay() {
    use qmq_client::{
        Consumer, ConsumerConfig, HandleError, MessageExt, MetaRouter, MetaRouterConfig,
        ReceivedMessage, SubscribeOptions,
    };
    use std::sync::Arc;
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port_pair();
    let addr = format!("127.0.0.1:{port}");
    let (mut server, line) = start_with_line(dir.path(), port);
    let http = field(&line, "http");
    assert_eq!(route(&field(&line, "tcp"), "flaky").await, addr);
    send_n(&addr, "flaky", 0..1).await;

    // The handler fails the first delivery asking for a retry in 1 s, and accepts the second.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, u32, String)>();
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let handler = move |m: ReceivedMessage| {
        let (tx, first) = (tx.clone(), first.clone());
        async move {
            let _ = tx.send((Instant::now(), m.message().times(), m.subject().to_owned()));
            if first.swap(false, std::sync::atomic::Ordering::AcqRel) {
                Err(HandleError::retry_after(Duration::from_secs(1), "not yet"))
            } else {
                Ok(())
            }
        }
    };
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(&http, "test")));
    let consumer = Consumer::new(router, ConsumerConfig::default());
    consumer
        .subscribe(
            "flaky",
            "g",
            handler,
            SubscribeOptions {
                new_group_start: qmq_client::NewGroupStart::Earliest,
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap();
    let limit = Duration::from_secs(20);
    let (failed_at, first_times, _) = tokio::time::timeout(limit, rx.recv())
        .await
        .unwrap()
        .unwrap();
    let (again_at, times, subject) = tokio::time::timeout(limit, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(times, first_times + 1, "the retry carries qmq_times + 1");
    assert_eq!(subject, "flaky");
    assert!(
        again_at.duration_since(failed_at) >= Duration::from_secs(1),
        "redelivered after {:?}, before the 1 s asked for",
        again_at.duration_since(failed_at)
    );
    consumer.shutdown().await;
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Sends one BROKER_REGISTER (no cluster secret, as a Java server or a stranger would) to the
/// meta server at `meta_tcp`; returns the answer code.
async fn register_without_secret(
    meta_tcp: &str,
    kind: qmq_protocol::BrokerRequestType,
    group: &str,
    address: &str,
) -> i16 {
    use bytes::BytesMut;
    use qmq_protocol::codes::command;
    use qmq_protocol::{BrokerRegisterRequest, BrokerRole, BrokerState};

    let meta = Connection::connect(meta_tcp).await.unwrap();
    let mut body = BytesMut::new();
    BrokerRegisterRequest {
        request_type: kind,
        group_name: group.into(),
        broker_address: address.into(),
        role: BrokerRole::Master,
        state: BrokerState::None,
    }
    .encode(&mut body)
    .unwrap();
    meta.request(
        command::BROKER_REGISTER,
        body.freeze(),
        Duration::from_secs(5),
    )
    .await
    .unwrap()
    .header
    .code
}

#[tokio::test]
async fn standalone_refuses_registrations_without_its_secret() {
    use qmq_protocol::codes::response;
    use qmq_protocol::BrokerRequestType;

    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port_pair();
    let addr = format!("127.0.0.1:{port}");
    let (mut server, line) = start_with_line(dir.path(), port);
    let meta_tcp = field(&line, "tcp");
    // Its own broker and delay server registered with the generated secret.
    assert_eq!(route(&meta_tcp, "sec").await, addr);
    let delay = format!("127.0.0.1:{}", port + 1);
    assert_eq!(
        route_for(&meta_tcp, "sec", qmq_protocol::ClientType::DelayProducer).await,
        delay
    );
    // A stranger can neither take the broker offline nor add a group.
    let offline = BrokerRequestType::Offline;
    let code = register_without_secret(&meta_tcp, offline, "broker-1", &addr).await;
    assert_eq!(code, response::BROKER_REJECT);
    let code =
        register_without_secret(&meta_tcp, BrokerRequestType::Online, "evil", "10.6.6.6:1").await;
    assert_eq!(code, response::BROKER_REJECT);
    assert_eq!(route(&meta_tcp, "sec").await, addr);
    assert_eq!(route(&meta_tcp, "sec.new").await, addr);
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Starts a `qmq` server subcommand and returns it with its first stdout line.
fn spawn_ready(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qmq"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("ready"), "unexpected first line {line:?}");
    (child, line)
}

/// How many groups the meta server routes `subject` to for a producer.
async fn route_len(meta_tcp: &str, subject: &str) -> usize {
    routes(meta_tcp, subject, qmq_protocol::ClientType::Producer)
        .await
        .groups
        .len()
}

#[tokio::test]
async fn a_broker_registers_with_the_cluster_secret_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (mut meta, line) = spawn_ready(&[
        "meta",
        "--meta-http-listen",
        "127.0.0.1:0",
        "--meta-tcp-listen",
        "127.0.0.1:0",
        "--cluster-secret",
        "s3cret",
        "--data-dir",
        data,
    ]);
    let meta_tcp = field(&line, "tcp");
    let broker = |group: &str, port: u16, secret: &str| {
        let listen = format!("127.0.0.1:{port}");
        let data = dir.path().join(group);
        spawn_ready(&[
            "broker",
            "--group",
            group,
            "--listen",
            &listen,
            "--advertise",
            &listen,
            "--meta",
            &meta_tcp,
            "--cluster-secret",
            secret,
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .0
    };
    // A broker with the wrong secret is refused: no route appears.
    let mut wrong = broker("wrong", common::free_port_pair(), "guess");
    // A broker with the secret registers and becomes the route.
    let port = common::free_port_pair();
    let mut right = broker("right", port, "s3cret");
    eventually(Duration::from_secs(20), || async {
        route_len(&meta_tcp, "flag").await == 1
    })
    .await;
    assert_eq!(route(&meta_tcp, "flag").await, format!("127.0.0.1:{port}"));
    for child in [&mut right, &mut wrong, &mut meta] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// Runs `qmq` with `args`; returns its output.
fn qmq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qmq"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn send_and_consume_find_the_broker_through_the_meta_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port_pair();
    let addr = format!("127.0.0.1:{port}");
    let (mut server, line) = start_with_line(dir.path(), port);
    let http = field(&line, "http");

    let sent = qmq(&["send", "--meta", &http, "-s", "cli.meta", "-c", "5", "hi"]);
    let stdout = String::from_utf8_lossy(&sent.stdout);
    assert!(
        sent.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let ids: HashSet<String> = stdout
        .lines()
        .map(|l| l.strip_prefix("sent ").unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 5, "{stdout}");

    let got = qmq(&[
        "consume",
        "--meta",
        &http,
        "-s",
        "cli.meta",
        "-g",
        "g",
        "-c",
        "5",
        "--wait-secs",
        "20",
    ]);
    let stdout = String::from_utf8_lossy(&got.stdout);
    assert!(
        got.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let mut bodies = Vec::new();
    let consumed: HashSet<String> = stdout
        .lines()
        .map(|l| {
            let (id, body) = l.split_once('\t').unwrap();
            bodies.push(body.to_owned());
            id.to_owned()
        })
        .collect();
    assert_eq!(consumed, ids);
    bodies.sort();
    assert_eq!(
        bodies,
        (0..5).map(|i| format!("hi #{i}")).collect::<Vec<_>>()
    );
    // The group acked them: nothing is left for it on the broker.
    let conn = Connection::connect(&addr).await.unwrap();
    let mut c = PullConsumer::new(conn, "cli.meta", "g", "checker");
    let (_, left) = c.pull(10, Duration::from_millis(300)).await.unwrap();
    assert!(left.is_empty(), "{} messages left unacked", left.len());

    // --meta and --broker exclude each other.
    for cmd in [
        vec!["send", "--meta", &http, "--broker", &addr, "-s", "x", "b"],
        vec![
            "consume", "--meta", &http, "--broker", &addr, "-s", "x", "-g", "g",
        ],
    ] {
        let both = qmq(&cmd);
        assert!(!both.status.success(), "{cmd:?}");
        let stderr = String::from_utf8_lossy(&both.stderr);
        assert!(stderr.contains("cannot be used with"), "{stderr}");
    }
    server.kill().unwrap();
    server.wait().unwrap();
}
