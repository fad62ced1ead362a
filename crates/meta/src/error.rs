//! The meta server's error type.

/// Everything that can go wrong in the meta server, its store, admin API and tools.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The database refused or failed a query (includes "database unreachable").
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A socket or file operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A request parameter is missing or invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The thing the request refers to does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request conflicts with existing state (duplicate names, roles, addresses).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The admin token is missing or not in the configured list.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// No usable broker group exists to route a subject to.
    #[error("no broker group available for subject {0}")]
    NoBrokerGroups(String),
    /// Data in the database could not be interpreted.
    #[error("corrupt data in the meta database: {0}")]
    Corrupt(String),
    /// An HTTP exchange with the meta server failed (tools, broker API client).
    #[error("http error: {0}")]
    Http(String),
    /// The meta server answered an admin or broker API call with an error.
    #[error("meta server refused the request (HTTP {status}): {message}")]
    Remote {
        /// HTTP status code.
        status: u16,
        /// The server's message.
        message: String,
    },
}
