//! The guest kernel built from `firmware/` by build.rs, embedded so that
//! `memvisor run` needs no file on disk.
pub static BUNDLED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/memvisor-guest"));
