//! The host's 2 MiB hugetlb pool, for tests that back guest RAM with it:
//! they reserve the pages they need (as root) and give them back.
use std::sync::Mutex;

const POOL: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// The hugetlb pool is the host's: one test at a time changes or counts on it.
pub static POOL_LOCK: Mutex<()> = Mutex::new(());

pub fn pool_value(name: &str) -> u64 {
    std::fs::read_to_string(format!("{POOL}/{name}"))
        .unwrap_or_else(|e| panic!("reading {POOL}/{name}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// 2 MiB pages a new mapping could reserve now.
pub fn pool_available() -> u64 {
    pool_value("free_hugepages").saturating_sub(pool_value("resv_hugepages"))
        + pool_value("nr_overcommit_hugepages").saturating_sub(pool_value("surplus_hugepages"))
}

/// Whether this test may change the hugetlb pool: root may; others skip,
/// or fail under REQUIRE_KVM=1.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("REQUIRE_KVM").is_ok_and(|v| v == "1") {
        panic!(
            "{test}: reserving hugetlb pages needs root, and REQUIRE_KVM=1 makes that a failure"
        );
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipping {test}: reserving hugetlb pages needs root (set REQUIRE_KVM=1 to fail instead)"
    );
    false
}

/// Raises nr_hugepages so that `pages` more are available; puts the old
/// count back on drop.
pub struct Reserved {
    old: u64,
}

impl Reserved {
    pub fn pages(pages: u64) -> Reserved {
        let old = pool_value("nr_hugepages");
        let short = pages.saturating_sub(pool_available());
        std::fs::write(NR_HUGEPAGES, (old + short).to_string())
            .unwrap_or_else(|e| panic!("writing {NR_HUGEPAGES}: {e}"));
        let r = Reserved { old };
        assert!(
            pool_available() >= pages,
            "the kernel found only {} of {pages} huge pages (memory too fragmented?)",
            pool_available()
        );
        r
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.old.to_string());
    }
}
