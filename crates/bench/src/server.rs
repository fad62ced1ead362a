//! The qmq-rs server under test: `qmq standalone` as a child process, so its memory can be
//! measured on its own (peak RSS from /proc).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use anyhow::{bail, Context};

/// A running `qmq standalone`.
pub struct QmqServer {
    child: Child,
    /// Broker address.
    pub addr: String,
    /// The metrics endpoint (started with metrics on).
    pub metrics: Option<String>,
    /// Kept open so that later lines the server prints do not fail for a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl QmqServer {
    /// Starts `qmq standalone` (the executable next to this one) with data under `dir`, with
    /// `--metrics-listen` on a free port if `metrics`, and `extra` arguments.
    pub fn start(dir: &Path, metrics: bool, extra: &[&str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?
            .parent()
            .context("executable directory")?
            .join("qmq");
        if !exe.exists() {
            bail!(
                "{} not found: build it first with `cargo build --release -p qmq`",
                exe.display()
            );
        }
        let port = free_port()?;
        let mut command = Command::new(&exe);
        command.arg("standalone");
        if metrics {
            command.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args([
                "--meta-http-listen",
                "127.0.0.1:0",
                "--meta-tcp-listen",
                "127.0.0.1:0",
                "--delay-listen",
                "127.0.0.1:0",
                // The backup's index is not part of the compared workloads (and its default
                // port would be shared by concurrent servers).
                "--backup-enabled",
                "false",
            ])
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("running {}", exe.display()))?;
        let mut out = BufReader::new(child.stdout.take().context("server stdout")?);
        let mut metrics_addr = None;
        loop {
            let mut line = String::new();
            if out.read_line(&mut line)? == 0 {
                bail!("qmq standalone exited before it was ready");
            }
            if let Some(addr) = line.trim().strip_prefix("qmq metrics on ") {
                metrics_addr = Some(addr.to_owned());
            }
            if line.contains("ready") && (!metrics || metrics_addr.is_some()) {
                break;
            }
        }
        Ok(Self {
            child,
            addr: format!("127.0.0.1:{port}"),
            metrics: metrics_addr,
            _stdout: out,
        })
    }

    /// The server's peak resident set size so far, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// CPU time the server has used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.child.id())
    }
}

/// CPU time (user + system) process `pid` has used, in seconds, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3;
    // utime and stime are fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second();
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

impl Drop for QmqServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
