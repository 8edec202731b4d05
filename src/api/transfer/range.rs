//! `Range` headers (RFC 9110 §14.1.2), resolved against a file's size.

/// A `Range` header, resolved against a file size.
#[derive(Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `first..=last`.
    Part(u64, u64),
    /// Well-formed, but starts beyond the end.
    Unsatisfiable,
    /// Not a byte range this server understands.
    Invalid,
}

/// Parses a `Range` header's first range (the sandboxd routes serve only
/// that one, as sandboxd does; `/files/download` uses [`parse_ranges`]).
pub fn parse_range(h: &str, size: u64) -> ByteRange {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return ByteRange::Invalid;
    };
    parse_spec(spec.split(',').next().unwrap_or(""), size)
}

/// One `first-last`, `first-` or `-suffix` of a byte range set.
fn parse_spec(spec: &str, size: u64) -> ByteRange {
    let first = spec.trim();
    let Some((a, b)) = first.split_once('-') else {
        return ByteRange::Invalid;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if a.trim().is_empty() {
        // Suffix: the last n bytes.
        return match num(b) {
            None => ByteRange::Invalid,
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if size == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Part(size.saturating_sub(n), size - 1),
        };
    }
    let Some(start) = num(a) else {
        return ByteRange::Invalid;
    };
    let end = if b.trim().is_empty() {
        u64::MAX
    } else {
        match num(b) {
            Some(e) if e >= start => e,
            _ => return ByteRange::Invalid,
        }
    };
    if start >= size {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Part(start, end.min(size - 1))
}

/// Ranges served in one `multipart/byteranges` response at most; a request
/// with more gets the whole file (200), as RFC 9110 lets a server ignore
/// `Range`.
pub const MAX_RANGES: usize = 16;

/// A `Range` header with any number of ranges, resolved against a size.
#[derive(Debug, PartialEq, Eq)]
pub enum Ranges {
    /// The satisfiable ranges (`first..=last`), sorted, with overlapping
    /// and adjacent ones merged (RFC 9110 §14.2 allows it); never empty.
    Parts(Vec<(u64, u64)>),
    /// Well-formed, but no range starts within the file.
    Unsatisfiable,
    /// Not a byte range set this server understands.
    Invalid,
    /// More than [`MAX_RANGES`] ranges.
    TooMany,
}

/// Parses a `Range` header (RFC 9110 §14.1.2): unsatisfiable ranges of a
/// set are left out; the set is unsatisfiable only if all of them are.
pub fn parse_ranges(h: &str, size: u64) -> Ranges {
    let Some(set) = h.trim().strip_prefix("bytes=") else {
        return Ranges::Invalid;
    };
    let specs: Vec<&str> = set.split(',').filter(|s| !s.trim().is_empty()).collect();
    if specs.is_empty() {
        return Ranges::Invalid;
    }
    if specs.len() > MAX_RANGES {
        return Ranges::TooMany;
    }
    let mut parts = Vec::with_capacity(specs.len());
    for spec in specs {
        match parse_spec(spec, size) {
            ByteRange::Part(a, b) => parts.push((a, b)),
            ByteRange::Unsatisfiable => {}
            ByteRange::Invalid => return Ranges::Invalid,
        }
    }
    if parts.is_empty() {
        return Ranges::Unsatisfiable;
    }
    parts.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(parts.len());
    for (a, b) in parts {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    Ranges::Parts(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use ByteRange::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=90-200", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-200", 100), Part(0, 99));
        assert_eq!(parse_range("bytes=5-5, 10-20", 100), Part(5, 5));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=9-1", 100), Invalid);
        assert_eq!(parse_range("bytes=a-b", 100), Invalid);
        assert_eq!(parse_range("bytes=+1-2", 100), Invalid);
        assert_eq!(parse_range("items=0-1", 100), Invalid);
        assert_eq!(parse_range("bytes=1", 100), Invalid);
    }

    #[test]
    fn range_sets() {
        use Ranges::*;
        assert_eq!(
            parse_ranges("bytes=0-0,5-6", 10),
            Parts(vec![(0, 0), (5, 6)])
        );
        assert_eq!(
            parse_ranges("bytes=5-6,0-0", 10),
            Parts(vec![(0, 0), (5, 6)])
        );
        assert_eq!(parse_ranges("bytes=0-4,2-7,8-8", 10), Parts(vec![(0, 8)]));
        assert_eq!(
            parse_ranges("bytes=-2, 0-1", 10),
            Parts(vec![(0, 1), (8, 9)])
        );
        assert_eq!(parse_ranges("bytes=0-1,,20-", 10), Parts(vec![(0, 1)]));
        assert_eq!(parse_ranges("bytes=20-,30-40", 10), Unsatisfiable);
        assert_eq!(parse_ranges("bytes=0-1,x", 10), Invalid);
        assert_eq!(parse_ranges("bytes=,", 10), Invalid);
        assert_eq!(parse_ranges("lines=0-1", 10), Invalid);
        let many = vec!["0-0"; MAX_RANGES + 1].join(",");
        assert_eq!(parse_ranges(&format!("bytes={many}"), 10), TooMany);
        let most = vec!["0-0"; MAX_RANGES].join(",");
        assert_eq!(
            parse_ranges(&format!("bytes={most}"), 10),
            Parts(vec![(0, 0)])
        );
        assert_eq!(
            parse_ranges("bytes=0-18446744073709551615", u64::MAX),
            Parts(vec![(0, u64::MAX - 1)])
        );
    }
}
