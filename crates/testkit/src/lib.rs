//! Test-only helpers for the external services some tests need: PostgreSQL, MariaDB/MySQL and
//! Redis.
//!
//! Where a service lives comes from an environment variable, defaulting to the loopback address
//! `scripts/services.sh` provisions:
//!
//! | service | variable | default |
//! |---|---|---|
//! | PostgreSQL | `QMQ_TEST_POSTGRES_URL` | `postgres://postgres@127.0.0.1:5432/test` |
//! | MariaDB/MySQL | `QMQ_TEST_MYSQL_URL` | `mysql://root@127.0.0.1:3306/test` |
//! | Redis | `QMQ_TEST_REDIS_URL` | `redis://127.0.0.1:6379/` |
//!
//! A test asks [`require`] for its service before touching it. When the service's TCP port
//! answers, it gets the URL. When it does not, the test is skipped: one `SKIP <test>: …` line goes
//! to stderr and, when `QMQ_TEST_SKIP_LOG` names a file, is appended to it, and the test returns.
//! `cargo test` hides the stderr of passing tests, so `scripts/test.sh` points `QMQ_TEST_SKIP_LOG`
//! at a file and prints it at the end: a skip is never silent.
//!
//! Where nothing may be skipped (CI), `QMQ_TEST_REQUIRE_SERVICES=1` (or `CI=true` when that
//! variable is unset) turns the same condition into a panic with the same text, so a missing
//! service fails the run. `QMQ_TEST_REQUIRE_SERVICES=0` allows skips even under `CI=true`.
//!
//! Only reachability is checked: a service that answers but refuses the credentials fails its
//! tests, because that is a set-up error to fix rather than an absent service. The crate depends
//! on nothing but `std`, so every test crate can use it without building more.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// How long one connection attempt to a service may take before it counts as not reachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// An external service some tests need, and where to find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// Human name used in skip and failure lines.
    pub name: &'static str,
    /// Environment variable holding the service's URL.
    pub env: &'static str,
    /// URL used when the variable is unset or empty (what `scripts/services.sh` provisions).
    pub default_url: &'static str,
    /// Port assumed when the URL names none.
    pub default_port: u16,
}

/// PostgreSQL: user `postgres` with trust authentication on loopback, database `test`.
pub const POSTGRES: Service = Service {
    name: "PostgreSQL",
    env: "QMQ_TEST_POSTGRES_URL",
    default_url: "postgres://postgres@127.0.0.1:5432/test",
    default_port: 5432,
};

/// MariaDB or MySQL: user `root` without password from 127.0.0.1, database `test`.
pub const MYSQL: Service = Service {
    name: "MariaDB/MySQL",
    env: "QMQ_TEST_MYSQL_URL",
    default_url: "mysql://root@127.0.0.1:3306/test",
    default_port: 3306,
};

/// Redis on loopback, database 0.
pub const REDIS: Service = Service {
    name: "Redis",
    env: "QMQ_TEST_REDIS_URL",
    default_url: "redis://127.0.0.1:6379/",
    default_port: 6379,
};

impl Service {
    /// The service's URL: the environment variable when set and not empty, else the default.
    pub fn url(&self) -> String {
        match std::env::var(self.env) {
            Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
            _ => self.default_url.to_owned(),
        }
    }
}

/// What to do when a service is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Absent service = test failure (panic) instead of a skip.
    pub required: bool,
    /// File each skip line is appended to, so a runner can list the skips at the end.
    pub skip_log: Option<PathBuf>,
}

impl Policy {
    /// Reads `QMQ_TEST_REQUIRE_SERVICES`, `CI` and `QMQ_TEST_SKIP_LOG` from the environment.
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok();
        Self::from_vars(
            var("QMQ_TEST_REQUIRE_SERVICES").as_deref(),
            var("CI").as_deref(),
            std::env::var_os("QMQ_TEST_SKIP_LOG").map(PathBuf::from),
        )
    }

    /// The policy for these variable values (`None` = unset). `require` decides when set and not
    /// empty (`1`, `true`, `yes` = required); otherwise a true `CI` makes services required.
    pub fn from_vars(require: Option<&str>, ci: Option<&str>, skip_log: Option<PathBuf>) -> Self {
        let truthy =
            |v: &str| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes");
        let required = match require {
            Some(v) if !v.trim().is_empty() => truthy(v),
            _ => ci.is_some_and(truthy),
        };
        Self {
            required,
            skip_log: skip_log.filter(|p| !p.as_os_str().is_empty()),
        }
    }
}

/// Whether a test may use its service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// The service answers: run the test.
    Run,
    /// The service is absent: the test returns; the line says what was skipped and why.
    Skip(String),
}

