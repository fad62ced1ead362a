//! Meta-server payloads: client registration (routes), broker registration and heartbeats,
//! broker meta acquisition.
//!
//! CLIENT_REGISTER request body: `i16 count`, then `count` (short string key, short string
//! value) pairs: clientId, clientTypeCode, requestType, subject, appCode, consumerGroup and
//! optional others (e.g. clientLDC). Response body:
//!
//! ```text
//! i64 timestamp, short string subject, short string consumer group,
//! u8 on/offline state, u8 client type code,
//! i16 group count, then per group: short string name, short string master address,
//!                                  i64 update time, u8 broker state
//! ```
//!
//! BROKER_REGISTER body: `i32 request type`, short strings group name and broker address,
//! `i32 role`, `i32 state`. qmq-rs servers may append an extension block after these fields,
//! `i16 count` then `count` (short string key, short string value) pairs, to carry the cluster
//! secret (key [`CLUSTER_SECRET_KEY`]); the Java meta server reads only the fields it knows and
//! ignores what follows, so the block does not disturb it, and bodies without it (Java
//! brokers) decode as before. BROKER_ACQUIRE_META request: short string hostname, `i32 port`;
//! response: short strings name and master, `i32 role`.

use bytes::{BufMut, BytesMut};

use crate::wire::{put_string, EncodeError, Reader};
use crate::DecodeError;

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident : $field:literal { $($(#[$vdoc:meta])* $variant:ident = $code:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// The wire code.
            pub fn code(self) -> i32 {
                match self {
                    $(Self::$variant => $code),+
                }
            }

            /// The value for a wire code.
            pub fn from_code(code: i32) -> Result<Self, DecodeError> {
                match code {
                    $($code => Ok(Self::$variant),)+
                    other => Err(DecodeError::UnknownCode { field: $field, code: i64::from(other) }),
                }
            }
        }
    };
}

wire_enum! {
    /// What kind of client is asking for routes.
    ClientType: "client type" {
        /// A producer of realtime messages.
        Producer = 1,
        /// A consumer.
        Consumer = 2,
        /// Anything else.
        Other = 3,
        /// A producer of delay messages (routes to delay servers).
        DelayProducer = 4,
    }
}

wire_enum! {
    /// Why a client calls CLIENT_REGISTER.
    ClientRequestType: "client request type" {
        /// First registration (online).
        Online = 1,
        /// Periodic refresh.
        Heartbeat = 2,
    }
}

wire_enum! {
    /// Whether a consumer should be consuming (set by operators through the meta server).
    OnOfflineState: "on/offline state" {
        /// Consume.
        Online = 0,
        /// Stop consuming.
        Offline = 1,
    }
}

wire_enum! {
    /// What a broker group may do.
    BrokerState: "broker state" {
        /// Read and write.
        ReadWrite = 1,
        /// Read only (no new messages).
        Read = 2,
        /// Write only.
        Write = 3,
        /// Neither.
        None = 4,
    }
}

wire_enum! {
    /// A server's role in its group.
    BrokerRole: "broker role" {
        /// Realtime master.
        Master = 0,
        /// Realtime slave.
        Slave = 1,
        /// Standby.
        Standby = 2,
        /// Delay server.
        Delay = 3,
        /// Realtime backup.
        Backup = 4,
        /// Delay master.
        DelayMaster = 5,
        /// Delay slave.
        DelaySlave = 6,
        /// Delay backup.
        DelayBackup = 7,
    }
}

wire_enum! {
    /// Why a broker calls BROKER_REGISTER.
    BrokerRequestType: "broker request type" {
        /// Coming online.
        Online = 0,
        /// Periodic heartbeat.
        Heartbeat = 1,
        /// Going offline.
        Offline = 2,
    }
}

impl BrokerState {
    /// Whether consumers may read from a group in this state.
    pub fn can_read(self) -> bool {
        matches!(self, Self::ReadWrite | Self::Read)
    }

    /// Whether producers may write to a group in this state.
    pub fn can_write(self) -> bool {
        matches!(self, Self::ReadWrite | Self::Write)
    }
}

impl BrokerRole {
    /// Whether this role belongs to a delay group.
    pub fn is_delay(self) -> bool {
        matches!(
            self,
            Self::Delay | Self::DelayMaster | Self::DelaySlave | Self::DelayBackup
        )
    }
}

