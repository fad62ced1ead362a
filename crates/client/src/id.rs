//! Message ids in QMQ's format: `yyMMdd.HHmmss.<host>.<pid>.<counter>` (local time), so ids from
//! this client look like the Java client's and stay unique per process and host. Client ids,
//! the host name and the pid come from [`qmq_transport::identity`], which the meta router shares.

use std::cell::RefCell;
use std::fmt::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use qmq_transport::identity::pid;
pub use qmq_transport::identity::{client_id, local_host};

static COUNTER: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// This thread's id prefix (`yyMMdd.HHmmss.<host>.<pid>.`), the Unix second and host it
    /// was made for: formatting the local time costs far more than the rest of an id, and
    /// it changes once a second.
    static PREFIX: RefCell<(u64, String, String)> = const { RefCell::new((u64::MAX, String::new(), String::new())) };
}

/// A new message id for a message sent from `host`.
pub fn next_id(host: &str) -> String {
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    PREFIX.with(|p| {
        let (at, for_host, prefix) = &mut *p.borrow_mut();
        // Local-time offsets are whole minutes, so local seconds turn with Unix seconds.
        if *at != second || for_host != host {
            prefix.clear();
            let now = chrono::Local::now();
            let _ = write!(prefix, "{}.{host}.{}.", now.format("%y%m%d.%H%M%S"), pid());
            *at = second;
            host.clone_into(for_host);
        }
        let mut id = String::with_capacity(prefix.len() + 10);
        id.push_str(prefix);
        let _ = write!(id, "{n}");
        id
    })
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
        // The time part is the local time the id was made at.
        let before = chrono::Local::now().format("%y%m%d.%H%M%S").to_string();
        let c = super::next_id("10.0.0.1");
        let after = chrono::Local::now().format("%y%m%d.%H%M%S").to_string();
        assert!(
            c[..13] == before || c[..13] == after,
            "{c} made between {before} and {after}"
        );
        assert!(c.ends_with(&format!(
            ".{}.{}",
            std::process::id(),
            c.rsplit('.').next().unwrap()
        )));
        // Another host gets its own prefix.
        assert!(super::next_id("h2").contains(".h2."));
    }
}
