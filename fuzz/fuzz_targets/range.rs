//! `Range` header parsing: a served part always lies inside the file.
#![no_main]
use execd::api::files::{parse_range, ByteRange};
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
});
