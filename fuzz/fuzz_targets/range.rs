//! `Range` header parsing: a served part always lies inside the file; a
//! range set gives at most `MAX_RANGES` parts, sorted, disjoint and not
//! adjacent.
#![no_main]
use execd::api::transfer::{parse_range, parse_ranges, ByteRange, Ranges, MAX_RANGES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap()) % (1 << 40);
    let Ok(h) = std::str::from_utf8(&data[8..]) else { return };
    if let ByteRange::Part(a, b) = parse_range(h, size) {
        assert!(a <= b && b < size, "{h:?} on {size}: {a}-{b}");
    }
    if let Ranges::Parts(parts) = parse_ranges(h, size) {
        assert!(!parts.is_empty() && parts.len() <= MAX_RANGES, "{h:?}");
        for &(a, b) in &parts {
            assert!(a <= b && b < size, "{h:?} on {size}: {a}-{b}");
        }
        for w in parts.windows(2) {
            assert!(w[0].1 + 1 < w[1].0, "{h:?}: {parts:?}");
        }
    }
});