/// The service's URL when it answers; `None` (after printing and logging one skip line) when the
/// test should return without running. Panics instead when the environment requires services
/// (see [`Policy::from_env`]). `test` names the test in that line.
pub fn require(service: &Service, test: &str) -> Option<String> {
    let url = service.url();
    match gate(service, test, &url, &Policy::from_env()) {
        Gate::Run => Some(url),
        Gate::Skip(_) => None,
    }
}

/// Decides for one test whether `url` is reachable under `policy`: [`Gate::Run`] when it is,
/// else a panic when `policy.required`, else [`Gate::Skip`] after writing the line to stderr and
/// appending it to `policy.skip_log`. A URL whose host and port cannot be read (a Unix socket,
/// say) is not second-guessed: the test runs and its driver reports any problem.
pub fn gate(service: &Service, test: &str, url: &str, policy: &Policy) -> Gate {
    let Some((host, port)) = endpoint(url, service.default_port) else {
        return Gate::Run;
    };
    if reachable(&host, port) {
        return Gate::Run;
    }
    let why = format!(
        "{test}: {} not reachable at {} (set {} or run scripts/services.sh)",
        service.name,
        redact(url),
        service.env
    );
    if policy.required {
        panic!("required service missing: {why} [QMQ_TEST_REQUIRE_SERVICES/CI forbid skipping]");
    }
    let line = format!("SKIP {why}");
    eprintln!("{line}");
    if let Some(path) = &policy.skip_log {
        // One write of one short line to an O_APPEND file: lines from parallel tests and test
        // binaries do not interleave.
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            eprintln!("cannot append to skip log {}: {e}", path.display());
        }
    }
    Gate::Skip(line)
}

/// Whether a TCP connection to `host:port` opens within [`CONNECT_TIMEOUT`] on any address
/// the host resolves to.
fn reachable(host: &str, port: u16) -> bool {
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, CONNECT_TIMEOUT).is_ok())
}

/// Splits `scheme://[user[:password]@]host[:port][/path][?query]` at the authority.
/// Returns (prefix up to and including the authority, the rest), or `None` without `://`.
fn split_authority(url: &str) -> Option<(&str, &str)> {
    let start = url.find("://")? + 3;
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    Some((&url[..end], &url[end..]))
}

/// Host and port a URL points at, the port defaulting to `default_port`; `None` when the URL
/// has no `scheme://host` part or a port that is not a number.
pub fn endpoint(url: &str, default_port: u16) -> Option<(String, u16)> {
    let (prefix, _) = split_authority(url)?;
    let authority = &prefix[prefix.find("://")? + 3..];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, rest) = v6.split_once(']')?;
        (host, rest.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    Some((host.to_owned(), port))
}

/// `url` with its path replaced by `/<database>` (query string kept): the same server and
/// credentials, another database. A URL without `scheme://` comes back unchanged.
pub fn with_database(url: &str, database: &str) -> String {
    let Some((prefix, rest)) = split_authority(url) else {
        return url.to_owned();
    };
    let tail = rest.find(['?', '#']).map_or("", |i| &rest[i..]);
    format!("{prefix}/{database}{tail}")
}

