//! Just enough HTTP/1.1 for the control socket, on both ends.
//!
//! Why not tiny_http's request handling: its body reader, when a request is
//! dropped with its body unread, drains the rest into `vec![0; remaining]`
//! (util/equal_reader.rs), so one `Content-Length: 1000000000000` header and
//! no body aborts the VMM on the failed allocation; and it exposes no socket
//! timeouts, so a client that stops mid-body stalls the API thread forever.
//! Here every read has a byte cap and a deadline, one request is served per
//! connection (`Connection: close`, which every client handles), and bodies
//! are `Content-Length` framed (no chunked uploads, as with Firecracker's
//! micro-http).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest request or response head (request line and headers) accepted.
pub(crate) const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Why a message head could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("the peer closed the connection before sending a message")]
    Closed,
    #[error("the message head is larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("malformed HTTP message: {0}")]
    Malformed(String),
    #[error("reading the message")]
    Io(#[from] io::Error),
}

/// Reads from a Unix stream with a whole-message deadline, so a peer that
/// sends one byte a second cannot hold the other end for longer than it; and,
/// given a stop flag, gives up within [`STOP_SLICE`] of it being raised, so a
/// stalled client cannot delay the VMM's teardown.
pub(crate) struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
    stop: Option<&'a AtomicBool>,
}

/// How often a blocked read looks at the stop flag.
pub(crate) const STOP_SLICE: Duration = Duration::from_millis(50);

impl<'a> DeadlineReader<'a> {
    pub(crate) fn new(stream: &'a UnixStream, timeout: Duration) -> Self {
        Self {
            stream,
            deadline: Instant::now() + timeout,
            stop: None,
        }
    }

    pub(crate) fn with_stop(mut self, stop: &'a AtomicBool) -> Self {
        self.stop = Some(stop);
        self
    }

    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let left = self
                .remaining()
                .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))?;
            let slice = if self.stop.is_some() {
                left.min(STOP_SLICE)
            } else {
                left
            };
            self.stream.set_read_timeout(Some(slice))?;
            match self.stream.read(buf) {
                // SO_RCVTIMEO expiring shows up as EAGAIN.
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    if self.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                        // Not Interrupted: read_exact would retry that.
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "shutting down",
                        ));
                    }
                }
                r => return r,
            }
        }
    }
}

/// A parsed head: the first line's three parts and the headers that matter.
#[derive(Debug, Default)]
pub(crate) struct Head {
    /// Request: method, target, version. Response: version, status, reason.
    pub(crate) start: [String; 3],
    pub(crate) content_length: Option<u64>,
    pub(crate) chunked: bool,
    pub(crate) expect_continue: bool,
}

/// Reads up to the blank line ending the head. Returns the head and whatever
/// was read past it (the start of the body).
pub(crate) fn read_head(r: &mut impl Read) -> Result<(Head, Vec<u8>), HeadError> {
    read_head_after(r, Vec::with_capacity(1024))
}

/// [`read_head`] for a head whose first bytes were already read (past an
/// interim response).
pub(crate) fn read_head_after(
    r: &mut impl Read,
    mut buf: Vec<u8>,
) -> Result<(Head, Vec<u8>), HeadError> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some((end, sep)) = find_head_end(&buf) {
            let head = parse_head(&buf[..end])?;
            let rest = buf[end + sep..].to_vec();
            return Ok((head, rest));
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        let want = chunk.len().min(MAX_HEAD_BYTES + 4 - buf.len());
        let n = r.read(&mut chunk[..want])?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Malformed("the connection closed inside the head".into())
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Position of the blank line and its length; bare LF line ends are
/// tolerated (hand-typed requests through `nc -U`).
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn parse_head(raw: &[u8]) -> Result<Head, HeadError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| HeadError::Malformed("the head is not UTF-8".into()))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().unwrap_or("");
    let mut parts = first.splitn(3, ' ');
    let start = [(); 3].map(|_| parts.next().unwrap_or("").to_string());
    if start[0].is_empty() || start[1].is_empty() {
        return Err(HeadError::Malformed("bad start line".into()));
    }
    let mut head = Head {
        start,
        ..Head::default()
    };
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| HeadError::Malformed("a header line without ':'".into()))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .parse()
                .map_err(|_| HeadError::Malformed("bad Content-Length".into()))?;
            if head.content_length.is_some_and(|m| m != n) {
                return Err(HeadError::Malformed("conflicting Content-Length".into()));
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = !value.eq_ignore_ascii_case("identity");
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    Ok(head)
}