/// Well-known CLIENT_REGISTER keys.
pub mod keys {
    /// The subject asked about.
    pub const SUBJECT: &str = "subject";
    /// [`super::ClientType`] code.
    pub const CLIENT_TYPE_CODE: &str = "clientTypeCode";
    /// Application name.
    pub const APP_CODE: &str = "appCode";
    /// Client id.
    pub const CLIENT_ID: &str = "clientId";
    /// Consumer group (consumers).
    pub const CONSUMER_GROUP: &str = "consumerGroup";
    /// [`super::ClientRequestType`] code.
    pub const REQUEST_TYPE: &str = "requestType";
    /// Client data centre.
    pub const CLIENT_LDC: &str = "clientLDC";
    /// Every well-known key.
    pub const ALL: &[&str] = &[
        SUBJECT,
        CLIENT_TYPE_CODE,
        APP_CODE,
        CLIENT_ID,
        CONSUMER_GROUP,
        REQUEST_TYPE,
        CLIENT_LDC,
    ];
}

/// A CLIENT_REGISTER request: the attribute map in wire order, with typed accessors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetaInfoRequest {
    /// The attributes, in the order they were (or will be) written.
    pub attrs: Vec<(String, String)>,
}

impl MetaInfoRequest {
    /// A request with the standard keys, in the Java client's order.
    pub fn new(
        client_id: &str,
        client_type: ClientType,
        request_type: ClientRequestType,
        subject: &str,
        app_code: &str,
        consumer_group: &str,
    ) -> Self {
        let attrs = [
            (keys::CLIENT_ID, client_id.to_owned()),
            (keys::CLIENT_TYPE_CODE, client_type.code().to_string()),
            (keys::REQUEST_TYPE, request_type.code().to_string()),
            (keys::SUBJECT, subject.to_owned()),
            (keys::APP_CODE, app_code.to_owned()),
            (keys::CONSUMER_GROUP, consumer_group.to_owned()),
        ];
        Self {
            attrs: attrs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    /// The value of `key` ("" when absent). A key sent twice keeps its last value, as in the
    /// Java map the meta server reads the body into.
    pub fn get(&self, key: &str) -> &str {
        self.attrs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Sets `key` to `value`, replacing its existing entry in place or appending one.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attrs.iter_mut().rev().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((key.to_owned(), value)),
        }
    }

    /// The client's data centre ("" when absent).
    pub fn client_ldc(&self) -> &str {
        self.get(keys::CLIENT_LDC)
    }

    /// The entries whose keys are none of the well-known [`keys`], in wire order.
    pub fn extra_attrs(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.attrs
            .iter()
            .filter(|(k, _)| !keys::ALL.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The subject ("" when absent).
    pub fn subject(&self) -> &str {
        self.get(keys::SUBJECT)
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        self.get(keys::CLIENT_ID)
    }

    /// The application code.
    pub fn app_code(&self) -> &str {
        self.get(keys::APP_CODE)
    }

    /// The consumer group ("" for producers).
    pub fn consumer_group(&self) -> &str {
        self.get(keys::CONSUMER_GROUP)
    }

    /// The client type; unknown or missing codes mean [`ClientType::Other`], as in QMQ.
    pub fn client_type(&self) -> ClientType {
        self.get(keys::CLIENT_TYPE_CODE)
            .parse()
            .ok()
            .and_then(|c| ClientType::from_code(c).ok())
            .unwrap_or(ClientType::Other)
    }

    /// The request type; missing or unknown codes mean [`ClientRequestType::Online`], as in QMQ.
    pub fn request_type(&self) -> ClientRequestType {
        self.get(keys::REQUEST_TYPE)
            .parse()
            .ok()
            .and_then(|c| ClientRequestType::from_code(c).ok())
            .unwrap_or(ClientRequestType::Online)
    }

    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let count = i16::try_from(self.attrs.len()).map_err(|_| EncodeError::TooMany {
            field: "client register attributes",
            count: self.attrs.len(),
            max: i16::MAX as usize,
        })?;
        out.put_i16(count);
        for (k, v) in &self.attrs {
            put_string(out, k, "attribute key")?;
            put_string(out, v, "attribute value")?;
        }
        Ok(())
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let count = r.i16("attribute count")?;
        if count < 0 {
            return Err(DecodeError::NegativeLength {
                field: "attribute count",
                len: i64::from(count),
            });
        }
        let mut attrs = Vec::new();
        for _ in 0..count {
            attrs.push((r.string("attribute key")?, r.string("attribute value")?));
        }
        r.finish("client register request")?;
        Ok(Self { attrs })
    }
}

/// One broker group in a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerGroup {
    /// Group name.
    pub name: String,
    /// Master address, `host:port`.
    pub master: String,
    /// Last update time, ms since the epoch.
    pub update_time: i64,
    /// What the group may do.
    pub state: BrokerState,
}

/// A CLIENT_REGISTER response: the route of a subject for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaInfoResponse {
    /// Server time of the answer, ms since the epoch.
    pub timestamp: i64,
    /// The subject.
    pub subject: String,
    /// The consumer group ("" for producers).
    pub consumer_group: String,
    /// Whether the consumer should consume.
    pub state: OnOfflineState,
    /// Echo of the request's client type code.
    pub client_type_code: u8,
    /// The broker groups to use.
    pub groups: Vec<BrokerGroup>,
}

