//! A query forwarded to the instance that holds its partition: one
//! HTTP/1.1 GET, its answer passed back as it came.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The header that counts the hops a query made: a query forwarded twice
/// (a cookie's partition, then its customer's) is not forwarded again, so
/// an assignment seen differently by two instances cannot loop.
pub const HOPS_HEADER: &str = "pretext-forwarded";
pub const MAX_HOPS: u8 = 2;

/// How long a forwarded query may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an answer read back (a full answer is a few hundred KB).
const MAX_ANSWER_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{addr}: {error}")]
    Io { addr: String, error: std::io::Error },
    #[error("{addr}: no answer within {TIMEOUT:?}")]
    TimedOut { addr: String },
    #[error("{addr}: not an HTTP answer")]
    Malformed { addr: String },
}

/// GETs `path` (already percent-encoded, with its query) from `addr`, with
/// the caller's `authorization` and the hop count; (status, body).
pub async fn get(
    addr: &str,
    path: &str,
    authorization: Option<&HeaderValue>,
    hops: u8,
) -> Result<(StatusCode, String), ForwardError> {
    match tokio::time::timeout(TIMEOUT, exchange(addr, path, authorization, hops)).await {
        Ok(answer) => answer,
        Err(_) => Err(ForwardError::TimedOut {
            addr: addr.to_string(),
        }),
    }
}

async fn exchange(
    addr: &str,
    path: &str,
    authorization: Option<&HeaderValue>,
    hops: u8,
) -> Result<(StatusCode, String), ForwardError> {
    let io = |error| ForwardError::Io {
        addr: addr.to_string(),
        error,
    };
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{HOPS_HEADER}: {hops}\r\n"
    );
    if let Some(value) = authorization.and_then(|v| v.to_str().ok()) {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut bytes = Vec::new();
    let mut limited = (&mut stream).take(MAX_ANSWER_BYTES as u64);
    limited.read_to_end(&mut bytes).await.map_err(io)?;
    parse(&bytes).ok_or_else(|| ForwardError::Malformed {
        addr: addr.to_string(),
    })
}

/// The status and body of an HTTP/1.1 answer with a `Content-Length` (as
/// pretext's server gives), read to the connection's close.
fn parse(bytes: &[u8]) -> Option<(StatusCode, String)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse::<u16>().ok()?;
    Some((StatusCode::from_u16(status).ok()?, body.to_string()))
}

/// Every byte but RFC 3986's unreserved characters.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `id` as one path segment: everything but the unreserved characters
/// percent-encoded.
pub fn segment(id: &str) -> String {
    utf8_percent_encode(id, NOT_UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_one_segment_and_answers_parse() {
        assert_eq!(segment("ck_1.a-b~"), "ck_1.a-b~");
        assert_eq!(segment("a/b c%é"), "a%2Fb%20c%25%C3%A9");
        let answer =
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n\r\n{\"error\":\"x\"}";
        assert_eq!(
            parse(answer),
            Some((StatusCode::NOT_FOUND, "{\"error\":\"x\"}".to_string()))
        );
        assert_eq!(parse(b"garbage"), None);
    }
}