/// Reads exactly `len` body bytes, starting with those already read past
/// the head. The caller has checked `len` against its cap.
pub(crate) fn read_body(
    r: &mut impl Read,
    mut already: Vec<u8>,
    len: usize,
) -> io::Result<Vec<u8>> {
    already.truncate(len);
    let have = already.len();
    already.resize(len, 0);
    r.read_exact(&mut already[have..])?;
    Ok(already)
}

/// Reads and discards up to `cap` bytes, so a client still sending a refused
/// body sees our answer instead of a broken pipe.
pub(crate) fn drain(r: &mut impl Read, cap: usize) {
    let mut sink = [0u8; 4096];
    let mut left = cap;
    while left > 0 {
        let want = left.min(sink.len());
        match r.read(&mut sink[..want]) {
            Ok(0) | Err(_) => return,
            Ok(n) => left -= n,
        }
    }
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The interim answer a client sending `Expect: 100-continue` waits for
/// before it sends the body (curl does, for large bodies).
pub(crate) fn write_continue(w: &mut impl Write) -> io::Result<()> {
    w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    w.flush()
}

/// Writes one complete response and flushes it.
pub(crate) fn write_response(
    w: &mut impl Write,
    status: u16,
    body: Option<&str>,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nServer: memvisor\r\nConnection: close\r\n",
        reason(status)
    );
    match body {
        Some(b) => {
            out.push_str("Content-Type: application/json\r\n");
            out.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
            out.push_str(b);
        }
        None if status == 204 => out.push_str("\r\n"),
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    w.write_all(out.as_bytes())?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Result<(Head, Vec<u8>), HeadError> {
        read_head(&mut s.as_bytes())
    }

    #[test]
    fn parses_a_request_head() {
        let (h, rest) = head(
            "PUT /vm HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\nExpect: 100-continue\r\n\r\nabc",
        )
        .unwrap();
        assert_eq!(h.start, ["PUT", "/vm", "HTTP/1.1"].map(String::from));
        assert_eq!(h.content_length, Some(5));
        assert!(h.expect_continue && !h.chunked);
        assert_eq!(rest, b"abc");
        let (h, _) = head("GET / HTTP/1.1\nTransfer-Encoding: chunked\n\n").unwrap();
        assert!(h.chunked);
        assert_eq!(h.content_length, None);
    }

    #[test]
    fn refuses_bad_heads() {
        assert!(matches!(head(""), Err(HeadError::Closed)));
        assert!(matches!(
            head("GET / HTTP/1.1\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(head("\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nNoColon\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        let big = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert!(matches!(head(&big), Err(HeadError::TooLarge)));
        // An endless head without a blank line stops at the cap.
        let mut endless = io::repeat(b'a');
        assert!(matches!(read_head(&mut endless), Err(HeadError::TooLarge)));
    }

    #[test]
    fn body_from_leftover_and_stream() {
        let mut r: &[u8] = b"defg";
        assert_eq!(read_body(&mut r, b"abc".to_vec(), 6).unwrap(), b"abcdef");
        let mut r: &[u8] = b"";
        assert_eq!(read_body(&mut r, b"abcdef".to_vec(), 3).unwrap(), b"abc");
        let mut r: &[u8] = b"d";
        assert!(read_body(&mut r, b"abc".to_vec(), 6).is_err());
    }

    #[test]
    fn response_framing() {
        let mut out = Vec::new();
        write_response(&mut out, 200, Some("{}")).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.contains("Content-Type: application/json\r\n"));
        assert!(s.ends_with("Content-Length: 2\r\n\r\n{}"));
        let mut out = Vec::new();
        write_response(&mut out, 204, None).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(!s.contains("Content-Length") && !s.contains("Content-Type"));
        assert!(s.ends_with("\r\n\r\n"));
    }
}
