//! `replace`: every occurrence of a string in a file, rewritten atomically
//! through [`AtomicFile`] in constant memory.

use std::io::Read;
use std::path::Path;

use memchr::memmem::Finder;

use super::attrs::Attrs;
use super::upload::AtomicFile;
use super::{FsError, FsResult};

/// Replaces occurrences of a needle in a stream cut into arbitrary chunks.
pub struct Replacer<'a> {
    finder: Finder<'a>,
    new: &'a [u8],
    carry: Vec<u8>,
    count: u64,
}

impl<'a> Replacer<'a> {
    /// `old` must not be empty.
    pub fn new(old: &'a [u8], new: &'a [u8]) -> Replacer<'a> {
        Replacer {
            finder: Finder::new(old),
            new,
            carry: Vec::new(),
            count: 0,
        }
    }

    /// Feeds a chunk; `emit` receives the output as it is decided.
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let n = self.finder.needle().len();
        let mut pos = 0;
        while let Some(i) = self.finder.find(&buf[pos..]) {
            emit(&buf[pos..pos + i])?;
            emit(self.new)?;
            self.count += 1;
            pos += i + n;
        }
        // The last n-1 bytes may begin a match that the next chunk completes.
        let keep = (n - 1).min(buf.len() - pos);
        emit(&buf[pos..buf.len() - keep])?;
        self.carry = buf[buf.len() - keep..].to_vec();
        Ok(())
    }

    /// Ends the stream; returns the number of replacements.
    pub fn finish<E>(self, emit: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<u64, E> {
        emit(&self.carry)?;
        Ok(self.count)
    }
}

/// Replaces every `old` with `new` in the file at `path`. The file keeps its
/// mode and owner; with no occurrence it is not touched at all.
pub fn replace_in_file(path: &Path, old: &str, new: &str) -> FsResult<u64> {
    if old.is_empty() {
        return Err(FsError::BadRequest("old content must not be empty".into()));
    }
    let meta = std::fs::metadata(path).map_err(|e| super::info::lstat_error(path, e))?;
    if meta.is_dir() {
        return Err(FsError::InvalidFile(format!(
            "path is a directory: {}",
            path.display()
        )));
    }
    let mut out = AtomicFile::create(path, false)?;
    let target = out.target().to_path_buf();
    let mut src = std::fs::File::open(&target).map_err(|e| FsError::io("open", &target, e))?;
    let mut r = Replacer::new(old.as_bytes(), new.as_bytes());
    let mut buf = vec![0u8; 64 * 1024];
    let mut emit = |b: &[u8]| out.write_all(b);
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FsError::io("read", &target, e)),
        };
        r.feed(&buf[..n], &mut emit)?;
    }
    let count = r.finish(&mut emit)?;
    if count > 0 {
        out.commit(Attrs::default())?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(data: &[u8], old: &str, new: &str, chunk: usize) -> (String, u64) {
        let mut r = Replacer::new(old.as_bytes(), new.as_bytes());
        let mut out = Vec::new();
        let mut emit = |b: &[u8]| -> Result<(), ()> {
            out.extend_from_slice(b);
            Ok(())
        };
        for c in data.chunks(chunk) {
            r.feed(c, &mut emit).unwrap();
        }
        let n = r.finish(&mut emit).unwrap();
        (String::from_utf8(out).unwrap(), n)
    }

    #[test]
    fn replaces_across_chunk_boundaries() {
        for chunk in [1, 2, 3, 4, 7, 1000] {
            assert_eq!(run(b"abcabcab", "abc", "X", chunk), ("XXab".into(), 2));
            assert_eq!(run(b"aaaa", "aa", "b", chunk), ("bb".into(), 2));
            assert_eq!(run(b"hello", "zz", "y", chunk), ("hello".into(), 0));
            assert_eq!(run(b"x.y.z", ".", "::", chunk), ("x::y::z".into(), 2));
            assert_eq!(run(b"", "a", "b", chunk), ("".into(), 0));
        }
    }
}
