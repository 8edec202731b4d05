//! `X-EXECD-ACCESS-TOKEN` checking.

use http::HeaderMap;

pub const TOKEN_HEADER: &str = "x-execd-access-token";

/// True when `headers` carry `token`. Without a configured token every request passes.
/// The comparison takes the same time wherever the first difference is.
pub fn authorized(token: Option<&[u8]>, headers: &HeaderMap) -> bool {
    let Some(expected) = token else {
        return true;
    };
    let given = headers
        .get(TOKEN_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or(b"");
    constant_time_eq(expected, given)
}

/// The query parameter that may carry the token on routes that allow it.
pub const TOKEN_QUERY: &str = "access_token";

/// True when the query string carries `token` as `access_token`. Without a
/// configured token every request passes.
pub fn query_authorized(token: Option<&[u8]>, query: Option<&str>) -> bool {
    let Some(expected) = token else {
        return true;
    };
    let given = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == TOKEN_QUERY)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    constant_time_eq(expected, given.as_bytes())
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

    #[test]
    fn compares() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn header_check() {
        let mut h = HeaderMap::new();
        assert!(authorized(None, &h));
        assert!(!authorized(Some(b"t"), &h));
        h.insert(TOKEN_HEADER, "t".parse().expect("test input"));
        assert!(authorized(Some(b"t"), &h));
    }

    #[test]
    fn query_check() {
        assert!(query_authorized(None, None));
        assert!(!query_authorized(Some(b"t"), None));
        assert!(!query_authorized(Some(b"t"), Some("access_token=u")));
        assert!(query_authorized(Some(b"t"), Some("pty=1&access_token=t")));
        assert!(query_authorized(Some(b"a b"), Some("access_token=a%20b")));
    }
}
