//! What a Jupyter kernel sends: ZMTP frames off the socket, then Jupyter
//! messages out of them. Any bytes give messages within the limits, a
//! dropped oversized message, or an error; a message never decodes without
//! the right signature; nothing panics.
#![no_main]
use execd::kernel::msg::{take_text, Signer, StreamScan};
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
    // The same bytes as a stream message's content, fed in pieces whose
    // size the first byte picks.
    let piece = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut scan = StreamScan::default();
    let (mut out, mut text, mut ok) = (Vec::new(), String::new(), true);
    for p in data.chunks(piece) {
        if scan.feed(p, &mut out).is_err() {
            ok = false;
            break;
        }
        text.push_str(&take_text(&mut out, false));
    }
    text.push_str(&take_text(&mut out, true));
    if ok && scan.done() {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
            if let Some(t) = v.get("text").and_then(|t| t.as_str()) {
                // Only when "text" is there once (serde keeps the last).
                if data.windows(6).filter(|w| *w == b"\"text\"").count() == 1 {
                    assert_eq!(text, t);
                }
            }
        }
    }
});
