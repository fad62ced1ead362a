//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong in the backup server.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The index store could not be opened.
    #[error("cannot open the backup index at {path}: {source}")]
    Open {
        /// The store's file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<redb::DatabaseError>,
    },
    /// The index store failed (I/O, corruption, ...).
    #[error("backup index store: {0}")]
    Store(String),
    /// The stored index holds a key or value it cannot read.
    #[error("backup index: unreadable {what}")]
    Corrupt {
        /// What could not be read.
        what: &'static str,
    },
    /// A broker's sync answer could not be decoded.
    #[error("bad sync answer from {addr}: {source}")]
    BadAnswer {
        /// The broker's sync address.
        addr: String,
        /// The decoding error.
        #[source]
        source: qmq_protocol::DecodeError,
    },
    /// A broker refused a sync request.
    #[error("broker {addr} answered the index request for offset {offset} with code {code}")]
    Refused {
        /// The broker's sync address.
        addr: String,
        /// The requested offset.
        offset: u64,
        /// The response code.
        code: i16,
    },
    /// The requested offset is past the broker's message log (`PARAM_ERROR`): the broker's
    /// data is not the one this index followed (replaced or wiped), or the group name points
    /// at another group's broker.
    #[error(
        "broker {addr} has no message log offset {offset} (past its end): was its data \
         replaced, or is this another group's broker?"
    )]
    BeyondEnd {
        /// The broker's sync address.
        addr: String,
        /// The requested offset.
        offset: u64,
    },
    /// The broker's answer went backwards (its next offset is below the requested one).
    #[error("broker {addr} answered offset {next} to a request from {offset}")]
    WentBackwards {
        /// The broker's sync address.
        addr: String,
        /// The requested offset.
        offset: u64,
        /// The offset the broker answered.
        next: i64,
    },
    /// A network failure talking to a broker.
    #[error("sync connection to {addr}: {source}")]
    Connection {
        /// The broker's sync address.
        addr: String,
        /// The failure.
        #[source]
        source: qmq_transport::ConnectionError,
    },
    /// The stored offset is not where the caller applied a chunk from (another writer, or a
    /// stale chunk).
    #[error("index of {group} is at offset {stored:?}, not {from}")]
    OffsetMismatch {
        /// The broker group.
        group: String,
        /// The stored offset.
        stored: Option<u64>,
        /// The offset the chunk was asked from.
        from: u64,
    },
    /// A broker sent an index record that cannot be stored.
    #[error("bad index record from {group}: {reason}")]
    BadRecord {
        /// The broker group.
        group: String,
        /// What is wrong.
        reason: String,
    },
    /// A broker sent action-log bytes that are not whole, intact action records (bad frame,
    /// CRC mismatch, undecodable action): the chunk is refused whole.
    #[error("bad action log from {group} at offset {offset}: {reason}")]
    BadActions {
        /// The broker group.
        group: String,
        /// The action-log offset of the bad record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A paging cursor that is not one this query gave out.
    #[error("bad paging cursor")]
    BadCursor,
    /// An I/O failure outside the store (listening, ...).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A broker group the backup does not follow, or has no address of the needed kind for.
    #[error("no {what} address known for broker group {group}")]
    UnknownGroup {
        /// The broker group.
        group: String,
        /// `sync` (to read messages) or `client` (to send replays: `--broker GROUP=HOST:PORT`).
        what: &'static str,
    },
    /// A broker answered a request with something other than success, or an unreadable body.
    #[error("broker {addr}: {reason}")]
    BrokerAnswer {
        /// The broker's address.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// A request the caller got wrong (unknown dead letter, bad parameter, ...).
    #[error("{0}")]
    Invalid(String),
    /// A blocking store task failed to run.
    #[error("backup index task: {0}")]
    Task(String),
}

macro_rules! store_err {
    ($($t:ty),*) => {$(
        impl From<$t> for BackupError {
            fn from(e: $t) -> Self {
                Self::Store(e.to_string())
            }
        }
    )*};
}
store_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
