//! Test fixtures for the page tables.
