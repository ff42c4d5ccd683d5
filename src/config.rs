//! The config file (in progress).
