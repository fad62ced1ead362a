//! The shell client and the logs as an operator meets them, through the real `qmq` binary
//! against `qmq standalone` on free ports in a temporary directory: delay messages (`--delay`,
//! `--at`), properties, meta routing, `consume --json` and `--follow`, `--log-format json`, and
//! an address already in use.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{field, free_port, qmq, Proc};

/// A running `qmq standalone`, killed when dropped.
struct Standalone {
    child: Child,
    /// Broker address.
    broker: String,
    /// Meta server HTTP address.
    http: String,
    _dir: tempfile::TempDir,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `qmq standalone` (with `extra` arguments, stderr to `stderr`) and waits for its
/// ready line.
fn standalone_with(extra: &[&str], stderr: Stdio) -> Standalone {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = qmq()
        .args(extra)
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
            "--delay-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("ready"), "unexpected first line {line:?}");
    Standalone {
        child,
        broker: format!("127.0.0.1:{port}"),
        http: field(&line, "http"),
        _dir: dir,
    }
}

fn standalone() -> Standalone {
    standalone_with(&[], Stdio::null())
}

/// Runs `qmq` with `args` to completion.
fn run(args: &[&str]) -> Output {
    qmq().args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `qmq` with `args`; asserts it succeeded and returns its stdout.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "qmq {args:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `qmq` with `args`; asserts it failed and returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        !out.status.success(),
        "qmq {args:?} succeeded: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

/// The JSON objects `consume --json` printed.
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `sent <id> due <time>` → (id, due in ms since the epoch).
fn sent_due(stdout: &str) -> (String, i64) {
    let line = stdout.lines().next().unwrap();
    let rest = line.strip_prefix("sent ").unwrap();
    let (id, due) = rest
        .split_once(" due ")
        .unwrap_or_else(|| panic!("{line:?}"));
    let due = chrono::DateTime::parse_from_rfc3339(due).unwrap();
    (id.to_owned(), due.timestamp_millis())
}

fn attr_ms(m: &serde_json::Value, key: &str) -> i64 {
    m["attributes"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {m}"))
        .parse()
        .unwrap()
}

#[test]
fn a_delayed_send_goes_through_the_delay_server_and_arrives_once_due() {
    let s = standalone();
    let sent = ok(&[
        "send",
        "--meta",
        &s.http,
        "-s",
        "cli.delay",
        "--delay",
        "2s",
        "later",
    ]);
    let (id, due) = sent_due(&sent);
    // Right after sending, the group gets nothing (unless this machine was so slow that the
    // message was already due when the short consume ended).
    let early = run(&[
        "consume",
        "--meta",
        &s.http,
        "-s",
        "cli.delay",
        "-g",
        "g",
        "--json",
        "--wait",
        "300ms",
    ]);
    let ended = now_ms();
    let early_out = text(&early.stdout);
    assert!(
        early_out.is_empty() || ended >= due,
        "delivered before it was due ({} ms early): {early_out}",
        due - ended
    );
    if early_out.is_empty() {
        assert!(!early.status.success());
        assert!(
            text(&early.stderr).contains("only 0 of 1"),
            "{}",
            text(&early.stderr)
        );
    }
    // Polling with a deadline gets it, carrying the schedule asked for.
    let got = if early_out.is_empty() {
        ok(&[
            "consume",
            "--meta",
            &s.http,
            "-s",
            "cli.delay",
            "-g",
            "g",
            "--json",
            "--wait",
            "30s",
        ])
    } else {
        early_out
    };
    assert!(now_ms() >= due, "delivered before it was due");
    let got = json_lines(&got);
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0];
    assert_eq!(m["message_id"], id.as_str());
    assert_eq!(m["subject"], "cli.delay");
    assert_eq!(m["body"], "later");
    assert_eq!(m["body_encoding"], "utf8");
    let schedule = attr_ms(m, "qmq_scheduleReceiveTime");
    assert_eq!(schedule, due);
    assert_eq!(schedule - attr_ms(m, "qmq_createTime"), 2000);
    assert_eq!(m["schedule_time"], due);
}

#[test]
fn at_is_checked_against_the_past_and_qmqs_two_year_limit() {
    let s = standalone();
    let past = fails(&[
        "send",
        "--meta",
        &s.http,
        "-s",
        "cli.at",
        "--at",
        "2001-01-01T00:00:00Z",
        "b",
    ]);
    assert!(
        past.contains("--at 2001-01-01T00:00:00+00:00 is in the past"),
        "{past}"
    );
    let far = fails(&[
        "send",
        "--meta",
        &s.http,
        "-s",
        "cli.at",
        "--at",
        "2999-01-01T00:00:00+08:00",
        "b",
    ]);
    assert!(far.contains("more than 2 years"), "{far}");
    let far = fails(&[
        "send", "--meta", &s.http, "-s", "cli.at", "--delay", "800d", "b",
    ]);
    assert!(far.contains("more than 2 years"), "{far}");
    let bad = fails(&[
        "send", "--meta", &s.http, "-s", "cli.at", "--at", "tomorrow", "b",
    ]);
    assert!(bad.contains("RFC 3339"), "{bad}");
    let both = fails(&[
        "send",
        "--meta",
        &s.http,
        "-s",
        "cli.at",
        "--delay",
        "1s",
        "--at",
        "2999-01-01T00:00:00Z",
        "b",
    ]);
    assert!(both.contains("cannot be used with"), "{both}");
    // Delay messages need the meta server's route to a delay server.
    let direct = fails(&[
        "send", "--broker", &s.broker, "-s", "cli.at", "--delay", "1s", "b",
    ]);
    assert!(direct.contains("need --meta"), "{direct}");
    // A valid time an hour ahead is accepted and kept to the millisecond.
    let at = chrono::Utc::now() + chrono::Duration::hours(1);
    let at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let sent = ok(&["send", "--meta", &s.http, "-s", "cli.at", "--at", &at, "b"]);
    let (_, due) = sent_due(&sent);
    assert_eq!(
        due,
        chrono::DateTime::parse_from_rfc3339(&at)
            .unwrap()
            .timestamp_millis()
    );
}

#[test]
fn properties_round_trip_and_malformed_ones_are_refused() {
    let s = standalone();
    let sent = ok(&[
        "send",
        "--meta",
        &s.http,
        "-s",
        "cli.prop",
        "-p",
        "a=b",
        "--property",
        "c=d=e",
        "-p",
        "empty=",
        "-t",
        "t1",
        "hello",
    ]);
    let id = sent.trim().strip_prefix("sent ").unwrap().to_owned();
    // Routed through the meta server to the standalone broker: a direct consume finds it,
    // with its pull-log sequence.
    let got = json_lines(&ok(&[
        "consume", "--broker", &s.broker, "-s", "cli.prop", "-g", "g", "--json", "--wait", "30s",
    ]));
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0];
    assert_eq!(m["message_id"], id.as_str());
    assert_eq!(m["attributes"]["a"], "b");
    assert_eq!(m["attributes"]["c"], "d=e");
    assert_eq!(m["attributes"]["empty"], "");
    assert!(m["attributes"].get("body").is_none(), "{m}");
    assert_eq!(m["body"], "hello");
    assert_eq!(m["tags"], serde_json::json!(["t1"]));
    assert_eq!(m["sequence"], 0);
    assert!(m["schedule_time"].is_null(), "{m}");

    for (arg, says) in [
        ("novalue", "is not key=value"),
        ("=v", "empty key"),
        ("qmq_times=3", "reserved"),
        ("body=x", "reserved"),
    ] {
        let err = fails(&["send", "--meta", &s.http, "-s", "cli.prop", "-p", arg, "b"]);
        assert!(err.contains(says), "-p {arg}: {err}");
    }
    let twice = fails(&[
        "send", "--meta", &s.http, "-s", "cli.prop", "-p", "a=1", "-p", "a=2", "b",
    ]);
    assert!(twice.contains("more than once"), "{twice}");
}

#[test]
fn follow_prints_what_comes_and_exits_0_on_sigterm() {
    let s = standalone();
    let mut command = qmq();
    command.env("RUST_LOG", "warn").args([
        "consume",
        "--meta",
        &s.http,
        "-s",
        "cli.follow",
        "-g",
        "g",
        "--follow",
        "--json",
    ]);
    let mut follow = Proc::spawn(command);
    let mut ids = Vec::new();
    for body in ["one", "two", "three"] {
        let sent = ok(&["send", "--meta", &s.http, "-s", "cli.follow", body]);
        ids.push(sent.trim().strip_prefix("sent ").unwrap().to_owned());
    }
    for id in &ids {
        follow.wait_line(id, 0, Duration::from_secs(30));
    }
    let pid = i32::try_from(follow.child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = follow.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "--follow did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    let lines = follow.lines.lock().unwrap().clone();
    let bodies: Vec<String> = json_lines(&lines.join("\n"))
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies, ["one", "two", "three"]);
    // What it printed it acked: nothing is left for the group.
    let left = run(&[
        "consume",
        "--broker",
        &s.broker,
        "-s",
        "cli.follow",
        "-g",
        "g",
        "--wait",
        "500ms",
    ]);
    assert!(!left.status.success());
    assert!(text(&left.stdout).is_empty(), "{}", text(&left.stdout));
}

/// Every non-empty line of `stderr` parses as a JSON log record; returns them.
fn json_logs(stderr: &str) -> Vec<serde_json::Value> {
    let records: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l:?}")))
        .collect();
    for r in &records {
        assert!(r["level"].is_string() && r["fields"].is_object(), "{r}");
    }
    records
}

