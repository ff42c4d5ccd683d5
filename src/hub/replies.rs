//! The agent's `responses` body read as a stream: `{"responses": [{...}, ...]}` is scanned
//! byte by byte and each answer is handed out as soon as its object closes. Pure: bytes in,
//! [`Item`]s out.
//!
//! Invariants:
//! * Memory: at most `body_cap` bytes for the `body` of the answer being read and 1 KiB for
//!   each of its other members; never the whole batch, never a parsed tree of it (a body is
//!   checked to be JSON without building one).
//! * An answer whose body is over `body_cap` comes out as [`Item::TooLarge`] with its id,
//!   and the batch goes on: one oversized answer never costs the others.
//! * An answer without a string `id` or a `status` from 100 to 599, or whose body is not
//!   JSON, comes out as [`Item::Bad`]; only a body that is not the expected shape at all
//!   is an error of the whole stream (answers before it were already handed out).

/// One answer read from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A well-formed answer; `body` is its JSON text (`None`: absent or `null`).
    Answer {
        /// The request id.
        id: String,
        /// The status.
        status: u16,
        /// The body as sent.
        body: Option<String>,
    },
    /// An answer whose body is larger than the cap; the body was not kept.
    TooLarge {
        /// The request id.
        id: String,
        /// The body's size in bytes.
        size: usize,
    },
    /// An answer the hub cannot use.
    Bad {
        /// Its id, when it has a readable one.
        id: Option<String>,
        /// What is wrong.
        why: String,
    },
}

/// Most bytes kept of an `id`, a `status` or a key.
const SMALL_CAP: usize = 1024;
/// The bytes before the first answer, whitespace between them allowed.
const PREFIX: [&[u8]; 4] = [b"{", b"\"responses\"", b":", b"["];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// In `PREFIX[.0]`, `.1` bytes matched.
    Prefix(usize, usize),
    /// Inside the array.
    Array,
    /// After `]`, before `}`.
    Trailing,
    /// After the final `}`.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Id,
    Status,
    Body,
    Other,
}

struct Capture {
    member: Member,
    buf: Vec<u8>,
    size: usize,
    cap: usize,
}

#[derive(Default)]
struct Answer {
    id: Option<Option<Vec<u8>>>,
    status: Option<Option<Vec<u8>>>,
    body: Option<Result<Vec<u8>, usize>>,
}

/// The scanner; feed it the body in any chunks, then call [`Scanner::finish`].
pub struct Scanner {
    body_cap: usize,
    phase: Phase,
    /// 0 between answers, 1 inside an answer object, more inside its values.
    depth: u32,
    in_str: bool,
    esc: bool,
    /// At depth 1: the next string is a key.
    expect_key: bool,
    in_key: bool,
    key: Vec<u8>,
    value: Option<Capture>,
    answer: Answer,
    /// At depth 0: an answer just closed (a `,` or `]` must follow).
    after_answer: bool,
    /// At depth 0: a `,` was read (an answer must follow).
    after_comma: bool,
}

impl Scanner {
    /// A scanner keeping at most `body_cap` bytes of one answer's body.
    pub fn new(body_cap: usize) -> Scanner {
        Scanner {
            body_cap,
            phase: Phase::Prefix(0, 0),
            depth: 0,
            in_str: false,
            esc: false,
            expect_key: false,
            in_key: false,
            key: Vec::new(),
            value: None,
            answer: Answer::default(),
            after_answer: false,
            after_comma: false,
        }
    }

