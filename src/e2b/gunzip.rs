//! A small gzip decoder (RFC 1952 around RFC 1951 DEFLATE) for uploads
//! sent with `Content-Encoding: gzip`, and a simple compressor ([`Gzip`])
//! for downloads. Pull-based: it reads input bytes
//! from a function and hands output to another in pieces, so it runs on a
//! blocking thread between two bounded channels and holds only its 32 KiB
//! window. Safe Rust: bad input is an error, never a crash.

/// Why a stream could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GzipError {
    #[error("gzip: {0}")]
    Bad(&'static str),
    #[error("gzip: the input ends early")]
    Truncated,
    /// The consumer stopped taking output.
    #[error("gzip: output refused")]
    Stopped,
}

type R<T> = Result<T, GzipError>;

const WINDOW: usize = 32 * 1024;
/// Output handed out in pieces of this size.
const PIECE: usize = 64 * 1024;

struct Bits<I: FnMut() -> Option<u8>> {
    input: I,
    bit: u32,
    nbits: u32,
}

impl<I: FnMut() -> Option<u8>> Bits<I> {
    fn byte(&mut self) -> R<u8> {
        (self.input)().ok_or(GzipError::Truncated)
    }
    fn need(&mut self, n: u32) -> R<()> {
        while self.nbits < n {
            self.bit |= u32::from(self.byte()?) << self.nbits;
            self.nbits += 8;
        }
        Ok(())
    }
    fn bits(&mut self, n: u32) -> R<u32> {
        if n == 0 {
            return Ok(0);
        }
        self.need(n)?;
        let v = self.bit & ((1u32 << n) - 1);
        self.bit >>= n;
        self.nbits -= n;
        Ok(v)
    }
    fn align(&mut self) {
        self.bit = 0;
        self.nbits = 0;
    }
}

/// A canonical Huffman code: counts per length and symbols by code.
struct Huffman {
    counts: [u16; 16],
    symbols: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> R<Huffman> {
        let mut counts = [0u16; 16];
        for &l in lengths {
            counts[l as usize] += 1;
        }
        counts[0] = 0;
        let mut left: i32 = 1;
        for c in counts.iter().skip(1) {
            left = left * 2 - i32::from(*c);
            if left < 0 {
                return Err(GzipError::Bad("over-subscribed code"));
            }
        }
        let mut offs = [0u16; 16];
        for i in 1..15 {
            offs[i + 1] = offs[i] + counts[i];
        }
        let mut symbols = vec![0u16; lengths.len()];
        for (s, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbols[offs[l as usize] as usize] = s as u16;
                offs[l as usize] += 1;
            }
        }
        Ok(Huffman { counts, symbols })
    }

    fn decode<I: FnMut() -> Option<u8>>(&self, b: &mut Bits<I>) -> R<u16> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= b.bits(1)? as i32;
            let count = i32::from(self.counts[len]);
            if code - count < first {
                return self
                    .symbols
                    .get((index + (code - first)) as usize)
                    .copied()
                    .ok_or(GzipError::Bad("bad code"));
            }
            index += count;
            first += count;
            first <<= 1;
            code <<= 1;
        }
        Err(GzipError::Bad("incomplete code"))
    }
}

const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// The output side: a window for back-references, a piece being filled,
/// the CRC and length of everything.
struct Out<O: FnMut(&[u8]) -> bool> {
    sink: O,
    window: Vec<u8>,
    pos: usize,
    filled: usize,
    piece: Vec<u8>,
    crc: u32,
    len: u32,
}

impl<O: FnMut(&[u8]) -> bool> Out<O> {
    fn push(&mut self, b: u8) -> R<()> {
        self.window[self.pos] = b;
        self.pos = (self.pos + 1) % WINDOW;
        self.filled = (self.filled + 1).min(WINDOW);
        self.piece.push(b);
        if self.piece.len() >= PIECE {
            self.flush()?;
        }
        Ok(())
    }
    fn copy(&mut self, dist: usize, len: usize) -> R<()> {
        if dist > self.filled {
            return Err(GzipError::Bad("distance too far back"));
        }
        for _ in 0..len {
            let b = self.window[(self.pos + WINDOW - dist) % WINDOW];
            self.push(b)?;
        }
        Ok(())
    }
    fn flush(&mut self) -> R<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        self.crc = crc32(self.crc, &self.piece);
        self.len = self.len.wrapping_add(self.piece.len() as u32);
        let ok = (self.sink)(&self.piece);
        self.piece.clear();
        if ok {
            Ok(())
        } else {
            Err(GzipError::Stopped)
        }
    }
}

