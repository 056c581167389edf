//! Devices: the port-I/O ones (COM1, memvisor's results channel) and the
//! virtio-mmio ones (`virtio/`), plus the token-bucket rate limiter they share.
pub mod console;
pub mod rate_limiter;
pub mod results;
pub mod serial;
pub mod virtio;
