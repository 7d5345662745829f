//! A tiny HTTP/1.1 client for the admin API, used by `shoal mirror …` and `shoal lb rotate`
//! (and handy in tests).
//!
//! One request per connection: the request goes out with `Content-Length`, `Connection: close`
//! and, given a token, `Authorization: Bearer <token>` (a [`BearerToken`] holds only visible
//! ASCII, so it cannot break the header), the whole response is read until the server closes (at most
//! [`MAX_RESPONSE`] bytes), then the status line is parsed and the body taken as it is (or
//! de-chunked for `Transfer-Encoding: chunked`). The whole exchange is bounded by one timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::auth::BearerToken;

/// Largest response read.
pub const MAX_RESPONSE: u64 = 16 << 20;

/// An admin API answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON, when it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Whether the server wanted a bearer token it did not get (or not this one).
    pub fn is_unauthorized(&self) -> bool {
        self.status == 401
    }

    /// The `code` of an error body.
    pub fn code(&self) -> Option<String> {
        self.json()
            .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_string))
    }

    /// The `error` message of an error body, else the body as text.
    pub fn error_message(&self) -> String {
        self.json()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_string())
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminClientError {
    #[error("cannot reach the admin API at {addr}: {error} (is `shoal up` running?)")]
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("the admin API at {addr} did not answer within {timeout:?} (is `shoal up` running?)")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("talking to the admin API at {addr}: {error}")]
    Io {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("the admin API at {addr} sent a malformed response: {why}")]
    BadResponse { addr: SocketAddr, why: String },
}

/// Sends `method path` with an optional JSON `body` and reads the answer within `timeout`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse, AdminClientError> {
    request_with_token(addr, method, path, body, None, timeout).await
}

/// [`request`], presenting `token` (when given) as `Authorization: Bearer <token>`.
pub async fn request_with_token(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&BearerToken>,
    timeout: Duration,
) -> Result<HttpResponse, AdminClientError> {
    match tokio::time::timeout(timeout, exchange(addr, method, path, body, token)).await {
        Ok(r) => r,
        Err(_) => Err(AdminClientError::Timeout { addr, timeout }),
    }
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&BearerToken>,
) -> Result<HttpResponse, AdminClientError> {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|error| AdminClientError::Connect { addr, error })?;
    let io = |error| AdminClientError::Io { addr, error };
    let body = body.unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {}\r\n", t.as_str()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    tcp.write_all(&bytes).await.map_err(io)?;
    let mut raw = Vec::new();
    (&mut tcp)
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .await
        .map_err(io)?;
    parse_response(&raw).map_err(|why| AdminClientError::BadResponse { addr, why })
}

/// Parses a complete HTTP/1.1 response.
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next());
    if !version.starts_with("HTTP/1.") {
        return Err(format!("unexpected status line {status_line:?}"));
    }
    let status = code
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| format!("unexpected status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(n) if n <= rest.len() => rest[..n].to_vec(),
            Some(n) => return Err(format!("body ended after {} of {n} bytes", rest.len())),
            None => rest.to_vec(),
        }
    };
    Ok(HttpResponse { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Percent-encodes one path segment (everything but unreserved characters and `:`).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = parse_response(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, &r.body[..]), (201, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}").is_err());
    }

    #[test]
    fn error_message_comes_from_the_json_body() {
        let r = HttpResponse {
            status: 409,
            body: br#"{"error":"exists","code":"mirror_exists"}"#.to_vec(),
        };
        assert_eq!(r.error_message(), "exists");
        assert_eq!(r.code().as_deref(), Some("mirror_exists"));
        assert!(!r.is_unauthorized());
        assert_eq!(encode_segment("[::1]:7000"), "%5B::1%5D:7000");
    }
}
