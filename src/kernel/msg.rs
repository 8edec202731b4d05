//! Jupyter messages on the wire: `<IDS|MSG>`, the HMAC-SHA256 signature (hex)
//! of the four JSON parts, then header, parent header, metadata and content.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const DELIM: &[u8] = b"<IDS|MSG>";

/// Signs outgoing messages and checks incoming ones with the connection key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
    session: String,
}

/// A message received from a kernel, signature checked.
#[derive(Debug)]
pub struct Msg {
    pub msg_type: String,
    /// `parent_header.msg_id`, empty when there is none.
    pub parent_id: String,
    pub content: Value,
}

impl Signer {
    pub fn new(key: &str, session: String) -> Signer {
        Signer {
            key: key.as_bytes().to_vec(),
            session,
        }
    }

    /// A fresh HMAC with the connection key, to sign or check a message
    /// fed in pieces.
    pub fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    /// The parts of a new message of `msg_type` with `content`, and its msg_id.
    pub fn encode(&self, msg_type: &str, content: &Value) -> (String, Vec<Vec<u8>>) {
        let msg_id = crate::process::new_id();
        let header = json!({
            "msg_id": msg_id,
            "session": self.session,
            "username": "execd",
            "date": crate::date::rfc3339(std::time::SystemTime::now()),
            "msg_type": msg_type,
            "version": "5.3",
        });
        let parts: [Vec<u8>; 4] = [
            header.to_string().into_bytes(),
            b"{}".to_vec(),
            b"{}".to_vec(),
            content.to_string().into_bytes(),
        ];
        let mut mac = self.mac();
        for p in &parts {
            mac.update(p);
        }
        let sig = hex(&mac.finalize().into_bytes());
        let mut out = Vec::with_capacity(6);
        out.push(DELIM.to_vec());
        out.push(sig.into_bytes());
        out.extend(parts);
        (msg_id, out)
    }

    /// Parses a received message (routing identities before the delimiter
    /// are skipped) and checks its signature in constant time.
    pub fn decode(&self, parts: &[Vec<u8>]) -> Result<Msg, String> {
        let at = parts
            .iter()
            .position(|p| p == DELIM)
            .ok_or("no <IDS|MSG> delimiter")?;
        let rest = &parts[at + 1..];
        if rest.len() < 5 {
            return Err("too few parts".into());
        }
        let sig = unhex(&rest[0]).ok_or("signature is not hex")?;
        let mut mac = self.mac();
        for p in &rest[1..5] {
            mac.update(p);
        }
        mac.verify_slice(&sig).map_err(|_| "bad signature")?;
        let header: Value = serde_json::from_slice(&rest[1]).map_err(|e| e.to_string())?;
        let parent: Value = serde_json::from_slice(&rest[2]).map_err(|e| e.to_string())?;
        let content: Value = serde_json::from_slice(&rest[4]).map_err(|e| e.to_string())?;
        Ok(Msg {
            msg_type: header["msg_type"].as_str().unwrap_or_default().to_string(),
            parent_id: parent["msg_id"].as_str().unwrap_or_default().to_string(),
            content,
        })
    }
}

/// Checks an HMAC fed in pieces against a message's hex signature, in
/// constant time.
pub fn verify(mac: Hmac<Sha256>, sig_hex: &[u8]) -> bool {
    unhex(sig_hex).is_some_and(|sig| mac.verify_slice(&sig).is_ok())
}

/// Where the header frames of a message start: after the `<IDS|MSG>`
/// delimiter and the signature.
pub fn delimiter(parts: &[Vec<u8>]) -> Option<usize> {
    parts.iter().position(|p| p == DELIM)
}

/// Scans the content of a `stream` message (`{"name": ..., "text": ...}`)
/// fed in pieces of any size, appending the unescaped bytes of `"text"` to
/// an output buffer as they come, so a message of any size is never held
/// whole. Other members are skipped (nested values too) and only `name`
/// is kept (up to [`SMALL`] bytes). jupyter_client serialises `name`
/// before `text`; if `text` came first, [`StreamScan::name`] is not known
/// yet while its bytes are produced.
#[derive(Default)]
pub struct StreamScan {
    st: Scan,
    /// What the string being read is: a key, `name`, `text` or skipped.
    into: Dest,
    key: Vec<u8>,
    name: Vec<u8>,
    /// Depth of `[`/`{` while skipping a nested value.
    depth: u32,
    /// A `\uD8xx` high surrogate waiting for its low half.
    high: Option<u16>,
    /// Hex digits of a `\u` escape so far and their value.
    hex_n: u8,
    hex_v: u16,
}

