//! README's report section names every field the report has: a real
//! report's keys are checked against the backticked names in that section,
//! so a field added, renamed or undocumented fails here.
#[macro_use]
mod common;

use common::run;
use serde_json::Value;

fn readme_report_section() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("reading README.md");
    let start = readme.find("## The report").expect("a report section");
    let end = readme[start..]
        .find("\n## ")
        .map_or(readme.len(), |e| start + e);
    readme[start..end].to_string()
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn readme_names_every_report_field() {
    require_kvm!();
    let out = run(&["--quiet", "--vcpus", "2"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let r = out.report();
    let doc = readme_report_section();
    let mut fields = keys(r);
    for section in [
        "config",
        "phases_us",
        "memory",
        "exits",
        "exit",
        "ptwalk_rejected",
    ] {
        fields.extend(keys(&r[section]));
    }
    fields.extend(keys(&r["memory"]["regions"][0]));
    fields.extend(keys(&r["memory"]["e820"][0]));
    let ready = out.guest_event("ready");
    fields.extend(keys(ready));
    fields.extend(keys(&ready["boot_cycles"]));
    fields.extend(keys(&ready["cpus"][0]));
    fields.extend(keys(&ready["numa"]));
    fields.extend(keys(&ready["numa"]["nodes"][0]));
    fields.extend(keys(out.guest_event("workload")));
    let missing: Vec<_> = fields
        .iter()
        .filter(|f| !doc.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README's report section lacks {missing:?}"
    );
}
