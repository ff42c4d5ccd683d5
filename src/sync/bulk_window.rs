//! How many SCIM Bulk requests a full pass keeps out at once. Pure: no I/O.
//!
//! An endpoint runs the operations of one Bulk request one after another (RFC 7644 §3.7
//! orders them; every server measured does), so its other workers have nothing to do while
//! one large request is out: parallelism comes from requests in flight, as for single
//! requests. A pass therefore keeps up to `sync.concurrency` Bulk requests out (and at most
//! [`MAX_REQUESTS`]), of at most [`crate::sync::bulk::MAX_OPERATIONS`] operations each.
//! Measured on scim2-server, 10,200 creates on loopback (README, performance): the same
//! operations took about the same server CPU time in requests of 100, 250, 500 or 1,000
//! operations, but the wall time fell with the requests in flight.
//!
//! Memory stays bounded by bytes, not only by count: the bodies out at once total at most
//! [`MAX_BYTES`] (a group created with its members can fill a whole `maxPayloadSize`), but
//! one request always may go, whatever its size.

/// Bulk requests out at once, at most (and never more than `sync.concurrency`).
pub const MAX_REQUESTS: usize = 8;

/// Bytes of Bulk request bodies out at once, at most (one request may exceed it alone).
pub const MAX_BYTES: usize = 8 << 20;

/// Whether one more request of `next` bytes may go out while `out` requests of `bytes_out`
/// bytes in all are out, under `concurrency` (`sync.concurrency`).
pub fn may_send(out: usize, bytes_out: usize, next: usize, concurrency: usize) -> bool {
    if out == 0 {
        return true;
    }
    out < concurrency.clamp(1, MAX_REQUESTS) && bytes_out.saturating_add(next) <= MAX_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_many_requests_as_the_concurrency_allows_up_to_the_cap() {
        assert!(may_send(0, 0, 100, 1));
        assert!(!may_send(1, 100, 100, 1), "concurrency 1: one at a time");
        assert!(may_send(3, 300, 100, 4));
        assert!(!may_send(4, 400, 100, 4));
        assert!(may_send(7, 700, 100, 32));
        assert!(!may_send(MAX_REQUESTS, 800, 100, 32), "never above the cap");
        assert!(!may_send(1, 100, 100, 0), "a concurrency of 0 counts as 1");
    }

    #[test]
    fn the_bytes_out_are_bounded_but_one_request_always_goes() {
        assert!(may_send(0, 0, MAX_BYTES * 2, 8), "alone, whatever its size");
        assert!(!may_send(1, MAX_BYTES, 1, 8));
        assert!(may_send(1, MAX_BYTES - 10, 10, 8));
        assert!(!may_send(1, MAX_BYTES - 10, 11, 8));
        assert!(!may_send(1, usize::MAX, 1, 8), "no overflow");
    }
}
