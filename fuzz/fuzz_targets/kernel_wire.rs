//! What a Jupyter kernel sends: ZMTP frames off the socket, then Jupyter
//! messages out of them. Any bytes give messages within the limits, a
//! dropped oversized message, or an error; a message never decodes without
//! the right signature; nothing panics.
#![no_main]
use execd::kernel::msg::Signer;
use execd::kernel::zmtp::{Incoming, Kind, Reader, MAX_MESSAGE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let signer = Signer::new("fuzz-key", "s".into());
    let kind = match data.first() {
        Some(b) if b % 3 == 0 => Kind::Req,
        Some(b) if b % 3 == 1 => Kind::Sub,
        _ => Kind::Dealer,
    };
    rt.block_on(async {
        let mut r = Reader::over(data.get(1..).unwrap_or_default(), kind);
        while let Ok(m) = r.recv().await {
            match m {
                Incoming::Message(parts) => {
                    assert!(parts.iter().map(Vec::len).sum::<usize>() <= MAX_MESSAGE);
                    // Random bytes never carry a valid HMAC-SHA256.
                    assert!(signer.decode(&parts).is_err());
                }
                Incoming::Dropped { .. } => {}
            }
        }
    });
    // The same bytes as message parts, split on newlines.
    let parts: Vec<Vec<u8>> = data.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    assert!(signer.decode(&parts).is_err());
});
