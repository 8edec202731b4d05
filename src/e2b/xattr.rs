//! envd's file metadata: `user.e2b.<key>` extended attributes, set from an
//! upload's `X-Metadata-<key>` headers and reported in `EntryInfo.metadata`.
//! nix 0.29 has no xattr calls: these are the raw ones, on paths, never
//! following a final symlink.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The attribute namespace.
pub const PREFIX: &str = "user.e2b.";
/// The header prefix of an upload's metadata.
pub const HEADER_PREFIX: &str = "x-metadata-";
/// Keys and values of one upload's metadata, in bytes, at most.
pub const MAX_TOTAL: usize = 4096;
/// Attribute names read per file at most (the list's bytes).
const MAX_LIST: usize = 64 * 1024;
/// One value read at most.
const MAX_VALUE: usize = MAX_TOTAL;

fn cpath(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput.into())
}

/// An upload's metadata from its headers: `X-Metadata-<key>: <value>`.
pub fn from_headers(h: &http::HeaderMap) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    let mut total = 0;
    for (name, value) in h {
        let Some(key) = name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        if key.is_empty() {
            return Err("X-Metadata- needs a key".into());
        }
        let v = value
            .to_str()
            .map_err(|_| format!("X-Metadata-{key}: the value must be visible ASCII"))?;
        total += key.len() + v.len();
        if total > MAX_TOTAL {
            return Err(format!("metadata past {MAX_TOTAL} bytes"));
        }
        out.insert(key.to_string(), v.to_string());
    }
    Ok(out)
}

/// Sets `user.e2b.<key>` on `path` for every entry.
pub fn set(path: &Path, meta: &HashMap<String, String>) -> std::io::Result<()> {
    let p = cpath(path)?;
    for (k, v) in meta {
        let name = CString::new(format!("{PREFIX}{k}"))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        crate::process::sys::lsetxattr(&p, &name, v.as_bytes())?;
    }
    Ok(())
}

/// The `user.e2b.*` attributes of `path`, the prefix stripped. A file
/// system without extended attributes has none.
pub fn get(path: &Path) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let Ok(p) = cpath(path) else {
        return out;
    };
    let mut names = vec![0u8; MAX_LIST];
    let Ok(n) = crate::process::sys::llistxattr(&p, &mut names) else {
        return out;
    };
    let mut value = vec![0u8; MAX_VALUE];
    for name in names[..n].split(|b| *b == 0) {
        let Some(key) = name.strip_prefix(PREFIX.as_bytes()) else {
            continue;
        };
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        if let Ok(m) = crate::process::sys::lgetxattr(&p, &cname, &mut value) {
            out.insert(
                String::from_utf8_lossy(key).into_owned(),
                String::from_utf8_lossy(&value[..m]).into_owned(),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_headers() {
        let mut h = http::HeaderMap::new();
        h.insert("x-metadata-owner", "me".parse().unwrap());
        h.insert("content-type", "x".parse().unwrap());
        let m = from_headers(&h).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m["owner"], "me");
        h.insert("x-metadata-big", "a".repeat(MAX_TOTAL).parse().unwrap());
        assert!(from_headers(&h).is_err());
    }
}
