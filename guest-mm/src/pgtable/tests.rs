//! Page-table tests.
