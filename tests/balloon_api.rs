//! Firecracker's balloon API over the Unix socket of a running memvisor,
//! with a real HTTP client: every endpoint, the state rules, every
//! malformed body, and the `memvisor balloon` client and `--balloon` flag.
#[macro_use]
mod common;

use common::api_vmm::ApiVmm;

use common::memvisor;
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// An idle guest: every vCPU halted until SIGTERM.
const IDLE: &str = "console=ttyS0 workload=idle";

api_vmm_newtype!(Vmm);

impl Vmm {
    fn spawn(extra: &[&str]) -> Vmm {
        let mut args = vec!["--cmdline", IDLE];
        args.extend_from_slice(extra);
        Vmm(ApiVmm::spawn(60, &args, Stdio::null()))
    }

    fn json(&self, uri: &str) -> Value {
        let (code, body) = self.call("GET", uri, None);
        assert_eq!(code, 200, "GET {uri}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The request must be refused with 400 and exactly this message.
    fn refused(&self, method: &str, uri: &str, body: Option<&str>, msg: &str) {
        let (code, text) = self.call(method, uri, body);
        assert_eq!(code, 400, "{method} {uri} {body:?}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["fault_message"], msg, "{method} {uri} {body:?}");
    }

    /// Refused with 400 and a message containing `part`.
    fn refused_with(&self, method: &str, uri: &str, body: &str, part: &str) {
        let (code, text) = self.call(method, uri, Some(body));
        assert_eq!(code, 400, "{method} {uri} {body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let m = v["fault_message"].as_str().unwrap();
        assert!(m.contains(part), "{method} {uri} {body}: {m}");
    }

    fn stop(mut self) -> Value {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if t.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("memvisor did not stop");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        serde_json::from_slice(&std::fs::read(self.report.path()).unwrap()).unwrap()
    }
}

const PRE: &str = "The requested operation is not supported before starting the microVM.";
const POST: &str = "The requested operation is not supported after starting the microVM.";
const TOO_LARGE: &str = "Amount of pages requested is too large.";
const NOT_FOUND: &str = "No balloon device found.";
const INACTIVE: &str = "Device is inactive, check if balloon driver is enabled in guest kernel.";
const STATS_OFF: &str = "Statistics for the balloon device are not enabled";
const STATS_SWITCH: &str = "Cannot enable/disable the statistics after boot.";

#[test]
fn configure_before_boot_then_drive_after_boot() {
    require_kvm!();
    let vmm = Vmm::spawn(&["--memory", "256M", "--wait-for-start"]);
    vmm.refused("GET", "/balloon", None, NOT_FOUND);
    // Runtime-only endpoints before boot.
    vmm.refused("PATCH", "/balloon", Some(r#"{"amount_mib": 1}"#), PRE);
    vmm.refused("GET", "/balloon/statistics", None, PRE);
    let s = r#"{"stats_polling_interval_s": 1}"#;
    vmm.refused("PATCH", "/balloon/statistics", Some(s), PRE);
    // Amounts above guest memory, and hinting (not implemented).
    let put = |amount: &str, extra: &str| {
        format!(r#"{{"amount_mib": {amount}, "deflate_on_oom": true{extra}}}"#)
    };
    vmm.refused("PUT", "/balloon", Some(&put("257", "")), TOO_LARGE);
    let hint = put("0", r#", "free_page_hinting": true"#);
    vmm.refused_with("PUT", "/balloon", &hint, "free_page_hinting");
    // Shapes: not JSON, unknown field, wrong types, negative, too large.
    for (body, part) in [
        ("{", "deserializing the json body"),
        ("nope", "deserializing the json body"),
        ("[]", "deserializing the json body"),
        (
            &put("1", r#", "must_tell_host": true"#),
            "unknown field `must_tell_host`",
        ),
        (&put("\"64\"", ""), "amount_mib"),
        (&put("-1", ""), "amount_mib"),
        (&put("4294967296", ""), "amount_mib"),
        (
            &put("1", r#", "stats_polling_interval_s": -1"#),
            "stats_polling_interval_s",
        ),
        (
            &put("1", r#", "free_page_reporting": "on""#),
            "free_page_reporting",
        ),
        (
            r#"{"amount_mib": 1, "deflate_on_oom": 1}"#,
            "deflate_on_oom",
        ),
        (r#"{"amount_mib": 1}"#, "missing field `deflate_on_oom`"),
    ] {
        vmm.refused_with("PUT", "/balloon", body, part);
    }
    assert_eq!(
        vmm.call("GET", "/balloon", None).0,
        400,
        "refusals store nothing"
    );
    let good = put(
        "64",
        r#", "stats_polling_interval_s": 1, "free_page_reporting": true"#,
    );
    assert_eq!(vmm.call("PUT", "/balloon", Some(&good)).0, 204);
    assert_eq!(
        vmm.json("/balloon"),
        serde_json::json!({"amount_mib": 64, "deflate_on_oom": true,
            "stats_polling_interval_s": 1, "free_page_reporting": true,
            "free_page_hinting": false})
    );
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(vmm.call("PUT", "/actions", Some(start)).0, 204);

    vmm.refused("PUT", "/balloon", Some(&good), POST);
    assert_eq!(vmm.json("/balloon")["amount_mib"], 64);
    vmm.refused(
        "PATCH",
        "/balloon",
        Some(r#"{"amount_mib": 257}"#),
        TOO_LARGE,
    );
    for (body, part) in [
        (r#"{"amount_mib": -5}"#, "amount_mib"),
        (r#"{"amount_mib": "5"}"#, "amount_mib"),
        (
            r#"{"amount_mib": 5, "deflate_on_oom": true}"#,
            "unknown field `deflate_on_oom`",
        ),
        (r#"{}"#, "missing field `amount_mib`"),
        ("{,}", "deserializing the json body"),
    ] {
        vmm.refused_with("PATCH", "/balloon", body, part);
    }
    // The guest's driver may or may not have started: either the target
    // is taken, or Firecracker's "inactive" answer.
    let (code, body) = vmm.call("PATCH", "/balloon", Some(r#"{"amount_mib": 32}"#));
    match code {
        204 => assert_eq!(vmm.json("/balloon")["amount_mib"], 32),
        _ => {
            assert_eq!(code, 400);
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap()["fault_message"],
                INACTIVE
            );
        }
    }
    let st = vmm.json("/balloon/statistics");
    for k in [
        "target_pages",
        "actual_pages",
        "target_mib",
        "actual_mib",
        "rejected_total",
    ] {
        assert!(st[k].is_u64(), "{k}: {st}");
    }
    assert!(
        st["target_pages"] == 16384 || st["target_pages"] == 8192,
        "{st}"
    );
    assert_eq!(st["rejected_total"], 0);
    let every = |s: u32| format!(r#"{{"stats_polling_interval_s": {s}}}"#);
    assert_eq!(
        vmm.call("PATCH", "/balloon/statistics", Some(&every(2))).0,
        204
    );
    assert_eq!(vmm.json("/balloon")["stats_polling_interval_s"], 2);
    vmm.refused(
        "PATCH",
        "/balloon/statistics",
        Some(&every(0)),
        STATS_SWITCH,
    );
    for (body, part) in [
        (every(70000), "stats_polling_interval_s".to_string()),
        (
            r#"{"stats_polling_interval_s": -1}"#.into(),
            "stats_polling_interval_s".into(),
        ),
        (
            r#"{"amount_mib": 1}"#.into(),
            "unknown field `amount_mib`".into(),
        ),
    ] {
        vmm.refused_with("PATCH", "/balloon/statistics", &body, &part);
    }
    // Still serving after all that.
    assert_eq!(vmm.json("/")["state"], "Running");
    let r = vmm.stop();
    let b = &r["balloon"];
    assert!(b["target_mib"] == 64 || b["target_mib"] == 32, "{b}");
    assert!(b["rejected"].is_object(), "{b}");
    let cmdline = r["config"]["cmdline"].as_str().unwrap();
    assert!(
        cmdline.contains("virtio_mmio.device=4K@0xd0000000:"),
        "{cmdline}"
    );
}

#[test]
fn statistics_off_and_no_balloon_are_refused_as_firecracker_does() {
    require_kvm!();
    let vmm = Vmm::spawn(&["--balloon", "amount_mib=0"]);
    vmm.refused("GET", "/balloon/statistics", None, STATS_OFF);
    let s = r#"{"stats_polling_interval_s": 1}"#;
    vmm.refused("PATCH", "/balloon/statistics", Some(s), STATS_SWITCH);
    assert_eq!(vmm.json("/balloon")["stats_polling_interval_s"], 0);
    vmm.stop();

    let vmm = Vmm::spawn(&[]);
    vmm.refused("GET", "/balloon", None, NOT_FOUND);
    vmm.refused("PATCH", "/balloon", Some(r#"{"amount_mib": 1}"#), NOT_FOUND);
    vmm.refused("GET", "/balloon/statistics", None, NOT_FOUND);
    let r = vmm.stop();
    assert!(
        r.get("balloon").is_none(),
        "no balloon section without a balloon"
    );
}

#[test]
fn the_cli_client_speaks_the_same_api() {
    require_kvm!();
    let vmm = Vmm::spawn(&["--balloon", "amount_mib=16,stats_polling_interval_s=1"]);
    let sock = vmm.sock.to_str().unwrap().to_string();
    let out = memvisor(&["balloon", "get", "--api-sock", &sock], &[]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["amount_mib"], 16);
    let out = memvisor(&["balloon", "stats", "--api-sock", &sock], &[]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["target_mib"], 16);
    let out = memvisor(
        &["balloon", "stats", "--interval", "3", "--api-sock", &sock],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(vmm.json("/balloon")["stats_polling_interval_s"], 3);
    // Refusals are bad input, with the server's message.
    let out = memvisor(&["balloon", "set", "100000", "--api-sock", &sock], &[]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains(TOO_LARGE), "{}", out.stderr);
    // Firecracker's message names neither; the client adds both.
    let said = "(amount 100000 MiB; valid: 0 to 256, the guest's RAM)";
    assert!(out.stderr.contains(said), "{}", out.stderr);
    let out = memvisor(
        &["balloon", "stats", "--interval", "0", "--api-sock", &sock],
        &[],
    );
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains(STATS_SWITCH), "{}", out.stderr);
    vmm.stop();
    let out = memvisor(&["balloon", "get"], &[]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains("--api-sock"), "{}", out.stderr);
    let out = memvisor(
        &["balloon", "get", "--api-sock", "/nonexistent/x.sock"],
        &[],
    );
    assert_eq!(out.code, Some(1), "{}", out.describe());
    let out = memvisor(&["balloon", "set", "-1", "--api-sock", "/tmp/x"], &[]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
}

#[test]
fn bad_balloon_flags_exit_2_naming_them() {
    // No KVM needed: refused before anything is opened.
    for (flag, says) in [
        ("amount=1", "unknown key `amount`"),
        ("amount_mib=lots", "amount_mib=lots"),
        ("deflate_on_oom=maybe", "deflate_on_oom=maybe"),
        ("stats_polling_interval_s=-1", "stats_polling_interval_s=-1"),
        ("free_page_reporting", "expected key=value"),
    ] {
        let out = memvisor(&["run", "--balloon", flag], &[]);
        assert_eq!(out.code, Some(2), "{flag}: {}", out.describe());
        assert!(out.stderr.contains(says), "{flag}: {}", out.stderr);
    }
    if !common::kvm_or_skip("bad_balloon_flags_exit_2_naming_them (amount)") {
        return;
    }
    let out = memvisor(
        &["run", "--memory", "64M", "--balloon", "amount_mib=65"],
        &[],
    );
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(
        out.stderr
            .contains("--balloon amount_mib=65: more than the guest's 64 MiB"),
        "{}",
        out.stderr
    );
}

/// `tools/balloon-cycle.sh` refuses a bad argument up front, naming it, and
/// never waits for ever on a VM that has already ended (it used to poll
/// `balloon set 0` with no end when the guest refused `--mode bogus` or
/// `run` refused `--memory 3M`). No KVM needed: both end before a guest
/// would run.
#[test]
fn balloon_cycle_script_names_bad_arguments_and_never_waits_on_a_dead_vm() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/balloon-cycle.sh");
    for (args, code, says) in [
        (&["--mode", "bogus"][..], 2, "--mode bogus: valid: 2m or 4k"),
        (
            &["--amount", "-1"][..],
            2,
            "--amount -1: valid: a whole number",
        ),
        (
            &["--fragment", "1"][..],
            2,
            "--fragment 1: valid: a whole number from 2 to 512",
        ),
        (&["--mode"][..], 2, "--mode needs a value"),
        (&["--memory", "3M"][..], 2, "memvisor run ended (exit 2)"),
    ] {
        let mut child = std::process::Command::new("bash")
            .arg(script)
            .args(["--bin", common::BIN])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning bash");
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(30) {
                // SIGTERM: the script's trap stops its VM.
                let _ = std::process::Command::new("kill")
                    .arg(child.id().to_string())
                    .status();
                let _ = child.wait();
                panic!("balloon-cycle.sh {args:?} still waiting after 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
