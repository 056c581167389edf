//! SIGINT, SIGTERM and SIGHUP as events on the event loop (signalfd), so each
//! ends the run through the same teardown as any other exit: vCPUs stopped,
//! the report written, exit status 128 + signal number (130, 143, 129).
//!
//! The signals are blocked in the calling thread before any other thread
//! exists, so every thread inherits the mask and only the signalfd sees them.
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

pub const HANDLED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

pub struct SignalFd(File);

fn mask() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

impl SignalFd {
    /// Blocks the handled signals in this thread and opens a signalfd for
    /// them. Call before spawning threads.
    pub fn new() -> std::io::Result<Self> {
        let set = mask();
        // SAFETY: changes only this thread's signal mask.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r));
        }
        // SAFETY: creates a new fd from a valid mask; we own it from here.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(SignalFd(unsafe { File::from_raw_fd(fd) }))
    }

    /// The next pending signal, if any.
    pub fn read(&mut self) -> Option<libc::c_int> {
        let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        match self.0.read(&mut buf) {
            Ok(n) if n == buf.len() => {
                let signo = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes"));
                Some(signo as libc::c_int)
            }
            _ => None,
        }
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

pub fn name(signo: libc::c_int) -> &'static str {
    match signo {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}
