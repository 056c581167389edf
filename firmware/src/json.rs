//! A fixed-size JSON line builder for records sent to the VMM.
//!
//! Used at CPL3 only, where `core::fmt` is native and cheap. The buffer holds
//! the record header in front of the payload so a finished line goes out with
//! one port write and no copy.
use crate::abi;
use core::fmt::{self, Write};

const CAP: usize = 32 * 1024;
const HDR: usize = abi::RECORD_HEADER_LEN as usize;

#[repr(C, align(16))]
pub struct Line {
    buf: [u8; CAP],
    len: usize,
    kind: u32,
    overflow: bool,
}

impl Line {
    pub const fn new() -> Self {
        Line {
            buf: [0; CAP],
            len: 0,
            kind: 0,
            overflow: false,
        }
    }

    pub fn begin(&mut self, kind: u32) {
        self.len = HDR;
        self.kind = kind;
        self.overflow = false;
    }

    pub fn raw(&mut self, s: &str) {
        let b = s.as_bytes();
        if self.len + b.len() > CAP {
            self.overflow = true;
            return;
        }
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    pub fn fmt(&mut self, args: fmt::Arguments) {
        let _ = self.write_fmt(args);
    }

    /// A JSON string literal, escaped.
    pub fn string(&mut self, s: &str) {
        self.raw("\"");
        for c in s.chars() {
            match c {
                '"' => self.raw("\\\""),
                '\\' => self.raw("\\\\"),
                '\n' => self.raw("\\n"),
                c if (c as u32) < 0x20 => self.fmt(format_args!("\\u{:04x}", c as u32)),
                c => {
                    let mut tmp = [0u8; 4];
                    self.raw(c.encode_utf8(&mut tmp));
                }
            }
        }
        self.raw("\"");
    }

    /// A JSON string literal from formatting arguments, escaped.
    pub fn string_fmt(&mut self, args: fmt::Arguments) {
        struct Esc<'a>(&'a mut Line);
        impl Write for Esc<'_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                // Strip the quotes string() adds: escape only.
                for c in s.chars() {
                    let mut tmp = [0u8; 4];
                    match c {
                        '"' => self.0.raw("\\\""),
                        '\\' => self.0.raw("\\\\"),
                        '\n' => self.0.raw("\\n"),
                        c if (c as u32) < 0x20 => self.0.raw(" "),
                        c => self.0.raw(c.encode_utf8(&mut tmp)),
                    }
                }
                Ok(())
            }
        }
        self.raw("\"");
        let _ = Esc(self).write_fmt(args);
        self.raw("\"");
    }

    /// Fills in the header; returns header + payload. A line that did not fit
    /// is replaced by an error object rather than sent truncated.
    pub fn finish(&mut self) -> &[u8] {
        if self.overflow {
            self.begin(self.kind);
            self.raw(
                "{\"event\":\"error\",\"message\":\"record too long for the guest line buffer\"}",
            );
        }
        let payload = (self.len - HDR) as u32;
        let words = [abi::RECORD_MAGIC, self.kind, payload, 0];
        for (i, w) in words.iter().enumerate() {
            self.buf[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        &self.buf[..self.len]
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.raw(s);
        Ok(())
    }
}
