//! A minimal HTTP/1.1 client (hyper) for the tools and the broker directives API.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::MetaError;

/// Header carrying the admin token (as in QMQ).
pub const TOKEN_HEADER: &str = "X-Api-Token";

/// How long one exchange may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The JSON envelope of every admin / broker API answer (QMQ's `{status, message, data}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiResult<T> {
    /// 0 = success, -1 = error.
    pub status: i32,
    /// Error text ("" on success).
    pub message: String,
    /// The result.
    pub data: Option<T>,
}

/// A request body and its content type.
#[derive(Debug, Clone)]
pub struct Body {
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// The encoded body.
    pub bytes: Vec<u8>,
}

/// Sends one request to `addr` (`host:port`) and returns the status and body.
pub async fn send(
    addr: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Body>,
) -> Result<(u16, Bytes), MetaError> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| MetaError::Http(format!("cannot connect to {addr}: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| MetaError::Http(format!("handshake with {addr}: {e}")))?;
        let driver = tokio::spawn(conn);
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, addr);
        if let Some(t) = token {
            builder = builder.header(TOKEN_HEADER, t);
        }
        let bytes = match body {
            Some(b) => {
                builder = builder.header(CONTENT_TYPE, b.content_type);
                b.bytes
            }
            None => Vec::new(),
        };
        let req = builder
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| MetaError::Http(format!("bad request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| MetaError::Http(format!("request to {addr} failed: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| MetaError::Http(format!("reading answer from {addr}: {e}")))?
            .to_bytes();
        driver.abort();
        Ok((status, body))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| MetaError::Http(format!("{addr} did not answer within {TIMEOUT:?}")))?
}

/// Calls a JSON API endpoint and unwraps the envelope: errors become [`MetaError::Remote`].
pub async fn call<T: DeserializeOwned>(
    addr: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<T, MetaError> {
    let json = body
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|e| MetaError::Http(e.to_string()))?
        .map(|bytes| Body {
            content_type: "application/json",
            bytes,
        });
    let (status, bytes) = send(addr, method, path, token, json).await?;
    unwrap_envelope(status, &bytes)
}

/// The data of a successful answer; errors become [`MetaError::Remote`].
fn unwrap_envelope<T: DeserializeOwned>(status: u16, bytes: &[u8]) -> Result<T, MetaError> {
    let parsed: Result<ApiResult<T>, _> = serde_json::from_slice(bytes);
    match parsed {
        Ok(r) if r.status == 0 && (200..300).contains(&status) => r
            .data
            .ok_or_else(|| MetaError::Http("answer without data".into())),
        Ok(r) => Err(MetaError::Remote {
            status,
            message: r.message,
        }),
        Err(_) => Err(MetaError::Remote {
            status,
            message: String::from_utf8_lossy(bytes).into_owned(),
        }),
    }
}
