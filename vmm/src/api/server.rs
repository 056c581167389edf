//! The API thread: owns the socket, serves one connection at a time, and
//! hands valid requests to the event loop.
//!
//! One connection at a time is enough for a control plane and keeps the VMM
//! side simple (requests arrive in order, one outstanding at a time); every
//! connection is bounded by [`REQUEST_TIMEOUT`] for reading and by the reply
//! timeout for the VMM's answer, so no client holds the socket longer.
//!
//! The socket file: `bind` refuses a path another live VMM serves and a path
//! that is not a socket (never deleting a user's file), and replaces a stale
//! socket (a previous VMM killed with SIGKILL or aborted on a panic leaves
//! one; nothing can remove it then, so the next bind does). The file is
//! removed by [`ApiHandle::shutdown`] / drop and, as a safety net for
//! `std::process::exit` paths that skip destructors, by an `atexit` hook; in
//! both cases only if the path still names the socket this VMM bound.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::http::{self, DeadlineReader, HeadError};
use super::request::{parse, payload_too_large};
use super::{ApiError, ApiMessage, ApiResponse, MAX_PAYLOAD_BYTES};

/// How long a client has, by default, to send a whole request (head and
/// body).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the API thread waits for the VMM's answer before a 503. Long,
/// because `InstanceStart` loads the kernel and builds the VM before it
/// answers.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a wait for the VMM looks at the stop flag.
const STOP_POLL: Duration = http::STOP_SLICE;
/// Most bytes of a refused body read and thrown away, so the client sees the
/// answer rather than a broken pipe.
const DRAIN_CAP: usize = 1 << 20;

/// A bound, not yet served, API socket.
#[derive(Debug)]
pub struct ApiServer {
    listener: UnixListener,
    socket: Option<SocketFile>,
    reply_timeout: Duration,
    request_timeout: Duration,
}

