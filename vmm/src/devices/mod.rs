//! Devices: the bus, legacy port-I/O devices, virtio-mmio devices, and the
//! manager that allocates their addresses and IRQs.
pub mod bus;
pub mod console;
pub mod legacy;
pub mod manager;
pub mod rate_limiter;
pub mod virtio;
