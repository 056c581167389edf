//! Where guest console output goes: stdout, or stderr when stdout carries the
//! JSON report. Shared by COM1 and the console records.
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct Console(Arc<Mutex<Box<dyn Write + Send>>>);

impl Console {
    pub fn new(sink: Box<dyn Write + Send>) -> Self {
        Console(Arc::new(Mutex::new(sink)))
    }
    pub fn stdout() -> Self {
        Self::new(Box::new(io::stdout()))
    }
    pub fn stderr() -> Self {
        Self::new(Box::new(io::stderr()))
    }
    /// Discards everything (benchmarks and tests that only read the report).
    pub fn sink() -> Self {
        Self::new(Box::new(io::sink()))
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}
