//! What a broker learns from the meta server besides its route entries.
//!
//! A broker registers and heartbeats over TCP (BROKER_REGISTER, every few seconds; the meta
//! server marks its group `NRW` after `heartbeat_timeout_ms` without one) and learns its group
//! and role with BROKER_ACQUIRE_META. Operator decisions that concern it — readonly marks and
//! reset-offset requests — it pulls over HTTP:
//!
//! `GET /broker/directives?group=<group>&after=<last applied reset id>` answers
//! `{"status":0,"message":"","data":BrokerDirectives}`. Reset requests carry increasing ids;
//! the broker applies those it has not applied yet (for subjects it serves), remembers the
//! highest id it applied durably, and passes it as `after` next time, so every request is
//! applied exactly once per broker even across restarts of either side.

use hyper::Method;
use serde::{Deserialize, Serialize};

use crate::model::ResetOffsetRequest;
use crate::{http_client, MetaError};

/// The directives for one broker group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerDirectives {
    /// The group asked about.
    pub group: String,
    /// Whether the group is registered (a master has sent BROKER_REGISTER).
    pub registered: bool,
    /// Subjects (or `*`) producers no longer send to this group for; consumption continues.
    pub readonly_subjects: Vec<String>,
    /// Reset-offset requests with an id above `after`, for subjects this group serves.
    pub reset_offsets: Vec<ResetOffsetRequest>,
    /// The highest request id examined (pass it as `after` next time).
    pub last_id: i64,
}

/// Fetches the directives of `group` from the meta server's HTTP address (`host:port`).
pub async fn fetch_directives(
    meta_http: &str,
    group: &str,
    after: i64,
) -> Result<BrokerDirectives, MetaError> {
    let path = format!("/broker/directives?group={}&after={after}", encode(group));
    http_client::call(meta_http, Method::GET, &path, None, None).await
}

/// Percent-encodes a query value.
pub(crate) fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
