//! A blocking HTTP/1.1 client for the API socket, for integration tests,
//! `memvisor bench api` and the `memvisor balloon …` commands: one request
//! per connection, `Content-Length` framing, a deadline on the whole
//! exchange and a cap on the answer's size.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::http::{self, DeadlineReader, HeadError};

/// Default deadline for one whole request/response exchange; longer than the
/// server's default reply timeout is pointless, shorter would cut off a slow
/// `InstanceStart`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response body accepted (ours are a few hundred bytes).
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Sends one request and returns the status and body (empty for 204).
pub fn request(
    path: &Path,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> io::Result<(u16, String)> {
    request_with_timeout(path, method, uri, body, DEFAULT_TIMEOUT)
}

/// [`request`] with an explicit deadline for the whole exchange.
pub fn request_with_timeout(
    path: &Path,
    method: &str,
    uri: &str,
    body: Option<&str>,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let stream = UnixStream::connect(path)?;
    stream.set_write_timeout(Some(timeout))?;
    let mut msg = format!(
        "{method} {uri} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if let Some(b) = body {
        msg.push_str("Content-Type: application/json\r\n");
        msg.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    msg.push_str("\r\n");
    let mut w = &stream;
    w.write_all(msg.as_bytes())?;
    if let Some(b) = body {
        // A server that refuses early may close before reading the body;
        // its answer is still worth reading, so a failed write is not fatal.
        if let Err(e) = w.write_all(b.as_bytes()) {
            if e.kind() != io::ErrorKind::BrokenPipe && e.kind() != io::ErrorKind::ConnectionReset {
                return Err(e);
            }
        }
    }
    w.flush()?;
    let mut r = DeadlineReader::new(&stream, timeout);
    read_response(&mut r)
}

fn read_response(r: &mut DeadlineReader) -> io::Result<(u16, String)> {
    loop {
        let (head, rest) = http::read_head(r).map_err(|e| match e {
            HeadError::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        })?;
        let status: u16 = head.start[1]
            .parse()
            .map_err(|_| invalid(format!("bad status line: {:.64}", head.start.join(" "))))?;
        if (100..200).contains(&status) {
            // Interim (100 Continue); the real answer follows. Bytes read
            // past this head belong to the next one, which our server never
            // sends in the same write, so dropping them would be a bug: refuse.
            if !rest.is_empty() {
                return Err(invalid("bytes after an interim response".into()));
            }
            continue;
        }
        if status == 204 || status == 304 {
            return Ok((status, String::new()));
        }
        if head.chunked {
            return Err(invalid("chunked responses are not supported".into()));
        }
        let body = match head.content_length {
            Some(n) => {
                let n = usize::try_from(n)
                    .ok()
                    .filter(|&n| n <= MAX_RESPONSE_BYTES)
                    .ok_or_else(|| invalid(format!("response body of {n} bytes is too large")))?;
                http::read_body(r, rest, n)?
            }
            None => {
                let mut body = rest;
                let mut chunk = [0u8; 4096];
                loop {
                    let n = io::Read::read(r, &mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    if body.len() + n > MAX_RESPONSE_BYTES {
                        return Err(invalid("response body is too large".into()));
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                body
            }
        };
        let body =
            String::from_utf8(body).map_err(|_| invalid("response body is not UTF-8".into()))?;
        return Ok((status, body));
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}