impl ApiServer {
    /// Binds `path`, replacing a stale socket but nothing else.
    pub fn bind(path: &Path) -> Result<ApiServer, ApiError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => return Err(ApiError::InUse(path.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).map_err(|source| ApiError::RemoveStale {
                        path: path.to_path_buf(),
                        source,
                    })?;
                }
                Err(source) => {
                    return Err(ApiError::Inspect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            },
            Ok(_) => return Err(ApiError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ApiError::Inspect {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let listener = UnixListener::bind(path).map_err(|source| {
            if source.kind() == io::ErrorKind::AddrInUse {
                // Lost a race with another VMM binding the same path.
                ApiError::InUse(path.to_path_buf())
            } else {
                ApiError::Bind {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let socket = SocketFile::record(path).map_err(|source| ApiError::Inspect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ApiServer {
            listener,
            socket: Some(socket),
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        })
    }

    /// How long to wait for the VMM's answer before replying 503.
    pub fn with_reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// How long a client has to send its whole request.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        self.socket.as_ref().map_or(Path::new(""), |s| &s.path)
    }

    /// Starts the thread named "api". `wake` is written (1) after each
    /// message is sent, so the event loop can watch it as its API source.
    pub fn spawn(mut self, to_vmm: Sender<ApiMessage>, wake: EventFd) -> io::Result<ApiHandle> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop_thread = stop.try_clone()?;
        let stopping = Arc::new(AtomicBool::new(false));
        self.listener.set_nonblocking(true)?;
        let worker = Worker {
            listener: self.listener.try_clone()?,
            to_vmm,
            wake,
            stop: stop_thread,
            stopping: stopping.clone(),
            reply_timeout: self.reply_timeout,
            request_timeout: self.request_timeout,
        };
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || worker.run())?;
        Ok(ApiHandle {
            thread: Some(thread),
            stop,
            stopping,
            socket: self.socket.take(),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(s) = self.socket.take() {
            s.remove();
        }
    }
}

/// The running API thread. Dropping it (or [`ApiHandle::shutdown`]) stops
/// the thread and removes the socket file.
#[derive(Debug)]
pub struct ApiHandle {
    thread: Option<JoinHandle<()>>,
    stop: EventFd,
    stopping: Arc<AtomicBool>,
    socket: Option<SocketFile>,
}

impl ApiHandle {
    pub fn path(&self) -> &Path {
        self.socket.as_ref().map_or(Path::new(""), |s| &s.path)
    }

    /// Stops serving within about 50 ms: a request still being read is
    /// dropped, a request waiting for the VMM is answered 503. Idempotent.
    pub fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            // A panicked API thread has nothing left to clean up but the file.
            let _ = t.join();
        }
        if let Some(s) = self.socket.take() {
            s.remove();
        }
    }
}

impl Drop for ApiHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What to do with a connection once its request is read (or not).
enum Outcome {
    /// Write this answer and close.
    Answer(ApiResponse),
    /// Write this refusal, then read and discard what the client may still
    /// be sending (a body we never read), so it sees the refusal.
    Refuse(ApiResponse),
    /// The client is gone or broke off; nothing to answer.
    HangUp,
}

struct Worker {
    listener: UnixListener,
    to_vmm: Sender<ApiMessage>,
    wake: EventFd,
    stop: EventFd,
    stopping: Arc<AtomicBool>,
    reply_timeout: Duration,
    request_timeout: Duration,
}

impl Worker {
    fn run(self) {
        let mut fds = [
            libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        while !self.stopping.load(Ordering::SeqCst) {
            // SAFETY: `fds` is a live array of two initialised pollfds and
            // poll writes only their `revents`.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("api: poll failed, no longer serving: {e}");
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            match self.listener.accept() {
                Ok((stream, _)) => self.serve(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    log::warn!("api: accept failed: {e}");
                    std::thread::sleep(STOP_POLL);
                }
            }
        }
    }

    /// One connection, one request, one answer.
    fn serve(&self, stream: UnixStream) {
        // Accepted sockets may inherit the listener's O_NONBLOCK on some
        // systems; the deadline reader needs blocking reads with timeouts.
        if stream.set_nonblocking(false).is_err()
            || stream
                .set_write_timeout(Some(self.request_timeout))
                .is_err()
        {
            return;
        }
        let mut reader =
            DeadlineReader::new(&stream, self.request_timeout).with_stop(&self.stopping);
        let (response, drain) = match self.answer(&mut reader, &stream) {
            Outcome::Answer(r) => (r, false),
            Outcome::Refuse(r) => (r, true),
            Outcome::HangUp => return,
        };
        let body = response.body.as_ref().map(|b| b.to_string());
        let mut w = &stream;
        if let Err(e) = http::write_response(&mut w, response.status, body.as_deref()) {
            log::debug!("api: writing the answer: {e}");
        }
        if drain {
            let _ = stream.shutdown(std::net::Shutdown::Write);
            http::drain(&mut reader, DRAIN_CAP);
        }
    }

    fn answer(&self, reader: &mut DeadlineReader, stream: &UnixStream) -> Outcome {
        let (head, rest) = match http::read_head(reader) {
            Ok(h) => h,
            Err(HeadError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
                return Outcome::Answer(ApiResponse::fault(408, "timed out reading the request"))
            }
            Err(HeadError::Closed | HeadError::Io(_)) => return Outcome::HangUp,
            Err(e) => return Outcome::Refuse(ApiResponse::bad_request(e.to_string())),
        };
        let [method, target, version] = &head.start;
        if !version.starts_with("HTTP/1.") {
            return Outcome::Refuse(ApiResponse::bad_request(format!(
                "unsupported protocol version {version:.16}"
            )));
        }
        if head.chunked {
            return Outcome::Refuse(ApiResponse::bad_request(
                "chunked request bodies are not supported; send a Content-Length",
            ));
        }
        let len = head.content_length.unwrap_or(0);
        let len = match usize::try_from(len) {
            Ok(n) if n <= MAX_PAYLOAD_BYTES => n,
            _ => {
                let shown = usize::try_from(len).unwrap_or(usize::MAX);
                return Outcome::Refuse(payload_too_large(shown));
            }
        };
        if head.expect_continue && len > 0 {
            let mut w = stream;
            if http::write_continue(&mut w).is_err() {
                return Outcome::HangUp;
            }
        }
        let body = match http::read_body(reader, rest, len) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Outcome::Answer(ApiResponse::fault(
                    408,
                    "timed out reading the request body",
                ))
            }
            Err(_) => return Outcome::HangUp,
        };
        match parse(method, target, &body) {
            Ok(request) => Outcome::Answer(self.ask_vmm(request)),
            Err(refusal) => Outcome::Answer(refusal),
        }
    }

    fn ask_vmm(&self, request: super::ApiRequest) -> ApiResponse {
        let (reply, answer) = mpsc::sync_channel(1);
        if self.to_vmm.send(ApiMessage { request, reply }).is_err() {
            return ApiResponse::fault(503, "the VMM is not accepting API requests");
        }
        if let Err(e) = self.wake.write(1) {
            log::warn!("api: cannot wake the event loop: {e}");
        }
        let deadline = Instant::now() + self.reply_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return ApiResponse::fault(
                    503,
                    format!(
                        "the VMM did not answer within {} s",
                        self.reply_timeout.as_secs_f64()
                    ),
                );
            }
            match answer.recv_timeout(left.min(STOP_POLL)) {
                Ok(r) => return r,
                Err(RecvTimeoutError::Disconnected) => {
                    return ApiResponse::fault(503, "the VMM dropped the request unanswered")
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.stopping.load(Ordering::SeqCst) {
                        return ApiResponse::fault(503, "the VMM is shutting down");
                    }
                }
            }
        }
    }
}

