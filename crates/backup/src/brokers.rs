//! The followed broker groups' addresses, and the two requests the backup makes besides
//! following: reading stored messages (FETCH_MESSAGES on the sync port, for a message's body
//! fetched live from its broker) and sending (SEND_MESSAGE to the client port, for replaying
//! dead letters).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use bytes::BytesMut;
use qmq_protocol::codes::{command, response};
use qmq_protocol::send::{decode_send_response, encode_send_request};
use qmq_protocol::{
    FetchMessagesRequest, FetchMessagesResponse, Message, SendFailure, StoredRecord, FETCH_MESSAGES,
};
use qmq_transport::Connection;

use crate::BackupError;

/// Where one broker group is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupAddrs {
    /// The sync address followed (the slave's where there is one).
    pub sync: String,
    /// The master's client address, where messages are sent; without it the group's dead
    /// letters cannot be replayed.
    pub client: Option<String>,
}

/// The followed groups' addresses, updated as the server follows groups.
#[derive(Debug)]
pub struct Brokers {
    groups: RwLock<HashMap<String, GroupAddrs>>,
    timeout: Duration,
}

impl Default for Brokers {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

impl Brokers {
    /// No groups yet; requests time out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            groups: RwLock::new(HashMap::new()),
            timeout,
        }
    }

    /// Records (or replaces) `group`'s addresses.
    pub fn set(&self, group: &str, addrs: GroupAddrs) {
        let mut g = self.groups.write().unwrap_or_else(|e| e.into_inner());
        g.insert(group.to_owned(), addrs);
    }

    /// `group`'s addresses, if followed.
    pub fn get(&self, group: &str) -> Option<GroupAddrs> {
        let g = self.groups.read().unwrap_or_else(|e| e.into_inner());
        g.get(group).cloned()
    }

    /// One request of `code` with `body` to `addr` on a new connection: the answer's body
    /// once its code says SUCCESS (`what` names the request in the error otherwise).
    async fn call(
        &self,
        addr: &str,
        code: i16,
        body: bytes::Bytes,
        what: &str,
    ) -> Result<bytes::Bytes, BackupError> {
        let failed = |source| BackupError::Connection {
            addr: addr.to_owned(),
            source,
        };
        let conn = Connection::connect(addr).await.map_err(failed)?;
        let resp = conn
            .request(code, body, self.timeout)
            .await
            .map_err(failed)?;
        if resp.header.code != response::SUCCESS {
            return Err(BackupError::BrokerAnswer {
                addr: addr.to_owned(),
                reason: format!("{what} answered code {}", resp.header.code),
            });
        }
        Ok(resp.body)
    }

    /// The stored messages of `subject` at `sequences` on `group` (those it still has).
    pub async fn fetch(
        &self,
        group: &str,
        subject: &str,
        sequences: Vec<i64>,
    ) -> Result<Vec<StoredRecord>, BackupError> {
        let addr = self
            .get(group)
            .map(|a| a.sync)
            .ok_or_else(|| BackupError::UnknownGroup {
                group: group.to_owned(),
                what: "sync",
            })?;
        let mut body = BytesMut::new();
        FetchMessagesRequest {
            subject: subject.to_owned(),
            sequences,
        }
        .encode(&mut body)
        .map_err(|e| BackupError::Invalid(e.to_string()))?;
        let answer = self
            .call(&addr, FETCH_MESSAGES, body.freeze(), "FETCH_MESSAGES")
            .await?;
        FetchMessagesResponse::decode(&answer)
            .map(|r| r.records)
            .map_err(|e| BackupError::BrokerAnswer {
                addr,
                reason: format!("unreadable FETCH_MESSAGES answer: {e}"),
            })
    }

    /// Sends `messages` to `group`'s master; one entry per message, `None` when stored.
    pub async fn send(
        &self,
        group: &str,
        messages: &[Message],
    ) -> Result<Vec<Option<SendFailure>>, BackupError> {
        let addr =
            self.get(group)
                .and_then(|a| a.client)
                .ok_or_else(|| BackupError::UnknownGroup {
                    group: group.to_owned(),
                    what: "client",
                })?;
        let mut body = BytesMut::new();
        encode_send_request(messages, &mut body)
            .map_err(|e| BackupError::Invalid(format!("cannot encode a replay: {e}")))?;
        let answer = self
            .call(&addr, command::SEND_MESSAGE, body.freeze(), "SEND_MESSAGE")
            .await?;
        let mut failures =
            decode_send_response(&answer).map_err(|e| BackupError::BrokerAnswer {
                addr,
                reason: format!("unreadable send answer: {e}"),
            })?;
        Ok(messages
            .iter()
            .map(|m| {
                let at = failures.iter().position(|f| f.message_id == m.message_id)?;
                Some(failures.swap_remove(at))
            })
            .collect())
    }
}
