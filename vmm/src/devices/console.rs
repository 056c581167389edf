//! Where guest console output goes: stdout, or stderr when stdout carries the
//! JSON report. Shared by COM1 and the console records.
//!
//! When the sink is a terminal, control characters are shown escaped (`^[`,
//! `\x9b`): the bytes come from the guest, and raw escape sequences would let
//! it retitle, clear or reprogram the operator's terminal. Newlines, tabs and
//! carriage returns pass. Output to files and pipes is left byte-exact.
//!
//! The sink also holds the guest-output budget for everything printed: COM1
//! writes cost the guest a VM exit per byte and nothing else, so without a
//! limit a guest looping on `out` fills the operator's disk through stdout.
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex};

struct Sink {
    out: Box<dyn Write + Send>,
    escape: bool,
    /// A UTF-8 lead byte 0xc2 waiting for its continuation: 0xc2 0x80..0x9f
    /// encodes a C1 control (0x9b is CSI), so it must be seen whole.
    pending_c2: bool,
    /// Bytes still allowed out ([`Console::limit`]); the rest are counted.
    left: usize,
    dropped: u64,
}

#[derive(Clone)]
pub struct Console(Arc<Mutex<Sink>>);

/// Appends `b` to `out`, escaped if it is a control character.
fn escape_into(out: &mut Vec<u8>, pending_c2: &mut bool, b: u8) {
    if *pending_c2 {
        *pending_c2 = false;
        if (0x80..=0x9f).contains(&b) {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
            return;
        }
        out.push(0xc2);
    }
    match b {
        b'\n' | b'\t' | b'\r' => out.push(b),
        0xc2 => *pending_c2 = true,
        0..=0x1f => out.extend_from_slice(&[b'^', b + 0x40]),
        0x7f => out.extend_from_slice(b"^?"),
        // Bare C1 bytes (not valid UTF-8): 8-bit terminals read them as
        // controls.
        0x80..=0x9f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
        _ => out.push(b),
    }
}

impl Console {
    pub fn new(out: Box<dyn Write + Send>, escape: bool) -> Self {
        Console(Arc::new(Mutex::new(Sink {
            out,
            escape,
            pending_c2: false,
            left: usize::MAX,
            dropped: 0,
        })))
    }

    /// Prints at most `bytes` more bytes; later ones are dropped and counted.
    pub fn limit(&self, bytes: usize) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).left = bytes;
    }

    /// Bytes dropped past the limit.
    pub fn dropped_bytes(&self) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).dropped
    }
    pub fn stdout() -> Self {
        let tty = io::stdout().is_terminal();
        Self::new(Box::new(io::stdout()), tty)
    }
    pub fn stderr() -> Self {
        let tty = io::stderr().is_terminal();
        Self::new(Box::new(io::stderr()), tty)
    }
    /// Discards everything (benchmarks and tests that only read the report).
    pub fn sink() -> Self {
        Self::new(Box::new(io::sink()), false)
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let all = buf.len();
        let n = all.min(s.left);
        s.left -= n;
        s.dropped += (all - n) as u64;
        let buf = &buf[..n];
        if !s.escape {
            s.out.write_all(buf)?;
            return Ok(all);
        }
        let mut esc = Vec::with_capacity(buf.len());
        let mut pending = s.pending_c2;
        for &b in buf {
            escape_into(&mut esc, &mut pending, b);
        }
        s.pending_c2 = pending;
        s.out.write_all(&esc)?;
        Ok(all)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Write that keeps what it gets, shared with the test.
    #[derive(Clone, Default)]
    struct Keep(Arc<Mutex<Vec<u8>>>);
    impl Write for Keep {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn through(escape: bool, chunks: &[&[u8]]) -> Vec<u8> {
        let keep = Keep::default();
        let mut c = Console::new(Box::new(keep.clone()), escape);
        for ch in chunks {
            c.write_all(ch).unwrap();
        }
        let v = keep.0.lock().unwrap().clone();
        v
    }

    #[test]
    fn terminal_output_escapes_control_sequences() {
        let out = through(
            true,
            &[
                b"\x1b]0;pwned\x07ok\n",
                b"\xc2",
                b"\x9b2J",
                "é\t".as_bytes(),
            ],
        );
        assert_eq!(out, "^[]0;pwned^Gok\n\\x9b2Jé\t".as_bytes());
        assert!(!out.contains(&0x1b));
    }

    #[test]
    fn output_past_the_limit_is_dropped_and_counted() {
        for escape in [false, true] {
            let keep = Keep::default();
            let mut c = Console::new(Box::new(keep.clone()), escape);
            c.limit(5);
            c.write_all(b"abc").unwrap();
            c.write_all(b"defg").unwrap();
            c.write_all(b"h").unwrap();
            assert_eq!(*keep.0.lock().unwrap(), b"abcde");
            assert_eq!(c.dropped_bytes(), 3);
        }
    }

    #[test]
    fn pipes_and_files_get_the_bytes_unchanged() {
        assert_eq!(through(false, &[b"\x1b[2J\n"]), b"\x1b[2J\n");
    }
}
