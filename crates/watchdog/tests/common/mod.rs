//! Shared helpers: outbox databases on PostgreSQL, MariaDB and SQLite, a real broker, pulling.
//!
//! PostgreSQL and MariaDB are reached at the URLs `qmq_testkit` reads; a test whose server does
//! not answer is skipped with one line (or fails, where `QMQ_TEST_REQUIRE_SERVICES=1`). Every
//! test gets its own PostgreSQL schema or MariaDB database (so the outbox table is
//! `<unique>.qmq_msg_queue`) or SQLite file, removed afterwards.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qmq_broker::{serve, BrokerConfig, BrokerHandle};
use qmq_client::idempotent::Dialect;
use qmq_client::{Connection, Message, Producer, ProducerConfig, PullConsumer, StaticRouter};
use qmq_store::{FlushPolicy, StoreConfig};
use qmq_testkit::{require, MYSQL, POSTGRES};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

pub const T: Duration = Duration::from_secs(20);

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand::random::<u32>())
}

/// An outbox database for one test.
pub struct OutboxDb {
    pub dialect: Dialect,
    /// sqlx URL of the database the outbox lives in.
    pub url: String,
    /// The outbox table (`<schema>.qmq_msg_queue`, or `qmq_msg_queue` on SQLite).
    pub table: String,
    /// PostgreSQL schema or MariaDB database to drop afterwards.
    schema: Option<String>,
    pub pool: AnyPool,
    _dir: Option<tempfile::TempDir>,
}

impl OutboxDb {
    /// A fresh outbox on `dialect`'s server; `None` (after a skip line) when it is absent.
    pub async fn new(dialect: Dialect, test: &str) -> Option<Self> {
        sqlx::any::install_default_drivers();
        let (url, dir) = match dialect {
            Dialect::Postgres => (require(&POSTGRES, test)?, None),
            Dialect::MySql => (require(&MYSQL, test)?, None),
            Dialect::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
                (url, Some(dir))
            }
        };
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        let schema = match dialect {
            Dialect::Sqlite => None,
            Dialect::Postgres => {
                let s = unique("qmqwd");
                sqlx::query(&format!("CREATE SCHEMA {s}"))
                    .execute(&pool)
                    .await
                    .unwrap();
                Some(s)
            }
            Dialect::MySql => {
                let s = unique("qmqwd");
                sqlx::query(&format!("CREATE DATABASE {s}"))
                    .execute(&pool)
                    .await
                    .unwrap();
                Some(s)
            }
        };
        let table = match &schema {
            Some(s) => format!("{s}.qmq_msg_queue"),
            None => "qmq_msg_queue".to_owned(),
        };
        let sql = qmq_client::outbox::OutboxSql::new(dialect, &table).unwrap();
        sqlx::query(&sql.create_table).execute(&pool).await.unwrap();
        Some(Self {
            dialect,
            url,
            table,
            schema,
            pool,
            _dir: dir,
        })
    }

    /// Inserts a row as QMQ's Java producer does (`INSERT INTO t(content, create_time)`), with
    /// `status` and `error` set when given; returns its id.
    pub async fn insert_raw(&self, content: &str, status: i16, error: i64) -> i64 {
        let content = content.replace('\'', "''");
        let sql = format!(
            "INSERT INTO {}(content, status, error, create_time) \
             VALUES('{content}', {status}, {error}, CURRENT_TIMESTAMP)",
            self.table
        );
        sqlx::query(&sql).execute(&self.pool).await.unwrap();
        let max: i64 = sqlx::query(&format!("SELECT MAX(id) AS m FROM {}", self.table))
            .fetch_one(&self.pool)
            .await
            .unwrap()
            .try_get("m")
            .unwrap();
        max
    }

    /// `(id, status, error)` of every row, by id.
    pub async fn rows(&self) -> Vec<(i64, i64, i64)> {
        let int = match self.dialect {
            Dialect::MySql => "SIGNED",
            _ => "BIGINT",
        };
        let sql = format!(
            "SELECT id, CAST(status AS {int}) AS s, CAST(error AS {int}) AS e FROM {} ORDER BY id",
            self.table
        );
        sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("id"), r.get("s"), r.get("e")))
            .collect()
    }

    /// Drops the test's schema or database.
    pub async fn drop_now(&self) {
        match (&self.schema, self.dialect) {
            (Some(s), Dialect::Postgres) => {
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
                    .execute(&self.pool)
                    .await
                    .unwrap();
            }
            (Some(s), Dialect::MySql) => {
                sqlx::query(&format!("DROP DATABASE IF EXISTS {s}"))
                    .execute(&self.pool)
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
}

/// A broker on `addr` (`127.0.0.1:0` for any port); keep the TempDir as long as the broker.
pub async fn broker_on(addr: SocketAddr) -> (BrokerHandle, tempfile::TempDir) {
    broker_with(addr, |_| {}).await
}

/// [`broker_on`] with `adjust` applied to its configuration.
pub async fn broker_with(
    addr: SocketAddr,
    adjust: impl FnOnce(&mut BrokerConfig),
) -> (BrokerHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StoreConfig::new(dir.path());
    store.flush = FlushPolicy::SyncBeforeAck;
    let mut c = BrokerConfig::new(store);
    c.listen = addr;
    c.new_group_start = qmq_store::ResetTo::Earliest;
    adjust(&mut c);
    (serve(c).await.unwrap(), dir)
}

/// A free loopback address (nothing listens on it yet).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A producer sending to `broker` with few, quick tries.
pub fn producer(broker: &str, tries: u32) -> Arc<Producer> {
    Arc::new(Producer::new(
        Arc::new(StaticRouter::new([broker.to_owned()])),
        ProducerConfig {
            max_tries: tries,
            retry_backoff: Duration::from_millis(10),
            send_timeout: Duration::from_secs(2),
            ..ProducerConfig::default()
        },
    ))
}

/// Everything stored on `broker` for `subject` (group `group`, from the start), pulling until
/// `n` messages arrived or the deadline; then one more pull proves nothing else is there.
pub async fn pull_exactly(broker: &str, subject: &str, group: &str, n: usize) -> Vec<Message> {
    let conn = Connection::connect(broker).await.unwrap();
    let mut c = PullConsumer::new(conn, subject, group, "wd-test");
    let mut out = Vec::new();
    let deadline = Instant::now() + T;
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages on {subject}",
            out.len()
        );
        let (first, msgs) = c.pull(100, Duration::from_millis(500)).await.unwrap();
        if !msgs.is_empty() {
            c.ack(first, first + msgs.len() as i64 - 1).await.unwrap();
            out.extend(msgs);
        }
    }
    let (_, more) = c.pull(100, Duration::from_millis(300)).await.unwrap();
    assert!(
        more.is_empty(),
        "more than {n} messages on {subject}: {more:?}"
    );
    out
}

