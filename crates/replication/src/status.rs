//! What a replicated server is doing, for status lines and tests.

use std::net::SocketAddr;

/// A replicated server's role as it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeStatus {
    /// Asking the meta server for the role.
    Starting,
    /// Copying from the master at this sync address.
    Slave {
        /// The epoch followed.
        epoch: u64,
        /// The master's sync address.
        master: String,
        /// This server's client address.
        addr: SocketAddr,
        /// This server's sync address.
        sync: SocketAddr,
    },
    /// Master of this epoch, serving since its first lease (and while its lease runs).
    Master {
        /// The epoch.
        epoch: u64,
        /// This server's client address.
        addr: SocketAddr,
        /// This server's sync address.
        sync: SocketAddr,
    },
}

impl NodeStatus {
    /// The line a `what` server (`broker`, `delay`) prints for this status: `qmq <what> master
    /// epoch=N addr=... sync=...` or `qmq <what> slave epoch=N addr=... sync=... master=...`;
    /// None while starting. Operators and tests read these lines.
    pub fn line(&self, what: &str) -> Option<String> {
        match self {
            Self::Starting => None,
            Self::Master { epoch, addr, sync } => Some(format!(
                "qmq {what} master epoch={epoch} addr={addr} sync={sync}"
            )),
            Self::Slave {
                epoch,
                master,
                addr,
                sync,
            } => Some(format!(
                "qmq {what} slave epoch={epoch} addr={addr} sync={sync} master={master}"
            )),
        }
    }
}
