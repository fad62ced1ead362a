//! Command codes (requests) and response codes, as numbered by QMQ.
//!
//! The raw `i16` constants in [`command`] and [`response`] are what a header carries; the
//! [`Command`] and [`ResponseCode`] enums give the same numbers a closed type for `match`es and
//! logs. Unknown numbers are legal on the wire (a peer answers them with
//! [`response::UNKNOWN_CODE`]), so the enums convert with `from_code -> Option`.

/// The request code servers put in headers that do not answer anything: the Java broker and
/// delay server send their BROKER_REGISTER / BROKER_ACQUIRE_META requests with it (`0xffff`).
pub const PLACEHOLDER: i16 = -1;

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

macro_rules! code_enum {
    ($(#[$doc:meta])* $name:ident, $module:ident { $($(#[$vdoc:meta])* $variant:ident = $konst:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The wire code.
            pub fn code(self) -> i16 {
                match self {
                    $(Self::$variant => $module::$konst),+
                }
            }

            /// The value for a wire code, `None` for codes QMQ does not define.
            pub fn from_code(code: i16) -> Option<Self> {
                match code {
                    $($module::$konst => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// The name QMQ uses for the code (for logs).
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($konst)),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", self.name(), self.code())
            }
        }
    };
}

code_enum! {
    /// A request's command code as a closed type.
    Command, command {
        /// [`command::SEND_MESSAGE`].
        SendMessage = SEND_MESSAGE,
        /// [`command::PULL_MESSAGE`].
        PullMessage = PULL_MESSAGE,
        /// [`command::ACK_REQUEST`].
        AckRequest = ACK_REQUEST,
        /// [`command::SYNC_LOG_REQUEST`].
        SyncLogRequest = SYNC_LOG_REQUEST,
        /// [`command::SYNC_CHECKPOINT_REQUEST`].
        SyncCheckpointRequest = SYNC_CHECKPOINT_REQUEST,
        /// [`command::QUERY_CONSUMER_LAG`].
        QueryConsumerLag = QUERY_CONSUMER_LAG,
        /// [`command::CONSUME_MANAGE`].
        ConsumeManage = CONSUME_MANAGE,
        /// [`command::QUEUE_COUNT`].
        QueueCount = QUEUE_COUNT,
        /// [`command::ACTION_OFFSET_REQUEST`].
        ActionOffsetRequest = ACTION_OFFSET_REQUEST,
        /// [`command::BROKER_REGISTER`].
        BrokerRegister = BROKER_REGISTER,
        /// [`command::CLIENT_REGISTER`].
        ClientRegister = CLIENT_REGISTER,
        /// [`command::BROKER_ACQUIRE_META`].
        BrokerAcquireMeta = BROKER_ACQUIRE_META,
        /// [`command::UID_ASSIGN`].
        UidAssign = UID_ASSIGN,
        /// [`command::UID_ACQUIRE`].
        UidAcquire = UID_ACQUIRE,
        /// [`command::HEARTBEAT`].
        Heartbeat = HEARTBEAT,
    }
}

code_enum! {
    /// A response's code as a closed type.
    ResponseCode, response {
        /// [`response::SUCCESS`].
        Success = SUCCESS,
        /// [`response::UNKNOWN_CODE`].
        UnknownCode = UNKNOWN_CODE,
        /// [`response::NO_MESSAGE`].
        NoMessage = NO_MESSAGE,
        /// [`response::BROKER_ERROR`].
        BrokerError = BROKER_ERROR,
        /// [`response::BROKER_REJECT`].
        BrokerReject = BROKER_REJECT,
        /// [`response::PARAM_ERROR`].
        ParamError = PARAM_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_java_numbers() {
        let commands: Vec<i16> = Command::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(
            commands,
            [10, 11, 12, 20, 21, 24, 25, 26, 27, 30, 35, 40, 50, 51, 100]
        );
        let responses: Vec<i16> = ResponseCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(responses, [0, 3, 4, 51, 52, 53]);
        for c in Command::ALL {
            assert_eq!(Command::from_code(c.code()), Some(*c));
        }
        for c in ResponseCode::ALL {
            assert_eq!(ResponseCode::from_code(c.code()), Some(*c));
        }
        assert_eq!(Command::from_code(13), None);
        assert_eq!(ResponseCode::from_code(1), None);
        assert_eq!(Command::ClientRegister.to_string(), "CLIENT_REGISTER(35)");
        assert_eq!(PLACEHOLDER as u16, 0xffff);
    }
}
