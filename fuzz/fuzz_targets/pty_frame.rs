//! PTY WebSocket client messages: any bytes, as a binary or a text frame,
//! decode to a request or a clear `INVALID_FRAME` reason, never a panic.
#![no_main]
use execd::api::pty::{decode_binary, decode_text, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_binary(data) {
        Request::Stdin(d) => assert_eq!(&*d, &data[1..]),
        Request::Nothing => assert!(data.first() != Some(&0)),
        other => panic!("binary frame decoded to {other:?}"),
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode_text(text) {
        Request::Resize(Ok(size)) => assert!(size.cols > 0 && size.rows > 0),
        Request::Invalid(why) => assert!(!why.is_empty()),
        Request::Nothing => panic!("a text frame is never silently dropped"),
        _ => {}
    }
});
