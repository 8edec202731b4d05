//! Splitting a byte stream into output events.
//!
//! Each event is one line *including* its terminator (`\n`, `\r` or `\r\n`), so
//! concatenating the events of a stream gives back its bytes exactly. A partial
//! line is held until its end arrives, the stream ends, or it reaches the
//! maximum line length; a forced split never cuts a UTF-8 character in two.

use bytes::{Buf, Bytes, BytesMut};

/// Longest line held back before it is emitted in pieces.
pub const MAX_LINE: usize = 64 * 1024;

/// Incremental line splitter for one stream (stdout or stderr).
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: BytesMut,
    max_line: usize,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            partial: BytesMut::new(),
            max_line: max_line.max(4),
        }
    }

    /// Feeds a chunk read from the pipe and calls `emit` for every complete
    /// line (or forced piece of an over-long line) it completes.
    pub fn push(&mut self, mut chunk: BytesMut, mut emit: impl FnMut(Bytes)) {
        if !self.partial.is_empty() {
            // A line spans two reads (with a busy producer, most reads end
            // inside a line). Join only that line's rest to it: the rest of
            // the chunk goes on without a copy.
            match line_end(&chunk) {
                // (The partial line holds no terminator: a `\r` at the end
                // of a read already ended its line.)
                Some(end) if self.partial.len() + end <= self.max_line => {
                    self.partial.extend_from_slice(&chunk[..end]);
                    emit(std::mem::take(&mut self.partial).freeze());
                    chunk.advance(end);
                }
                _ => {
                    self.partial.extend_from_slice(&chunk);
                    chunk = std::mem::take(&mut self.partial);
                }
            }
        }
        loop {
            let cut = match line_end(&chunk) {
                Some(end) if end <= self.max_line => end,
                // A line longer than the limit, complete or not, goes out in
                // pieces: no event exceeds the limit. Only once a byte past
                // the limit is here: that byte tells whether the cut would
                // fall inside a character.
                _ if chunk.len() > self.max_line => utf8_floor(&chunk, self.max_line),
                _ => break,
            };
            emit(chunk.split_to(cut).freeze());
        }
        if !chunk.is_empty() {
            // A copy: the rest of the chunk would keep all of the read's
            // allocation alive while the line waits for its end (a prompt,
            // a progress bar), and the log counts only the line.
            self.partial = BytesMut::from(&chunk[..]);
        }
    }

    /// The stream ended: emits whatever partial line is held.
    pub fn finish(&mut self, mut emit: impl FnMut(Bytes)) {
        if !self.partial.is_empty() {
            emit(std::mem::take(&mut self.partial).freeze());
        }
    }

    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }
}

/// Index just past the first line terminator in `buf`, if any. `\r\n` counts
/// as one terminator; a `\r` at the very end is a terminator on its own (a
/// progress-bar update must not wait for the next write).
fn line_end(buf: &[u8]) -> Option<usize> {
    // memchr2 scans a word (or vector) at a time; this runs on every output byte.
    let i = memchr::memchr2(b'\n', b'\r', buf)?;
    if buf[i] == b'\r' && buf.get(i + 1) == Some(&b'\n') {
        Some(i + 2)
    } else {
        Some(i + 1)
    }
}