/// Starts `qmq standalone` with `extra` arguments and stderr to a file, stops it with SIGTERM
/// right after its ready line (it must exit 0), and returns what it wrote on stderr.
fn stderr_of_a_standalone_run(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let file = std::fs::File::create(&log).unwrap();
    let mut s = standalone_with(extra, Stdio::from(file));
    let pid = i32::try_from(s.child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn text_logs_to_a_file_have_no_colours() {
    let stderr = stderr_of_a_standalone_run(&["--log-format", "text"]);
    assert!(stderr.contains("shutting down"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "ANSI escapes in {stderr:?}");
}

#[test]
fn log_format_json_writes_json_lines() {
    let records = json_logs(&stderr_of_a_standalone_run(&["--log-format", "json"]));
    assert!(
        records
            .iter()
            .any(|r| r["fields"]["message"] == "shutting down"),
        "{records:?}"
    );
}

#[test]
fn an_address_in_use_is_named_with_its_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let broker = ["broker", "--listen", &addr, "--data-dir", data];
    let err = fails(&broker);
    assert!(
        err.contains(&format!(
            "{addr} is already in use (set by --listen / QMQ_BROKER_LISTEN)"
        )),
        "{err}"
    );
    // The same through QMQ_LOG_FORMAT=json: one JSON record carrying it.
    let out = qmq()
        .args(broker)
        .env("QMQ_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let records = json_logs(&text(&out.stderr));
    assert!(
        records.iter().any(|r| {
            r["level"] == "ERROR"
                && r["fields"]["error"].as_str().is_some_and(|e| {
                    e.contains(&format!("{addr} is already in use (set by --listen"))
                })
        }),
        "{records:?}"
    );
    drop(taken);
}