fn crc32(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn fixed() -> R<(Huffman, Huffman)> {
    let mut l = [0u8; 288];
    l[..144].fill(8);
    l[144..256].fill(9);
    l[256..280].fill(7);
    l[280..].fill(8);
    Ok((Huffman::new(&l)?, Huffman::new(&[5u8; 30])?))
}

fn dynamic<I: FnMut() -> Option<u8>>(b: &mut Bits<I>) -> R<(Huffman, Huffman)> {
    let nlen = b.bits(5)? as usize + 257;
    let ndist = b.bits(5)? as usize + 1;
    let ncode = b.bits(4)? as usize + 4;
    if nlen > 286 || ndist > 30 {
        return Err(GzipError::Bad("bad code counts"));
    }
    const ORDER: [usize; 19] = [
        16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
    ];
    let mut cl = [0u8; 19];
    for &i in ORDER.iter().take(ncode) {
        cl[i] = b.bits(3)? as u8;
    }
    let lencode = Huffman::new(&cl)?;
    let mut lengths = vec![0u8; nlen + ndist];
    let mut i = 0;
    while i < nlen + ndist {
        let sym = lencode.decode(b)?;
        let (val, rep) = match sym {
            0..=15 => (sym as u8, 1),
            16 => {
                let prev = *lengths
                    .get(i.wrapping_sub(1))
                    .filter(|_| i > 0)
                    .ok_or(GzipError::Bad("repeat with no length"))?;
                (prev, 3 + b.bits(2)? as usize)
            }
            17 => (0, 3 + b.bits(3)? as usize),
            _ => (0, 11 + b.bits(7)? as usize),
        };
        if i + rep > nlen + ndist {
            return Err(GzipError::Bad("too many lengths"));
        }
        lengths[i..i + rep].fill(val);
        i += rep;
    }
    if lengths[256] == 0 {
        return Err(GzipError::Bad("no end-of-block code"));
    }
    Ok((
        Huffman::new(&lengths[..nlen])?,
        Huffman::new(&lengths[nlen..])?,
    ))
}

fn inflate_block<I, O>(b: &mut Bits<I>, out: &mut Out<O>, lit: &Huffman, dist: &Huffman) -> R<()>
where
    I: FnMut() -> Option<u8>,
    O: FnMut(&[u8]) -> bool,
{
    loop {
        let sym = lit.decode(b)?;
        match sym {
            0..=255 => out.push(sym as u8)?,
            256 => return Ok(()),
            _ => {
                let s = usize::from(sym - 257);
                if s >= 29 {
                    return Err(GzipError::Bad("bad length symbol"));
                }
                let len = usize::from(LEN_BASE[s]) + b.bits(u32::from(LEN_EXTRA[s]))? as usize;
                let d = usize::from(dist.decode(b)?);
                if d >= 30 {
                    return Err(GzipError::Bad("bad distance symbol"));
                }
                let dd = usize::from(DIST_BASE[d]) + b.bits(u32::from(DIST_EXTRA[d]))? as usize;
                out.copy(dd, len)?;
            }
        }
    }
}

/// Decodes one gzip member from `input` into `sink` (which returns false
/// to stop). Checks the CRC-32 and length of the trailer.
pub fn gunzip(input: impl FnMut() -> Option<u8>, sink: impl FnMut(&[u8]) -> bool) -> R<()> {
    let mut b = Bits {
        input,
        bit: 0,
        nbits: 0,
    };
    let mut head = [0u8; 10];
    for h in &mut head {
        *h = b.byte()?;
    }
    if head[0] != 0x1f || head[1] != 0x8b || head[2] != 8 {
        return Err(GzipError::Bad("not a gzip stream"));
    }
    let flags = head[3];
    if flags & 4 != 0 {
        let n = usize::from(b.byte()?) | usize::from(b.byte()?) << 8;
        for _ in 0..n {
            b.byte()?;
        }
    }
    for flag in [8u8, 16] {
        if flags & flag != 0 {
            while b.byte()? != 0 {}
        }
    }
    if flags & 2 != 0 {
        b.byte()?;
        b.byte()?;
    }
    let mut out = Out {
        sink,
        window: vec![0; WINDOW],
        pos: 0,
        filled: 0,
        piece: Vec::with_capacity(PIECE),
        crc: 0,
        len: 0,
    };
    loop {
        let last = b.bits(1)?;
        match b.bits(2)? {
            0 => {
                b.align();
                let len = u16::from(b.byte()?) | u16::from(b.byte()?) << 8;
                let nlen = u16::from(b.byte()?) | u16::from(b.byte()?) << 8;
                if len != !nlen {
                    return Err(GzipError::Bad("stored block length"));
                }
                for _ in 0..len {
                    let c = b.byte()?;
                    out.push(c)?;
                }
            }
            1 => {
                let (l, d) = fixed()?;
                inflate_block(&mut b, &mut out, &l, &d)?;
            }
            2 => {
                let (l, d) = dynamic(&mut b)?;
                inflate_block(&mut b, &mut out, &l, &d)?;
            }
            _ => return Err(GzipError::Bad("bad block type")),
        }
        if last == 1 {
            break;
        }
    }
    out.flush()?;
    b.align();
    let mut t = [0u8; 8];
    for x in &mut t {
        *x = b.byte()?;
    }
    let crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    let len = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
    if crc != out.crc || len != out.len {
        return Err(GzipError::Bad("CRC or length mismatch"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(data: &[u8]) -> R<Vec<u8>> {
        let mut it = data.iter().copied();
        let mut out = Vec::new();
        gunzip(
            || it.next(),
            |p| {
                out.extend_from_slice(p);
                true
            },
        )?;
        Ok(out)
    }

    // Made with Python's gzip.compress(..., mtime=0).
    const HELLO: &[u8] = &[
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0xff, 0xcb, 0x48, 0xcd, 0xc9, 0xc9,
        0x57, 0x28, 0xcf, 0x2f, 0xca, 0x49, 0xe1, 0x02, 0x00, 0x2d, 0x3b, 0x08, 0xaf, 0x0c, 0x00,
        0x00, 0x00,
    ];

    #[test]
    fn fixed_huffman_member() {
        assert_eq!(run(HELLO).unwrap(), b"hello world\n");
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(run(&HELLO[..20]), Err(GzipError::Truncated));
        let mut crc = HELLO.to_vec();
        crc[24] ^= 1;
        assert!(run(&crc).is_err());
        assert!(run(b"not gzip at all").is_err());
    }

    #[test]
    fn crc_vector() {
        assert_eq!(crc32(0, b"123456789"), 0xCBF4_3926);
    }
}

/// A gzip compressor for downloads: each piece of input is one DEFLATE
/// block with the fixed Huffman code and LZ77 matches found through a hash
/// of 3-byte prefixes within the piece (no matches across pieces, so it
/// needs no window between calls).
pub struct Gzip {
    crc: u32,
    len: u32,
    /// Bits not yet a whole byte.
    bit: u64,
    nbits: u32,
}

impl Default for Gzip {
    fn default() -> Self {
        Self::new()
    }
}

impl Gzip {
    pub fn new() -> Gzip {
        Gzip {
            crc: 0,
            len: 0,
            bit: 0,
            nbits: 0,
        }
    }

    /// The gzip header.
    pub fn header() -> &'static [u8] {
        &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]
    }

    fn put(&mut self, out: &mut Vec<u8>, v: u32, n: u32) {
        self.bit |= u64::from(v) << self.nbits;
        self.nbits += n;
        while self.nbits >= 8 {
            out.push(self.bit as u8);
            self.bit >>= 8;
            self.nbits -= 8;
        }
    }

    /// A Huffman code is sent most significant bit first.
    fn put_code(&mut self, out: &mut Vec<u8>, code: u32, n: u32) {
        let mut rev = 0;
        for i in 0..n {
            rev |= ((code >> i) & 1) << (n - 1 - i);
        }
        self.put(out, rev, n);
    }

    fn literal(&mut self, out: &mut Vec<u8>, sym: u32) {
        match sym {
            0..=143 => self.put_code(out, 0x30 + sym, 8),
            144..=255 => self.put_code(out, 0x190 + sym - 144, 9),
            256..=279 => self.put_code(out, sym - 256, 7),
            _ => self.put_code(out, 0xC0 + sym - 280, 8),
        }
    }

    fn matched(&mut self, out: &mut Vec<u8>, len: usize, dist: usize) {
        let s = LEN_BASE
            .iter()
            .rposition(|b| usize::from(*b) <= len)
            .unwrap_or(0);
        self.literal(out, 257 + s as u32);
        self.put(
            out,
            (len - usize::from(LEN_BASE[s])) as u32,
            u32::from(LEN_EXTRA[s]),
        );
        let d = DIST_BASE
            .iter()
            .rposition(|b| usize::from(*b) <= dist)
            .unwrap_or(0);
        self.put_code(out, d as u32, 5);
        self.put(
            out,
            (dist - usize::from(DIST_BASE[d])) as u32,
            u32::from(DIST_EXTRA[d]),
        );
    }

    /// Compresses one piece as one block (`last`: the final block).
    pub fn block(&mut self, data: &[u8], last: bool, out: &mut Vec<u8>) {
        self.crc = crc32(self.crc, data);
        self.len = self.len.wrapping_add(data.len() as u32);
        self.put(out, u32::from(last), 1);
        self.put(out, 1, 2);
        const HASH: usize = 1 << 14;
        let mut head = vec![usize::MAX; HASH];
        let hash = |i: usize| {
            (usize::from(data[i]) << 10 ^ usize::from(data[i + 1]) << 5 ^ usize::from(data[i + 2]))
                & (HASH - 1)
        };
        let mut i = 0;
        while i < data.len() {
            if i + 3 <= data.len() {
                let h = hash(i);
                let cand = head[h];
                head[h] = i;
                if cand != usize::MAX && i - cand <= WINDOW {
                    let max = (data.len() - i).min(258);
                    let n = (0..max)
                        .take_while(|k| data[cand + k] == data[i + k])
                        .count();
                    if n >= 3 {
                        self.matched(out, n, i - cand);
                        for k in i + 1..(i + n).min(data.len().saturating_sub(2)) {
                            head[hash(k)] = k;
                        }
                        i += n;
                        continue;
                    }
                }
            }
            self.literal(out, u32::from(data[i]));
            i += 1;
        }
        self.literal(out, 256);
    }

    /// The end: the last bits and the trailer.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.nbits > 0 {
            out.push(self.bit as u8);
            self.bit = 0;
            self.nbits = 0;
        }
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
    }
}

#[cfg(test)]
mod gzip_tests {
    use super::*;

    fn round_trip(data: &[u8], piece: usize) {
        let mut g = Gzip::new();
        let mut out = Gzip::header().to_vec();
        let pieces: Vec<&[u8]> = data.chunks(piece.max(1)).collect();
        if pieces.is_empty() {
            g.block(&[], true, &mut out);
        }
        for (n, p) in pieces.iter().enumerate() {
            g.block(p, n + 1 == pieces.len(), &mut out);
        }
        g.finish(&mut out);
        let mut it = out.iter().copied();
        let mut back = Vec::new();
        gunzip(
            || it.next(),
            |p| {
                back.extend_from_slice(p);
                true
            },
        )
        .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn compresses_what_the_decoder_reads_back() {
        round_trip(b"", 10);
        round_trip(b"a", 10);
        round_trip(b"hello hello hello hello world\n", 7);
        let text: Vec<u8> = (0..200_000u32)
            .map(|i| b"abcab cabbage\n"[(i % 14) as usize])
            .collect();
        round_trip(&text, 64 * 1024);
        let noise: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        round_trip(&noise, 64 * 1024);
        let zeros = vec![0u8; 70_000];
        round_trip(&zeros, 64 * 1024);
    }
}
