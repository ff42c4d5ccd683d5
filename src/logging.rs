//! A small `log` backend (in progress).
