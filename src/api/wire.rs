//! Wire encoding of the event stream, written by hand because it is the hot
//! path and because its escaping differs from serde_json's on purpose:
//! - invalid UTF-8 becomes U+FFFD (and [`json_str`] says so, for the event's
//!   `invalid_utf8` flag); a stream that asked for base64 gets the bytes
//!   themselves through [`put_base64`];
//! - U+2028, U+2029 and U+0085 are escaped, since SDK line splitters
//!   (Python's `str.splitlines`) break on them;
//! - the other line-breaking controls are escaped like every control below 0x20.

use bytes::{BufMut, BytesMut};

/// Appends `data` as a JSON string literal (with quotes). Returns whether
/// `data` was valid UTF-8 (if not, each invalid sequence became U+FFFD).
pub fn json_str(out: &mut BytesMut, data: &[u8]) -> bool {
    out.reserve(data.len() + 2);
    out.put_u8(b'"');
    // Most output is ASCII: it is escaped in the same pass that finds where
    // it ends, so such text is read once, not checked by `from_utf8` first.
    let ascii = escape_ascii(out, data);
    // The rest starts at a character boundary (the byte before it, if any,
    // is ASCII). Valid UTF-8 is the common case, and `from_utf8` checks it a
    // word at a time; `utf8_chunks` is much slower per byte.
    let rest = &data[ascii..];
    let valid = match std::str::from_utf8(rest) {
        Ok(s) => {
            escape_valid(out, s);
            true
        }
        Err(_) => {
            for chunk in rest.utf8_chunks() {
                escape_valid(out, chunk.valid());
                if !chunk.invalid().is_empty() {
                    out.put_slice("\u{FFFD}".as_bytes());
                }
            }
            false
        }
    };
    out.put_u8(b'"');
    valid
}

/// Appends `data` in standard base64 (RFC 4648 §4, with padding) as a JSON
/// string literal: the alphabet needs no escaping.
pub fn put_base64(out: &mut BytesMut, data: &[u8]) {
    let enc = &data_encoding::BASE64;
    out.put_u8(b'"');
    let start = out.len();
    out.resize(start + enc.encode_len(data.len()), 0);
    enc.encode_mut(data, &mut out[start..]);
    out.put_u8(b'"');
}

/// Bytes copied as they are: everything but `"`, `\`, controls, DEL, and the
/// lead bytes of U+0085 (0xC2) and U+2028/U+2029 (0xE2), which need a look.
const PLAIN: [bool; 256] = {
    let mut t = [true; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = false;
        i += 1;
    }
    t[b'"' as usize] = false;
    t[b'\\' as usize] = false;
    t[0x7f] = false;
    t[0xC2] = false;
    t[0xE2] = false;
    t
};

/// [`PLAIN`] without the bytes above ASCII: where [`escape_ascii`] stops.
const PLAIN_ASCII: [bool; 256] = {
    let mut t = PLAIN;
    let mut i = 0x80;
    while i < 0x100 {
        t[i] = false;
        i += 1;
    }
    t
};

/// Bytes scanned together by [`plain_run`].
const BLOCK: usize = 16;

/// Whether none of the bytes of `block` needs a look: all are ASCII, none is
/// a control, DEL, `"` or `\\`. Written as a plain loop over a fixed-size
/// array so the compiler turns it into a few vector compares.
#[inline]
fn plain_block(block: &[u8; BLOCK]) -> bool {
    let mut look = false;
    for &c in block {
        look |= (c < 0x20) | (c == b'"') | (c == b'\\') | (c >= 0x7f);
    }
    !look
}

/// The end of the run of plain bytes that starts at `i`: a block at a time,
/// then byte by byte through the block that stopped it (text that is not
/// ASCII is mostly plain too, so blocks are tried again after it).
#[inline]
fn plain_run(b: &[u8], i: usize) -> usize {
    run_of(&PLAIN, b, i)
}

