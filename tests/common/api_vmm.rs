//! A `memvisor run` process with the API socket on, as the API, balloon and
//! balloon-guest tests drive it: spawned, waited for until its socket
//! accepts connections, called over the socket as curl would, and reaped
//! with its JSON report.
use super::{unique_path, TempFile, BIN};
use memvisor::api::client::request;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ApiVmm {
    pub child: Child,
    pub sock: PathBuf,
    pub report: TempFile,
}

impl ApiVmm {
    /// `memvisor run --quiet --timeout TIMEOUT_S --api-sock SOCK --report
    /// REPORT ARGS`, returned once the socket accepts connections (the file
    /// appears at bind()).
    pub fn spawn(timeout_s: u64, args: &[&str], stderr: Stdio) -> ApiVmm {
        let sock = unique_path("api.sock");
        let report = TempFile::new("api-report");
        let timeout = timeout_s.to_string();
        let mut all = vec!["run", "--quiet", "--timeout", &timeout, "--api-sock"];
        all.push(sock.to_str().unwrap());
        all.extend_from_slice(&["--report", report.as_str()]);
        all.extend_from_slice(args);
        let child = Command::new(BIN)
            .args(&all)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no API socket after 10 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        ApiVmm {
            child,
            sock,
            report,
        }
    }

    pub fn call(&self, method: &str, uri: &str, body: Option<&str>) -> (u16, String) {
        request(&self.sock, method, uri, body).unwrap_or_else(|e| panic!("{method} {uri}: {e}"))
    }

    /// Waits up to `limit` for exit (killing the process after it);
    /// returns the exit code and the report.
    pub fn wait_report(&mut self, limit: Duration) -> (i32, Value) {
        let t = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                panic!("memvisor did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let r = serde_json::from_slice(&std::fs::read(self.report.path()).unwrap()).unwrap();
        (status.code().unwrap_or(-1), r)
    }
}
