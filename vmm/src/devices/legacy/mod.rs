//! Port-I/O devices: COM1, the i8042's reset line, and memvisor's host I/O
//! ports (results, marks, exit status); and the IOAPIC of a split irqchip.
pub mod hostio;
pub mod i8042;
pub mod ioapic;
pub mod serial;