/// The largest cut point `<= limit` that does not split a UTF-8 sequence.
/// Falls back to `limit` when the bytes are not valid UTF-8 around the cut.
pub fn utf8_floor(buf: &[u8], limit: usize) -> usize {
    if limit >= buf.len() {
        return buf.len();
    }
    // Step back over at most three continuation bytes to the lead byte.
    let mut cut = limit;
    for _ in 0..3 {
        if cut == 0 || buf[cut] & 0xC0 != 0x80 {
            break;
        }
        cut -= 1;
    }
    if buf[cut] & 0xC0 == 0x80 || cut == 0 {
        limit
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize) -> Vec<Vec<u8>> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(BytesMut::from(*c), |b| out.push(b.to_vec()));
        }
        s.finish(|b| out.push(b.to_vec()));
        out
    }

    fn strs(v: &[Vec<u8>]) -> Vec<String> {
        v.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn keeps_line_endings_and_blank_lines() {
        let out = split(&[b"a\n\nb\n\n\nc\n"], MAX_LINE);
        assert_eq!(strs(&out), ["a\n", "\n", "b\n", "\n", "\n", "c\n"]);
    }

    #[test]
    fn cr_and_crlf() {
        let out = split(&[b"10%\r20%\r\ndone\r\n"], MAX_LINE);
        assert_eq!(strs(&out), ["10%\r", "20%\r\n", "done\r\n"]);
    }

    #[test]
    fn partial_line_held_until_end_or_finish() {
        let out = split(&[b"hel", b"lo\nwor", b"ld"], MAX_LINE);
        assert_eq!(strs(&out), ["hello\n", "world"]);
    }

    #[test]
    fn concatenation_gives_back_the_bytes() {
        let input: &[&[u8]] = &[b"x\r", b"\ny\n", b"\xff\xfe\n", b"", b"tail"];
        let out = split(input, 8);
        let joined: Vec<u8> = out.concat();
        assert_eq!(joined, input.concat());
    }

    #[test]
    fn long_line_split_on_char_boundary() {
        // "é" is two bytes; a cut at 5 would split the third one.
        let line = "ééééé".as_bytes();
        let out = split(&[line], 5);
        for piece in &out {
            assert!(std::str::from_utf8(piece).is_ok(), "{piece:?}");
        }
        assert_eq!(out.concat(), line);
        assert!(out.iter().all(|p| p.len() <= 5));
    }

    #[test]
    fn a_long_line_completed_in_one_read_is_still_cut() {
        // Found by the `lines` fuzz target: the 5-byte second line used to be emitted whole.
        let out = split(&[b"\r\0\0$\x03\r"], 4);
        assert!(out.iter().all(|p| p.len() <= 4), "{out:?}");
        assert_eq!(out.concat(), b"\r\0\0$\x03\r");
        // The same across two reads: a held partial line plus a read that ends it.
        let out = split(&[b"abc", b"defg\n"], 4);
        assert!(out.iter().all(|p| p.len() <= 4), "{out:?}");
        assert_eq!(out.concat(), b"abcdefg\n");
    }

    #[test]
    fn a_character_cut_by_the_read_at_the_limit_is_not_split() {
        // Found by the `lines` fuzz target: the first read ends exactly at
        // the limit, inside a two-byte character.
        let input = "zp\\\u{2b3}\0\n\n\n\n".as_bytes();
        let out = split(&[&input[..4], &input[4..8], &input[8..]], 4);
        assert_eq!(out.concat(), input);
        for piece in &out {
            assert!(piece.len() <= 4, "{piece:?}");
            assert!(std::str::from_utf8(piece).is_ok(), "{piece:?}");
        }
    }

    /// The splitter before a held line was joined with only its rest: the
    /// whole next read was appended to it.
    fn split_joining_whole_reads(chunks: &[&[u8]], max: usize) -> Vec<Vec<u8>> {
        let (mut partial, mut out) = (Vec::<u8>::new(), Vec::new());
        for c in chunks {
            partial.extend_from_slice(c);
            loop {
                let cut = match line_end(&partial) {
                    Some(end) if end <= max => end,
                    _ if partial.len() > max => utf8_floor(&partial, max),
                    _ => break,
                };
                out.push(partial.drain(..cut).collect());
            }
        }
        if !partial.is_empty() {
            out.push(partial);
        }
        out
    }

    #[test]
    fn joining_only_the_held_line_splits_as_joining_whole_reads() {
        let text: &[u8] = "ab\ncd\r\nef\rgh é\n\n\rxyzzy\r\n12345678\n\u{2028}end".as_bytes();
        let mut x = 7u32;
        for max in [4, 5, 8, 64] {
            for _ in 0..200 {
                let mut cuts = Vec::new();
                let mut at = 0;
                while at < text.len() {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let step = 1 + (x as usize % 9);
                    cuts.push(&text[at..(at + step).min(text.len())]);
                    at += step;
                }
                assert_eq!(
                    split(&cuts, max),
                    split_joining_whole_reads(&cuts, max),
                    "{cuts:?} max {max}"
                );
            }
        }
    }

    #[test]
    fn utf8_floor_invalid_bytes() {
        let buf = [0x80u8; 10];
        assert_eq!(utf8_floor(&buf, 4), 4);
        assert_eq!(utf8_floor(b"abc", 10), 3);
    }
}
