//! Message ids in QMQ's format: `yyMMdd.HHmmss.<host>.<pid>.<counter>` (local time), so ids from
//! this client look like the Java client's and stay unique per process and host; and client ids.

use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);
static CLIENTS: AtomicU32 = AtomicU32::new(0);

/// A new message id for a message sent from `host`.
pub fn next_id(host: &str) -> String {
    let now = chrono::Local::now();
    format!(
        "{}.{}.{}.{}",
        now.format("%y%m%d.%H%M%S"),
        host,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The host name put in ids (`$HOSTNAME`, else the loopback address).
pub fn local_host() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "127.0.0.1".into())
}

/// A client id unique per client instance: `<host>@<pid>@<n>`.
pub fn client_id() -> String {
    format!(
        "{}@{}@{}",
        local_host(),
        std::process::id(),
        CLIENTS.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_have_qmq_shape_and_are_unique() {
        let a = super::next_id("10.0.0.1");
        let b = super::next_id("10.0.0.1");
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('.').collect();
        // yyMMdd . HHmmss . 10 . 0 . 0 . 1 . pid . counter
        assert_eq!(parts[0].len(), 6);
        assert_eq!(parts[1].len(), 6);
        assert_eq!(parts.len(), 8);
        assert_ne!(super::client_id(), super::client_id());
    }
}
