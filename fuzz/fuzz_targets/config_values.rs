//! Flag values (durations, sizes) and whole command lines: errors, not panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = execd::config::duration(s);
    let _ = execd::config::size(s);
    let args = s.split('\u{0}').map(std::ffi::OsString::from);
    let _ = execd::config::parse(args, |_| None);
});
