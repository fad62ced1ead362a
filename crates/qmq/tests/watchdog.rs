//! `qmq watchdog` and the watchdog of `qmq standalone`, as processes, with an outbox on the
//! PostgreSQL server `qmq_testkit` finds (skipped with one line when it is absent, or failing
//! where `QMQ_TEST_REQUIRE_SERVICES=1`; each test uses its own schema, dropped when the test
//! ends, panicking or not).
//!
//! - Two `qmq watchdog` processes on the standalone's meta database: one takes the lease and
//!   sends; when it is killed with SIGKILL, the other takes over within the lease time and
//!   sends. Their `/metrics` say which one leads and count the rows each sent.
//! - `qmq standalone` alone resends the rows of a database registered with `qmq tools add-db`,
//!   and its one metrics endpoint has the watchdog's metrics.
//! - `qmq standalone --watchdog-enabled false` runs no watchdog: no watchdog metrics, and a
//!   `qmq watchdog` in the same namespace takes the lease at once and resends.

mod common;

use std::time::{Duration, Instant};

use common::{field, free_port, free_port_pair, metrics_addr, qmq, sample, scrape, Proc};
use qmq_client::idempotent::Dialect;
use qmq_client::outbox::OutboxSql;
use qmq_client::{Connection, Message, PullConsumer};

const TOKEN: &str = "wd-token";

/// A private schema with an outbox table on the test PostgreSQL server, dropped when this is
/// dropped (also when the test panics).
struct Outbox {
    pool: sqlx::PgPool,
    schema: String,
    table: String,
    url: String,
}

impl Outbox {
    async fn new(test: &str) -> Option<Self> {
        let url = qmq_testkit::require(&qmq_testkit::POSTGRES, test)?;
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let schema = format!("qmqwdp_{:08x}", rand::random::<u32>());
        let table = format!("{schema}.qmq_msg_queue");
        let sql = OutboxSql::new(Dialect::Postgres, &table).unwrap();
        for s in [sql.create_schema.unwrap(), sql.create_table] {
            sqlx::query(&s).execute(&pool).await.unwrap();
        }
        Some(Self {
            pool,
            schema,
            table,
            url,
        })
    }

    /// Inserts a pending row for message `id` on `subject`, as a producer leaves it.
    async fn insert(&self, id: &str, subject: &str) {
        let content = format!(r#"{{"messageId":"{id}","subject":"{subject}","attrs":{{}}}}"#);
        sqlx::query(&format!(
            "INSERT INTO {}(content, create_time) VALUES($1, CURRENT_TIMESTAMP)",
            self.table
        ))
        .bind(content)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn rows(&self) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", self.table))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// `qmq tools add-db` arguments registering this server in `room`.
    fn add_db_args(&self, room: &str) -> Vec<String> {
        let rest = self.url.split_once("://").unwrap().1;
        let (auth, hostpath) = rest.rsplit_once('@').unwrap_or(("", rest));
        let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
        let (hostport, path) = hostpath.split_once('/').unwrap_or((hostpath, ""));
        let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "5432"));
        let database = path.split(['?', '#']).next().unwrap_or_default();
        let mut args: Vec<String> = [
            "add-db",
            "--type",
            "postgres",
            "--host",
            host,
            "--port",
            port,
            "--username",
            user,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--password={password}"));
        args.extend(["--room".into(), room.into()]);
        if !database.is_empty() {
            args.extend(["--database".into(), database.into()]);
        }
        args
    }
}

impl Drop for Outbox {
    /// Drops the schema on a thread of its own with a runtime of its own: the test's runtime
    /// may be unwinding, and blocking on it from inside is not allowed. Failures are printed,
    /// not raised (a panic while unwinding would abort).
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                use sqlx::Connection as _;
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })
            .map_err(|e| e.to_string())
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("dropping schema {}: {e}", self.schema),
            Err(_) => eprintln!(
                "dropping schema {}: the cleanup thread panicked",
                self.schema
            ),
        }
    }
}

