//! HTTPS transport and backoff (in progress).