/// Bound on the keys and `name` kept by [`StreamScan`].
pub const SMALL: usize = 64;

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Scan {
    #[default]
    Start,
    /// After `{` or `,`: a key or (after `{` only, not checked) `}`.
    Key,
    Colon,
    Value,
    /// Inside a string (`into` says whose); `Esc` after a backslash,
    /// `Hex` inside `\uXXXX`.
    Str,
    Esc,
    Hex,
    /// Skipping a number/literal (ends at `,` `}` or whitespace).
    Scalar,
    /// Skipping a nested array/object; `SkipStr`/`SkipEsc` inside its strings.
    Nested,
    SkipStr,
    SkipEsc,
    After,
    Done,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Dest {
    #[default]
    Key,
    Name,
    Text,
    Skip,
}

impl StreamScan {
    /// The `name` member, once seen (`stdout` or `stderr`).
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// Whether the whole object has been read.
    pub fn done(&self) -> bool {
        self.st == Scan::Done
    }

    fn put(&mut self, b: &[u8], out: &mut Vec<u8>) {
        let (v, cap) = match self.into {
            Dest::Text => {
                out.extend_from_slice(b);
                return;
            }
            Dest::Skip => return,
            Dest::Key => (&mut self.key, SMALL),
            Dest::Name => (&mut self.name, SMALL),
        };
        let room = cap.saturating_sub(v.len());
        v.extend_from_slice(&b[..b.len().min(room)]);
    }

    fn put_char(&mut self, c: u32, out: &mut Vec<u8>) {
        let c = char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER);
        let mut b = [0u8; 4];
        let s = c.encode_utf8(&mut b);
        self.put(s.as_bytes(), out);
    }

    /// A `\u` escape's value, pairing surrogates.
    fn unicode(&mut self, u: u16, out: &mut Vec<u8>) {
        if let Some(h) = self.high.take() {
            if (0xDC00..0xE000).contains(&u) {
                let c = 0x10000 + ((u32::from(h) - 0xD800) << 10) + (u32::from(u) - 0xDC00);
                self.put_char(c, out);
                return;
            }
            self.put_char(0xFFFD, out);
        }
        if (0xD800..0xDC00).contains(&u) {
            self.high = Some(u);
        } else {
            self.put_char(u32::from(u), out);
        }
    }

    fn lone_high(&mut self, out: &mut Vec<u8>) {
        if self.high.take().is_some() {
            self.put_char(0xFFFD, out);
        }
    }

    /// Feeds the next bytes of the content; `text`'s bytes go to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
        while let Some((&b, rest)) = input.split_first() {
            match self.st {
                Scan::Str => {
                    // The common case in bulk: everything up to the next
                    // quote or backslash is copied as is.
                    let n = input
                        .iter()
                        .position(|&c| c == b'"' || c == b'\\')
                        .unwrap_or(input.len());
                    if n > 0 {
                        self.lone_high(out);
                        self.put(&input[..n], out);
                        input = &input[n..];
                        continue;
                    }
                    if b == b'"' {
                        self.lone_high(out);
                        self.st = if self.into == Dest::Key {
                            Scan::Colon
                        } else {
                            Scan::After
                        };
                    } else {
                        self.st = Scan::Esc;
                    }
                }
                Scan::Esc => {
                    let c = match b {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 8,
                        b'f' => 12,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            self.st = Scan::Hex;
                            self.hex_n = 0;
                            self.hex_v = 0;
                            input = rest;
                            continue;
                        }
                        _ => return Err("bad escape in a string"),
                    };
                    self.lone_high(out);
                    self.put(&[c], out);
                    self.st = Scan::Str;
                }
                Scan::Hex => {
                    let d = (b as char).to_digit(16).ok_or("bad \\u escape")? as u16;
                    self.hex_v = self.hex_v << 4 | d;
                    self.hex_n += 1;
                    if self.hex_n == 4 {
                        self.st = Scan::Str;
                        self.unicode(self.hex_v, out);
                    }
                }
                _ if b.is_ascii_whitespace()
                    && self.st != Scan::Nested
                    && self.st != Scan::SkipStr
                    && self.st != Scan::SkipEsc =>
                {
                    if self.st == Scan::Scalar {
                        self.st = Scan::After;
                    }
                }
                Scan::Start => {
                    if b != b'{' {
                        return Err("content is not an object");
                    }
                    self.st = Scan::Key;
                }
                Scan::Key => match b {
                    b'"' => {
                        self.key.clear();
                        self.into = Dest::Key;
                        self.st = Scan::Str;
                    }
                    b'}' => self.st = Scan::Done,
                    _ => return Err("expected a key"),
                },
                Scan::Colon => {
                    if b != b':' {
                        return Err("expected ':'");
                    }
                    self.st = Scan::Value;
                }
                Scan::Value => match b {
                    b'"' => {
                        self.into = match &self.key[..] {
                            b"text" => Dest::Text,
                            b"name" => {
                                self.name.clear();
                                Dest::Name
                            }
                            _ => Dest::Skip,
                        };
                        self.st = Scan::Str;
                    }
                    b'{' | b'[' => {
                        self.depth = 1;
                        self.st = Scan::Nested;
                    }
                    _ => self.st = Scan::Scalar,
                },
                Scan::Scalar => match b {
                    b',' => self.st = Scan::Key,
                    b'}' => self.st = Scan::Done,
                    _ => {}
                },
                Scan::Nested => match b {
                    b'"' => self.st = Scan::SkipStr,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            self.st = Scan::After;
                        }
                    }
                    _ => {}
                },
                Scan::SkipStr => match b {
                    b'"' => self.st = Scan::Nested,
                    b'\\' => self.st = Scan::SkipEsc,
                    _ => {}
                },
                Scan::SkipEsc => self.st = Scan::SkipStr,
                Scan::After => match b {
                    b',' => self.st = Scan::Key,
                    b'}' => self.st = Scan::Done,
                    _ => return Err("expected ',' or '}'"),
                },
                Scan::Done => return Err("bytes after the object"),
            }
            input = rest;
        }
        Ok(())
    }
}

