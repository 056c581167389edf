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
    let mut carried = Vec::new();
    loop {
        let (head, rest) = http::read_head_after(r, carried).map_err(|e| match e {
            HeadError::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        })?;
        let status: u16 = head.start[1]
            .parse()
            .map_err(|_| invalid(format!("bad status line: {:.64}", head.start.join(" "))))?;
        if (100..200).contains(&status) {
            // Interim (100 Continue); the real answer follows, possibly
            // already partly read.
            carried = rest;
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

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::thread::JoinHandle;

    use vmm_sys_util::tempdir::TempDir;

    use super::*;

    /// Whether `got` holds a whole request: the head and as many body
    /// bytes as its Content-Length says (the client may send the body in a
    /// later write than the head).
    fn whole_request(got: &[u8]) -> bool {
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&got[..end]);
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        got.len() >= end + 4 + len
    }

    /// A one-shot server that records the request and sends `answer`.
    fn one_shot(answer: &'static [u8]) -> (TempDir, PathBuf, JoinHandle<String>) {
        let dir = TempDir::new_with_prefix("/tmp/memvisor-client-").unwrap();
        let path = dir.as_path().join("s.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !whole_request(&got) {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            s.write_all(answer).unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        (dir, path, t)
    }

    #[test]
    fn sends_content_length_framed_requests() {
        let (_d, path, t) = one_shot(b"HTTP/1.1 204 No Content\r\n\r\n");
        let r = request(&path, "PUT", "/entropy", Some("{}")).unwrap();
        assert_eq!(r, (204, String::new()));
        let sent = t.join().unwrap();
        assert!(sent.starts_with("PUT /entropy HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("Content-Length: 2\r\n"), "{sent}");
        assert!(sent.ends_with("\r\n\r\n{}"), "{sent}");
    }

    #[test]
    fn reads_bodies_with_and_without_length() {
        let (_d, path, _t) = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
        assert_eq!(
            request(&path, "GET", "/", None).unwrap(),
            (200, "{}".into())
        );
        let (_d, path, _t) = one_shot(b"HTTP/1.1 400 Bad Request\r\n\r\n{\"a\":1}");
        assert_eq!(
            request(&path, "GET", "/", None).unwrap(),
            (400, "{\"a\":1}".into())
        );
    }

    #[test]
    fn skips_interim_responses() {
        let (_d, path, _t) =
            one_shot(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n7");
        assert_eq!(request(&path, "GET", "/", None).unwrap(), (200, "7".into()));
        let (_d, path, _t) = one_shot(b"HTTP/1.1 100 Continue\r\n\r\n");
        // The interim answer alone, then EOF: no final answer is an error.
        assert!(request(&path, "GET", "/", None).is_err());
    }

    #[test]
    fn refuses_bad_answers() {
        let (_d, path, _t) = one_shot(b"HTTP/1.1 abc\r\n\r\n");
        assert!(request(&path, "GET", "/", None).is_err());
        let (_d, path, _t) = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n");
        assert!(request(&path, "GET", "/", None).is_err());
        let (_d, path, _t) = one_shot(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(request(&path, "GET", "/", None).is_err());
    }

    #[test]
    fn times_out() {
        let dir = TempDir::new_with_prefix("/tmp/memvisor-client-").unwrap();
        let path = dir.as_path().join("s.sock");
        let _l = UnixListener::bind(&path).unwrap(); // accepts nothing, answers nothing
        let t0 = std::time::Instant::now();
        let e =
            request_with_timeout(&path, "GET", "/", None, Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn no_socket_is_an_io_error() {
        let e = request(Path::new("/nonexistent/api.sock"), "GET", "/", None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