/// Commits one message through the transactional producer on `db` (sending with `producer`);
/// returns the deliveries.
pub async fn commit_one(
    db: &OutboxDb,
    producer: Arc<Producer>,
    message: Message,
) -> Vec<qmq_client::outbox::Delivery> {
    use qmq_client::outbox::TransactionalProducer;
    macro_rules! run {
        ($pool:ty) => {{
            let pool = <$pool>::connect(&db.url).await.unwrap();
            let outbox = TransactionalProducer::with_table(producer, pool, &db.table).unwrap();
            let mut tx = outbox.begin().await.unwrap();
            tx.send(message).await.unwrap();
            tx.commit().await.unwrap()
        }};
    }
    match db.dialect {
        Dialect::Postgres => run!(sqlx::PgPool),
        Dialect::MySql => run!(sqlx::MySqlPool),
        Dialect::Sqlite => run!(sqlx::SqlitePool),
    }
}

/// Runs `body` with a fresh outbox on `dialect` (returning at once when its server is absent),
/// then drops the outbox whatever happened.
pub async fn with_outbox<F, Fut>(dialect: Dialect, test: &str, body: F)
where
    F: FnOnce(Arc<OutboxDb>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::FutureExt;
    let Some(db) = OutboxDb::new(dialect, test).await else {
        return;
    };
    let db = Arc::new(db);
    let outcome = std::panic::AssertUnwindSafe(body(db.clone()))
        .catch_unwind()
        .await;
    db.drop_now().await;
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

/// Generates one test per database: `$name::{postgres, mysql, sqlite}` calling `$body(dialect,
/// test name)`.
#[macro_export]
macro_rules! on_all_databases {
    ($name:ident) => {
        mod $name {
            use qmq_client::idempotent::Dialect;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(Dialect::Postgres, concat!(module_path!(), "::postgres")).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                super::$name(Dialect::MySql, concat!(module_path!(), "::mysql")).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Dialect::Sqlite, concat!(module_path!(), "::sqlite")).await
            }
        }
    };
}

/// The meta database of one test: SQLite in a temp dir, or a fresh PostgreSQL or MariaDB
/// database (dropped by [`MetaDb::drop_now`]).
pub struct MetaDb {
    pub url: String,
    admin: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl MetaDb {
    /// `None` (after a skip line) when the server of `dialect` is absent.
    pub async fn new(dialect: Dialect, test: &str) -> Option<Self> {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let admin = match dialect {
            Dialect::Sqlite => None,
            Dialect::Postgres => Some(require(&POSTGRES, test)?),
            Dialect::MySql => Some(require(&MYSQL, test)?),
        };
        let (url, admin) = match admin {
            None => (
                format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display()),
                None,
            ),
            Some(admin) => {
                let name = unique("qmqwdmeta");
                let pool = AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(&admin)
                    .await
                    .unwrap();
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                (
                    qmq_testkit::with_database(&admin, &name),
                    Some((admin, name)),
                )
            }
        };
        Some(Self {
            url,
            admin,
            _dir: dir,
        })
    }

    pub async fn drop_now(&self) {
        if let Some((admin, name)) = &self.admin {
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .connect(admin)
                .await
                .unwrap();
            let force = if admin.starts_with("postgres") {
                " WITH (FORCE)"
            } else {
                ""
            };
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name}{force}"))
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
    }
}

/// The registry entry (as add-db makes it) of the outbox server of `db` (PostgreSQL or
/// MariaDB; SQLite cannot be registered) in room `room`.
pub fn registration(db: &OutboxDb, room: &str) -> qmq_meta::model::ClientDb {
    let rest = db.url.split_once("://").unwrap().1;
    let (auth, hostpath) = rest.rsplit_once('@').unwrap_or(("", rest));
    let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
    let (hostport, path) = hostpath.split_once('/').unwrap_or((hostpath, ""));
    let database = path.split(['?', '#']).next().unwrap_or_default();
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let url = match db.dialect {
        Dialect::Postgres => format!("postgres://{host}:{port}/{database}"),
        _ => format!("mysql://{host}:{port}"),
    };
    qmq_meta::model::ClientDb {
        url,
        user_name: user.into(),
        password: password.into(),
        room: room.into(),
    }
}

/// Waits until `cond()` holds, or panics with `what` after the deadline.
pub async fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
