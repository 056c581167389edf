//! The guest's JSON lines as the report keeps them, within a byte budget.
//!
//! The number of lines alone bounded nothing: 10,000 lines of 64 KiB made a
//! 650 MB report. Lines are kept while their bytes fit the budget
//! (`--record-budget`); later ones are counted in `dropped_records` and
//! `dropped_bytes`. The few lines the VMM itself reads to explain a run
//! (`ready`, `workload`, `exception`, `panic`, `error`) are also kept aside,
//! the latest of each, so a flood cannot hide why a run failed.
use crate::clock::since_origin_us;
use serde_json::{json, Value};

/// Default for `--record-budget`.
pub const DEFAULT_BUDGET: usize = 4 << 20;
/// Warnings kept; the rest are counted in the last one.
const MAX_WARNINGS: usize = 16;
const KEY_EVENTS: [&str; 5] = ["ready", "workload", "exception", "panic", "error"];

#[derive(Debug)]
pub struct GuestLog {
    lines: Vec<Value>,
    kept_bytes: usize,
    budget: usize,
    pub dropped_records: u64,
    pub dropped_bytes: u64,
    /// The latest line of each key event, and whether it is among `lines`.
    key: Vec<(Value, bool)>,
    warnings: Vec<String>,
    suppressed_warnings: u64,
    /// µs from the clock origin of the first `ready` and `workload` lines.
    pub ready_us: Option<f64>,
    pub workload_us: Option<f64>,
}

impl GuestLog {
    pub fn new(budget: usize) -> Self {
        GuestLog {
            lines: Vec::new(),
            kept_bytes: 0,
            budget,
            dropped_records: 0,
            dropped_bytes: 0,
            key: Vec::new(),
            warnings: Vec::new(),
            suppressed_warnings: 0,
            ready_us: None,
            workload_us: None,
        }
    }

