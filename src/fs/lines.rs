//! Line-window reading for `GET /files/download?offset=&limit=`: lines
//! `offset..offset+limit` (1-based), each without its `\n` or `\r\n`,
//! joined by `\n`, with no trailing newline. Works on a byte stream of any
//! size in constant memory: lines are never held whole.

/// Cuts a window of lines out of a byte stream fed chunk by chunk.
pub struct LineWindow {
    /// 1-based number of the line being read.
    line: u64,
    first: u64,
    last: u64,
    /// The current line has begun (has a byte or its terminator was seen).
    started: bool,
    emitted: bool,
    /// A `\r` held back in case a `\n` follows.
    pending_cr: bool,
    done: bool,
}

impl LineWindow {
    /// `offset` is the first line (1-based), `limit` how many (None: all).
    pub fn new(offset: u64, limit: Option<u64>) -> LineWindow {
        let first = offset.max(1);
        let last = match limit {
            Some(n) => first.saturating_add(n.saturating_sub(1)),
            None => u64::MAX,
        };
        LineWindow {
            line: 1,
            first,
            last,
            started: false,
            emitted: false,
            pending_cr: false,
            done: limit == Some(0),
        }
    }

    /// Whether every wanted line has been seen.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Feeds the next chunk, appending the window's bytes to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        while !chunk.is_empty() && !self.done {
            let nl = memchr::memchr(b'\n', chunk);
            let body = &chunk[..nl.unwrap_or(chunk.len())];
            let inside = self.line >= self.first && self.line <= self.last;
            if inside {
                if !self.started {
                    if self.emitted {
                        out.push(b'\n');
                    }
                    self.emitted = true;
                }
                if !body.is_empty() {
                    if self.pending_cr {
                        out.push(b'\r');
                    }
                    let (text, cr) = match body.strip_suffix(b"\r") {
                        Some(t) => (t, true),
                        None => (body, false),
                    };
                    out.extend_from_slice(text);
                    self.pending_cr = cr;
                }
            }
            self.started = true;
            match nl {
                Some(i) => {
                    self.pending_cr = false;
                    self.started = false;
                    self.line += 1;
                    if self.line > self.last {
                        self.done = true;
                    }
                    chunk = &chunk[i + 1..];
                }
                None => chunk = &[],
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(data: &[u8], offset: u64, limit: Option<u64>, chunk: usize) -> String {
        let mut w = LineWindow::new(offset, limit);
        let mut out = Vec::new();
        for c in data.chunks(chunk.max(1)) {
            w.feed(c, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn windows_in_any_chunking() {
        let data = b"one\r\ntwo\n\nfour\r\r\nfive";
        for chunk in [1, 2, 3, 5, 100] {
            let w = |o, l| window(data, o, l, chunk);
            assert_eq!(w(1, None), "one\ntwo\n\nfour\r\nfive", "chunk {chunk}");
            assert_eq!(w(2, Some(2)), "two\n", "chunk {chunk}");
            assert_eq!(w(3, Some(1)), "", "chunk {chunk}");
            assert_eq!(w(4, Some(1)), "four\r", "chunk {chunk}");
            assert_eq!(w(5, Some(10)), "five", "chunk {chunk}");
            assert_eq!(w(6, None), "", "chunk {chunk}");
            assert_eq!(w(1, Some(1)), "one", "chunk {chunk}");
        }
    }

    #[test]
    fn trailing_newline_and_cr() {
        assert_eq!(window(b"a\nb\n", 1, None, 100), "a\nb");
        assert_eq!(window(b"a\n\n", 1, None, 100), "a\n");
        assert_eq!(window(b"a\r", 1, None, 1), "a");
        assert_eq!(window(b"", 1, None, 1), "");
    }

    #[test]
    fn stops_after_the_window() {
        let mut w = LineWindow::new(2, Some(1));
        let mut out = Vec::new();
        w.feed(b"x\ny\nz", &mut out);
        assert!(w.done());
        assert_eq!(out, b"y");
    }
}