/// `qmq standalone` in `dir` with an admin token, new groups starting at the earliest message
/// and `extra` arguments; returns it, its broker address and its meta HTTP address.
fn standalone(dir: &std::path::Path, extra: &[&str]) -> (Proc, String, String) {
    let port = free_port_pair();
    let mut cmd = qmq();
    cmd.args([
        "standalone",
        "--backup-http-listen",
        "127.0.0.1:0",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .args([
        "--meta-http-listen",
        "127.0.0.1:0",
        "--meta-tcp-listen",
        "127.0.0.1:0",
    ])
    .args(["--delay-listen", &format!("127.0.0.1:{}", free_port())])
    .args(["--admin-token", TOKEN, "--new-group-start", "earliest"])
    .args(extra)
    .arg("--data-dir")
    .arg(dir);
    let server = Proc::spawn(cmd);
    let (_, ready) = server.wait_line("qmq standalone ready", 0, Duration::from_secs(30));
    (server, field(&ready, "broker"), field(&ready, "http"))
}

fn add_db(meta_http: &str, args: &[String]) {
    let out = qmq()
        .args(["tools", "--metaserver", meta_http, "--token", TOKEN])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "add-db: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pulls `subject` (group `g`) until `n` messages arrived, then checks nothing else is there.
async fn pull_exactly(broker: &str, subject: &str, n: usize) -> Vec<Message> {
    let conn = Connection::connect(broker).await.unwrap();
    let mut c = PullConsumer::new(conn, subject, "g", "wd-process-test");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages",
            out.len()
        );
        let (first, msgs) = c.pull(100, Duration::from_millis(500)).await.unwrap();
        if !msgs.is_empty() {
            c.ack(first, first + msgs.len() as i64 - 1).await.unwrap();
            out.extend(msgs);
        }
    }
    let (_, more) = c.pull(100, Duration::from_millis(300)).await.unwrap();
    assert!(more.is_empty(), "more than {n} messages: {more:?}");
    out
}

async fn until_empty(outbox: &Outbox) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while outbox.rows().await > 0 {
        assert!(Instant::now() < deadline, "rows were not sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `qmq watchdog` on the meta database of the standalone in `dir`, in `namespace`, with quick
/// lease, scans and registry readings and its metrics on a free port; returns it and its
/// metrics address.
fn watchdog(
    dir: &std::path::Path,
    meta_http: &str,
    namespace: &str,
    node: &str,
    table: &str,
) -> (Proc, String) {
    let meta_db = format!(
        "sqlite://{}?mode=rw",
        dir.join("meta").join("meta.db").display()
    );
    let mut cmd = qmq();
    cmd.args([
        "watchdog",
        "--meta-database-url",
        &meta_db,
        "--meta-http",
        meta_http,
    ])
    .args([
        "--namespace",
        namespace,
        "--node",
        node,
        "--outbox-table",
        table,
    ])
    .args(["--metrics-listen", "127.0.0.1:0"])
    .args(["--lease-ms", "2000", "--renew-interval-ms", "300"])
    .args([
        "--check-interval-ms",
        "200",
        "--refresh-interval-ms",
        "200",
        "--grace-ms",
        "0",
    ]);
    let p = Proc::spawn(cmd);
    let metrics = metrics_addr(&p);
    p.wait_line("qmq watchdog ready", 0, Duration::from_secs(30));
    (p, metrics)
}

/// The value of the watchdog metric `name` (with `labels`) at `metrics`; panics when absent.
async fn metric(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let got = scrape(metrics).await;
    sample(&got, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} at {metrics}"))
}

/// Waits until the rows `sent` counter at `metrics` reads `n`.
async fn until_sent(metrics: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sent = metric(metrics, SENT, &[("outcome", "sent")]).await;
        if sent == n {
            return;
        }
        assert!(Instant::now() < deadline, "sent counter {sent}, not {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const SENT: &str = "qmq_watchdog_rows_total";
const LEADER: &str = "qmq_watchdog_leader";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_watchdogs_one_sends_the_other_takes_over_after_kill9() {
    let Some(outbox) =
        Outbox::new("two_watchdogs_one_sends_the_other_takes_over_after_kill9").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_server, broker, meta_http) = standalone(dir.path(), &[]);
    add_db(&meta_http, &outbox.add_db_args("ns"));
    let subject = format!("wd.proc.{:08x}", rand::random::<u32>());

    let mut a = watchdog(dir.path(), &meta_http, "ns", "a", &outbox.table);
    let mut b = watchdog(dir.path(), &meta_http, "ns", "b", &outbox.table);
    // Exactly one announces leadership.
    let deadline = Instant::now() + Duration::from_secs(30);
    let leads = |p: &Proc| {
        p.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("qmq watchdog leader"))
    };
    let ((leader, leader_metrics), (follower, follower_metrics)) = loop {
        let (la, lb) = (leads(&a.0), leads(&b.0));
        assert!(!(la && lb), "two leaders");
        if la {
            break (&mut a, &mut b);
        }
        if lb {
            break (&mut b, &mut a);
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The leader's gauge is set before it announces itself.
    assert_eq!(metric(leader_metrics, LEADER, &[]).await, 1.0);
    assert_eq!(metric(follower_metrics, LEADER, &[]).await, 0.0);
    let terms = "qmq_watchdog_leader_terms_total";
    assert_eq!(metric(leader_metrics, terms, &[]).await, 1.0);
    assert_eq!(metric(follower_metrics, terms, &[]).await, 0.0);
    outbox.insert("first", &subject).await;
    until_empty(&outbox).await;
    let got = pull_exactly(&broker, &subject, 1).await;
    assert_eq!(got[0].message_id, "first");
    until_sent(leader_metrics, 1.0).await;
    assert!(
        metric(
            leader_metrics,
            "qmq_watchdog_scans_total",
            &[("result", "ok")]
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(leader_metrics, "qmq_watchdog_databases", &[]).await,
        1.0
    );
    assert!(!leads(follower), "the follower stayed a follower");
    assert_eq!(
        metric(follower_metrics, SENT, &[("outcome", "sent")]).await,
        0.0
    );

    leader.kill9();
    let killed = Instant::now();
    follower.wait_line("qmq watchdog leader", 0, Duration::from_secs(15));
    // The lease is 2 s: the follower waits for it to expire, and not much longer.
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(6), "take-over took {took:?}");
    assert_eq!(metric(follower_metrics, LEADER, &[]).await, 1.0);
    outbox.insert("second", &subject).await;
    until_empty(&outbox).await;
    let got = pull_exactly(&broker, &subject, 1).await;
    assert_eq!(got[0].message_id, "second");
    until_sent(follower_metrics, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_resends_the_rows_of_a_registered_database() {
    let Some(outbox) = Outbox::new("standalone_resends_the_rows_of_a_registered_database").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let table = outbox.table.clone();
    let (server, broker, meta_http) = standalone(
        dir.path(),
        &[
            "--watchdog-grace-ms",
            "0",
            "--watchdog-check-interval-ms",
            "200",
            "--watchdog-refresh-interval-ms",
            "200",
            "--watchdog-outbox-table",
            &table,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = metrics_addr(&server);
    let subject = format!("wd.standalone.{:08x}", rand::random::<u32>());
    outbox.insert("s1", &subject).await;
    add_db(&meta_http, &outbox.add_db_args("default"));
    until_empty(&outbox).await;
    let got = pull_exactly(&broker, &subject, 1).await;
    assert_eq!(got[0].message_id, "s1");
    // The standalone's one endpoint has the watchdog's metrics beside the servers'.
    until_sent(&metrics, 1.0).await;
    assert_eq!(metric(&metrics, LEADER, &[]).await, 1.0);
    assert!(sample(&scrape(&metrics).await, "qmq_received_messages_total", &[]).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_without_watchdog_leaves_the_lease_to_qmq_watchdog() {
    let Some(outbox) =
        Outbox::new("standalone_without_watchdog_leaves_the_lease_to_qmq_watchdog").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (server, broker, meta_http) = standalone(
        dir.path(),
        &[
            "--watchdog-enabled",
            "false",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let standalone_metrics = metrics_addr(&server);
    let exposed = scrape(&standalone_metrics).await;
    assert!(
        !exposed
            .samples
            .iter()
            .any(|s| s.metric.starts_with("qmq_watchdog_")),
        "a standalone without watchdog has watchdog metrics"
    );
    add_db(&meta_http, &outbox.add_db_args("default"));
    // Same namespace as the standalone's watchdog would have: had it run, it would hold the
    // lease and this one would stay a follower.
    let (wd, metrics) = watchdog(dir.path(), &meta_http, "default", "only", &outbox.table);
    wd.wait_line("qmq watchdog leader", 0, Duration::from_secs(15));
    let subject = format!("wd.off.{:08x}", rand::random::<u32>());
    outbox.insert("o1", &subject).await;
    until_empty(&outbox).await;
    let got = pull_exactly(&broker, &subject, 1).await;
    assert_eq!(got[0].message_id, "o1");
    until_sent(&metrics, 1.0).await;
}