/// Takes the complete UTF-8 text at the front of `out` (all of it when
/// `last`; a character cut at the end stays for the next call).
pub fn take_text(out: &mut Vec<u8>, last: bool) -> String {
    let cut = match std::str::from_utf8(out) {
        Err(e) if !last && e.error_len().is_none() => e.valid_up_to(),
        _ => out.len(),
    };
    let rest = out.split_off(cut);
    match String::from_utf8(std::mem::replace(out, rest)) {
        Ok(t) => t,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[usize::from(x >> 4)] as char);
        s.push(H[usize::from(x & 15)] as char);
    }
    s
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let d = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    s.chunks(2)
        .map(|p| Some(d(p[0])? << 4 | d(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let s = Signer::new("k3y", "sess".into());
        let (id, mut parts) = s.encode("execute_request", &json!({"code": "1+1"}));
        // As a kernel would answer: routing identity first, our header as parent.
        let parent = parts[2].clone();
        parts[3] = parent;
        let mut mac = s.mac();
        for p in &parts[2..6] {
            mac.update(p);
        }
        parts[1] = hex(&mac.finalize().into_bytes()).into_bytes();
        parts.insert(0, b"ident".to_vec());
        let m = s.decode(&parts).expect("valid");
        assert_eq!(m.msg_type, "execute_request");
        assert_eq!(m.parent_id, id);
        assert_eq!(m.content["code"], "1+1");
        parts[6] = br#"{"code":"evil"}"#.to_vec();
        assert!(s.decode(&parts).is_err());
        let other = Signer::new("other", "sess".into());
        parts[6] = br#"{"code":"1+1"}"#.to_vec();
        assert!(other.decode(&parts).is_err());
    }

    fn scan_in_pieces(content: &[u8], piece: usize) -> Result<(String, String), &'static str> {
        let mut s = StreamScan::default();
        let mut out = Vec::new();
        let mut text = String::new();
        for p in content.chunks(piece) {
            s.feed(p, &mut out)?;
            text.push_str(&take_text(&mut out, false));
        }
        text.push_str(&take_text(&mut out, true));
        assert!(s.done());
        Ok((String::from_utf8_lossy(s.name()).into_owned(), text))
    }

    #[test]
    fn stream_scan_matches_serde_in_any_pieces() {
        let text = "plain \"quoted\" back\\slash\n\ttab \u{1} é 日本 😀 / end";
        let v = json!({"name": "stderr", "meta": {"a": [1, "x\"}", {"b": null}]}, "n": -1.5e3, "t": true, "text": text});
        for content in [
            serde_json::to_vec(&v).expect("json"),
            // Python's json.dumps(ensure_ascii=True): \u escapes, surrogate pairs.
            br#"{"name": "stderr", "meta": {"a": [1, "x\"}", {"b": null}]}, "n": -1.5e3, "t": true, "text": "plain \"quoted\" back\\slash\n\ttab \u0001 \u00e9 \u65e5\u672c \ud83d\ude00 \/ end"}"#.to_vec(),
        ] {
            for piece in [1, 2, 3, 5, 7, 64, 4096] {
                let (name, got) = scan_in_pieces(&content, piece).expect("valid");
                assert_eq!(name, "stderr");
                assert_eq!(got, text, "pieces of {piece}");
            }
        }
        // A lone surrogate becomes U+FFFD, as serde_json's lossy reading would.
        let (_, got) = scan_in_pieces(br#"{"text":"a\ud800b"}"#, 1).expect("valid");
        assert_eq!(got, "a\u{fffd}b");
        for bad in [
            &b"[1]"[..],
            b"{\"text\":\"\\q\"}",
            b"{\"a\" 1}",
            b"{\"text\":\"a\"}x",
        ] {
            let mut s = StreamScan::default();
            assert!(
                s.feed(bad, &mut Vec::new()).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(
            unhex(hex(&[0, 1, 254, 255]).as_bytes()),
            Some(vec![0, 1, 254, 255])
        );
        assert_eq!(unhex(b"0g"), None);
        assert_eq!(unhex(b"abc"), None);
    }
}
