//! An upload's `metadata` part: any bytes give a target path or a clear error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match execd::api::files::upload_metadata(data) {
        Ok((path, _attrs)) => assert!(path.is_absolute()),
        Err(e) => assert!(e.status.is_client_error(), "{} {}", e.status, e.message),
    }
});
