//! Master/slave replication and automatic failover of a broker group, on top of the shared
//! pieces in `qmq_replication` (write gate, leases, epochs):
//! - [`sync_server`]: the sync port, serving this broker's message and action logs;
//! - [`follower`]: a slave's copy loops;
//! - [`node`]: a replicated broker's life, role by role.

pub mod follower;
pub mod node;
pub mod sync_server;

pub use qmq_replication::{Gate, ReplicationMode, SyncTimeout};
