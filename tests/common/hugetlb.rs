//! The host's 2 MiB hugetlb pool, for tests that back guest RAM with it.
//!
//! Reserving pages and giving them back is `memvisor::memory::reserve`
//! (`Reservation::pages`, or `PoolLock::take` to only count on the pool):
//! it holds an flock on a lock file, so tests in every binary, benches and
//! other processes take turns. Reading the pool is
//! `memvisor::memory::backing::HugePool`. What is left here is the tests'
//! own policy: who may change the pool.

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

/// The pool now.
pub fn pool() -> memvisor::memory::backing::HugePool {
    memvisor::memory::backing::HugePool::read().expect("reading the hugetlb pool")
}
