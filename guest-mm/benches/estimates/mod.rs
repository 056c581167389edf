//! Reading criterion's own estimates back after a run, so a bench's
//! summary prints exactly the numbers criterion measured.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Where criterion writes its results: `CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`, else the target directory above the bench
/// executable.
pub fn criterion_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return h.into();
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("criterion");
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dirs = exe.ancestors().skip(3).take(2).map(|t| t.join("criterion"));
    let first = dirs.clone().next();
    dirs.find(|d| d.is_dir())
        .or(first)
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// `point_estimate` of `stat` ("median", "mean") in an estimates.json.
fn point_estimate(json: &str, stat: &str) -> Option<f64> {
    let rest = &json[json.find(&format!("\"{stat}\""))?..];
    let rest = &rest[rest.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

/// One function's estimates, in ns per criterion iteration.
pub struct Estimate {
    pub median: f64,
    pub mean: f64,
    /// Written by this run (not left over from an earlier one).
    pub fresh: bool,
}

/// The estimates of function `who` in group `case`.
pub fn estimate(dir: &Path, case: &str, who: &str, since: SystemTime) -> Option<Estimate> {
    let path = dir.join(case).join(who).join("new/estimates.json");
    let json = std::fs::read_to_string(&path).ok()?;
    let fresh = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= since);
    Some(Estimate {
        median: point_estimate(&json, "median")?,
        mean: point_estimate(&json, "mean")?,
        fresh,
    })
}
