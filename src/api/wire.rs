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
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if let Some(avx2) = simd::Avx2::detect() {
        return avx2.json_str(out, data);
    }
    json_str_base(out, data)
}

/// [`json_str`] with the lane tests every CPU of the target has: a function
/// of its own, so that `json_str` is only the choice (its registers are
/// saved only on this path).
#[inline(never)]
fn json_str_base(out: &mut BytesMut, data: &[u8]) -> bool {
    json_str_with(Base, out, data)
}

/// [`json_str`] with the lane tests of `lanes`, inlined into each caller so
/// that the whole scan is compiled for their instructions.
#[inline(always)]
fn json_str_with<L: Lanes>(lanes: L, out: &mut BytesMut, data: &[u8]) -> bool {
    out.reserve(data.len() + 2);
    out.put_u8(b'"');
    // Most output is ASCII: it is escaped in the same pass that finds where
    // it ends, so such text is read once, not checked by `from_utf8` first.
    let ascii = escape_ascii(lanes, out, data);
    // The rest starts at a character boundary (the byte before it, if any,
    // is ASCII). Valid UTF-8 is the common case, and `from_utf8` checks it a
    // word at a time; `utf8_chunks` is much slower per byte.
    let rest = &data[ascii..];
    let valid = if rest.is_empty() {
        // All ASCII (most output): nothing left to check or escape.
        true
    } else if let Ok(s) = std::str::from_utf8(rest) {
        escape_valid(lanes, out, s);
        true
    } else {
        for chunk in rest.utf8_chunks() {
            escape_valid(lanes, out, chunk.valid());
            if !chunk.invalid().is_empty() {
                out.put_slice("\u{FFFD}".as_bytes());
            }
        }
        false
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

/// Bytes tested together by [`Lanes::look`]: one SSE2 register.
const LANE: usize = 16;

/// Bytes tested together by [`Lanes::plain_wide`] while a run goes on: four
/// SSE2 registers or two AVX2 ones, ANDed before their one mask is taken.
const WIDE: usize = 4 * LANE;

/// The tests of a lane and of a wide block for the instructions of one kind
/// of CPU. A value of a type that implements it is the proof that the CPU
/// has them.
trait Lanes: Copy {
    /// Bit k is set when byte k of `lane` is not plain ASCII: printable
    /// ASCII, `0x20..=0x7E`, but `"` and `\`.
    fn look(self, lane: &[u8; LANE]) -> u32;

    /// Whether every byte of `wide` is plain ASCII.
    fn plain_wide(self, wide: &[u8; WIDE]) -> bool;
}

/// The end of the run of the bytes of `table` that starts at `i` (`i <=
/// b.len()`). A [`LANE`] first, so that a short run (between escapes) costs
/// one test; then [`WIDE`] bytes at a time while all are plain ASCII, then a
/// lane at a time through the block that stopped it. The bytes of a lane that
/// are not plain ASCII are looked up in `table` (text that is not ASCII is
/// mostly plain, so wide blocks are tried again after such a block). The last
/// lane of the input is the one that ends at its end, overlapping the lane
/// before it, with the bytes already passed masked off: the tail is never
/// read byte by byte, unless the whole input is shorter than a lane.
#[inline(always)]
fn run_of<L: Lanes>(lanes: L, table: &[bool; 256], b: &[u8], mut i: usize) -> usize {
    let n = b.len();
    let Some(last) = n.checked_sub(LANE) else {
        return (i..n).find(|&k| !table[b[k] as usize]).unwrap_or(n);
    };
    let mut end = n.min(i + LANE);
    loop {
        while i < end {
            let at = i.min(last);
            let Some(lane) = b.get(at..).and_then(<[u8]>::first_chunk::<LANE>) else {
                return n;
            };
            // One bit per byte from `i` that is not plain ASCII.
            let mut look = lanes.look(lane) >> (i - at);
            while look != 0 {
                let k = i - at + look.trailing_zeros() as usize;
                if !table[lane[k] as usize] {
                    return at + k;
                }
                look &= look - 1;
            }
            i = at + LANE;
        }
        if i >= n {
            return n;
        }
        let mut rest = b.get(i..).unwrap_or_default();
        while let Some((wide, after)) = rest.split_first_chunk::<WIDE>() {
            if !lanes.plain_wide(wide) {
                break;
            }
            rest = after;
        }
        i = n - rest.len();
        end = n.min(i + WIDE);
    }
}

/// The lane tests with SSE2, part of every x86_64 target, and with AVX2
/// where the CPU has it.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod simd {
    use super::{Lanes, LANE, WIDE};
    use bytes::BytesMut;
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_and_si256, _mm256_andnot_si256, _mm256_cmpeq_epi8,
        _mm256_cmpgt_epi8, _mm256_loadu_si256, _mm256_min_epu8, _mm256_movemask_epi8,
        _mm256_set1_epi8, _mm256_sub_epi8, _mm256_xor_si256, _mm_and_si128, _mm_andnot_si128,
        _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8,
        _mm_set1_epi8, _mm_sub_epi8, _mm_xor_si128,
    };

    /// SSE2: a wide block is four registers.
    #[derive(Clone, Copy)]
    pub(super) struct Sse2;

    /// 0xFF in each byte of `v` that is plain ASCII, else 0.
    #[inline(always)]
    fn plain(v: __m128i) -> __m128i {
        // SAFETY: register operations of SSE2, which this build enables (the
        // cfg of the module).
        unsafe {
            // Plus one, 0x20..=0x7E become 0x21..=0x7F, the signed bytes above
            // 0x20; controls become 0x01..=0x20, and DEL and the bytes above
            // ASCII negative (or 0, for 0xFF).
            let range = _mm_cmpgt_epi8(_mm_sub_epi8(v, _mm_set1_epi8(-1)), _mm_set1_epi8(0x20));
            // `"` (0x22) and `\` (0x5C) swap under XOR 0x7E, so the smaller of
            // a byte and its swap is 0x22 for these two and for no other byte.
            let swap = _mm_min_epu8(v, _mm_xor_si128(v, _mm_set1_epi8(0x7e)));
            _mm_andnot_si128(_mm_cmpeq_epi8(swap, _mm_set1_epi8(0x22)), range)
        }
    }

    #[inline(always)]
    fn load(b: &[u8; LANE]) -> __m128i {
        // SAFETY: SSE2 is enabled (the module's cfg); `b` is 16 readable
        // bytes, and the unaligned load needs no alignment.
        unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
    }

    #[inline(always)]
    fn mask(v: __m128i) -> u32 {
        // SAFETY: a register operation of SSE2, which this build enables.
        unsafe { _mm_movemask_epi8(v) as u32 }
    }

    impl Lanes for Sse2 {
        #[inline(always)]
        fn look(self, lane: &[u8; LANE]) -> u32 {
            !mask(plain(load(lane))) & 0xffff
        }

        #[inline(always)]
        fn plain_wide(self, wide: &[u8; WIDE]) -> bool {
            let (lanes, _) = wide.as_chunks::<LANE>();
            // SAFETY: register operations of SSE2, which this build enables.
            let all = lanes
                .iter()
                .fold(unsafe { _mm_set1_epi8(-1) }, |all, lane| unsafe {
                    _mm_and_si128(all, plain(load(lane)))
                });
            mask(all) == 0xffff
        }
    }

    /// AVX2: a wide block is two registers, and the SSE2 code of the lanes
    /// is encoded without the copies of registers that SSE2's two-operand
    /// forms need. Only [`Avx2::detect`] makes one.
    #[derive(Clone, Copy)]
    pub(super) struct Avx2(());

    impl Avx2 {
        /// An `Avx2` if the CPU has AVX2 (std caches the answer).
        #[inline]
        pub(super) fn detect() -> Option<Self> {
            std::arch::is_x86_feature_detected!("avx2").then_some(Avx2(()))
        }

        /// [`super::json_str`] compiled for AVX2.
        #[inline]
        pub(super) fn json_str(self, out: &mut BytesMut, data: &[u8]) -> bool {
            // SAFETY: the CPU has AVX2: `self` was made by `detect`.
            unsafe { json_str_avx2(self, out, data) }
        }
    }

    #[target_feature(enable = "avx2")]
    fn json_str_avx2(lanes: Avx2, out: &mut BytesMut, data: &[u8]) -> bool {
        super::json_str_with(lanes, out, data)
    }

    impl Lanes for Avx2 {
        #[inline(always)]
        fn look(self, lane: &[u8; LANE]) -> u32 {
            Sse2.look(lane)
        }

        #[inline(always)]
        fn plain_wide(self, wide: &[u8; WIDE]) -> bool {
            // SAFETY: the CPU has AVX2: `self` was made by `detect`.
            unsafe { plain_wide_avx2(wide) }
        }
    }

    /// [`Lanes::plain_wide`] in two AVX2 registers.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn plain_wide_avx2(wide: &[u8; WIDE]) -> bool {
        let (halves, _) = wide.as_chunks::<32>();
        // Always two halves; `false` would only make the caller look closer.
        let [a, b] = halves else { return false };
        // SAFETY: each half is 32 readable bytes, and the unaligned loads need
        // no alignment.
        let (a, b) = unsafe {
            (
                _mm256_loadu_si256(a.as_ptr().cast()),
                _mm256_loadu_si256(b.as_ptr().cast()),
            )
        };
        _mm256_movemask_epi8(_mm256_and_si256(plain256(a), plain256(b))) == -1
    }

    /// `plain` in an AVX2 register.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn plain256(v: __m256i) -> __m256i {
        let range = _mm256_cmpgt_epi8(
            _mm256_sub_epi8(v, _mm256_set1_epi8(-1)),
            _mm256_set1_epi8(0x20),
        );
        let swap = _mm256_min_epu8(v, _mm256_xor_si256(v, _mm256_set1_epi8(0x7e)));
        _mm256_andnot_si256(_mm256_cmpeq_epi8(swap, _mm256_set1_epi8(0x22)), range)
    }
}
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
use simd::Sse2 as Base;

