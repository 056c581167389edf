//! Port-I/O devices: COM1, the i8042's reset line, and memvisor's host I/O
//! ports (results, marks, exit status).
pub mod hostio;
pub mod i8042;
pub mod serial;
