//! The `EXECD_ENVS` parser: any text gives valid names, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (vars, _warnings) = execd::process::envfile::parse(text, |k| (k == "HOME").then(|| "/root".to_string()));
    for (k, _) in vars {
        assert!(!k.is_empty() && !k.contains('=') && !k.starts_with(|c: char| c.is_ascii_digit()));
    }
});
