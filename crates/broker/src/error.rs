//! Broker errors.

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] qmq_store::StoreError),
    /// A payload could not be decoded.
    #[error(transparent)]
    Decode(#[from] qmq_protocol::DecodeError),
    /// A payload could not be encoded.
    #[error(transparent)]
    Encode(#[from] qmq_protocol::EncodeError),
    /// A socket operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// A replication step (lease call, epoch file) failed.
    #[error(transparent)]
    Replication(#[from] qmq_replication::ReplicationError),
    /// This broker does not serve clients now (a slave, or a master without a lease).
    #[error("this broker is not the master of its group now")]
    NotServing,
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}
