//! Runs the `qmq-client` examples (crates/client/examples) against a real `qmq standalone`,
//! the way their doc comments tell a user to, so that every API they show is exercised by CI.
//!
//! The example programs are built by `cargo test --workspace` (cargo builds a package's
//! examples when it tests it) next to this test's binary, in `<target>/<profile>/examples/`.
//! Run alone (`cargo test -p qmq --test examples`) this test fails with the command that builds
//! them.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use common::{field, free_port_pair, standalone_command, Proc};

/// How long one example may run.
const LIMIT: Duration = Duration::from_secs(90);

/// The built example `name`.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // <target>/<profile>/deps/examples-<hash> -> <target>/<profile>/examples/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile dir")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "example {name} is not built at {}: run `cargo test --workspace --all-features` \
         or `cargo build -p qmq-client --examples --all-features` first",
        path.display()
    );
    path
}

/// Runs example `name` with `args` to its end (at most [`LIMIT`]); asserts it succeeded and
/// returns its standard output.
async fn run(name: &str, args: &[&str]) -> String {
    let child = tokio::process::Command::new(example(name))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start example {name}: {e}"));
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("example {name} {args:?} did not finish within {LIMIT:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    assert!(
        status.success(),
        "example {name} {args:?} failed ({status}):\n{stdout}\n{}",
        String::from_utf8_lossy(&stderr)
    );
    stdout
}

/// The message ids in lines starting with `prefix` (the id follows it).
fn ids_after(out: &str, prefix: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_runs_against_a_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("127.0.0.1:{}", free_port_pair());
    let mut cmd = standalone_command(dir.path(), &broker);
    // Every example's group reads what the producer example stored before it started,
    // and retries come back after 1 s rather than QMQ's 5 s.
    cmd.args(["--new-group-start", "earliest", "--retry-delay-secs", "1"]);
    let server = Proc::spawn(cmd);
    let (_, ready) = server.wait_line("qmq standalone ready", 0, Duration::from_secs(30));
    let meta = field(&ready, "http");

    // producer: Client::connect, send_all's receipts, a delayed message and a
    // fire-and-forget send.
    let out = run("producer", &[&meta]).await;
    let mut sent = ids_after(&out, "stored ");
    sent.extend(ids_after(&out, "delayed "));
    sent.extend(ids_after(&out, "fire-and-forget "));
    assert_eq!(sent.len(), 5, "producer printed too few receipts:\n{out}");

    // listener: fails each first delivery on purpose, so every message comes back through
    // the retry subject and is then acked; stops after the producer's messages.
    let out = run("listener", &[&meta, "--count", &sent.len().to_string()]).await;
    for id in &sent {
        assert!(
            out.lines()
                .any(|l| l.starts_with(id.as_str()) && l.contains("delivery #2")),
            "listener did not handle {id} on its second delivery:\n{out}"
        );
    }

    // stream: the same as a Stream of deliveries, nacking each first delivery, acking the
    // second; stops after acking the producer's messages.
    let out = run("stream", &[&meta, "--count", &sent.len().to_string()]).await;
    for id in &sent {
        for line in ["delivery #1 nack", "delivery #2 ack"] {
            assert!(
                out.lines()
                    .any(|l| l.starts_with(id.as_str()) && l.ends_with(line)),
                "stream did not print `{line}` for {id}:\n{out}"
            );
        }
    }

    // macro_consumer: `#[consumer]` functions with a placeholder, shared state and a named
    // checker; every order is shipped, and the one `vip` order is greeted too.
    let out = run(
        "macro_consumer",
        &[&meta, "--count", &(sent.len() + 1).to_string()],
    )
    .await;
    for id in &sent {
        assert!(
            out.contains(&format!("shipping {id}")),
            "macro_consumer did not ship {id}:\n{out}"
        );
    }
    assert_eq!(out.matches("VIP order ").count(), 1, "{out}");

    // body_producer: text and bytes bodies (read back by Java in scripts/java-compat.sh).
    let out = run("body_producer", &[&meta]).await;
    assert_eq!(out.matches("sent ").count(), 3, "{out}");

    // pull: ten pulls of batches, acked.
    let out = run("pull", &[&meta]).await;
    for id in &sent {
        assert!(out.contains(id.as_str()), "pull did not see {id}:\n{out}");
    }

    // low_level: one broker, send_batch and PullConsumer, no meta server.
    let out = run("low_level", &[&broker]).await;
    let stored = ids_after(&out, "stored ");
    assert_eq!(stored.len(), 3, "{out}");
    assert_eq!(ids_after(&out, "pulled "), stored, "{out}");

    // transactional (feature `sql`): the committed order's message is stored.
    let db = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("orders.db").display()
    );
    let out = run("transactional", &[&meta, &db]).await;
    assert!(out.contains("stored"), "{out}");
}
