//! The guest⇄VMM results protocol and what its records mean.
//!
//! `record` reads one record out of guest memory; `events` carries what the
//! vCPU threads and devices learn to the event loop through a bounded queue;
//! `log` keeps the guest's lines for the report within a byte budget. Every
//! path here is fed by the guest, so every one of them is bounded.
pub mod dirty;
pub mod events;
pub mod log;
pub mod ptwalk;
pub mod record;
