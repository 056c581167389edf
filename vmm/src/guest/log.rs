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
/// Report bytes a key line that missed the budget may take; a larger one is
/// kept as its name only. Pretty-printing a deeply nested 64 KiB line makes
/// megabytes (every value on its own, deeply indented line), and five of
/// them must not undo the budget.
const KEY_LINE_MAX: usize = 16 << 10;

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
        let size = report_size(&v).unwrap_or(payload.len());
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
        lines.extend(self.key.into_iter().filter(|k| !k.1).map(|(v, _)| {
            if report_size(&v).is_some_and(|n| n <= KEY_LINE_MAX) {
                v
            } else {
                json!({"event": v["event"], "vcpu": v["vcpu"], "at_us": v["at_us"], "truncated": true})
            }
        }));
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
            .map(|e| shown(&e.to_string()))
    }

    /// Why the guest reported a crash, and the faulting rip if it said.
    pub fn crash_reason(&self) -> (String, Option<u64>) {
        match self.last_event(&["exception", "panic"]) {
            Some(v) if v["event"] == "exception" => {
                let rip = v["rip"].as_str().and_then(parse_hex);
                let reason = format!(
                    "guest exception {} ({}) at rip {} (error code {}, cr2 {}, cpl {})",
                    json(&v["vector"]),
                    text(&v["name"]),
                    text(&v["rip"]),
                    text(&v["error_code"]),
                    text(&v["cr2"]),
                    json(&v["cpl"])
                );
                (reason, rip)
            }
            Some(v) => (
                format!(
                    "guest panic: {} at {}:{}",
                    text(&v["message"]),
                    text(&v["file"]),
                    json(&v["line"])
                ),
                None,
            ),
            None => ("the guest reported a crash".into(), None),
        }
    }

    pub fn failure_reason(&self, status: u32) -> String {
        match self.last_event(&["error", "workload"]) {
            Some(v) if v["event"] == "error" => {
                format!("guest error: {}", text(&v["message"]))
            }
            // A workload that said why before its verdict: the why is what
            // the user needs, and the verdict alone hides it.
            Some(v) => match self.last_event(&["error"]) {
                Some(e) => format!(
                    "workload {} failed (guest exit status {status}): guest error: {}",
                    json(&v["name"]),
                    text(&e["message"])
                ),
                None => format!(
                    "workload {} failed (guest exit status {status})",
                    json(&v["name"])
                ),
            },
            None => format!("guest exit status {status}"),
        }
    }
}

/// What a line costs in the pretty-printed report (indented one level
/// deeper there).
fn report_size(v: &Value) -> Option<usize> {
    let t = serde_json::to_string_pretty(v).ok()?;
    Some(t.len() + 4 * t.bytes().filter(|&b| b == b'\n').count() + 8)
}

/// Longest guest-supplied value quoted in an exit reason.
const SHOWN_MAX: usize = 120;

/// A guest-supplied value as an exit reason quotes it. The reason goes raw
/// to the operator's terminal in the summary line, so control characters
/// are escaped (`\u{1b}`), as the console does for guest output, and the
/// value is cut short: a 64 KiB `message` must not become a 64 KiB line.
fn shown(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == SHOWN_MAX {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// A guest string field, or `?` when it is missing or not a string.
fn text(v: &Value) -> String {
    shown(v.as_str().unwrap_or("?"))
}

/// A guest field as JSON (numbers bare, strings quoted).
fn json(v: &Value) -> String {
    shown(&v.to_string())
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
    fn a_failed_workload_names_the_error_it_sent_before_its_verdict() {
        let mut log = GuestLog::new(DEFAULT_BUDGET);
        log.line(0, br#"{"event":"workload","name":"a","ok":false}"#, 0);
        assert_eq!(
            log.failure_reason(1),
            "workload \"a\" failed (guest exit status 1)"
        );
        log.line(0, br#"{"event":"error","message":"no frames"}"#, 0);
        log.line(0, br#"{"event":"workload","name":"b","ok":false}"#, 0);
        assert_eq!(
            log.failure_reason(1),
            "workload \"b\" failed (guest exit status 1): guest error: no frames"
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
    fn key_lines_past_the_budget_cannot_blow_up_the_report() {
        let budget = 4096;
        let mut log = GuestLog::new(budget);
        // 64 KiB that pretty-print to megabytes: zeros 100 arrays deep.
        let depth = 100;
        let zeros = (65_000 - 2 * depth - 40) / 2;
        for e in KEY_EVENTS {
            let line = format!(
                r#"{{"event":"{e}","x":{}{}0{}}}"#,
                "[".repeat(depth),
                "0,".repeat(zeros),
                "]".repeat(depth)
            );
            assert!(line.len() <= 65_536);
            log.line(0, line.as_bytes(), 0);
        }
        let lines = log.into_lines();
        assert_eq!(lines.len(), KEY_EVENTS.len(), "every key event is there");
        let report = serde_json::to_string_pretty(&json!({ "guest": lines })).unwrap();
        assert!(
            report.len() < budget + KEY_EVENTS.len() * KEY_LINE_MAX,
            "{} report bytes for a {budget}-byte budget",
            report.len()
        );
    }

    #[test]
    fn exit_reasons_quote_guest_text_escaped_and_short() {
        let mut log = GuestLog::new(DEFAULT_BUDGET);
        let msg = format!("\\u001b]0;pwned\\u0007\\u009b2J{}", "a".repeat(60_000));
        log.line(
            0,
            format!(r#"{{"event":"error","message":"{msg}"}}"#).as_bytes(),
            0,
        );
        let panic = format!(r#"{{"event":"panic","message":"{msg}","file":"{msg}","line":1}}"#);
        log.line(0, panic.as_bytes(), 0);
        for r in [log.failure_reason(1), log.crash_reason().0] {
            assert!(!r.chars().any(char::is_control), "{r:?}");
            assert!(r.contains("pwned"), "{r:?}");
            assert!(r.len() < 1000, "a reason of {} bytes", r.len());
        }
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