/// [`plain_run`] with the bytes of `table` as the plain ones (a block is
/// plain only if all its bytes are plain ASCII, whatever the table).
#[inline(always)]
fn run_of(table: &[bool; 256], b: &[u8], mut i: usize) -> usize {
    loop {
        while let Some(block) = b.get(i..i + BLOCK).and_then(|s| s.try_into().ok()) {
            if !plain_block(block) {
                break;
            }
            i += BLOCK;
        }
        let end = (i + BLOCK).min(b.len());
        while i < end {
            if !table[b[i] as usize] {
                return i;
            }
            i += 1;
        }
        if i == b.len() {
            return i;
        }
    }
}

/// Escapes the ASCII bytes that start `b`, up to the first byte above ASCII
/// (or the end), and returns where it stopped.
fn escape_ascii(out: &mut BytesMut, b: &[u8]) -> usize {
    let (mut start, mut i) = (0, 0);
    loop {
        i = run_of(&PLAIN_ASCII, b, i);
        out.put_slice(&b[start..i]);
        match b.get(i) {
            Some(&c) if c < 0x80 => {
                put_ascii_escape(out, c);
                i += 1;
                start = i;
            }
            _ => return i,
        }
    }
}

/// The escape of an ASCII byte that [`PLAIN`] does not pass.
#[inline]
fn put_ascii_escape(out: &mut BytesMut, c: u8) {
    match c {
        b'"' => out.put_slice(b"\\\""),
        b'\\' => out.put_slice(b"\\\\"),
        b'\n' => out.put_slice(b"\\n"),
        b'\r' => out.put_slice(b"\\r"),
        b'\t' => out.put_slice(b"\\t"),
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.put_slice(b"\\u00");
            out.put_u8(HEX[(c >> 4) as usize]);
            out.put_u8(HEX[(c & 15) as usize]);
        }
    }
}

fn escape_valid(out: &mut BytesMut, s: &str) {
    let b = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        i = plain_run(b, i);
        let Some(&c) = b.get(i) else { break };
        let (esc, len): (&[u8], usize) = match c {
            0xC2 if b.get(i + 1) == Some(&0x85) => (b"\\u0085", 2),
            0xE2 if b.get(i + 1) == Some(&0x80)
                && matches!(b.get(i + 2), Some(0xA8) | Some(0xA9)) =>
            {
                (
                    if b[i + 2] == 0xA8 {
                        b"\\u2028"
                    } else {
                        b"\\u2029"
                    },
                    3,
                )
            }
            c if c < 0x80 => {
                out.put_slice(&b[start..i]);
                put_ascii_escape(out, c);
                i += 1;
                start = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.put_slice(&b[start..i]);
        out.put_slice(esc);
        i += len;
        start = i;
    }
    out.put_slice(&b[start..]);
}

/// Appends an unsigned integer in decimal.
pub fn put_u64(out: &mut BytesMut, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&buf[i..]);
}

/// Appends a signed integer in decimal.
pub fn put_i64(out: &mut BytesMut, n: i64) {
    if n < 0 {
        out.put_u8(b'-');
    }
    put_u64(out, n.unsigned_abs());
}

