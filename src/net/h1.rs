//! HTTP/1.1 client codec: request encoding, response head parsing, body framing.
//!
//! Owns: the bytes on the wire for one request/response exchange. Knows nothing about
//! sockets, TLS, pools or timeouts (that is `http.rs`); the readers work on any
//! `AsyncBufRead`, so tests feed them in-memory bytes.
//!
//! Rules (RFC 9112), and the limits that keep a hostile server from exhausting memory:
//! * Requests are HTTP/1.1 with `Host`, `User-Agent` and, when a body is sent (or the method
//!   usually has one), `Content-Length`. Callers cannot set framing or connection headers.
//! * Responses may be HTTP/1.0 or HTTP/1.1. Interim 1xx responses are skipped; 101 is an
//!   error (the client never asks to upgrade).
//! * Body framing (§6.3): no body for HEAD, 1xx, 204, 304; `Transfer-Encoding` ending in
//!   `chunked` is decoded; any other `Transfer-Encoding`, or neither header, means the body
//!   runs **until the server closes the connection** (read to EOF; the connection is then
//!   never reused); otherwise `Content-Length` (several values must agree).
//! * A head is at most [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] fields; a chunk-size or
//!   trailer line at most [`MAX_LINE_BYTES`]; a body at most the caller's limit.
//! * Obsolete header line folding is rejected, not unfolded.

use std::io;

use smol::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

use super::http::Method;

/// Largest response head (status line + header fields) accepted.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields accepted in one response head.
pub(crate) const MAX_HEADERS: usize = 128;
/// Longest chunk-size or trailer line accepted.
pub(crate) const MAX_LINE_BYTES: usize = 8 * 1024;

/// Headers a caller may not set: the codec owns framing and connection management.
const RESERVED_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "proxy-connection",
];

/// Why reading a response failed.
#[derive(Debug)]
pub(crate) enum CodecError {
    /// The socket (or TLS layer) failed.
    Io(io::Error),
    /// The server closed the connection; `mid_message` is false when not a single byte of
    /// the response had arrived.
    Closed { mid_message: bool },
    /// The bytes do not form a valid HTTP/1.x response.
    Malformed(String),
    /// The body is larger than the limit (bytes).
    BodyTooLarge(usize),
}

impl From<io::Error> for CodecError {
    fn from(e: io::Error) -> Self {
        CodecError::Io(e)
    }
}

