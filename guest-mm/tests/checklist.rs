//! Keeps `guest-mm/CHECKLIST.md` from rotting silently. SEED_SPEC lives
//! outside the repository, so this cannot compare the checklist with it;
//! what it can hold is the checklist's own shape: one line per Part 2 row,
//! in order, a known status on each, and every test it cites as evidence
//! still present as a `#[test]` function in the file it names. Renaming,
//! moving or deleting a cited test fails here until the checklist follows.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Rows in SEED_SPEC Part 2's table. Changes only if SEED_SPEC does.
const SEED_SPEC_PART2_ROWS: usize = 65;

const STATUSES: [&str; 4] = ["done", "partial", "declined", "open"];

struct Row {
    number: usize,
    status: String,
    evidence: String,
    line: usize,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("guest-mm sits in the workspace")
        .to_path_buf()
}

fn checklist() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("CHECKLIST.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The table's data rows: lines `| N | mechanism | P | status | evidence |`.
/// The header (`| # |`) and the separator are the only other table lines
/// allowed, so a row whose number cell is mangled is an error, not skipped.
fn rows(text: &str) -> Vec<Row> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(inner) = line.strip_prefix('|') else {
            continue;
        };
        let cells: Vec<&str> = inner
            .trim_end_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells[0] == "#" || cells[0].starts_with("---") {
            continue;
        }
        assert_eq!(
            cells.len(),
            5,
            "CHECKLIST.md line {}: want 5 cells (#, mechanism, P, status, evidence): {line}",
            i + 1
        );
        let number = cells[0].parse().unwrap_or_else(|_| {
            panic!(
                "CHECKLIST.md line {}: row number {:?} is not a number",
                i + 1,
                cells[0]
            )
        });
        out.push(Row {
            number,
            status: cells[3].to_string(),
            evidence: cells[4].to_string(),
            line: i + 1,
        });
    }
    out
}

/// Backticked spans of a cell.
fn code_spans(cell: &str) -> impl Iterator<Item = &str> {
    cell.split('`').skip(1).step_by(2)
}

/// A span that cites a test, `path/to/file.rs::test_name`, split in two.
/// A span that looks like one but is malformed is an error, so a typo
/// cannot turn a citation into unchecked prose.
fn citation(span: &str) -> Option<(&str, &str)> {
    let (file, name) = span.split_once(".rs::")?;
    let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let path_ok = file
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c));
    assert!(
        path_ok && ident(name),
        "malformed citation `{span}`: want `dir/file.rs::test_fn`"
    );
    Some((
        span.strip_suffix(name)
            .and_then(|s| s.strip_suffix("::"))
            .unwrap(),
        name,
    ))
}

/// Whether `source` defines `fn name` with `#[test]` among the attributes
/// and comments right above it (a proptest case included).
fn has_test_fn(source: &str, name: &str) -> bool {
    let lines: Vec<&str> = source.lines().collect();
    let def = format!("fn {name}(");
    lines.iter().enumerate().any(|(i, l)| {
        l.trim_start().starts_with(&def)
            && lines[..i]
                .iter()
                .rev()
                .map(|l| l.trim())
                .take_while(|l| l.starts_with("#[") || l.starts_with("//"))
                .any(|l| l == "#[test]")
    })
}

#[test]
fn one_line_per_seed_row_in_order_with_a_known_status() {
    let rows = rows(&checklist());
    let numbers: Vec<usize> = rows.iter().map(|r| r.number).collect();
    let want: Vec<usize> = (1..=SEED_SPEC_PART2_ROWS).collect();
    assert_eq!(
        numbers, want,
        "CHECKLIST.md rows must be 1..={SEED_SPEC_PART2_ROWS}, once each, in order"
    );
    for r in &rows {
        assert!(
            STATUSES.contains(&r.status.as_str()),
            "CHECKLIST.md line {} (row {}): status {:?}, want one of {STATUSES:?}",
            r.line,
            r.number,
            r.status
        );
        let cites = code_spans(&r.evidence).filter_map(citation).count();
        match r.status.as_str() {
            "done" => assert!(
                cites > 0,
                "row {}: done, but names no test as evidence",
                r.number
            ),
            "partial" => assert!(
                r.evidence.contains("*Missing:*"),
                "row {}: partial, but does not say what is *Missing:*",
                r.number
            ),
            _ => assert!(
                !r.evidence.is_empty(),
                "row {}: {} without a reason",
                r.number,
                r.status
            ),
        }
    }
}

#[test]
fn every_cited_test_exists_in_the_file_it_names() {
    let root = workspace_root();
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    let mut missing = Vec::new();
    let mut cited = 0;
    for r in rows(&checklist()) {
        for (file, name) in code_spans(&r.evidence).filter_map(citation) {
            cited += 1;
            let source = sources.entry(file.to_string()).or_insert_with(|| {
                std::fs::read_to_string(root.join(file))
                    .unwrap_or_else(|e| panic!("row {}: cites {file}: {e}", r.number))
            });
            if !has_test_fn(source, name) {
                missing.push(format!("row {}: no #[test] fn {name} in {file}", r.number));
            }
        }
    }
    assert!(
        cited > 0,
        "no citations parsed: has the evidence format changed?"
    );
    assert!(
        missing.is_empty(),
        "CHECKLIST.md cites tests that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_parser_tells_tests_from_helpers_and_rejects_bad_rows() {
    // The checks above are only as good as these helpers: a helper fn (no
    // #[test]) must not count, a commented-out or renamed test must not
    // count, and a test behind other attributes or doc comments must.
    let src = "\
#[test]
fn plain() {}
fn helper() {}
/// doc
#[test]
#[ignore]
fn attributed() {}
// fn commented() {}
#[test]
fn renamed_now() {}
proptest! {
    #[test]
    fn prop(x in 0..1u8) {}
}
";
    assert!(has_test_fn(src, "plain"));
    assert!(has_test_fn(src, "attributed"));
    assert!(has_test_fn(src, "prop"));
    assert!(!has_test_fn(src, "helper"));
    assert!(!has_test_fn(src, "commented"));
    assert!(!has_test_fn(src, "renamed"));
    assert_eq!(citation("a/b.rs::t_1"), Some(("a/b.rs", "t_1")));
    assert_eq!(citation("page_alloc/mod.rs"), None);
    assert!(std::panic::catch_unwind(|| citation("a/b.rs::t x")).is_err());
    let two = rows("| # | M | P | Status | E |\n|---|---|---|---|---|\n| 1 | a | P0 | done | `x.rs::y` |\n| 2 | b | P1 | open | none yet |\n");
    assert_eq!(two.iter().map(|r| r.number).collect::<Vec<_>>(), [1, 2]);
    assert!(std::panic::catch_unwind(|| rows("| 1a | a | P0 | done | e |\n")).is_err());
    assert!(std::panic::catch_unwind(|| rows("| 1 | a | done | e |\n")).is_err());
}