/// The socket file this process bound, identified by inode so that removing
/// it never removes a file someone else put at the same path since.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// Socket files to remove if the process exits without dropping their owner.
static LIVE: Mutex<Vec<SocketFile>> = Mutex::new(Vec::new());
static ATEXIT: Once = Once::new();

extern "C" fn remove_live_sockets() {
    // try_lock: exit() may run while another thread holds the lock; better
    // a stale file (the next bind removes it) than a hang at exit.
    if let Ok(live) = LIVE.try_lock() {
        for s in live.iter() {
            s.remove_file_if_ours();
        }
    }
}

impl SocketFile {
    fn record(path: &Path) -> io::Result<Self> {
        let meta = std::fs::symlink_metadata(path)?;
        let s = SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        };
        ATEXIT.call_once(|| {
            // SAFETY: registers a plain `extern "C" fn()` with no captured
            // state; it runs at most once, during exit().
            if unsafe { libc::atexit(remove_live_sockets) } != 0 {
                log::warn!("api: cannot register the socket cleanup at exit");
            }
        });
        if let Ok(mut live) = LIVE.lock() {
            live.push(s.clone());
        }
        Ok(s)
    }

    fn remove(self) {
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|s| *s != self);
        }
        self.remove_file_if_ours();
    }

    fn remove_file_if_ours(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                let _ = std::fs::remove_file(&self.path);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::mpsc::Receiver;

    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::api::client::{request, request_with_timeout};
    use crate::api::{ApiRequest, InstanceInfo, InstanceState, NOT_SUPPORTED_PRE_BOOT};

    fn tmp() -> (TempDir, PathBuf) {
        let dir = TempDir::new_with_prefix("/tmp/memvisor-api-").unwrap();
        let path = dir.as_path().join("api.sock");
        (dir, path)
    }

    /// A stand-in event loop: waits on the EventFd like the real one, answers
    /// like a not-yet-started VMM, and hands back what it saw when the API
    /// side hangs up.
    fn fake_vmm(rx: Receiver<ApiMessage>, wake: EventFd) -> JoinHandle<(Vec<ApiRequest>, u64)> {
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut wakes = 0;
            while let Ok(msg) = rx.recv() {
                // The wake is written just after the send; give it a moment.
                let t0 = Instant::now();
                loop {
                    match wake.read() {
                        Ok(n) => {
                            wakes += n;
                            break;
                        }
                        Err(_) if t0.elapsed() < Duration::from_secs(2) => {
                            std::thread::sleep(Duration::from_millis(1))
                        }
                        Err(_) => break,
                    }
                }
                seen.push(msg.request.clone());
                let state = InstanceState::NotStarted;
                let answer = match msg.request.allowed_in(state) {
                    Err(refusal) => refusal,
                    Ok(()) => match &msg.request {
                        ApiRequest::GetInstanceInfo => {
                            ApiResponse::ok_json(&InstanceInfo::new("t", state))
                        }
                        _ => ApiResponse::no_content(),
                    },
                };
                msg.respond(answer);
            }
            (seen, wakes)
        })
    }

    fn start(path: &Path) -> (ApiHandle, JoinHandle<(Vec<ApiRequest>, u64)>) {
        let (tx, rx) = mpsc::channel();
        let wake = EventFd::new(EFD_NONBLOCK).unwrap();
        let vmm = fake_vmm(rx, wake.try_clone().unwrap());
        let handle = ApiServer::bind(path).unwrap().spawn(tx, wake).unwrap();
        (handle, vmm)
    }

    fn fault_of(body: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["fault_message"].as_str().unwrap().to_string()
    }

    /// Sends raw bytes and returns everything the server answers.
    fn raw(path: &Path, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn serves_requests_through_the_vmm() {
        let (_d, path) = tmp();
        let (mut handle, vmm) = start(&path);
        assert_eq!(handle.path(), path);

        let (status, body) = request(&path, "GET", "/", None).unwrap();
        assert_eq!(status, 200, "{body}");
        let info: InstanceInfo = serde_json::from_str(&body).unwrap();
        assert_eq!(info.state, InstanceState::NotStarted);
        assert_eq!(info.app_name, "memvisor");

        let (status, body) = request(
            &path,
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0"}"#),
        )
        .unwrap();
        assert_eq!((status, body.as_str()), (204, ""));

        let (status, body) =
            request(&path, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).unwrap();
        assert_eq!(status, 400);
        assert_eq!(fault_of(&body), NOT_SUPPORTED_PRE_BOOT);

        // Refused by the parser: never reaches the VMM.
        let (status, body) = request(
            &path,
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 64, "bogus": 1}"#),
        )
        .unwrap();
        assert_eq!(status, 400);
        assert!(fault_of(&body).contains("unknown field `bogus`"), "{body}");
        let (status, body) = request(&path, "GET", "/nope", None).unwrap();
        assert_eq!(status, 400);
        assert!(fault_of(&body).starts_with("Invalid request method and/or path"));

        handle.shutdown();
        let (seen, wakes) = vmm.join().unwrap();
        assert_eq!(
            seen.len(),
            3,
            "only parsed requests reach the VMM: {seen:?}"
        );
        assert!(matches!(seen[1], ApiRequest::PutBootSource(_)));
        assert_eq!(wakes, 3);
        assert!(!path.exists(), "socket file left behind");
    }

    #[test]
    fn second_vmm_on_the_same_path_gets_a_clear_error() {
        let (_d, path) = tmp();
        let (handle, _vmm) = start(&path);
        let err = ApiServer::bind(&path).unwrap_err();
        assert!(matches!(err, ApiError::InUse(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("another VMM is serving the API socket {}", path.display())
        );
        // The first one is unharmed.
        assert_eq!(request(&path, "GET", "/", None).unwrap().0, 200);
        drop(handle);
        assert!(!path.exists());
    }

    #[test]
    fn stale_socket_is_replaced() {
        let (_d, path) = tmp();
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (handle, _vmm) = start(&path);
        assert_eq!(request(&path, "GET", "/", None).unwrap().0, 200);
        drop(handle);
        assert!(!path.exists());
    }

    #[test]
    fn a_regular_file_is_never_replaced() {
        let (_d, path) = tmp();
        std::fs::write(&path, "precious").unwrap();
        let err = ApiServer::bind(&path).unwrap_err();
        assert!(matches!(err, ApiError::NotASocket(_)), "{err:?}");
        assert!(err.to_string().contains("not a socket"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
        let dir = path.parent().unwrap();
        assert!(matches!(ApiServer::bind(dir), Err(ApiError::NotASocket(_))));
    }

    #[test]
    fn bind_errors_say_which_path() {
        let err = ApiServer::bind(Path::new("/nonexistent-dir/x/api.sock")).unwrap_err();
        assert!(matches!(err, ApiError::Bind { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent-dir/x/api.sock"));
    }

    #[test]
    fn socket_file_removed_on_every_owner_drop() {
        let (_d, path) = tmp();
        // Bound but never served.
        drop(ApiServer::bind(&path).unwrap());
        assert!(!path.exists());
        // Served, then dropped without an explicit shutdown.
        let (handle, vmm) = start(&path);
        drop(handle);
        assert!(!path.exists());
        vmm.join().unwrap();
        // shutdown twice is harmless.
        let (mut handle, _vmm) = start(&path);
        handle.shutdown();
        handle.shutdown();
        assert!(!path.exists());
    }

    #[test]
    fn someone_elses_file_at_the_path_survives_shutdown() {
        let (_d, path) = tmp();
        let (handle, _vmm) = start(&path);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "not ours").unwrap();
        drop(handle);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not ours");
    }

    #[test]
    fn silent_or_gone_vmm_gives_503() {
        let (_d, path) = tmp();
        let (tx, rx) = mpsc::channel();
        let wake = EventFd::new(EFD_NONBLOCK).unwrap();
        let handle = ApiServer::bind(&path)
            .unwrap()
            .with_reply_timeout(Duration::from_millis(200))
            .spawn(tx, wake)
            .unwrap();
        let (status, body) = request(&path, "GET", "/", None).unwrap();
        assert_eq!(status, 503);
        assert!(fault_of(&body).contains("did not answer"), "{body}");
        drop(rx);
        let (status, body) = request(&path, "GET", "/", None).unwrap();
        assert_eq!(status, 503);
        assert!(fault_of(&body).contains("not accepting"), "{body}");
        drop(handle);
    }

    #[test]
    fn shutdown_answers_a_waiting_request() {
        let (_d, path) = tmp();
        let (tx, rx) = mpsc::channel();
        let handle = ApiServer::bind(&path)
            .unwrap()
            .spawn(tx, EventFd::new(EFD_NONBLOCK).unwrap())
            .unwrap();
        let p = path.clone();
        let client = std::thread::spawn(move || request(&p, "GET", "/", None).unwrap());
        // The request has reached the "VMM", which sits on it.
        let _unanswered = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let t0 = Instant::now();
        drop(handle);
        assert!(t0.elapsed() < Duration::from_secs(5));
        let (status, body) = client.join().unwrap();
        assert_eq!(status, 503);
        assert!(fault_of(&body).contains("shutting down"), "{body}");
    }

    #[test]
    fn lying_content_length_is_refused_without_buffering() {
        let (_d, path) = tmp();
        let (handle, _vmm) = start(&path);
        let out = raw(
            &path,
            b"PUT /boot-source HTTP/1.1\r\nContent-Length: 1000000000000000\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        assert!(out.contains("larger than the limit of 51200"), "{out}");
        // A real oversized body, through the client.
        let big = format!(r#"{{"kernel_image_path": "{}"}}"#, "a".repeat(60_000));
        let (status, body) = request(&path, "PUT", "/boot-source", Some(&big)).unwrap();
        assert_eq!(status, 400);
        assert!(fault_of(&body).contains("51200"), "{body}");
        // Still serving.
        assert_eq!(request(&path, "GET", "/", None).unwrap().0, 200);
        drop(handle);
    }

    #[test]
    fn malformed_http_is_refused() {
        let (_d, path) = tmp();
        let (handle, _vmm) = start(&path);
        let out = raw(&path, b"GARBAGE\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        let out = raw(
            &path,
            b"PUT /entropy HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        );
        assert!(
            out.starts_with("HTTP/1.1 400 ") && out.contains("Content-Length"),
            "{out}"
        );
        let out = raw(&path, b"GET / HTTP/2\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        let out = raw(
            &path,
            format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000)).as_bytes(),
        );
        assert!(
            out.starts_with("HTTP/1.1 400 ") && out.contains("8192"),
            "{out}"
        );
        // A client that connects and leaves costs nothing.
        drop(UnixStream::connect(&path).unwrap());
        assert_eq!(request(&path, "GET", "/", None).unwrap().0, 200);
        drop(handle);
    }

    #[test]
    fn expect_continue_is_honoured() {
        let (_d, path) = tmp();
        let (handle, _vmm) = start(&path);
        let body = br#"{"kernel_image_path": "/k"}"#;
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "PUT /boot-source HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut buf = [0u8; 25];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(body).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 204 "), "{out}");
        drop(handle);
    }

    #[test]
    fn a_stalled_client_cannot_delay_shutdown() {
        let (_d, path) = tmp();
        let (handle, _vmm) = start(&path);
        let mut stalled = UnixStream::connect(&path).unwrap();
        stalled
            .write_all(b"PUT /entropy HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
            .unwrap();
        // Let the API thread get into the body read.
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        drop(handle);
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(!path.exists());
    }

    #[test]
    fn a_stalled_client_cannot_hold_the_socket() {
        let (_d, path) = tmp();
        let (tx, rx) = mpsc::channel();
        let wake = EventFd::new(EFD_NONBLOCK).unwrap();
        let _vmm = fake_vmm(rx, wake.try_clone().unwrap());
        let handle = ApiServer::bind(&path)
            .unwrap()
            .with_request_timeout(Duration::from_millis(300))
            .spawn(tx, wake)
            .unwrap();
        // Promises a body it never sends, and keeps the connection open.
        let mut stalled = UnixStream::connect(&path).unwrap();
        stalled
            .write_all(b"PUT /entropy HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
            .unwrap();
        let t0 = Instant::now();
        let (status, _) =
            request_with_timeout(&path, "GET", "/", None, Duration::from_secs(5)).unwrap();
        assert_eq!(status, 200);
        assert!(t0.elapsed() < Duration::from_secs(3));
        let mut out = String::new();
        stalled
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stalled.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        drop(handle);
    }

    /// A Firecracker user's curl script, run with the real curl when the
    /// host has one (it sends `Expect: 100-continue` above 1 KiB bodies).
    #[test]
    fn curl_drives_it_like_firecracker() {
        let Ok(out) = std::process::Command::new("curl").arg("--version").output() else {
            eprintln!("curl not installed; skipping");
            return;
        };
        assert!(out.status.success());
        let (dir, path) = tmp();
        let (handle, vmm) = start(&path);
        let curl = |method: &str, uri: &str, data: Option<&str>| -> (u16, String) {
            let mut c = std::process::Command::new("curl");
            c.args(["-s", "--max-time", "10", "--unix-socket"])
                .arg(&path)
                .args(["-X", method, "-w", "\n%{http_code}"])
                .arg(format!("http://localhost{uri}"));
            if let Some(d) = data {
                c.args(["-H", "Content-Type: application/json", "-d", d]);
            }
            let out = c.output().unwrap();
            let text = String::from_utf8(out.stdout).unwrap();
            let (body, code) = text.rsplit_once('\n').unwrap();
            (code.parse().unwrap(), body.to_string())
        };
        let boot_args = format!("console=ttyS0 {}", "x".repeat(2000));
        let boot = format!(r#"{{"kernel_image_path": "/k", "boot_args": "{boot_args}"}}"#);
        assert_eq!(
            curl("PUT", "/boot-source", Some(&boot)),
            (204, String::new())
        );
        let mc = r#"{"vcpu_count": 2, "mem_size_mib": 1024}"#;
        assert_eq!(curl("PUT", "/machine-config", Some(mc)).0, 204);
        assert_eq!(curl("PUT", "/entropy", Some("{}")).0, 204);
        let start_vm = r#"{"action_type": "InstanceStart"}"#;
        assert_eq!(curl("PUT", "/actions", Some(start_vm)).0, 204);
        let (code, body) = curl("GET", "/", None);
        assert_eq!(code, 200);
        assert!(body.contains(r#""app_name":"memvisor""#), "{body}");
        let (code, body) = curl("PUT", "/machine-config", Some(r#"{"vcpu_count": 2}"#));
        assert_eq!(code, 400);
        assert!(
            fault_of(&body).contains("missing field `mem_size_mib`"),
            "{body}"
        );
        let file = dir.as_path().join("big.json");
        std::fs::write(
            &file,
            format!(r#"{{"kernel_image_path": "{}"}}"#, "a".repeat(60_000)),
        )
        .unwrap();
        let (code, body) = curl("PUT", "/boot-source", Some(&format!("@{}", file.display())));
        assert_eq!(code, 400);
        assert!(fault_of(&body).contains("limit of 51200"), "{body}");
        drop(handle);
        let (seen, _) = vmm.join().unwrap();
        assert!(
            matches!(&seen[0], ApiRequest::PutBootSource(b) if b.boot_args.as_deref() == Some(boot_args.as_str()))
        );
        assert_eq!(seen.len(), 5, "{seen:?}");
    }
}
