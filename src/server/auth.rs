//! `X-EXECD-ACCESS-TOKEN` checking.
//!
//! The daemon keeps only the SHA-256 of the token: given as `sha256:<hex>`,
//! the raw token never reaches the sandbox at all. A request's token is
//! hashed and the two digests are compared in constant time.

use http::HeaderMap;
use sha2::{Digest, Sha256};

pub const TOKEN_HEADER: &str = "x-execd-access-token";

/// The expected access token, as its SHA-256 digest.
#[derive(Clone, PartialEq, Eq)]
pub struct Token([u8; 32]);

/// The prefix of a token given as its digest.
pub const SHA256_PREFIX: &str = "sha256:";

impl Token {
    /// `sha256:<64 hex digits>` is a digest; anything else is the token itself.
    pub fn parse(s: &str) -> Result<Token, String> {
        let Some(hex) = s.strip_prefix(SHA256_PREFIX) else {
            return Ok(Token(Sha256::digest(s.as_bytes()).into()));
        };
        let bad = || "access token: sha256: must be followed by 64 hex digits".to_string();
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut d = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]).ok_or_else(bad)?;
            let lo = hex_digit(pair[1]).ok_or_else(bad)?;
            d[i] = hi << 4 | lo;
        }
        Ok(Token(d))
    }

    /// Whether `given` is the token: its digest compared in constant time.
    pub fn matches(&self, given: &[u8]) -> bool {
        let g: [u8; 32] = Sha256::digest(given).into();
        constant_time_eq(&self.0, &g)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(sha256:…)")
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// True when `headers` carry `token`. Without a configured token every request passes.
pub fn authorized(token: Option<&Token>, headers: &HeaderMap) -> bool {
    let Some(expected) = token else {
        return true;
    };
    let given = headers
        .get(TOKEN_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or(b"");
    expected.matches(given)
}

/// The query parameter that may carry the token on routes that allow it.
pub const TOKEN_QUERY: &str = "access_token";

/// True when the query string carries `token` as `access_token`. Without a
/// configured token every request passes.
pub fn query_authorized(token: Option<&Token>, query: Option<&str>) -> bool {
    let Some(expected) = token else {
        return true;
    };
    let given = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == TOKEN_QUERY)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    expected.matches(given.as_bytes())
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(s: &str) -> Token {
        Token::parse(s).expect("test input")
    }

    #[test]
    fn compares() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn hashed_form() {
        // sha256("secret")
        let hex = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
        let t = tok(&format!("sha256:{hex}"));
        assert!(t.matches(b"secret"));
        assert!(!t.matches(hex.as_bytes()));
        assert!(!t.matches(b"secreT"));
        assert_eq!(t, tok("secret"));
        assert_eq!(t, tok(&format!("sha256:{}", hex.to_uppercase())));
        for bad in [
            "sha256:",
            "sha256:abc",
            &format!("sha256:{hex}0"),
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
        assert!(tok("plain").matches(b"plain"));
    }

    #[test]
    fn header_check() {
        let mut h = HeaderMap::new();
        assert!(authorized(None, &h));
        assert!(!authorized(Some(&tok("t")), &h));
        h.insert(TOKEN_HEADER, "t".parse().expect("test input"));
        assert!(authorized(Some(&tok("t")), &h));
    }

    #[test]
    fn query_check() {
        assert!(query_authorized(None, None));
        assert!(!query_authorized(Some(&tok("t")), None));
        assert!(!query_authorized(Some(&tok("t")), Some("access_token=u")));
        assert!(query_authorized(
            Some(&tok("t")),
            Some("pty=1&access_token=t")
        ));
        assert!(query_authorized(
            Some(&tok("a b")),
            Some("access_token=a%20b")
        ));
    }
}
