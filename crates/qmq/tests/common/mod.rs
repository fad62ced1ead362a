//! Shared by the process tests of replicated groups: child processes whose output lines are
//! watched, the `qmq` command, ports, status-line fields and group members.

#![allow(dead_code)] // each test file uses its own part of it

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free loopback port.
pub fn free_port() -> u16 {
    // The kernel may hand the same free port to two calls in a row once the first listener is
    // closed; a port given out once is never given out again by this process, so two members
    // of one cluster never share a port.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A free loopback port whose successor is free too (a standalone's broker and delay server).
pub fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// The `qmq` executable under test.
pub fn qmq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qmq"))
}

/// Log lines of a child kept for a failure message (the last ones).
const LOG_TAIL: usize = 40;

/// A child process whose stdout lines are collected as they come, and the last lines of its
/// log (stderr) kept for failure messages; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    log_tail: Arc<Mutex<std::collections::VecDeque<String>>>,
}

impl Proc {
    /// Spawns `command` with its stdout collected and the tail of its stderr kept.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line);
            }
        });
        let log_tail = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let err = child.stderr.take().unwrap();
        let t = log_tail.clone();
        // Drained for as long as the child writes, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut tail = t.lock().unwrap();
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        Self {
            child,
            lines,
            log_tail,
        }
    }

    /// The last lines the child logged.
    pub fn log_tail(&self) -> Vec<String> {
        self.log_tail.lock().unwrap().iter().cloned().collect()
    }

    /// Waits (up to `within`) for a line containing `needle` after the first `skip` lines;
    /// returns its index and the line.
    pub fn wait_line(&self, needle: &str, skip: usize, within: Duration) -> (usize, String) {
        let deadline = Instant::now() + within;
        loop {
            {
                let lines = self.lines.lock().unwrap();
                if let Some((i, l)) = lines
                    .iter()
                    .enumerate()
                    .skip(skip)
                    .find(|(_, l)| l.contains(needle))
                {
                    return (i, l.clone());
                }
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} within {within:?}; lines: {:?}; last log lines:\n{}",
                self.lines.lock().unwrap(),
                self.log_tail().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines seen so far.
    pub fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends signal `sig` (a name such as `STOP`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// SIGTERM, and waits (up to 30 s) for the process to exit.
    pub fn terminate(&mut self) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `key` in a `key=value` (or `key value`) status line.
pub fn field(line: &str, key: &str) -> String {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if let Some(v) = w.strip_prefix(&format!("{key}=")) {
            return v.to_owned();
        }
        if w == key {
            return words.next().unwrap().to_owned();
        }
    }
    panic!("no {key} in {line:?}");
}

/// One member of a replicated group: its ports and data directory.
#[derive(Clone)]
pub struct Member {
    pub port: u16,
    pub sync: u16,
    pub dir: PathBuf,
}

impl Member {
    /// Its client address.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its sync address.
    pub fn sync_addr(&self) -> String {
        format!("127.0.0.1:{}", self.sync)
    }
}

/// Scrapes the metrics endpoint at `addr` (`GET /metrics`) and parses the exposition.
pub async fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let got = qmq_metrics::scrape(addr).await.unwrap();
    assert!(
        got.content_type.starts_with("text/plain; version=0.0.4"),
        "content type {:?}",
        got.content_type
    );
    prometheus_parse::Scrape::parse(got.text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of sample `name` carrying (at least) `labels`; None if there is none.
pub fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name}: unexpected value {other:?}"),
        })
}

/// The address a server printed in its `qmq metrics on <addr>` line.
pub fn metrics_addr(proc: &Proc) -> String {
    let (_, line) = proc.wait_line("qmq metrics on ", 0, Duration::from_secs(30));
    line.rsplit(' ').next().unwrap().to_owned()
}

/// The `qmq standalone` command on `dir` with its broker on `broker` and every other listener
/// (meta HTTP and TCP, delay server, backup HTTP) on a free loopback port, so that tests can
/// run side by side; callers add their own flags.
pub fn standalone_command(dir: &std::path::Path, broker: &str) -> Command {
    let mut cmd = qmq();
    cmd.args(["standalone", "--listen", broker])
        .args(["--meta-http-listen", "127.0.0.1:0"])
        .args(["--meta-tcp-listen", "127.0.0.1:0"])
        .args(["--delay-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--backup-http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir);
    cmd
}

/// Starts `qmq standalone` in `dir` with its broker on `broker`, everything else on free
/// loopback ports, metrics on, and `extra` arguments; returns it, its metrics address and its
/// ready line.
pub fn standalone_with_metrics(
    dir: &std::path::Path,
    broker: &str,
    extra: &[&str],
) -> (Proc, String, String) {
    let mut cmd = standalone_command(dir, broker);
    cmd.args(extra).args(["--metrics-listen", "127.0.0.1:0"]);
    let server = Proc::spawn(cmd);
    let metrics = metrics_addr(&server);
    let (_, ready) = server.wait_line("qmq standalone ready", 0, Duration::from_secs(30));
    (server, metrics, ready)
}

/// Every `qmq_…` metric name the Grafana dashboard (`deploy/grafana/qmq-rs.json`) queries.
pub fn dashboard_names() -> std::collections::BTreeSet<String> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/qmq-rs.json");
    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    queried_names(&dashboard)
}

/// Every `qmq_…` metric name in a dashboard's queries (PromQL expressions).
pub fn queried_names(dashboard: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let mut exprs = Vec::new();
    collect_exprs(dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has no queries");
    let mut names = std::collections::BTreeSet::new();
    for e in exprs {
        let bytes = e.as_bytes();
        let mut i = 0;
        while let Some(at) = e[i..].find("qmq_") {
            let start = i + at;
            let boundary = start == 0 || {
                let c = bytes[start - 1];
                !(c.is_ascii_alphanumeric() || c == b'_')
            };
            let end = e[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(e.len(), |n| start + n);
            if boundary {
                names.insert(e[start..end].to_owned());
            }
            i = end;
        }
    }
    names
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The series names an exposition declares (`# TYPE` lines), with the suffixes PromQL uses
/// for them: `_total` for counters, `_bucket`, `_sum` and `_count` for histograms.
pub fn exposed_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let base = name.strip_suffix("_total").unwrap_or(name);
        names.insert(name.to_owned());
        match kind {
            "counter" => {
                names.insert(format!("{base}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {}
        }
    }
    names
}
