//! What `workload=dirty`'s result line means: the pages the guest says it
//! wrote inside its dirty window (`runs`) and the pages it handed a device
//! to write there (`device_runs`), each run `[first_pfn, count, stride]`:
//! pages `first_pfn + i * stride` for `i < count`.
//!
//! The guest chooses every number, so the runs are bounded (at most
//! [`MAX_RUNS`], no page outside RAM, no more pages than RAM has) with
//! overflow-checked arithmetic before any page is counted.
use crate::memory::dirty::{DirtyCheck, Final, PageSet, PAGE_SIZE};
use crate::report::{ExitKind, Report};
use serde_json::Value;

/// Runs accepted in one line; the guest sends one per allocated block.
pub const MAX_RUNS: usize = 1024;

/// The pages of `line`'s `runs` and `device_runs`, added to `into`.
pub fn expected_pages(line: &Value, into: &mut PageSet) -> Result<(), String> {
    let mut seen = 0usize;
    for key in ["runs", "device_runs"] {
        let Some(runs) = line.get(key) else {
            if key == "runs" {
                return Err("the workload line has no `runs`".into());
            }
            continue;
        };
        let runs = runs
            .as_array()
            .ok_or_else(|| format!("`{key}` is not an array"))?;
        for r in runs {
            seen += 1;
            if seen > MAX_RUNS {
                return Err(format!("more than {MAX_RUNS} runs"));
            }
            let n = |i: usize| r.get(i).and_then(Value::as_u64);
            let (Some(first), Some(count), Some(stride), 3) =
                (n(0), n(1), n(2), r.as_array().map_or(0, Vec::len))
            else {
                return Err(format!(
                    "`{key}` entry {r} is not [first_pfn, count, stride]"
                ));
            };
            if count > 0 && stride == 0 {
                return Err(format!("`{key}` entry {r} has stride 0"));
            }
            for i in 0..count {
                let gpa = i
                    .checked_mul(stride)
                    .and_then(|o| o.checked_add(first))
                    .and_then(|p| p.checked_mul(PAGE_SIZE))
                    .filter(|&gpa| into.insert_gpa(gpa));
                if gpa.is_none() {
                    return Err(format!("`{key}` entry {r}: page {i} is not in guest RAM"));
                }
            }
        }
    }
    Ok(())
}

/// Puts the dirty log into `report`; after `workload=dirty`, checks the
/// guest's window against the pages it says were written there (by it and
/// by devices). A failed check fails a run that had otherwise succeeded,
/// as a failed memtest does.
pub fn check_report(report: &mut Report, fin: Final) {
    let Final {
        report: mut dirty,
        window,
        empty: mut expected,
        error,
    } = fin;
    let line = report
        .guest_event("workload")
        .filter(|w| w.get("name").and_then(Value::as_str) == Some("dirty"));
    if let Some(line) = line {
        let check = match (expected_pages(line, &mut expected), window, error) {
            (_, _, Some(e)) => DirtyCheck::failed(e),
            (Err(e), _, _) => DirtyCheck::failed(format!("the guest's runs: {e}")),
            (Ok(()), None, _) => DirtyCheck::failed(
                "the guest closed no dirty window (no start and end marks)".into(),
            ),
            (Ok(()), Some(w), _) => DirtyCheck::compare(&expected, &w.guest.union(&w.vmm)),
        };
        if !check.ok && report.exit.status == ExitKind::Success {
            report.exit.status = ExitKind::Failure;
            report.exit.code = ExitKind::Failure.code();
            report.exit.reason = match &check.error {
                Some(e) => format!("dirty log check failed: {e}"),
                None => format!(
                    "dirty log check failed: {} pages expected, {} found, {} missing, {} extra",
                    check.expected, check.found, check.missing, check.extra
                ),
            };
        }
        dirty.check = Some(check);
    }
    report.memory.dirty = Some(dirty);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;
    use serde_json::json;

    fn set() -> PageSet {
        let ram = GuestRam::new(16 << 20).unwrap();
        crate::memory::dirty::page_set_for(ram.regions())
    }

    #[test]
    fn runs_expand_to_their_pages() {
        let mut s = set();
        expected_pages(
            &json!({"runs": [[16, 3, 2], [100, 1, 1]], "device_runs": [[200, 2, 1]]}),
            &mut s,
        )
        .unwrap();
        assert_eq!(s.len(), 6);
        for pfn in [16, 18, 20, 100, 200, 201] {
            assert!(s.contains_gpa(pfn * PAGE_SIZE), "{pfn}");
        }
    }

    /// A window that is not what the guest says fails a run that had
    /// succeeded (exit 1, as a failed memtest), naming the counts.
    #[test]
    fn a_failed_check_fails_the_run() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let fin = |found: &[u64]| {
            let mut w = crate::memory::dirty::Window {
                guest: set(),
                vmm: set(),
            };
            for &p in found {
                w.guest.insert_gpa(p * PAGE_SIZE);
            }
            Final {
                report: crate::memory::dirty::DirtyReport {
                    mode: crate::memory::dirty::DirtyMode::Bitmap,
                    harvests: 3,
                    ring_full_exits: 0,
                    pages_dirty: 0,
                    guest_pages: 0,
                    vmm_pages: 0,
                    window: None,
                    check: None,
                },
                window: Some(w),
                empty: crate::memory::dirty::page_set_for(ram.regions()),
                error: None,
            }
        };
        let line = json!({"event": "workload", "name": "dirty", "runs": [[16, 2, 1]]});
        let mut r = crate::report::tests::sample();
        r.guest.push(line.clone());
        check_report(&mut r, fin(&[16, 17]));
        assert_eq!(r.exit.code, 0);
        assert!(r.memory.dirty.as_ref().unwrap().check.as_ref().unwrap().ok);

        let mut r = crate::report::tests::sample();
        r.guest.push(line);
        check_report(&mut r, fin(&[16, 18]));
        assert_eq!(r.exit.status, ExitKind::Failure);
        assert_eq!(r.exit.code, 1);
        assert!(
            r.exit.reason.contains("1 missing, 1 extra"),
            "{}",
            r.exit.reason
        );
        let c = r.memory.dirty.unwrap().check.unwrap();
        assert_eq!(
            (c.missing_sample, c.extra_sample),
            (vec![17 * PAGE_SIZE], vec![18 * PAGE_SIZE])
        );
    }

    #[test]
    fn hostile_runs_are_refused() {
        let pages = (16u64 << 20) / PAGE_SIZE;
        for bad in [
            json!({}),
            json!({"runs": 5}),
            json!({"runs": [[1, 2]]}),
            json!({"runs": [[1, 2, 3, 4]]}),
            json!({"runs": [[1, 2, 0]]}),
            json!({"runs": [[-1, 1, 1]]}),
            json!({"runs": [[pages, 1, 1]]}),
            json!({"runs": [[0, 2, u64::MAX]]}),
            json!({"runs": [[u64::MAX, 1, 1]]}),
            json!({"runs": [[0, u64::MAX, 1]]}),
            json!({"runs": vec![[0, 1, 1]; MAX_RUNS + 1]}),
        ] {
            assert!(expected_pages(&bad, &mut set()).is_err(), "{bad}");
        }
    }
}
