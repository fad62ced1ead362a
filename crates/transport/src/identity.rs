//! Who this process is on the wire: the host name it reports and the client ids it registers
//! with (`<host>@<pid>@<n>`, as QMQ's Java client builds them).
//!
//! One counter serves every client id of the process (the client's consumers and the
//! [`MetaRouter`](crate::MetaRouter)s alike), so no two of them share an id.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

static CLIENTS: AtomicU32 = AtomicU32::new(0);

/// This process's id, read once (`getpid` is a system call).
pub fn pid() -> u32 {
    static PID: OnceLock<u32> = OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// The host name put in ids (`$HOSTNAME`, else the loopback address), read once.
pub fn local_host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| std::env::var("HOSTNAME").unwrap_or_else(|_| "127.0.0.1".into()))
}

/// A client id unique per client instance in this process: `<host>@<pid>@<n>`.
pub fn client_id() -> String {
    format!(
        "{}@{}@{}",
        local_host(),
        pid(),
        CLIENTS.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_ids_are_unique_and_name_host_and_pid() {
        let a = super::client_id();
        let b = super::client_id();
        assert_ne!(a, b);
        let prefix = format!("{}@{}@", super::local_host(), std::process::id());
        assert!(a.starts_with(&prefix), "{a} starts with {prefix}");
        assert!(b.starts_with(&prefix), "{b} starts with {prefix}");
    }
}
