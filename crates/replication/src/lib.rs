//! Master/slave replication pieces shared by the broker and the delay server.
//!
//! A replicated server learns its role from the meta server (GROUP_LEASE, see
//! `qmq_protocol::replication`), never from local configuration:
//! - the **master** serves clients while it holds a lease from the meta server ([`Gate`]), and
//!   serves its logs on the sync port;
//! - a **slave** answers every client request `BROKER_REJECT` and copies the master's logs.
//!
//! Promotions are a conditional update of the group's epoch in the meta database (see the meta
//! crate), so there is one master per epoch. A server that comes back as a slave first cuts what
//! it holds beyond the data it shares with the current master ([`epoch::cut_points`]).
//!
//! - [`gate`]: may this server serve now; is a write replicated enough to acknowledge.
//! - [`lease`]: the GROUP_LEASE call.
//! - [`epoch`]: the epoch a server's data comes from, and where to cut when rejoining.
//! - [`status`]: the role a server runs as, and its status line.

pub mod epoch;
pub mod gate;
pub mod lease;
pub mod status;

pub use gate::{Gate, ReplicationMode, ReplicationStats, SyncTimeout};
pub use lease::{Granted, LeaseClient, Report};
pub use status::NodeStatus;

/// Why a replication step failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// A file or socket operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// A payload could not be decoded.
    #[error(transparent)]
    Decode(#[from] qmq_protocol::DecodeError),
    /// A payload could not be encoded.
    #[error(transparent)]
    Encode(#[from] qmq_protocol::EncodeError),
}
