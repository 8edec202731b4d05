//! Event text encoding: always valid JSON, decoding to the lossy UTF-8 of the
//! input, and never containing a character an SDK line splitter breaks on.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = BytesMut::new();
    execd::api::wire::json_str(&mut out, data);
    let text = std::str::from_utf8(&out).expect("encoded text is UTF-8");
    let back: String = serde_json::from_str(text).expect("valid JSON string");
    assert_eq!(back, String::from_utf8_lossy(data));
    assert!(!text.contains(['\n', '\r', '\u{0b}', '\u{0c}', '\u{1c}', '\u{1d}', '\u{1e}', '\u{85}', '\u{2028}', '\u{2029}']));
});
