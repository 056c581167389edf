//! The event loop's end of the API channel.
//!
//! The API thread sends a message and then writes the `EventFd`; an
//! `EventFd` counts, it does not queue, so one readable event may stand for
//! several messages, and a message may arrive just before its write. Draining
//! the channel completely on every wake is the only correct reading, and
//! `take` is that reading in one call.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ApiMessage;

#[derive(Debug)]
pub struct ApiInbox {
    rx: Receiver<ApiMessage>,
    wake: EventFd,
}

impl ApiInbox {
    /// The inbox, and the sender and `EventFd` to give to
    /// [`ApiServer::spawn`](super::ApiServer::spawn).
    pub fn new() -> io::Result<(ApiInbox, Sender<ApiMessage>, EventFd)> {
        let (tx, rx) = mpsc::channel();
        let wake = EventFd::new(EFD_NONBLOCK)?;
        let for_api = wake.try_clone()?;
        Ok((ApiInbox { rx, wake }, tx, for_api))
    }

    /// The fd to watch for `EPOLLIN` (e.g. an event-manager subscriber's
    /// interest list).
    pub fn eventfd(&self) -> &EventFd {
        &self.wake
    }

    /// Every message waiting, oldest first; clears the wake-up first so a
    /// message sent during the drain wakes the loop again.
    pub fn take(&self) -> Vec<ApiMessage> {
        // EAGAIN (nothing counted) is fine: messages may still be queued.
        let _ = self.wake.read();
        self.rx.try_iter().collect()
    }
}

impl AsRawFd for ApiInbox {
    fn as_raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::api::client::request;
    use crate::api::{ApiRequest, ApiResponse, ApiServer};

    #[test]
    fn takes_everything_and_clears_the_wake() {
        let (inbox, tx, wake) = ApiInbox::new().unwrap();
        assert!(inbox.take().is_empty());
        let mut replies = Vec::new();
        for _ in 0..3 {
            let (reply, r) = mpsc::sync_channel(1);
            tx.send(ApiMessage {
                request: ApiRequest::GetInstanceInfo,
                reply,
            })
            .unwrap();
            wake.write(1).unwrap();
            replies.push(r);
        }
        let msgs = inbox.take();
        assert_eq!(msgs.len(), 3);
        // Cleared: a non-blocking read finds nothing counted.
        assert!(inbox.eventfd().read().is_err());
        for m in msgs {
            m.respond(ApiResponse::no_content());
        }
        for r in replies {
            assert_eq!(r.recv().unwrap().status, 204);
        }
    }

    /// The shape of the event loop's use: wait on the fd, take, answer.
    #[test]
    fn serves_a_request_end_to_end() {
        let dir = TempDir::new_with_prefix("/tmp/memvisor-inbox-").unwrap();
        let path = dir.as_path().join("api.sock");
        let (inbox, tx, wake) = ApiInbox::new().unwrap();
        let handle = ApiServer::bind(&path).unwrap().spawn(tx, wake).unwrap();
        let p = path.clone();
        let client = std::thread::spawn(move || request(&p, "GET", "/machine-config", None));
        let mut answered = 0;
        while answered == 0 {
            let mut pfd = libc::pollfd {
                fd: inbox.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, alive for the call.
            let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
            assert_eq!(n, 1, "no wake within 10 s");
            for m in inbox.take() {
                assert_eq!(m.request, ApiRequest::GetMachineConfig);
                m.respond(ApiResponse::ok(serde_json::json!({"vcpu_count": 1})));
                answered += 1;
            }
        }
        let (status, body) = client.join().unwrap().unwrap();
        assert_eq!((status, body.as_str()), (200, r#"{"vcpu_count":1}"#));
        drop(handle);
        assert!(!path.exists());
    }
}