/// `url` with any password replaced by `***`, for printing.
pub fn redact(url: &str) -> String {
    let Some((prefix, rest)) = split_authority(url) else {
        return url.to_owned();
    };
    let Some(at) = prefix.rfind('@') else {
        return url.to_owned();
    };
    let userinfo_start = prefix.find("://").map_or(0, |i| i + 3);
    match prefix[userinfo_start..at].split_once(':') {
        Some((user, _)) => format!(
            "{}{user}:***{}{rest}",
            &prefix[..userinfo_start],
            &prefix[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    /// A loopback port nothing listens on: bound, then released.
    fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[test]
    fn unreachable_service_is_skipped_with_one_logged_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips.log");
        let url = format!("postgres://postgres@127.0.0.1:{}/test", closed_port());
        let policy = Policy {
            required: false,
            skip_log: Some(log.clone()),
        };
        let Gate::Skip(line) = gate(&POSTGRES, "suite::a_test", &url, &policy) else {
            panic!("a closed port must be skipped");
        };
        assert_eq!(
            line,
            format!(
                "SKIP suite::a_test: PostgreSQL not reachable at {url} \
                 (set QMQ_TEST_POSTGRES_URL or run scripts/services.sh)"
            )
        );
        gate(&POSTGRES, "suite::b_test", &url, &policy);
        let logged = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = logged.lines().collect();
        assert_eq!(lines.len(), 2, "{logged}");
        assert_eq!(lines[0], line);
        assert!(lines[1].starts_with("SKIP suite::b_test: PostgreSQL"));
    }

    #[test]
    fn unreachable_service_fails_when_required() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips.log");
        let url = format!("redis://127.0.0.1:{}/", closed_port());
        let policy = Policy {
            required: true,
            skip_log: Some(log.clone()),
        };
        let panic = catch_unwind(AssertUnwindSafe(|| {
            gate(&REDIS, "suite::needs_redis", &url, &policy)
        }))
        .expect_err("a required, absent service must fail the test");
        let msg = panic.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains(&format!("suite::needs_redis: Redis not reachable at {url}")),
            "{msg}"
        );
        assert!(!log.exists(), "a failure is not logged as a skip");
    }

    #[test]
    fn reachable_service_runs() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "mysql://root@127.0.0.1:{}/test",
            l.local_addr().unwrap().port()
        );
        let policy = Policy {
            required: true,
            skip_log: None,
        };
        assert_eq!(gate(&MYSQL, "t", &url, &policy), Gate::Run);
    }

    #[test]
    fn urls_without_a_host_are_not_second_guessed() {
        let policy = Policy {
            required: true,
            skip_log: None,
        };
        for url in ["sqlite::memory:", "postgres:///test", "mysql://h:port/x"] {
            assert_eq!(gate(&POSTGRES, "t", url, &policy), Gate::Run, "{url}");
        }
    }

    #[test]
    fn passwords_are_not_printed() {
        let url = format!("postgres://u:s3cret@127.0.0.1:{}/db", closed_port());
        let Gate::Skip(line) = gate(&POSTGRES, "t", &url, &Policy::default()) else {
            panic!("closed port");
        };
        assert!(!line.contains("s3cret"), "{line}");
        assert!(line.contains("postgres://u:***@127.0.0.1:"), "{line}");
    }

    #[test]
    fn policy_from_variables() {
        let p = |r, ci| Policy::from_vars(r, ci, None).required;
        assert!(!p(None, None));
        assert!(p(Some("1"), None));
        assert!(p(Some("true"), None));
        assert!(p(None, Some("true")));
        assert!(!p(Some("0"), Some("true")), "explicit 0 wins over CI");
        assert!(p(Some(""), Some("1")), "empty = unset");
        assert!(!p(None, Some("false")));
        let log = Policy::from_vars(None, None, Some(PathBuf::new())).skip_log;
        assert_eq!(log, None, "an empty log path means none");
    }

    #[test]
    fn endpoints() {
        let e = |u| endpoint(u, 5432);
        assert_eq!(
            e("postgres://postgres@127.0.0.1:5432/test"),
            Some(("127.0.0.1".into(), 5432))
        );
        assert_eq!(e("postgres://u:p@db/x?ssl=1"), Some(("db".into(), 5432)));
        assert_eq!(
            e("redis://127.0.0.1:6380"),
            Some(("127.0.0.1".into(), 6380))
        );
        assert_eq!(e("mysql://[::1]:3307/t"), Some(("::1".into(), 3307)));
        assert_eq!(e("mysql://[::1]/t"), Some(("::1".into(), 5432)));
        assert_eq!(e("sqlite::memory:"), None);
        assert_eq!(e("postgres:///test"), None);
    }

    #[test]
    fn database_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "qmq_1"),
            "postgres://postgres@127.0.0.1:5432/qmq_1"
        );
        assert_eq!(
            with_database("mysql://root:pw@db:3306/test?ssl-mode=disabled", "x"),
            "mysql://root:pw@db:3306/x?ssl-mode=disabled"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }

    #[test]
    fn defaults_are_what_services_sh_provisions() {
        let script = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/services.sh"
        ))
        .unwrap();
        for (service, name, default) in [
            (&POSTGRES, "postgres", 5432),
            (&MYSQL, "mariadb", 3306),
            (&REDIS, "redis", 6379),
        ] {
            let (host, port) = endpoint(service.default_url, 0).unwrap();
            assert_eq!((host.as_str(), port), ("127.0.0.1", default));
            assert!(
                script.contains(&format!("{name}) echo {default}")),
                "{name}"
            );
            assert!(script.contains(service.env), "{}", service.env);
        }
        assert!(POSTGRES.default_url.starts_with("postgres://postgres@"));
        assert!(script.contains("127.0.0.1/32 trust") && script.contains("CREATE DATABASE test"));
        assert!(MYSQL.default_url.starts_with("mysql://root@"));
        assert!(script.contains("'root'@'127.0.0.1' IDENTIFIED BY ''"));
        assert!(script.contains("CREATE DATABASE IF NOT EXISTS test"));
        assert!(POSTGRES.default_url.ends_with("/test") && MYSQL.default_url.ends_with("/test"));
    }
}
