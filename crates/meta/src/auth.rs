//! Who may change the meta server's state.
//!
//! - Admin calls carry a token (`X-Api-Token`) that must be one of [`MetaConfig::admin_tokens`].
//! - Brokers and delay servers registering over TCP (BROKER_REGISTER: online, heartbeat and
//!   offline alike) must present the cluster secret ([`MetaConfig::cluster_secret`]) in the
//!   request's extension block (see `qmq_protocol::meta`), or connect from an address listed in
//!   [`MetaConfig::trusted_broker_addrs`]. The trusted list exists for Java servers, which cannot
//!   send the secret. With neither setting the meta server accepts every registration, as QMQ
//!   does (and logs a warning at start-up).
//!
//! Secrets are compared in constant time: both sides are hashed with SHA-256 (so the length of
//! a configured secret does not show either) and the digests compared with `subtle`.

use std::net::IpAddr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{MetaConfig, MetaError};

/// Whether `given` equals `expected`, in time that does not depend on where they differ.
pub fn secret_matches(given: &[u8], expected: &[u8]) -> bool {
    let a = Sha256::digest(given);
    let b = Sha256::digest(expected);
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// Whether `given` is one of `tokens`. Every token is compared (no early exit), so the time
/// taken does not tell which one matched or how close a guess came.
pub fn token_accepted(given: &str, tokens: &[String]) -> bool {
    tokens.iter().fold(false, |found, t| {
        found | secret_matches(given.as_bytes(), t.as_bytes())
    })
}

/// Whether the server at `peer`, presenting `secret` (if any), may register a broker group.
/// The refusal says why, for the log; the peer is told nothing but the refusal code.
pub(crate) fn check_registration(
    config: &MetaConfig,
    peer: IpAddr,
    secret: Option<&str>,
) -> Result<(), MetaError> {
    let peer = peer.to_canonical();
    let trusted = || {
        config
            .trusted_broker_addrs
            .iter()
            .any(|a| a.to_canonical() == peer)
    };
    match (&config.cluster_secret, secret) {
        (None, _) if config.trusted_broker_addrs.is_empty() => Ok(()),
        (Some(expected), Some(given)) => {
            if secret_matches(given.as_bytes(), expected.as_bytes()) {
                Ok(())
            } else {
                Err(MetaError::Unauthorized(format!(
                    "wrong cluster secret from {peer}"
                )))
            }
        }
        _ if trusted() => Ok(()),
        (Some(_), None) => Err(MetaError::Unauthorized(format!(
            "registration from {peer} without the cluster secret (and not a trusted broker address)"
        ))),
        (None, _) => Err(MetaError::Unauthorized(format!(
            "registration from {peer}, which is not a trusted broker address"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_exactly() {
        let key = b"0123456789abcdef-secret";
        assert!(secret_matches(key, key));
        let mut near = key.to_vec();
        for i in 0..near.len() {
            near[i] ^= 1;
            assert!(!secret_matches(&near, key), "differs at byte {i}");
            near[i] ^= 1;
        }
        assert!(!secret_matches(&key[..key.len() - 1], key), "prefix");
        assert!(!secret_matches(b"0123456789abcdef-secretX", key), "longer");
        assert!(!secret_matches(b"", key));
        assert!(!secret_matches(key, b""));
    }

    #[test]
    fn a_token_is_accepted_only_if_configured() {
        let tokens = vec!["alpha-token".to_owned(), "beta-token".to_owned()];
        assert!(token_accepted("alpha-token", &tokens));
        assert!(token_accepted("beta-token", &tokens));
        for near in [
            "alpha-toke",
            "alpha-tokenn",
            "Alpha-token",
            "alpha-tokem",
            "",
        ] {
            assert!(!token_accepted(near, &tokens), "{near}");
        }
        assert!(!token_accepted("alpha-token", &[]));
    }

    fn config(secret: Option<&str>, trusted: &[&str]) -> MetaConfig {
        MetaConfig {
            cluster_secret: secret.map(str::to_owned),
            trusted_broker_addrs: trusted.iter().map(|a| a.parse().unwrap()).collect(),
            ..MetaConfig::default()
        }
    }

    #[test]
    fn registration_policy() {
        let outsider: IpAddr = "10.9.9.9".parse().unwrap();
        let java: IpAddr = "10.0.0.5".parse().unwrap();
        // Open, as QMQ.
        assert!(check_registration(&config(None, &[]), outsider, None).is_ok());
        // Secret set: the secret or a trusted address.
        let c = config(Some("k"), &["10.0.0.5"]);
        assert!(check_registration(&c, outsider, Some("k")).is_ok());
        assert!(check_registration(&c, outsider, None).is_err());
        assert!(check_registration(&c, outsider, Some("K")).is_err());
        assert!(check_registration(&c, java, None).is_ok());
        assert!(check_registration(&c, java, Some("wrong")).is_err());
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert!(check_registration(&c, mapped, None).is_ok());
        // Only a trusted list: nobody else.
        let c = config(None, &["10.0.0.5"]);
        assert!(check_registration(&c, java, None).is_ok());
        assert!(check_registration(&c, outsider, None).is_err());
        assert!(check_registration(&c, outsider, Some("anything")).is_err());
    }
}
