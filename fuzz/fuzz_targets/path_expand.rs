//! Path expansion: either a clear error, or an absolute, clean path.
#![no_main]
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let lookup = |k: &str| match k {
        "HOME" => Some("/home/u".to_string()),
        "A" => Some("a/../b".to_string()),
        _ => None,
    };
    if let Ok(p) = execd::fs::path::expand(s, lookup, Path::new("/work")) {
        assert!(p.is_absolute());
        assert!(p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))), "{p:?}");
    }
});
