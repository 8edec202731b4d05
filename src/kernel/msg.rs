//! Jupyter messages on the wire: `<IDS|MSG>`, the HMAC-SHA256 signature (hex)
//! of the four JSON parts, then header, parent header, metadata and content.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const DELIM: &[u8] = b"<IDS|MSG>";

/// Signs outgoing messages and checks incoming ones with the connection key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
    session: String,
}

/// A message received from a kernel, signature checked.
#[derive(Debug)]
pub struct Msg {
    pub msg_type: String,
    /// `parent_header.msg_id`, empty when there is none.
    pub parent_id: String,
    pub content: Value,
}

impl Signer {
    pub fn new(key: &str, session: String) -> Signer {
        Signer {
            key: key.as_bytes().to_vec(),
            session,
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    /// The parts of a new message of `msg_type` with `content`, and its msg_id.
    pub fn encode(&self, msg_type: &str, content: &Value) -> (String, Vec<Vec<u8>>) {
        let msg_id = crate::process::new_id();
        let header = json!({
            "msg_id": msg_id,
            "session": self.session,
            "username": "execd",
            "date": crate::api::wire::rfc3339(std::time::SystemTime::now()),
            "msg_type": msg_type,
            "version": "5.3",
        });
        let parts: [Vec<u8>; 4] = [
            header.to_string().into_bytes(),
            b"{}".to_vec(),
            b"{}".to_vec(),
            content.to_string().into_bytes(),
        ];
        let mut mac = self.mac();
        for p in &parts {
            mac.update(p);
        }
        let sig = hex(&mac.finalize().into_bytes());
        let mut out = Vec::with_capacity(6);
        out.push(DELIM.to_vec());
        out.push(sig.into_bytes());
        out.extend(parts);
        (msg_id, out)
    }

    /// Parses a received message (routing identities before the delimiter
    /// are skipped) and checks its signature in constant time.
    pub fn decode(&self, parts: &[Vec<u8>]) -> Result<Msg, String> {
        let at = parts
            .iter()
            .position(|p| p == DELIM)
            .ok_or("no <IDS|MSG> delimiter")?;
        let rest = &parts[at + 1..];
        if rest.len() < 5 {
            return Err("too few parts".into());
        }
        let sig = unhex(&rest[0]).ok_or("signature is not hex")?;
        let mut mac = self.mac();
        for p in &rest[1..5] {
            mac.update(p);
        }
        mac.verify_slice(&sig).map_err(|_| "bad signature")?;
        let header: Value = serde_json::from_slice(&rest[1]).map_err(|e| e.to_string())?;
        let parent: Value = serde_json::from_slice(&rest[2]).map_err(|e| e.to_string())?;
        let content: Value = serde_json::from_slice(&rest[4]).map_err(|e| e.to_string())?;
        Ok(Msg {
            msg_type: header["msg_type"].as_str().unwrap_or_default().to_string(),
            parent_id: parent["msg_id"].as_str().unwrap_or_default().to_string(),
            content,
        })
    }
}

fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[usize::from(x >> 4)] as char);
        s.push(H[usize::from(x & 15)] as char);
    }
    s
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let d = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    s.chunks(2)
        .map(|p| Some(d(p[0])? << 4 | d(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let s = Signer::new("k3y", "sess".into());
        let (id, mut parts) = s.encode("execute_request", &json!({"code": "1+1"}));
        // As a kernel would answer: routing identity first, our header as parent.
        let parent = parts[2].clone();
        parts[3] = parent;
        let mut mac = s.mac();
        for p in &parts[2..6] {
            mac.update(p);
        }
        parts[1] = hex(&mac.finalize().into_bytes()).into_bytes();
        parts.insert(0, b"ident".to_vec());
        let m = s.decode(&parts).expect("valid");
        assert_eq!(m.msg_type, "execute_request");
        assert_eq!(m.parent_id, id);
        assert_eq!(m.content["code"], "1+1");
        parts[6] = br#"{"code":"evil"}"#.to_vec();
        assert!(s.decode(&parts).is_err());
        let other = Signer::new("other", "sess".into());
        parts[6] = br#"{"code":"1+1"}"#.to_vec();
        assert!(other.decode(&parts).is_err());
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(
            unhex(hex(&[0, 1, 254, 255]).as_bytes()),
            Some(vec![0, 1, 254, 255])
        );
        assert_eq!(unhex(b"0g"), None);
        assert_eq!(unhex(b"abc"), None);
    }
}
