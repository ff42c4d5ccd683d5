//! The hub's HTTP/1.1 keep-alive loop: async-h1's request decoder and response encoder,
//! driven so a held request (an agent's long-poll) costs its connection little memory.
//!
//! `async_h1::accept` keeps, for every request until its answer is written, the
//! connection's 8 KiB read buffer (to drain an unread body afterwards) and its decoder's
//! state inline in the connection's task. Here the decoder runs in a box freed once the
//! head is read, and the body reader is dropped at once: the request keeps its own handle
//! on the body, so the buffer goes as soon as the handler has read the body (or dropped
//! it). Draining is not needed: the handler answers with `Connection: close` (and
//! [`super::conn::Guarded::poison`]) whenever it did not read a body to its end, and only a
//! fully read body leaves the connection open. Pipelined bytes read ahead with a head are
//! dropped, as async-h1 drops them. No upgrades (the hub never answers 101).

use std::future::Future;
use std::time::Duration;

use async_h1::server::{decode, Encoder};
use http_types::{Request, Response};
use smol::io::{AsyncRead, AsyncWrite};
use smol::Timer;

/// Longest wait for a complete request head (async-h1's default, kept).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves requests on `io` with `handler` until the client closes, a head is late or
/// malformed, either side asks for `Connection: close`, or writing fails.
pub async fn serve<S, F, Fut>(mut io: S, handler: F) -> http_types::Result<()>
where
    S: AsyncRead + AsyncWrite + Clone + Send + Sync + Unpin + 'static,
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    loop {
        let head = smol::future::or(Box::pin(decode(io.clone())), async {
            Timer::after(HEAD_TIMEOUT).await;
            Ok(None)
        })
        .await?;
        let Some((req, body)) = head else {
            return Ok(());
        };
        // The request holds the body; this second handle would keep the read buffer.
        drop(body);
        let close_asked = wants_close(req.header("Connection").map(|h| h.as_str()));
        let method = req.method();
        let res = handler(req).await;
        let close = close_asked || wants_close(res.header("Connection").map(|h| h.as_str()));
        smol::io::copy(Encoder::new(res, method), &mut io).await?;
        if close {
            return Ok(());
        }
    }
}

fn wants_close(connection: Option<&str>) -> bool {
    connection.is_some_and(|c| c.trim().eq_ignore_ascii_case("close"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_close() {
        assert!(wants_close(Some("close")));
        assert!(wants_close(Some(" Close ")));
        assert!(!wants_close(Some("keep-alive")));
        assert!(!wants_close(None));
    }
}
