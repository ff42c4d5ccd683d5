//! The bounded on-disk change queue (in progress).