/// Appends a JSON boolean.
pub fn put_bool(out: &mut BytesMut, b: bool) {
    out.put_slice(if b { b"true" } else { b"false" });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(b: &[u8]) -> String {
        let mut out = BytesMut::new();
        json_str(&mut out, b);
        String::from_utf8(out.to_vec()).expect("test input")
    }

    #[test]
    fn escapes_and_round_trips_through_serde() {
        let s = "a\"b\\c\nd\re\tf\u{1}g\u{7f}h\u{85}i\u{2028}j\u{2029}k é 😀";
        let e = enc(s.as_bytes());
        assert!(!e.contains('\u{2028}') && !e.contains('\u{2029}') && !e.contains('\u{85}'));
        assert!(e.contains("\\u2028") && e.contains("\\u0085") && e.contains("\\u007f"));
        let back: String = serde_json::from_str(&e).expect("test input");
        assert_eq!(back, s);
        // The encoded form splits into exactly one line under Python's rules.
        assert!(!e
            .chars()
            .any(|c| matches!(c, '\n' | '\r' | '\u{b}' | '\u{c}' | '\u{1c}'..='\u{1e}')));
    }

    #[test]
    fn block_scan_agrees_with_the_byte_table() {
        // Every byte value at every position of a block of plain ones.
        for c in 0..=255u8 {
            for pos in 0..BLOCK {
                let mut block = [b'a'; BLOCK];
                block[pos] = c;
                let want = PLAIN[c as usize] && c < 0x80;
                assert_eq!(plain_block(&block), want, "byte {c:#x} at {pos}");
            }
        }
        // Runs end at the same byte the table would stop at.
        let text = "plain ascii text, then é, then more plain text\u{1}tail";
        for start in 0..text.len() {
            let want = (start..text.len())
                .find(|&i| !PLAIN[text.as_bytes()[i] as usize])
                .unwrap_or(text.len());
            assert_eq!(plain_run(text.as_bytes(), start), want, "from {start}");
        }
    }

    /// `json_str` before ASCII was escaped in one pass: the whole input
    /// checked by `from_utf8`, then escaped.
    fn json_str_two_passes(data: &[u8]) -> (Vec<u8>, bool) {
        let mut out = BytesMut::new();
        out.put_u8(b'"');
        let valid = match std::str::from_utf8(data) {
            Ok(s) => {
                escape_valid(&mut out, s);
                true
            }
            Err(_) => {
                for chunk in data.utf8_chunks() {
                    escape_valid(&mut out, chunk.valid());
                    if !chunk.invalid().is_empty() {
                        out.put_slice("\u{FFFD}".as_bytes());
                    }
                }
                false
            }
        };
        out.put_u8(b'"');
        (out.to_vec(), valid)
    }

    #[test]
    fn the_ascii_pass_encodes_as_the_two_passes_did() {
        // Pieces that end the ASCII pass (or not) at every kind of byte:
        // escapes, controls, DEL, characters that are escaped or not,
        // invalid and truncated sequences.
        let pieces: &[&[u8]] = &[
            b"plain text of some length, ",
            b"\"",
            b"\\",
            b"\n",
            b"\r\n",
            b"\t",
            b"\x01",
            b"\x7f",
            "\u{85}".as_bytes(),
            "\u{2028}".as_bytes(),
            "\u{2029}".as_bytes(),
            "é".as_bytes(),
            "😀".as_bytes(),
            b"\xff",
            b"\xe2\x80",
            b"\xc2",
            b"\x80",
            b"\xc3",
            b"\xf0\x9f",
            b"0123456789abcdef0123456789abcdef",
        ];
        let mut x = 11u32;
        for _ in 0..3000 {
            let mut data = Vec::new();
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            for _ in 0..(x % 12) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                data.extend_from_slice(pieces[x as usize % pieces.len()]);
            }
            let mut out = BytesMut::new();
            let valid = json_str(&mut out, &data);
            assert_eq!(
                (out.to_vec(), valid),
                json_str_two_passes(&data),
                "{data:?}"
            );
        }
    }

    #[test]
    fn lead_bytes_of_escaped_characters_pass_otherwise() {
        let s = "\u{a9} \u{20ac} \u{2030} x";
        let e = enc(s.as_bytes());
        assert_eq!(e, format!("\"{s}\""));
    }

    #[test]
    fn invalid_utf8_becomes_replacement() {
        let e = enc(b"ok\xff\xfeend\xe2\x82");
        let back: String = serde_json::from_str(&e).expect("test input");
        assert_eq!(back, "ok\u{FFFD}\u{FFFD}end\u{FFFD}");
    }

    #[test]
    fn invalid_utf8_is_reported() {
        let mut out = BytesMut::new();
        assert!(json_str(&mut out, "é ok".as_bytes()));
        assert!(!json_str(&mut out, b"\xff\xfe"));
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, want) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (b"\xff\xfe\n", "//4K"),
        ] {
            let mut out = BytesMut::new();
            put_base64(&mut out, plain);
            assert_eq!(&out[..], format!("\"{want}\"").as_bytes());
        }
    }

    #[test]
    fn numbers() {
        let mut out = BytesMut::new();
        put_u64(&mut out, 0);
        out.put_u8(b',');
        put_u64(&mut out, u64::MAX);
        assert_eq!(&out[..], b"0,18446744073709551615");
    }
}