    /// Scans `chunk`, pushing each answer that closes in it onto `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Item>) -> Result<(), String> {
        let mut i = 0;
        while i < chunk.len() {
            // Fast path: the inside of a string below the answer's own members.
            if self.in_str && !self.esc && !self.in_key {
                let rest = &chunk[i..];
                let n = rest
                    .iter()
                    .position(|&b| b == b'"' || b == b'\\')
                    .unwrap_or(rest.len());
                if n > 0 {
                    self.push_slice(&rest[..n]);
                    i += n;
                    continue;
                }
            }
            self.byte(chunk[i], out)?;
            i += 1;
        }
        Ok(())
    }

    /// Checks that the body ended where it should.
    pub fn finish(&self) -> Result<(), String> {
        if self.phase == Phase::Done {
            Ok(())
        } else {
            Err("the body ended before its closing `]}`".into())
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<Item>) -> Result<(), String> {
        let ws = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        match self.phase {
            Phase::Prefix(t, pos) => {
                if pos == 0 && ws {
                    return Ok(());
                }
                if PREFIX[t].get(pos) != Some(&b) {
                    return Err("expected {\"responses\": [...]}".into());
                }
                self.phase = if pos + 1 < PREFIX[t].len() {
                    Phase::Prefix(t, pos + 1)
                } else if t + 1 < PREFIX.len() {
                    Phase::Prefix(t + 1, 0)
                } else {
                    Phase::Array
                };
                Ok(())
            }
            Phase::Trailing => match b {
                _ if ws => Ok(()),
                b'}' => {
                    self.phase = Phase::Done;
                    Ok(())
                }
                _ => Err("expected `}` after the answers".into()),
            },
            Phase::Done if ws => Ok(()),
            Phase::Done => Err("text after the closing `}`".into()),
            Phase::Array if self.depth == 0 => self.between(b, ws),
            Phase::Array => self.inside(b, ws, out),
        }
    }

    fn between(&mut self, b: u8, ws: bool) -> Result<(), String> {
        match b {
            _ if ws => Ok(()),
            b']' if !self.after_comma => {
                self.phase = Phase::Trailing;
                Ok(())
            }
            b',' if self.after_answer => {
                self.after_answer = false;
                self.after_comma = true;
                Ok(())
            }
            b'{' if !self.after_answer => {
                self.depth = 1;
                self.expect_key = true;
                self.after_comma = false;
                self.answer = Answer::default();
                Ok(())
            }
            _ => Err("`responses` must be an array of objects".into()),
        }
    }

    fn inside(&mut self, b: u8, ws: bool, out: &mut Vec<Item>) -> Result<(), String> {
        if self.in_str {
            if self.in_key {
                if self.esc {
                    self.esc = false;
                } else if b == b'\\' {
                    self.esc = true;
                } else if b == b'"' {
                    self.in_str = false;
                    self.in_key = false;
                    return Ok(());
                }
                if self.key.len() < SMALL_CAP {
                    self.key.push(b);
                }
                return Ok(());
            }
            if self.esc {
                self.esc = false;
            } else if b == b'\\' {
                self.esc = true;
            } else if b == b'"' {
                self.in_str = false;
            }
            self.push(b);
            return Ok(());
        }
        if self.depth == 1 {
            match b {
                _ if ws => return Ok(()),
                b'"' if self.expect_key => {
                    self.in_str = true;
                    self.in_key = true;
                    self.key.clear();
                    return Ok(());
                }
                b':' if self.expect_key && self.value.is_none() => {
                    self.expect_key = false;
                    let member = match self.key.as_slice() {
                        b"id" => Member::Id,
                        b"status" => Member::Status,
                        b"body" => Member::Body,
                        _ => Member::Other,
                    };
                    let cap = match member {
                        Member::Body => self.body_cap,
                        Member::Id | Member::Status => SMALL_CAP,
                        Member::Other => 0,
                    };
                    self.value = Some(Capture {
                        member,
                        buf: Vec::new(),
                        size: 0,
                        cap,
                    });
                    return Ok(());
                }
                b',' if !self.expect_key => {
                    self.end_value()?;
                    self.expect_key = true;
                    return Ok(());
                }
                b']' => return Err("an answer is not a JSON object".into()),
                b'}' => {
                    if self.value.is_some() {
                        self.end_value()?;
                    }
                    self.depth = 0;
                    self.after_answer = true;
                    out.push(self.take_answer());
                    return Ok(());
                }
                _ if self.expect_key || self.value.is_none() => {
                    return Err("an answer is not a JSON object".into());
                }
                _ => {}
            }
        }
        match b {
            b'"' => self.in_str = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => self.depth -= 1,
            _ => {}
        }
        self.push(b);
        Ok(())
    }

    fn push(&mut self, b: u8) {
        self.push_slice(&[b]);
    }

    fn push_slice(&mut self, bytes: &[u8]) {
        let Some(c) = self.value.as_mut() else {
            return;
        };
        c.size += bytes.len();
        if c.size > c.cap {
            if c.buf.capacity() > 0 {
                c.buf = Vec::new();
            }
            return;
        }
        if c.buf.len() + bytes.len() > c.buf.capacity() {
            // Grow by at most the cap, never to twice of it.
            let want = (c.buf.capacity().max(4096) * 2).min(c.cap) - c.buf.len();
            c.buf.reserve_exact(want.max(bytes.len()));
        }
        c.buf.extend_from_slice(bytes);
    }

    fn end_value(&mut self) -> Result<(), String> {
        let Some(c) = self.value.take() else {
            return Err("an answer is not a JSON object".into());
        };
        let kept = (c.size <= c.cap).then_some(c.buf);
        match c.member {
            Member::Id => self.answer.id = Some(kept),
            Member::Status => self.answer.status = Some(kept),
            Member::Body => self.answer.body = Some(kept.ok_or(c.size)),
            Member::Other => {}
        }
        Ok(())
    }

    fn take_answer(&mut self) -> Item {
        let a = std::mem::take(&mut self.answer);
        let id =
            a.id.flatten()
                .and_then(|b| serde_json::from_slice::<String>(&b).ok());
        let Some(id) = id else {
            return Item::Bad {
                id: None,
                why: "an answer without a string `id`".into(),
            };
        };
        let status = a
            .status
            .flatten()
            .and_then(|b| serde_json::from_slice::<u16>(&b).ok())
            .filter(|s| (100..=599).contains(s));
        let Some(status) = status else {
            return Item::Bad {
                id: Some(id),
                why: "`status` is not a number from 100 to 599".into(),
            };
        };
        let body = match a.body {
            None => None,
            Some(Err(size)) => return Item::TooLarge { id, size },
            Some(Ok(bytes)) => match String::from_utf8(bytes) {
                Err(_) => {
                    return Item::Bad {
                        id: Some(id),
                        why: "`body` is not UTF-8".into(),
                    }
                }
                Ok(text) => {
                    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
                        return Item::Bad {
                            id: Some(id),
                            why: format!("`body` is not JSON: {e}"),
                        };
                    }
                    (text != "null").then_some(text)
                }
            },
        };
        Item::Answer { id, status, body }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn scan_in(text: &[u8], chunk: usize, cap: usize) -> Result<Vec<Item>, String> {
        let mut s = Scanner::new(cap);
        let mut out = Vec::new();
        for c in text.chunks(chunk.max(1)) {
            s.feed(c, &mut out)?;
        }
        s.finish()?;
        Ok(out)
    }

    fn answer(id: &str, status: u16, body: Option<&str>) -> Item {
        Item::Answer {
            id: id.into(),
            status,
            body: body.map(str::to_string),
        }
    }

    #[test]
    fn answers_come_out_one_by_one() {
        let text = br#" { "responses" : [
            {"body": {"a": [1, {"b": "x\"}]"}]}, "id": "r-1", "status": 200},
            {"id":"r-2","status":204},
            {"status": 404, "id": "r-3", "body": null, "extra": {"k": [1,2]}}
        ] } "#;
        let want = vec![
            answer("r-1", 200, Some(r#"{"a": [1, {"b": "x\"}]"}]}"#)),
            answer("r-2", 204, None),
            answer("r-3", 404, None),
        ];
        for chunk in [1, 2, 7, 1000] {
            assert_eq!(scan_in(text, chunk, 1 << 20).unwrap(), want, "{chunk}");
        }
        assert_eq!(scan_in(br#"{"responses":[]}"#, 3, 10).unwrap(), vec![]);
    }

    #[test]
    fn one_oversized_answer_costs_only_itself() {
        let big = "x".repeat(5000);
        let text = json!({"responses": [
            {"id": "a", "status": 200, "body": {"small": 1}},
            {"id": "b", "status": 200, "body": {"big": big}},
            {"id": "c", "status": 200, "body": [1]},
        ]})
        .to_string();
        let out = scan_in(text.as_bytes(), 64, 1000).unwrap();
        assert_eq!(out[0], answer("a", 200, Some(r#"{"small":1}"#)));
        assert!(matches!(&out[1], Item::TooLarge { id, size } if id == "b" && *size > 5000));
        assert_eq!(out[2], answer("c", 200, Some("[1]")));
    }

    #[test]
    fn unusable_answers_are_named_and_the_rest_go_on() {
        let text = br#"{"responses":[{"status":200},{"id":"x","status":"200"},
            {"id":"y","status":200,"body":{"a":}},{"id":"z","status":200}]}"#;
        let out = scan_in(text, 5, 1000).unwrap();
        assert!(matches!(&out[0], Item::Bad { id: None, .. }));
        assert!(matches!(&out[1], Item::Bad { id: Some(i), .. } if i == "x"));
        assert!(
            matches!(&out[2], Item::Bad { id: Some(i), why } if i == "y" && why.contains("JSON"))
        );
        assert_eq!(out[3], answer("z", 200, None));
    }

    #[test]
    fn malformed_streams_are_refused() {
        for bad in [
            &b""[..],
            b"[]",
            b"{\"other\":[]}",
            b"{\"responses\":[1]}",
            b"{\"responses\":[{}{}]}",
            b"{\"responses\":[{},]}",
            b"{\"responses\":[{\"id\" 1}]}",
            b"{\"responses\":[{\"id\":\"a\"",
            b"{\"responses\":[]} x",
        ] {
            assert!(
                scan_in(bad, 3, 100).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        #[test]
        fn agrees_with_serde(
            ids in proptest::collection::vec("[a-z\"\\\\ ]{0,8}", 0..5),
            texts in proptest::collection::vec("[a-z\"\\\\{}\\[\\] ]{0,12}", 0..5),
            chunk in 1usize..40,
        ) {
            let responses: Vec<Value> = ids.iter().zip(texts.iter()).enumerate().map(|(i, (id, t))| {
                json!({"id": id, "status": 200 + i as u64, "body": {"t": t, "n": [i, {"x": t}]}})
            }).collect();
            let text = serde_json::to_string_pretty(&json!({"responses": responses})).unwrap();
            let out = scan_in(text.as_bytes(), chunk, 1 << 20).unwrap();
            prop_assert_eq!(out.len(), responses.len());
            for (item, r) in out.iter().zip(responses.iter()) {
                match item {
                    Item::Answer { id, status, body } => {
                        prop_assert_eq!(id.as_str(), r["id"].as_str().unwrap());
                        prop_assert_eq!(u64::from(*status), r["status"].as_u64().unwrap());
                        let b: Value = serde_json::from_str(body.as_deref().unwrap()).unwrap();
                        prop_assert_eq!(&b, &r["body"]);
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), chunk in 1usize..20) {
            let mut prefixed = br#"{"responses":["#.to_vec();
            prefixed.extend_from_slice(&bytes);
            let _ = scan_in(&prefixed, chunk, 16);
            let _ = scan_in(&bytes, chunk, 16);
        }
    }
}
