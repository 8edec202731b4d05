//! An upload's `metadata` part: any bytes give a target path or a clear error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // execd's own view (a scoped root): a target is an absolute path.
    let root = execd::fs::root::Root::default();
    match execd::api::files::upload_metadata(&root, data) {
        Ok((place, _attrs)) => assert!(place.shown.is_absolute()),
        Err(e) => assert!(e.status.is_client_error(), "{} {}", e.status, e.message),
    }
});