impl MetaInfoResponse {
    /// The echoed client type; unknown codes mean [`ClientType::Other`], as in QMQ.
    pub fn client_type(&self) -> ClientType {
        ClientType::from_code(i32::from(self.client_type_code)).unwrap_or(ClientType::Other)
    }

    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_i64(self.timestamp);
        put_string(out, &self.subject, "subject")?;
        put_string(out, &self.consumer_group, "consumer group")?;
        out.put_u8(self.state.code() as u8);
        out.put_u8(self.client_type_code);
        let count = i16::try_from(self.groups.len()).map_err(|_| EncodeError::TooMany {
            field: "broker groups",
            count: self.groups.len(),
            max: i16::MAX as usize,
        })?;
        out.put_i16(count);
        for g in &self.groups {
            put_string(out, &g.name, "group name")?;
            put_string(out, &g.master, "master address")?;
            out.put_i64(g.update_time);
            out.put_u8(g.state.code() as u8);
        }
        Ok(())
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let timestamp = r.i64("timestamp")?;
        let subject = r.string("subject")?;
        let consumer_group = r.string("consumer group")?;
        let state = OnOfflineState::from_code(i32::from(r.u8("on/offline state")?))?;
        let client_type_code = r.u8("client type")?;
        let count = r.i16("group count")?;
        if count < 0 {
            return Err(DecodeError::NegativeLength {
                field: "group count",
                len: i64::from(count),
            });
        }
        let mut groups = Vec::new();
        for _ in 0..count {
            groups.push(BrokerGroup {
                name: r.string("group name")?,
                master: r.string("master address")?,
                update_time: r.i64("update time")?,
                state: BrokerState::from_code(i32::from(r.u8("broker state")?))?,
            });
        }
        r.finish("client register response")?;
        Ok(Self {
            timestamp,
            subject,
            consumer_group,
            state,
            client_type_code,
            groups,
        })
    }
}

/// A BROKER_REGISTER request: a broker or delay server comes online, heartbeats or leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRegisterRequest {
    /// Why it calls.
    pub request_type: BrokerRequestType,
    /// Its group's name.
    pub group_name: String,
    /// Its client-facing address, `host:port`.
    pub broker_address: String,
    /// Its role.
    pub role: BrokerRole,
    /// Its state.
    pub state: BrokerState,
}

/// Key of the cluster secret in the BROKER_REGISTER extension block (a qmq-rs addition).
pub const CLUSTER_SECRET_KEY: &str = "qmqrs.clusterSecret";

impl BrokerRegisterRequest {
    /// Appends the body to `out` (QMQ's fields only, as a Java server sends them).
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_i32(self.request_type.code());
        put_string(out, &self.group_name, "group name")?;
        put_string(out, &self.broker_address, "broker address")?;
        out.put_i32(self.role.code());
        out.put_i32(self.state.code());
        Ok(())
    }

    /// Appends the body and, when `secret` is given, the extension block carrying it, so a
    /// meta server configured with a cluster secret accepts the registration.
    pub fn encode_with_secret(
        &self,
        secret: Option<&str>,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        self.encode(out)?;
        if let Some(secret) = secret {
            out.put_i16(1);
            put_string(out, CLUSTER_SECRET_KEY, "extension key")?;
            put_string(out, secret, "cluster secret")?;
        }
        Ok(())
    }

    /// Decodes a body of QMQ's fields only (what a Java server sends); trailing bytes, an
    /// extension block included, are refused, so what decodes encodes back byte for byte.
    /// The meta server uses [`Self::decode_with_secret`].
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let req = Self::fields(&mut r)?;
        r.finish("broker register request")?;
        Ok(req)
    }

    fn fields(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            request_type: BrokerRequestType::from_code(r.i32("request type")?)?,
            group_name: r.string("group name")?,
            broker_address: r.string("broker address")?,
            role: BrokerRole::from_code(r.i32("broker role")?)?,
            state: BrokerState::from_code(r.i32("broker state")?)?,
        })
    }

    /// Decodes a body and the cluster secret of its extension block, if it has one. Unknown
    /// extension keys are skipped; a negative count or bytes after the block are refused.
    pub fn decode_with_secret(body: &[u8]) -> Result<(Self, Option<String>), DecodeError> {
        let mut r = Reader::new(body);
        let req = Self::fields(&mut r)?;
        let mut secret = None;
        if !r.is_empty() {
            let count = r.i16("extension count")?;
            if count < 0 {
                return Err(DecodeError::NegativeLength {
                    field: "extension count",
                    len: i64::from(count),
                });
            }
            for _ in 0..count {
                let key = r.short_bytes("extension key")?;
                let value = r.string("extension value")?;
                if key == CLUSTER_SECRET_KEY.as_bytes() {
                    secret = Some(value);
                }
            }
        }
        r.finish("broker register request")?;
        Ok((req, secret))
    }
}

