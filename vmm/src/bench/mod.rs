//! `memvisor bench …`: studies that print their figures (targets live here,
//! never in timed unit tests).
pub mod api;
pub mod balloon;
pub mod boot;
pub mod memory;
pub mod ptrepl;
pub mod stats;

/// How every bench prints a goal's verdict beside its figure.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}