    /// Takes one JSON record from vCPU `vcpu`.
    pub fn line(&mut self, vcpu: u32, payload: &[u8], at_ns: u64) {
        // Past the budget, a line matters only if it is a key event: find
        // its name without building the whole value (a flood of 64 KiB
        // lines must cost the loop little).
        if self.kept_bytes + payload.len() > self.budget {
            #[derive(serde::Deserialize)]
            struct Name<'a> {
                #[serde(borrow)]
                event: Option<&'a str>,
            }
            let name = serde_json::from_slice::<Name>(payload)
                .ok()
                .and_then(|n| n.event);
            if !name.is_some_and(|e| KEY_EVENTS.contains(&e)) {
                self.dropped(1, payload.len() as u64);
                return;
            }
        }
        let at_us = since_origin_us(at_ns);
        let mut v = serde_json::from_slice::<Value>(payload).unwrap_or_else(|e| {
            let raw: String = String::from_utf8_lossy(payload).chars().take(200).collect();
            json!({"event": "invalid_json", "error": e.to_string(), "raw": raw})
        });
        if let Value::Object(m) = &mut v {
            m.insert("vcpu".into(), vcpu.into());
            m.insert("at_us".into(), at_us.into());
        } else {
            v = json!({"event": "invalid_json", "error": "not a JSON object", "vcpu": vcpu, "at_us": at_us});
        }
        let event = v.get("event").and_then(Value::as_str).map(str::to_owned);
        match event.as_deref() {
            Some("ready") if self.ready_us.is_none() => self.ready_us = Some(at_us),
            Some("workload") if self.workload_us.is_none() => self.workload_us = Some(at_us),
            _ => {}
        }
        let key = event.as_deref().filter(|e| KEY_EVENTS.contains(e));
        // What the line will cost in the pretty-printed report (indented
        // one level deeper there), so the budget bounds the file itself.
        let size = serde_json::to_string_pretty(&v).map_or(payload.len(), |t| {
            t.len() + 4 * t.bytes().filter(|&b| b == b'\n').count() + 8
        });
        let kept = self.kept_bytes + size <= self.budget;
        if let Some(e) = key {
            self.key.retain(|k| k.0["event"] != e);
            self.key.push((v.clone(), kept));
        }
        if !kept {
            self.dropped(1, payload.len() as u64);
            return;
        }
        self.kept_bytes += size;
        self.lines.push(v);
    }

    /// Counts records that never reached the log (dropped on the way).
    pub fn dropped(&mut self, records: u64, bytes: u64) {
        if self.dropped_records == 0 && records > 0 {
            log::debug!(
                "guest record budget of {} bytes reached: dropping",
                self.budget
            );
        }
        self.dropped_records += records;
        self.dropped_bytes += bytes;
    }

    /// A problem the VMM saw in guest input; rate-limited.
    pub fn warn(&mut self, w: String) {
        if self.warnings.len() < MAX_WARNINGS {
            log::debug!("guest input: {w}");
            self.warnings.push(w);
        } else {
            self.suppressed_warnings += 1;
        }
    }

    /// The warnings, the last saying how many more were suppressed.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self.warnings.clone();
        if self.suppressed_warnings > 0 {
            w.push(format!("{} more suppressed", self.suppressed_warnings));
        }
        w
    }

    /// The kept lines, then the latest line of each key event that did not
    /// fit the budget (at most five more lines), so the report always says
    /// how the run ended.
    pub fn into_lines(self) -> Vec<Value> {
        let mut lines = self.lines;
        lines.extend(self.key.into_iter().filter(|k| !k.1).map(|k| k.0));
        lines
    }

    /// The latest of `names` among the key lines.
    pub fn last_event(&self, names: &[&str]) -> Option<&Value> {
        self.key.iter().map(|k| &k.0).rev().find(|v| {
            v.get("event")
                .and_then(Value::as_str)
                .is_some_and(|e| names.contains(&e))
        })
    }

    pub fn last_event_name(&self) -> Option<String> {
        self.lines
            .last()
            .and_then(|v| v.get("event"))
            .map(|e| e.to_string())
    }

    /// Why the guest reported a crash, and the faulting rip if it said.
    pub fn crash_reason(&self) -> (String, Option<u64>) {
        match self.last_event(&["exception", "panic"]) {
            Some(v) if v["event"] == "exception" => {
                let rip = v["rip"].as_str().and_then(parse_hex);
                let reason = format!(
                    "guest exception {} ({}) at rip {} (error code {}, cr2 {}, cpl {})",
                    v["vector"],
                    v["name"].as_str().unwrap_or("?"),
                    v["rip"].as_str().unwrap_or("?"),
                    v["error_code"].as_str().unwrap_or("?"),
                    v["cr2"].as_str().unwrap_or("?"),
                    v["cpl"]
                );
                (reason, rip)
            }
            Some(v) => (
                format!(
                    "guest panic: {} at {}:{}",
                    v["message"].as_str().unwrap_or("?"),
                    v["file"].as_str().unwrap_or("?"),
                    v["line"]
                ),
                None,
            ),
            None => ("the guest reported a crash".into(), None),
        }
    }

    pub fn failure_reason(&self, status: u32) -> String {
        match self.last_event(&["error", "workload"]) {
            Some(v) if v["event"] == "error" => {
                format!("guest error: {}", v["message"].as_str().unwrap_or("?"))
            }
            Some(v) => format!("workload {} failed (guest exit status {status})", v["name"]),
            None => format!("guest exit status {status}"),
        }
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_budget_are_counted_but_key_lines_survive() {
        let mut log = GuestLog::new(1000);
        let filler = format!("{{\"event\":\"x\",\"pad\":\"{}\"}}", "a".repeat(600));
        log.line(0, filler.as_bytes(), 0);
        log.line(0, filler.as_bytes(), 0);
        log.line(0, br#"{"event":"error","message":"boom"}"#, 0);
        assert_eq!(log.dropped_records, 1);
        assert_eq!(log.dropped_bytes, filler.len() as u64);
        assert_eq!(log.failure_reason(1), "guest error: boom");
        let lines = log.into_lines();
        assert_eq!(
            lines.len(),
            2,
            "the filler that fit, and the small error line"
        );
    }

    #[test]
    fn crash_reason_carries_the_rip_of_the_exception() {
        let mut log = GuestLog::new(DEFAULT_BUDGET);
        log.line(
            1,
            br##"{"event":"exception","vector":14,"name":"#PF","rip":"0xffff1234","error_code":"0x6","cr2":"0x0","cpl":3}"##,
            0,
        );
        let (reason, rip) = log.crash_reason();
        assert_eq!(rip, Some(0xffff_1234));
        assert!(reason.contains("#PF"), "{reason}");
    }

    #[test]
    fn warnings_end_with_the_suppressed_count() {
        let mut log = GuestLog::new(10);
        for i in 0..20 {
            log.warn(format!("w{i}"));
        }
        let w = log.warnings();
        assert_eq!(w.len(), MAX_WARNINGS + 1);
        assert_eq!(w.last().unwrap(), "4 more suppressed");
    }
}