/// A parsed response status line and header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResponseHead {
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Status code, 100..=999.
    pub status: u16,
    /// Header fields in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// The first value of a header field (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All comma-separated list elements of a header field, over every occurrence, trimmed.
    fn list(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// How the end of a response body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// A header name is an RFC 9110 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value has no control characters other than horizontal tab.
fn is_field_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Encodes a complete request (head and body) into one buffer.
///
/// `target` is the origin-form request target (`/path?query`), `host` the `Host` value.
/// Errors name the offending header; they never contain header values.
pub(crate) fn encode_request(
    method: Method,
    target: &str,
    host: &str,
    user_agent: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
) -> Result<Vec<u8>, String> {
    if !target.starts_with('/') || !is_field_value(target) || target.contains(' ') {
        return Err("request target must be an absolute path without spaces".into());
    }
    for (name, value) in headers {
        if !is_token(name) {
            return Err(format!("header name {name:?} is not a valid token"));
        }
        if RESERVED_HEADERS
            .iter()
            .any(|r| name.eq_ignore_ascii_case(r))
        {
            return Err(format!("header {name:?} is set by the HTTP client itself"));
        }
        if !is_field_value(value) {
            return Err(format!(
                "header {name:?} has a value with control characters"
            ));
        }
    }
    if !is_field_value(user_agent) || !is_field_value(host) {
        return Err("Host or User-Agent contains control characters".into());
    }
    let body_len = match (body, method) {
        (Some(b), _) => Some(b.len()),
        (None, Method::Post | Method::Put | Method::Patch) => Some(0),
        (None, _) => None,
    };
    let mut out = Vec::with_capacity(256 + body.map_or(0, <[u8]>::len));
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    let caller_sets_agent = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("user-agent"));
    if !caller_sets_agent && !user_agent.is_empty() {
        out.extend_from_slice(b"User-Agent: ");
        out.extend_from_slice(user_agent.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.trim().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(len) = body_len {
        out.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    Ok(out)
}

/// Parses a complete response head (everything up to and including the blank line).
pub(crate) fn parse_head(bytes: &[u8]) -> Result<ResponseHead, String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let (minor, status) = parse_status_line(status_line)?;
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            return Err("obsolete header line folding is not accepted".into());
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line without a colon: {:?}", shorten(line)))?;
        if !is_token(name) {
            return Err(format!("invalid header name {:?}", shorten(name)));
        }
        if headers.len() == MAX_HEADERS {
            return Err(format!("more than {MAX_HEADERS} header fields"));
        }
        headers.push((
            name.to_string(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    Ok(ResponseHead {
        minor,
        status,
        headers,
    })
}

/// `HTTP/1.1 200 OK` -> (1, 200). The reason phrase is optional and ignored.
fn parse_status_line(line: &str) -> Result<(u8, u16), String> {
    let bad = || format!("invalid status line {:?}", shorten(line));
    let rest = line.strip_prefix("HTTP/1.").ok_or_else(bad)?;
    let minor = match rest.as_bytes().first() {
        Some(b'0') => 0,
        Some(b'1') => 1,
        _ => return Err(bad()),
    };
    let rest = rest[1..].strip_prefix(' ').ok_or_else(bad)?;
    let code = rest.get(..3).ok_or_else(bad)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) || code.starts_with('0') {
        return Err(bad());
    }
    let after = &rest[3..];
    if !(after.is_empty() || after.starts_with(' ')) {
        return Err(bad());
    }
    Ok((minor, code.parse().map_err(|_| bad())?))
}

/// At most 80 characters of a server-sent string, for error messages.
fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

/// How the body of `head` (answering `method`) is delimited.
pub(crate) fn framing(method: Method, head: &ResponseHead) -> Result<Framing, String> {
    if method == Method::Head
        || (100..200).contains(&head.status)
        || head.status == 204
        || head.status == 304
    {
        return Ok(Framing::Empty);
    }
    let codings = head.list("transfer-encoding");
    if !codings.is_empty() {
        return Ok(if codings.last().map(String::as_str) == Some("chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let lengths = head.list("content-length");
    if let Some(first) = lengths.first() {
        if lengths.iter().any(|l| l != first) || !first.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "invalid Content-Length {:?}",
                shorten(&lengths.join(","))
            ));
        }
        let n = first
            .parse::<u64>()
            .map_err(|_| format!("Content-Length {first} is out of range"))?;
        return Ok(Framing::Length(n));
    }
    Ok(Framing::UntilClose)
}

/// Whether the server lets the connection be used for another request after this response
/// (framing permitting): HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
/// `Connection: keep-alive`; never after a message whose framing RFC 9112 calls faulty
/// (Transfer-Encoding in HTTP/1.0, or with Content-Length).
pub(crate) fn keep_alive(head: &ResponseHead) -> bool {
    let connection = head.list("connection");
    if connection.iter().any(|t| t == "close") {
        return false;
    }
    let has_te = head.header("transfer-encoding").is_some();
    if has_te && (head.minor == 0 || head.header("content-length").is_some()) {
        return false;
    }
    head.minor == 1 || connection.iter().any(|t| t == "keep-alive")
}

/// Appends one line (up to and including `\n`) to `out`; returns the bytes appended, 0 at
/// EOF. Fails once `out` would exceed `limit`.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    out: &mut Vec<u8>,
    limit: usize,
    what: &str,
) -> Result<usize, CodecError> {
    let start = out.len();
    loop {
        let (used, done) = {
            let available = r.fill_buf().await?;
            if available.is_empty() {
                return Ok(out.len() - start);
            }
            match available.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    out.extend_from_slice(&available[..=i]);
                    (i + 1, true)
                }
                None => {
                    out.extend_from_slice(available);
                    (available.len(), false)
                }
            }
        };
        r.consume(used);
        if out.len() > limit {
            return Err(CodecError::Malformed(format!(
                "{what} longer than {limit} bytes"
            )));
        }
        if done {
            return Ok(out.len() - start);
        }
    }
}

/// Reads one response head, skipping interim 1xx responses.
pub(crate) async fn read_head<R: AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<ResponseHead, CodecError> {
    let mut seen_any = false;
    loop {
        let mut buf = Vec::with_capacity(1024);
        loop {
            let line_start = buf.len();
            let n = read_line(r, &mut buf, MAX_HEAD_BYTES, "response head").await?;
            if n == 0 {
                return Err(CodecError::Closed {
                    mid_message: seen_any || !buf.is_empty(),
                });
            }
            let line = &buf[line_start..];
            if line == b"\r\n" || line == b"\n" {
                break;
            }
            if !line.ends_with(b"\n") {
                // EOF in the middle of a line.
                return Err(CodecError::Closed { mid_message: true });
            }
        }
        seen_any = true;
        let head = parse_head(&buf).map_err(CodecError::Malformed)?;
        match head.status {
            101 => {
                return Err(CodecError::Malformed(
                    "unexpected 101 Switching Protocols".into(),
                ))
            }
            100..=199 => continue,
            _ => return Ok(head),
        }
    }
}

/// Reads a body delimited by `framing`, refusing more than `limit` bytes.
pub(crate) async fn read_body<R: AsyncBufRead + Unpin>(
    r: &mut R,
    framing: Framing,
    limit: usize,
) -> Result<Vec<u8>, CodecError> {
    match framing {
        Framing::Empty => Ok(Vec::new()),
        Framing::Length(n) => {
            if n > limit as u64 {
                return Err(CodecError::BodyTooLarge(limit));
            }
            let mut body = Vec::with_capacity((n as usize).min(64 * 1024));
            (&mut *r).take(n).read_to_end(&mut body).await?;
            if (body.len() as u64) < n {
                return Err(CodecError::Closed { mid_message: true });
            }
            Ok(body)
        }
        Framing::UntilClose => {
            let mut body = Vec::new();
            (&mut *r)
                .take(limit as u64 + 1)
                .read_to_end(&mut body)
                .await?;
            if body.len() > limit {
                return Err(CodecError::BodyTooLarge(limit));
            }
            Ok(body)
        }
        Framing::Chunked => read_chunked(r, limit).await,
    }
}

async fn read_chunked<R: AsyncBufRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Vec<u8>, CodecError> {
    let mut body = Vec::new();
    loop {
        let mut line = Vec::new();
        if read_line(r, &mut line, MAX_LINE_BYTES, "chunk-size line").await? == 0 {
            return Err(CodecError::Closed { mid_message: true });
        }
        let size = parse_chunk_size(&line).map_err(CodecError::Malformed)?;
        if size == 0 {
            break;
        }
        if size > (limit - body.len()) as u64 {
            return Err(CodecError::BodyTooLarge(limit));
        }
        let before = body.len();
        (&mut *r).take(size).read_to_end(&mut body).await?;
        if ((body.len() - before) as u64) < size {
            return Err(CodecError::Closed { mid_message: true });
        }
        let mut crlf = Vec::new();
        read_line(r, &mut crlf, 2, "chunk terminator").await?;
        if crlf != b"\r\n" && crlf != b"\n" {
            return Err(if crlf.is_empty() {
                CodecError::Closed { mid_message: true }
            } else {
                CodecError::Malformed("chunk data not followed by CRLF".into())
            });
        }
    }
    // Trailer fields are read and dropped.
    let mut trailers = Vec::new();
    loop {
        let start = trailers.len();
        if read_line(r, &mut trailers, MAX_LINE_BYTES, "chunked trailer").await? == 0 {
            return Err(CodecError::Closed { mid_message: true });
        }
        let line = &trailers[start..];
        if line == b"\r\n" || line == b"\n" {
            return Ok(body);
        }
    }
}

/// `1a;ext=1\r\n` -> 26.
fn parse_chunk_size(line: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(line).map_err(|_| "chunk-size line is not ASCII")?;
    let text = text.trim_end_matches(['\r', '\n']);
    let digits = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim_end_matches([' ', '\t']);
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("invalid chunk size {:?}", shorten(text)));
    }
    u64::from_str_radix(digits, 16).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::io::{BufReader, Cursor};

    fn reader(bytes: &[u8]) -> BufReader<Cursor<Vec<u8>>> {
        BufReader::new(Cursor::new(bytes.to_vec()))
    }

    fn head_of(bytes: &[u8]) -> ResponseHead {
        smol::block_on(read_head(&mut reader(bytes))).expect("head")
    }

    /// Head, body, and the bytes left over in the reader.
    fn exchange(
        method: Method,
        bytes: &[u8],
        limit: usize,
    ) -> Result<(ResponseHead, Vec<u8>, usize), CodecError> {
        smol::block_on(async {
            let mut r = reader(bytes);
            let head = read_head(&mut r).await?;
            let f = framing(method, &head).map_err(CodecError::Malformed)?;
            let body = read_body(&mut r, f, limit).await?;
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).await?;
            Ok((head, body, rest.len()))
        })
    }

    #[test]
    fn encodes_request_with_body_and_default_headers() {
        let headers = vec![("Accept".to_string(), "application/scim+json".to_string())];
        let bytes = encode_request(
            Method::Post,
            "/v2/Users?x=1",
            "example.test:8443",
            "idrelay/0.1",
            &headers,
            Some(b"{}"),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "POST /v2/Users?x=1 HTTP/1.1\r\nHost: example.test:8443\r\nUser-Agent: idrelay/0.1\r\n\
             Accept: application/scim+json\r\nContent-Length: 2\r\n\r\n{}"
        );
        let get = encode_request(Method::Get, "/", "h", "ua", &[], None).unwrap();
        assert_eq!(get, b"GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\n\r\n");
        let put = encode_request(Method::Put, "/", "h", "", &[], None).unwrap();
        assert_eq!(
            put,
            b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn refuses_header_injection_and_reserved_headers() {
        let evil = vec![("X-A".to_string(), "v\r\nX-Injected: 1".to_string())];
        let err = encode_request(Method::Get, "/", "h", "ua", &evil, None).unwrap_err();
        assert!(err.contains("X-A") && !err.contains("Injected"), "{err}");
        let reserved = vec![("Content-Length".to_string(), "5".to_string())];
        assert!(encode_request(Method::Get, "/", "h", "ua", &reserved, None).is_err());
        let bad_name = vec![("Bad Name".to_string(), "v".to_string())];
        assert!(encode_request(Method::Get, "/", "h", "ua", &bad_name, None).is_err());
        assert!(encode_request(Method::Get, "/a b", "h", "ua", &[], None).is_err());
        assert!(encode_request(Method::Get, "relative", "h", "ua", &[], None).is_err());
    }

    #[test]
    fn parses_http10_and_http11_heads() {
        let h = head_of(b"HTTP/1.0 201 Created\r\nContent-Length: 0\r\nX-Empty:\r\n\r\n");
        assert_eq!((h.minor, h.status), (0, 201));
        assert_eq!(h.header("content-length"), Some("0"));
        assert_eq!(h.header("x-empty"), Some(""));
        let h = head_of(b"HTTP/1.1 204\r\n\r\n");
        assert_eq!((h.minor, h.status), (1, 204));
        let h = head_of(b"HTTP/1.1 200 OK\nServer:  spaced \t\n\n");
        assert_eq!(h.header("SERVER"), Some("spaced"));
    }

    #[test]
    fn rejects_malformed_heads() {
        for bad in [
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            let r = smol::block_on(read_head(&mut reader(bad)));
            assert!(
                matches!(r, Err(CodecError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn eof_before_and_during_head() {
        let r = smol::block_on(read_head(&mut reader(b"")));
        assert!(matches!(r, Err(CodecError::Closed { mid_message: false })));
        let r = smol::block_on(read_head(&mut reader(b"HTTP/1.1 200 OK\r\nA: b")));
        assert!(matches!(r, Err(CodecError::Closed { mid_message: true })));
    }

    #[test]
    fn head_size_is_limited() {
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() <= MAX_HEAD_BYTES {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        big.extend_from_slice(b"\r\n");
        let r = smol::block_on(read_head(&mut reader(&big)));
        assert!(matches!(r, Err(CodecError::Malformed(_))));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let r = smol::block_on(read_head(&mut reader(&many)));
        assert!(matches!(r, Err(CodecError::Malformed(_))));
    }

    #[test]
    fn skips_interim_responses() {
        let (h, body, _) = exchange(
            Method::Post,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            100,
        )
        .unwrap();
        assert_eq!(h.status, 201);
        assert_eq!(body, b"ok");
    }

    #[test]
    fn content_length_body_leaves_the_rest() {
        let (_, body, rest) = exchange(
            Method::Get,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
            100,
        )
        .unwrap();
        assert_eq!(body, b"hello");
        assert_eq!(rest, 5);
        let r = exchange(
            Method::Get,
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            100,
        );
        assert!(matches!(r, Err(CodecError::Closed { mid_message: true })));
    }

    #[test]
    fn content_length_rules() {
        let h = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(framing(Method::Get, &h), Ok(Framing::Length(3)));
        let h = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
        assert!(framing(Method::Get, &h).is_err());
        let h = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n");
        assert!(framing(Method::Get, &h).is_err());
        let h = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n");
        assert!(framing(Method::Get, &h).is_err());
    }

    #[test]
    fn bodiless_responses() {
        for (method, bytes) in [
            (
                Method::Head,
                &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"[..],
            ),
            (Method::Delete, b"HTTP/1.1 204 No Content\r\n\r\n"),
            (
                Method::Get,
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            ),
        ] {
            let h = head_of(bytes);
            assert_eq!(framing(method, &h), Ok(Framing::Empty));
        }
    }

    #[test]
    fn body_until_close_is_read_to_eof() {
        let (h, body, _) = exchange(Method::Get, b"HTTP/1.0 200 OK\r\n\r\n{\"a\":1}", 100).unwrap();
        assert_eq!(framing(Method::Get, &h), Ok(Framing::UntilClose));
        assert!(!keep_alive(&h));
        assert_eq!(body, b"{\"a\":1}");
        let h = head_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(framing(Method::Get, &h), Ok(Framing::UntilClose));
    }

    #[test]
    fn body_limit_applies_to_every_framing() {
        let r = exchange(
            Method::Get,
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n",
            10,
        );
        assert!(matches!(r, Err(CodecError::BodyTooLarge(10))));
        let r = exchange(Method::Get, b"HTTP/1.0 200 OK\r\n\r\n01234567890", 10);
        assert!(matches!(r, Err(CodecError::BodyTooLarge(10))));
        let r = exchange(Method::Get, b"HTTP/1.0 200 OK\r\n\r\n0123456789", 10);
        assert_eq!(r.unwrap().1.len(), 10);
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n6\r\n012345\r\n0\r\n\r\n";
        let r = exchange(Method::Get, chunked, 10);
        assert!(matches!(r, Err(CodecError::BodyTooLarge(10))));
        assert_eq!(exchange(Method::Get, chunked, 12).unwrap().1.len(), 12);
    }

    #[test]
    fn chunked_bodies() {
        let (_, body, rest) = exchange(
            Method::Get,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\nA\r\n, world!!!\r\n0\r\nX-Trailer: t\r\n\r\nNEXT",
            100,
        )
        .unwrap();
        assert_eq!(body, b"hello, world!!!");
        assert_eq!(rest, 4);
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        ] {
            let r = exchange(Method::Get, bad, 100);
            assert!(matches!(r, Err(CodecError::Malformed(_))), "{r:?}");
        }
        let truncated = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel";
        let r = exchange(Method::Get, truncated, 100);
        assert!(matches!(r, Err(CodecError::Closed { mid_message: true })));
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |b: &[u8]| keep_alive(&head_of(b));
        assert!(ka(b"HTTP/1.1 200 OK\r\n\r\n"));
        assert!(!ka(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"));
        assert!(!ka(
            b"HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\n\r\n"
        ));
        assert!(!ka(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(ka(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!ka(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        ));
        assert!(!ka(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
    }

    proptest::proptest! {
        #[test]
        fn reading_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = exchange(Method::Get, &bytes, 256);
        }

        #[test]
        fn reading_mutated_responses_never_panics(cut in 0usize..120, flip in 0usize..120, byte in proptest::num::u8::ANY) {
            let mut bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n4\r\nabcd\r\n0\r\n\r\n".to_vec();
            if flip < bytes.len() { bytes[flip] = byte; }
            bytes.truncate(cut.max(1));
            let _ = exchange(Method::Get, &bytes, 256);
        }
    }
}
