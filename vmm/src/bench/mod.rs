//! `memvisor bench …`: studies that print their figures (targets live here,
//! never in timed unit tests).
pub mod api;
pub mod balloon;
pub mod boot;
pub mod memory;
pub mod ptrepl;
pub mod stats;
