//! The configuration file of the server commands, end to end: `qmq broker --config` uses the
//! file's listen address and data directory (read from its ready line), a flag and an
//! environment variable override the file, an unknown key and a broken cross-role rule stop the
//! process with an error naming them, and `qmq config default` fed back as `--config -` starts
//! a standalone server.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, qmq, Proc};

const READY: Duration = Duration::from_secs(60);

/// `qmq <args>` with no QMQ_* settings inherited from the test's environment.
fn server(args: &[&str]) -> Command {
    let mut c = qmq();
    for var in [
        "QMQ_CONFIG",
        "QMQ_DATA_DIR",
        "QMQ_BROKER_LISTEN",
        "QMQ_METRICS_LISTEN",
        "QMQ_CLUSTER_SECRET",
        "QMQ_LOG_FORMAT",
    ] {
        c.env_remove(var);
    }
    c.args(args);
    c
}

/// Writes `text` to `qmq.toml` in `dir` and returns its path.
fn config_file(dir: &Path, text: &str) -> String {
    let path = dir.join("qmq.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A broker-only file: listen address and data directory.
fn broker_file(dir: &Path, port: u16) -> String {
    let data = dir.join("data");
    config_file(
        dir,
        &format!(
            "[broker]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = {:?}\n",
            data.to_str().unwrap()
        ),
    )
}

/// Runs `command` (expected to refuse to start) and returns its standard error once it has
/// exited unsuccessfully; fails if it is still running after a minute.
fn refused(mut command: Command) -> String {
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("stderr");
    let err = std::fs::File::create(&err_path).unwrap();
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after a minute: the configuration was accepted");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(!status.success(), "exited successfully; stderr: {stderr}");
    stderr
}

#[test]
fn a_file_sets_the_brokers_listen_address_and_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = broker_file(dir.path(), port);
    let mut broker = Proc::spawn(server(&["broker", "--config", &path]));
    broker.wait_line(&format!("qmq broker ready on 127.0.0.1:{port}"), 0, READY);
    assert!(dir.path().join("data").join("broker").is_dir());
    broker.terminate();
}

#[test]
fn a_flag_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (in_file, on_line) = (free_port(), free_port());
    let path = broker_file(dir.path(), in_file);
    let listen = format!("127.0.0.1:{on_line}");
    let mut broker = Proc::spawn(server(&["broker", "--config", &path, "--listen", &listen]));
    broker.wait_line(&format!("qmq broker ready on {listen}"), 0, READY);
    // The file's other key still applies.
    assert!(dir.path().join("data").join("broker").is_dir());
    broker.terminate();
}

#[test]
fn an_environment_variable_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (in_file, in_env) = (free_port(), free_port());
    let path = broker_file(dir.path(), in_file);
    let listen = format!("127.0.0.1:{in_env}");
    let mut command = server(&["broker"]);
    command
        .env("QMQ_CONFIG", &path)
        .env("QMQ_BROKER_LISTEN", &listen);
    let mut broker = Proc::spawn(command);
    broker.wait_line(&format!("qmq broker ready on {listen}"), 0, READY);
    assert!(dir.path().join("data").join("broker").is_dir());
    broker.terminate();
}

#[test]
fn an_unknown_key_is_refused_with_its_name_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(
        dir.path(),
        &format!(
            "[broker]\nlisten = \"127.0.0.1:{}\"\nlisen = 1\n",
            free_port()
        ),
    );
    let stderr = refused(server(&["broker", "--config", &path]));
    assert!(
        stderr.contains("unknown key `lisen` in [broker]"),
        "{stderr}"
    );
    assert!(stderr.contains(&path), "{stderr}");
}

#[test]
fn a_broken_cross_role_rule_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = config_file(
        dir.path(),
        &format!(
            "data_dir = {:?}\n[broker]\nmax_message_bytes = 1048576\n\
             [delay]\ndelay_listen = \"127.0.0.1:{}\"\nmax_message_bytes = 2097152\n",
            data.to_str().unwrap(),
            free_port()
        ),
    );
    let stderr = refused(server(&["delay", "--config", &path]));
    assert!(stderr.contains("delay-message-limit"), "{stderr}");
    assert!(
        stderr.contains(
            "delay max_message_bytes = 2097152 exceeds broker max_message_bytes = 1048576"
        ),
        "{stderr}"
    );
    assert!(!data.join("delay").exists(), "started before refusing");
}

#[test]
fn the_default_file_starts_a_standalone_server() {
    let out = server(&["config", "default"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("\n[broker]\n") && text.contains("\n[delay]\n"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // The default ports may be taken on a test machine: flags override them (and the
    // directory), everything else comes from the file on standard input.
    let mut command = server(&[
        "standalone",
        "--backup-http-listen",
        "127.0.0.1:0",
        "--config",
        "-",
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
        "--meta-http-listen",
        "127.0.0.1:0",
        "--meta-tcp-listen",
        "127.0.0.1:0",
        "--delay-listen",
        "127.0.0.1:0",
    ]);
    command.stdin(Stdio::piped());
    let mut s = Proc::spawn(command);
    let mut stdin = s.child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).unwrap();
    drop(stdin);
    s.wait_line("qmq standalone ready: broker 127.0.0.1:", 0, READY);
    assert!(dir.path().join("broker").is_dir());
    s.terminate();
}

/// `QMQ_META_MIN_GROUP_NUM` is read (and checked) like the `--min-group-num` flag it stands for.
#[test]
fn min_group_num_is_read_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = server(&["meta"]);
    command
        .env("QMQ_META_MIN_GROUP_NUM", "0")
        .env("QMQ_DATA_DIR", dir.path());
    let stderr = refused(command);
    assert!(stderr.contains("--min-group-num"), "{stderr}");
}