/// A BROKER_ACQUIRE_META request: a server asks which group and role it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAcquireMetaRequest {
    /// The server's hostname.
    pub hostname: String,
    /// The server's serving port.
    pub port: i32,
}

impl BrokerAcquireMetaRequest {
    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        put_string(out, &self.hostname, "hostname")?;
        out.put_i32(self.port);
        Ok(())
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let req = Self {
            hostname: r.string("hostname")?,
            port: r.i32("port")?,
        };
        r.finish("broker acquire meta request")?;
        Ok(req)
    }
}

/// A BROKER_ACQUIRE_META response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAcquireMetaResponse {
    /// The server's group name.
    pub name: String,
    /// The sync address of the master to replicate from ("" for masters).
    pub master: String,
    /// The server's role.
    pub role: BrokerRole,
}

impl BrokerAcquireMetaResponse {
    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        put_string(out, &self.name, "group name")?;
        put_string(out, &self.master, "master")?;
        out.put_i32(self.role.code());
        Ok(())
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let resp = Self {
            name: r.string("group name")?,
            master: r.string("master")?,
            role: BrokerRole::from_code(r.i32("broker role")?)?,
        };
        r.finish("broker acquire meta response")?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> BrokerRegisterRequest {
        BrokerRegisterRequest {
            request_type: BrokerRequestType::Heartbeat,
            group_name: "dev".into(),
            broker_address: "127.0.0.1:20881".into(),
            role: BrokerRole::Master,
            state: BrokerState::ReadWrite,
        }
    }

    #[test]
    fn broker_register_carries_the_cluster_secret_after_the_qmq_fields() {
        let req = request();
        let mut plain = BytesMut::new();
        req.encode(&mut plain).unwrap();
        let mut with = BytesMut::new();
        req.encode_with_secret(Some("s3cret"), &mut with).unwrap();
        // The QMQ fields come first and unchanged: a Java meta server reads them and stops.
        assert!(with.starts_with(&plain));
        assert_eq!(
            BrokerRegisterRequest::decode_with_secret(&with).unwrap(),
            (req.clone(), Some("s3cret".to_owned()))
        );
        assert!(
            BrokerRegisterRequest::decode(&with).is_err(),
            "QMQ's exact body only"
        );
        assert_eq!(
            BrokerRegisterRequest::decode_with_secret(&plain).unwrap(),
            (req.clone(), None)
        );
        let mut none = BytesMut::new();
        req.encode_with_secret(None, &mut none).unwrap();
        assert_eq!(none, plain);
    }

    #[test]
    fn broker_register_extension_skips_unknown_keys_and_refuses_garbage() {
        let req = request();
        let mut body = BytesMut::new();
        req.encode(&mut body).unwrap();
        body.put_i16(2);
        put_string(&mut body, "other", "k").unwrap();
        put_string(&mut body, "x", "v").unwrap();
        put_string(&mut body, CLUSTER_SECRET_KEY, "k").unwrap();
        put_string(&mut body, "abc", "v").unwrap();
        let (_, secret) = BrokerRegisterRequest::decode_with_secret(&body).unwrap();
        assert_eq!(secret.as_deref(), Some("abc"));
        body.put_u8(7);
        assert!(BrokerRegisterRequest::decode_with_secret(&body).is_err());
        for count in [1, -1] {
            let mut short = BytesMut::new();
            req.encode(&mut short).unwrap();
            short.put_i16(count);
            assert!(BrokerRegisterRequest::decode_with_secret(&short).is_err());
        }
    }
}
