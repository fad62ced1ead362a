//! The broker's duplicate window across `kill -9`: ids acknowledged before the kill are
//! answered DUPLICATE after the restart and stored once; `qmq send --message-id` replays by hand.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use qmq_client::{new_message, send_batch, Connection, Message, PullConsumer, SendError};
use qmq_protocol::ProducerCode;

/// A free loopback port whose successor is free too (broker and delay server ports).
fn free_port() -> u16 {
    loop {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// Starts `qmq standalone` on `dir` (broker on `port`, delay server on the next) and waits
/// for its "ready" line.
fn start(dir: &std::path::Path, port: u16) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qmq"))
        .args(["standalone", "--flush", "sync", "--listen"])
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
        .arg(format!("127.0.0.1:{}", port + 1))
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("ready"), "unexpected first line {line:?}");
    child
}

fn messages(subject: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let mut m = new_message(subject);
            m.message_id = format!("k9-{i}");
            m.set_attr("body", format!("m{i}"));
            m
        })
        .collect()
}

/// Sends `ms` in batches of 30; returns each message's answer code (0: stored).
async fn send_codes(addr: &str, ms: &[Message]) -> Vec<i32> {
    let conn = Connection::connect(addr).await.unwrap();
    let mut codes = Vec::new();
    for chunk in ms.chunks(30) {
        for r in send_batch(&conn, chunk, Duration::from_secs(10))
            .await
            .unwrap()
        {
            codes.push(match r {
                Ok(()) => 0,
                Err(SendError::Refused { code, .. }) => code.code(),
                Err(e) => panic!("{e}"),
            });
        }
    }
    codes
}

/// `qmq send --message-id <id>` to the broker at `addr`; returns its standard output.
fn cli_send(addr: &str, subject: &str, id: &str, body: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_qmq"))
        .args([
            "send",
            "--broker",
            addr,
            "-s",
            subject,
            "--message-id",
            id,
            body,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The bodies stored on `subject` up to the message whose body is `end`, read by a consumer
/// group never seen before (what was stored, not redeliveries).
async fn stored_until(addr: &str, subject: &str, end: &str) -> Vec<String> {
    let conn = Connection::connect(addr).await.unwrap();
    let mut consumer = PullConsumer::new(conn, subject, "fresh", "c1")
        .new_group_start(qmq_client::NewGroupStart::Earliest);
    let mut got = Vec::new();
    loop {
        let (first, ms) = consumer.pull(100, Duration::from_secs(5)).await.unwrap();
        assert!(!ms.is_empty(), "no {end:?} after {} messages", got.len());
        consumer
            .ack(first, first + ms.len() as i64 - 1)
            .await
            .unwrap();
        for m in ms {
            let body = m.attr("body").unwrap().to_owned();
            if body == end {
                return got;
            }
            got.push(body);
        }
    }
}

#[tokio::test]
async fn ids_acknowledged_before_a_kill_9_are_duplicates_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = start(dir.path(), port);
    let sent = messages("dedup.k9", 300);
    assert!(send_codes(&addr, &sent).await.iter().all(|&c| c == 0));
    let out = cli_send(&addr, "dedup.k9", "by-hand", "replayed");
    assert_eq!(out.trim(), "sent by-hand");
    server.kill().unwrap(); // SIGKILL: no flush, no checkpoint
    server.wait().unwrap();

    let mut server = start(dir.path(), port);
    let again = send_codes(&addr, &sent).await;
    let duplicate = ProducerCode::Duplicate.code();
    assert!(
        again.iter().all(|&c| c == duplicate),
        "every id acknowledged before the kill is a duplicate: {again:?}"
    );
    let out = cli_send(&addr, "dedup.k9", "by-hand", "replayed again");
    assert_eq!(out.trim(), "sent by-hand (duplicate: already stored)");
    assert!(send_codes(&addr, &[with_body("end")]).await == [0]);
    let got = stored_until(&addr, "dedup.k9", "end").await;
    let mut expected: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    expected.push("replayed".into());
    assert_eq!(got, expected, "each message stored once");
    server.kill().unwrap();
    server.wait().unwrap();
}

fn with_body(body: &str) -> Message {
    let mut m = new_message("dedup.k9");
    m.set_attr("body", body);
    m
}
