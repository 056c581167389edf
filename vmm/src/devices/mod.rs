//! Devices the guest reaches through port I/O: COM1 and memvisor's results
//! channel. (virtio-mmio devices arrive with the balloon.)
pub mod console;
pub mod results;
pub mod serial;
