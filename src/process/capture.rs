//! Gathering a command's whole output, for callers that answer once the
//! command has ended (`/execute`, gRPC `Execute`). Memory stays bounded: each
//! stream keeps at most `cap` bytes and counts the rest.

use super::follow::{Follower, Step};
use super::output::Stream;
use super::registry::{Command, Finished};

/// What a finished command wrote, each stream cut at the cap.
#[derive(Debug, Default)]
pub struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes beyond the cap (or no longer retained), per stream.
    pub stdout_omitted: u64,
    pub stderr_omitted: u64,
}

impl Captured {
    fn push(&mut self, stream: Stream, data: &[u8], cap: usize) {
        let (buf, omitted) = match stream {
            Stream::Stdout => (&mut self.stdout, &mut self.stdout_omitted),
            Stream::Stderr => (&mut self.stderr, &mut self.stderr_omitted),
        };
        let room = cap.saturating_sub(buf.len());
        let take = room.min(data.len());
        buf.extend_from_slice(&data[..take]);
        *omitted += (data.len() - take) as u64;
    }
}

/// Events read per call.
const BATCH: usize = 256 * 1024;

/// Follows `cmd`'s output log until the command has ended and every event
/// is read; returns the output and how it ended. Reading as the command
/// runs (rather than after) means nothing is lost to the log's window.
pub async fn capture(cmd: &Command, cap: usize) -> (Captured, Option<Finished>) {
    let mut out = Captured::default();
    let mut log = Follower::new(cmd, 1);
    let mut offset = 0u64;
    loop {
        match log.next(BATCH).await {
            Step::Events(evs) => {
                for ev in &evs {
                    out.push(ev.stream, &ev.data, cap);
                    offset = ev.offset + ev.data.len() as u64;
                }
            }
            Step::Gap { gap, .. } => {
                // Not retained any more: which stream it was is unknown; count it as stdout.
                out.stdout_omitted += gap.oldest_offset.saturating_sub(offset);
                offset = gap.oldest_offset;
            }
            Step::End { .. } | Step::Idle => break,
        }
    }
    (out, cmd.finished())
}

/// `text` plus an explicit marker when `omitted` bytes were cut.
pub fn with_marker(mut text: Vec<u8>, omitted: u64) -> Vec<u8> {
    if omitted > 0 {
        if !text.ends_with(b"\n") && !text.is_empty() {
            text.push(b'\n');
        }
        text.extend_from_slice(
            format!("…[output truncated: {omitted} bytes omitted]\n").as_bytes(),
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_and_marker() {
        let mut c = Captured::default();
        c.push(Stream::Stdout, b"hello", 3);
        c.push(Stream::Stdout, b"world", 3);
        c.push(Stream::Stderr, b"e", 3);
        assert_eq!(c.stdout, b"hel");
        assert_eq!(c.stdout_omitted, 7);
        assert_eq!(c.stderr, b"e");
        assert_eq!(
            with_marker(c.stdout, 7),
            "hel\n…[output truncated: 7 bytes omitted]\n".as_bytes()
        );
        assert_eq!(with_marker(b"x\n".to_vec(), 0), b"x\n");
    }
}
