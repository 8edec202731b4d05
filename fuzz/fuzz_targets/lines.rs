//! The output line splitter: any bytes, cut into reads anywhere. Concatenating
//! the events gives back the input; no event exceeds the limit; every event
//! but the last ends with a line terminator unless it was a forced split.
#![no_main]
use bytes::BytesMut;
use execd::process::lines::LineSplitter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else { return };
    let max = 4 + (cfg as usize % 61);
    let cut = 1 + (cfg as usize % 7);
    let mut s = LineSplitter::new(max);
    let mut out: Vec<Vec<u8>> = Vec::new();
    for chunk in rest.chunks(cut) {
        s.push(BytesMut::from(chunk), |b| out.push(b.to_vec()));
    }
    s.finish(|b| out.push(b.to_vec()));
    assert_eq!(out.concat(), rest);
    for piece in &out {
        assert!(!piece.is_empty());
        assert!(piece.len() <= max.max(2), "piece of {} > {max}", piece.len());
    }
    // A valid UTF-8 input is never cut inside a character.
    if std::str::from_utf8(rest).is_ok() {
        for piece in &out {
            assert!(std::str::from_utf8(piece).is_ok());
        }
    }
});