/// The lane tests written byte by byte, for other targets (the compiler
/// vectorizes them where it can), and as the reference in tests.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "sse2"))))]
mod portable {
    use super::{Lanes, LANE, WIDE};

    /// Whether `c` is copied as it is in any text: printable ASCII,
    /// `0x20..=0x7E`, but `"` and `\`.
    #[inline(always)]
    pub(super) fn plain_ascii(c: u8) -> bool {
        (c.wrapping_sub(0x20) < 0x5f) & (c != b'"') & (c != b'\\')
    }

    /// Any CPU: a byte at a time.
    #[derive(Clone, Copy)]
    pub(super) struct Bytes;

    impl Lanes for Bytes {
        #[inline]
        fn look(self, lane: &[u8; LANE]) -> u32 {
            let mut look = 0;
            for (k, &c) in lane.iter().enumerate() {
                look |= u32::from(!plain_ascii(c)) << k;
            }
            look
        }

        #[inline]
        fn plain_wide(self, wide: &[u8; WIDE]) -> bool {
            wide.iter().fold(true, |all, &c| all & plain_ascii(c))
        }
    }
}
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
use portable::Bytes as Base;

/// Escapes the ASCII bytes that start `b`, up to the first byte above ASCII
/// (or the end), and returns where it stopped.
#[inline(always)]
fn escape_ascii<L: Lanes>(lanes: L, out: &mut BytesMut, b: &[u8]) -> usize {
    let (mut start, mut i) = (0, 0);
    loop {
        i = run_of(lanes, &PLAIN_ASCII, b, i);
        if i > start {
            // (Not empty: most lines end in an escape, `\n`.)
            out.put_slice(&b[start..i]);
        }
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

#[inline(always)]
fn escape_valid<L: Lanes>(lanes: L, out: &mut BytesMut, s: &str) {
    let b = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        i = run_of(lanes, &PLAIN, b, i);
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

/// Appends an unsigned integer in decimal: `itoa` writes two digits at a
/// time from a table (a timestamp's 13 digits, of each event, cost about a
/// quarter of the instructions of a digit at a time).
pub fn put_u64(out: &mut BytesMut, n: u64) {
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
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

    /// Calls `f` with each lane implementation the CPU has (and its name).
    fn each_lanes(
        mut f: impl FnMut(&dyn Fn(&[u8; LANE]) -> u32, &dyn Fn(&[u8; WIDE]) -> bool, &str),
    ) {
        f(
            &|l| portable::Bytes.look(l),
            &|w| portable::Bytes.plain_wide(w),
            "bytes",
        );
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        {
            f(
                &|l| simd::Sse2.look(l),
                &|w| simd::Sse2.plain_wide(w),
                "sse2",
            );
            if let Some(avx2) = simd::Avx2::detect() {
                f(&|l| avx2.look(l), &|w| avx2.plain_wide(w), "avx2");
            }
        }
    }

    /// `run_of` with each lane implementation the CPU has.
    fn runs_of(table: &[bool; 256], b: &[u8], i: usize) -> Vec<usize> {
        let mut runs = vec![run_of(portable::Bytes, table, b, i)];
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        {
            runs.push(run_of(simd::Sse2, table, b, i));
            if let Some(avx2) = simd::Avx2::detect() {
                runs.push(run_of(avx2, table, b, i));
            }
        }
        runs
    }

    /// `json_str` and `json_str_with` each lane implementation the CPU has.
    fn encodings(data: &[u8]) -> Vec<(Vec<u8>, bool)> {
        let encode = |f: &dyn Fn(&mut BytesMut) -> bool| {
            let mut out = BytesMut::new();
            let valid = f(&mut out);
            (out.to_vec(), valid)
        };
        let mut all = vec![
            encode(&|out| json_str(out, data)),
            encode(&|out| json_str_with(portable::Bytes, out, data)),
        ];
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        all.push(encode(&|out| json_str_with(simd::Sse2, out, data)));
        all
    }

    #[test]
    fn lane_tests_agree_with_the_byte_test() {
        // Every byte value at every position of a lane, and of a wide block,
        // of plain ones: the SIMD tests and the byte-by-byte ones alike.
        #[cfg(target_arch = "x86_64")]
        println!("avx2: {}", std::arch::is_x86_feature_detected!("avx2"));
        for c in 0..=255u8 {
            let want = portable::plain_ascii(c);
            assert_eq!(want, PLAIN_ASCII[c as usize], "byte {c:#x}");
            for pos in 0..LANE {
                let mut lane = [b'a'; LANE];
                lane[pos] = c;
                let bit = u32::from(!want) << pos;
                each_lanes(|look, _, name| {
                    assert_eq!(look(&lane), bit, "{name}: byte {c:#x} at {pos}");
                });
            }
            for pos in 0..WIDE {
                let mut wide = [b'~'; WIDE];
                wide[pos] = c;
                each_lanes(|_, plain_wide, name| {
                    assert_eq!(plain_wide(&wide), want, "{name}: byte {c:#x} at {pos}");
                });
            }
        }
    }

    /// Where the run of `table`'s bytes from `i` ends, byte by byte.
    fn run_bytewise(table: &[bool; 256], b: &[u8], i: usize) -> usize {
        (i..b.len())
            .find(|&k| !table[b[k] as usize])
            .unwrap_or(b.len())
    }

    /// `json_str` written from the rules, a character at a time.
    fn json_str_by_chars(data: &[u8]) -> (Vec<u8>, bool) {
        let mut out = vec![b'"'];
        let mut valid = true;
        for chunk in data.utf8_chunks() {
            for ch in chunk.valid().chars() {
                match ch {
                    '"' => out.extend_from_slice(b"\\\""),
                    '\\' => out.extend_from_slice(b"\\\\"),
                    '\n' => out.extend_from_slice(b"\\n"),
                    '\r' => out.extend_from_slice(b"\\r"),
                    '\t' => out.extend_from_slice(b"\\t"),
                    '\0'..='\u{1f}' | '\u{7f}' | '\u{85}' | '\u{2028}' | '\u{2029}' => {
                        out.extend_from_slice(format!("\\u{:04x}", ch as u32).as_bytes())
                    }
                    _ => out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            if !chunk.invalid().is_empty() {
                out.extend_from_slice("\u{FFFD}".as_bytes());
                valid = false;
            }
        }
        out.push(b'"');
        (out, valid)
    }

    /// Checks the runs from every start, and the encoding, of `data`.
    fn check_scan(data: &[u8]) {
        for table in [&PLAIN, &PLAIN_ASCII] {
            for i in 0..=data.len() {
                let runs = runs_of(table, data, i);
                let want = run_bytewise(table, data, i);
                assert!(
                    runs.iter().all(|&r| r == want),
                    "{runs:?} from {i} of {data:?}"
                );
            }
        }
        let want = json_str_by_chars(data);
        for got in encodings(data) {
            assert_eq!(got, want, "{data:?}");
        }
    }

    #[test]
    fn the_scan_agrees_with_the_byte_table() {
        // Every byte value at every position of plain text of each length up
        // to a few wide blocks, where lanes overlap at the end or are short.
        for len in (1..=33).chain([63, 64, 65, 80, 129, 199]) {
            for pos in 0..len {
                for c in 0..=255u8 {
                    let mut data = vec![b'x'; len];
                    data[pos] = c;
                    for table in [&PLAIN, &PLAIN_ASCII] {
                        for i in [0, pos, len.saturating_sub(LANE - 1)] {
                            let i = i.min(len);
                            let runs = runs_of(table, &data, i);
                            let want = run_bytewise(table, &data, i);
                            let ok = runs.iter().all(|&r| r == want);
                            assert!(ok, "{runs:?} {c:#x} at {pos} of {len}");
                        }
                    }
                }
            }
        }
        // Random texts of every length up to 200: mostly plain ASCII, with
        // bytes of any value, escapes and characters of two to four bytes
        // (valid, cut short, or stray) where the scan changes its step.
        let pieces: &[&[u8]] = &[
            b"\"",
            b"\\",
            b"\n",
            b"\x7f",
            "\u{85}".as_bytes(),
            "\u{2028}".as_bytes(),
            "\u{2029}".as_bytes(),
            "\u{20ac}".as_bytes(),
            "é".as_bytes(),
            "😀".as_bytes(),
            b"\xe2\x80",
            b"\xc2",
            b"\xff",
        ];
        let mut x = 0x9e37_79b9_u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        check_scan(b"");
        for len in 1..=200 {
            for _ in 0..10 {
                let mut data = Vec::with_capacity(len);
                while data.len() < len {
                    let r = next();
                    match r % 16 {
                        0 => data.push((r >> 8) as u8),
                        1 => data.extend_from_slice(pieces[(r >> 8) as usize % pieces.len()]),
                        _ => data.push(b' ' + (r >> 8) as u8 % 95),
                    }
                }
                data.truncate(len);
                check_scan(&data);
            }
        }
    }

    /// `json_str` before ASCII was escaped in one pass: the whole input
    /// checked by `from_utf8`, then escaped.
    fn json_str_two_passes(data: &[u8]) -> (Vec<u8>, bool) {
        let mut out = BytesMut::new();
        out.put_u8(b'"');
        let valid = match std::str::from_utf8(data) {
            Ok(s) => {
                escape_valid(Base, &mut out, s);
                true
            }
            Err(_) => {
                for chunk in data.utf8_chunks() {
                    escape_valid(Base, &mut out, chunk.valid());
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
        for n in [9, 10, 99, 100, 12_345, 1_765_000_000_123] {
            out.put_u8(b',');
            put_u64(&mut out, n);
        }
        out.put_u8(b',');
        put_i64(&mut out, i64::MIN);
        assert_eq!(
            &out[..],
            b"0,18446744073709551615,9,10,99,100,12345,1765000000123,-9223372036854775808"
        );
    }
}
