//! Command codes (requests) and response codes, as numbered by QMQ.

/// Command codes carried in a request header's `code`.
pub mod command {
    /// A batch of messages from a producer (to a broker or delay server).
    pub const SEND_MESSAGE: i16 = 10;
    /// A consumer pulls messages.
    pub const PULL_MESSAGE: i16 = 11;
    /// A consumer acknowledges a range of pulled messages.
    pub const ACK_REQUEST: i16 = 12;
    /// Slave pulls log data from its master.
    pub const SYNC_LOG_REQUEST: i16 = 20;
    /// Slave pulls a checkpoint from its master.
    pub const SYNC_CHECKPOINT_REQUEST: i16 = 21;
    /// Query a consumer group's lag.
    pub const QUERY_CONSUMER_LAG: i16 = 24;
    /// Consumer management (e.g. reset offset) from the meta server to a broker.
    pub const CONSUME_MANAGE: i16 = 25;
    /// Query a subject's message count.
    pub const QUEUE_COUNT: i16 = 26;
    /// Query action log offsets.
    pub const ACTION_OFFSET_REQUEST: i16 = 27;
    /// A broker or delay server registers / heartbeats with the meta server.
    pub const BROKER_REGISTER: i16 = 30;
    /// A client asks the meta server for routes (and reports online / heartbeat).
    pub const CLIENT_REGISTER: i16 = 35;
    /// A broker asks the meta server for its own group, role and master.
    pub const BROKER_ACQUIRE_META: i16 = 40;
    /// Id assignment.
    pub const UID_ASSIGN: i16 = 50;
    /// Id acquisition.
    pub const UID_ACQUIRE: i16 = 51;
    /// Connection keep-alive.
    pub const HEARTBEAT: i16 = 100;
}

/// Response codes carried in a response header's `code`.
pub mod response {
    /// The request succeeded.
    pub const SUCCESS: i16 = 0;
    /// The receiver does not know the request's command code.
    pub const UNKNOWN_CODE: i16 = 3;
    /// A pull found no message (also the answer to a malformed pull).
    pub const NO_MESSAGE: i16 = 4;
    /// The receiver failed to handle the request.
    pub const BROKER_ERROR: i16 = 51;
    /// The receiver refuses the request (e.g. it is not the right broker).
    pub const BROKER_REJECT: i16 = 52;
    /// The request's parameters are invalid.
    pub const PARAM_ERROR: i16 = 53;
}
