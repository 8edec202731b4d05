//! proto3's JSON mapping, by hand, for the messages execd serves.
//!
//! Readers accept what the mapping allows: the lowerCamelCase name or the
//! field's own name, `null` for absent, numbers as JSON numbers or strings,
//! enums by name or number, bytes in standard or URL-safe base64 with or
//! without padding; unknown fields are ignored. Writers use lowerCamelCase,
//! 64-bit integers as strings, enums by name, bytes in padded standard
//! base64, timestamps in RFC 3339 (UTC, `Z`).

use std::collections::HashMap;

use serde_json::{Map, Value};

/// A message that can be written as JSON.
pub trait ToJson {
    fn to_json(&self) -> Value;
}

/// A message that can be read from JSON.
pub trait FromJson: Sized {
    fn from_json(v: &Value) -> Result<Self, String>;
}

pub type Object = Map<String, Value>;

/// The JSON object of a message.
pub fn object(v: &Value) -> Result<&Object, String> {
    v.as_object()
        .ok_or_else(|| format!("expected a JSON object, got {}", kind(v)))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A field by either of its names; `null` counts as absent.
pub fn field<'a>(o: &'a Object, camel: &str, name: &str) -> Option<&'a Value> {
    o.get(camel)
        .or_else(|| o.get(name))
        .filter(|v| !v.is_null())
}

pub fn string(o: &Object, camel: &str, name: &str) -> Result<Option<String>, String> {
    match field(o, camel, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(format!("{name}: expected a string, got {}", kind(v))),
    }
}

pub fn boolean(o: &Object, camel: &str, name: &str) -> Result<Option<bool>, String> {
    match field(o, camel, name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(format!("{name}: expected a boolean, got {}", kind(v))),
    }
}

/// An integer field (a number, or a string of digits) within `min..=max`.
fn integer(
    o: &Object,
    camel: &str,
    name: &str,
    min: i128,
    max: i128,
) -> Result<Option<i128>, String> {
    let n = match field(o, camel, name) {
        None => return Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                i128::from(i)
            } else if let Some(u) = n.as_u64() {
                i128::from(u)
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 1e19 => f as i128,
                    _ => return Err(format!("{name}: expected an integer, got {n}")),
                }
            }
        }
        Some(Value::String(s)) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| format!("{name}: expected an integer, got {s:?}"))?,
        Some(v) => return Err(format!("{name}: expected an integer, got {}", kind(v))),
    };
    if n < min || n > max {
        return Err(format!("{name}: {n} is out of range"));
    }
    Ok(Some(n))
}

pub fn uint32(o: &Object, camel: &str, name: &str) -> Result<Option<u32>, String> {
    Ok(integer(o, camel, name, 0, i128::from(u32::MAX))?.map(|n| n as u32))
}

pub fn int32(o: &Object, camel: &str, name: &str) -> Result<Option<i32>, String> {
    Ok(integer(o, camel, name, i128::from(i32::MIN), i128::from(i32::MAX))?.map(|n| n as i32))
}

pub fn int64(o: &Object, camel: &str, name: &str) -> Result<Option<i64>, String> {
    Ok(integer(o, camel, name, i128::from(i64::MIN), i128::from(i64::MAX))?.map(|n| n as i64))
}

/// An enum field: its value name (`by_name`) or number.
pub fn enumeration(
    o: &Object,
    camel: &str,
    name: &str,
    by_name: fn(&str) -> Option<i32>,
) -> Result<Option<i32>, String> {
    match field(o, camel, name) {
        Some(Value::String(s)) => by_name(s)
            .map(Some)
            .ok_or_else(|| format!("{name}: unknown value {s:?}")),
        _ => int32(o, camel, name),
    }
}

pub fn bytes(o: &Object, camel: &str, name: &str) -> Result<Option<Vec<u8>>, String> {
    match field(o, camel, name) {
        None => Ok(None),
        Some(Value::String(s)) => b64_decode(s)
            .map(Some)
            .ok_or_else(|| format!("{name}: invalid base64")),
        Some(v) => Err(format!("{name}: expected base64 text, got {}", kind(v))),
    }
}

pub fn string_map(o: &Object, camel: &str, name: &str) -> Result<HashMap<String, String>, String> {
    match field(o, camel, name) {
        None => Ok(HashMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                v => Err(format!("{name}.{k}: expected a string, got {}", kind(v))),
            })
            .collect(),
        Some(v) => Err(format!("{name}: expected an object, got {}", kind(v))),
    }
}

pub fn strings(o: &Object, camel: &str, name: &str) -> Result<Vec<String>, String> {
    match field(o, camel, name) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                v => Err(format!("{name}: expected strings, got {}", kind(v))),
            })
            .collect(),
        Some(v) => Err(format!("{name}: expected an array, got {}", kind(v))),
    }
}

/// A message field, read with `T::from_json`.
pub fn message<T: FromJson>(o: &Object, camel: &str, name: &str) -> Result<Option<T>, String> {
    field(o, camel, name)
        .map(|v| T::from_json(v).map_err(|e| format!("{name}: {e}")))
        .transpose()
}

/// Padded standard base64.
pub fn b64(data: &[u8]) -> String {
    data_encoding::BASE64.encode(data)
}

/// Standard or URL-safe base64, padding optional (proto3 JSON accepts both).
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let s: String = s
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    data_encoding::BASE64_NOPAD.decode(s.as_bytes()).ok()
}

/// RFC 3339 in UTC for a Unix time.
pub fn timestamp(secs: i64, nanos: u32) -> String {
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::date::civil_from_days(secs.div_euclid(86_400));
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if nanos == 0 {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{nanos:09}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_both_alphabets() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"\xff\xfe\xfd\x00"] {
            assert_eq!(b64_decode(&b64(data)).unwrap(), data);
        }
        assert_eq!(b64(b"foob"), "Zm9vYg==");
        assert_eq!(b64_decode("Zm9vYg").unwrap(), b"foob");
        assert_eq!(b64_decode("__8").unwrap(), b"\xff\xff");
        assert!(b64_decode("a").is_none());
        assert!(b64_decode("a b").is_none());
    }

    #[test]
    fn names_numbers_and_ranges() {
        let v = serde_json::json!({"exitCode": "5", "pid": 7, "big": 5e9, "neg": -1, "s": null});
        let o = object(&v).unwrap();
        assert_eq!(int32(o, "exitCode", "exit_code").unwrap(), Some(5));
        assert_eq!(uint32(o, "pid", "pid").unwrap(), Some(7));
        assert!(uint32(o, "big", "big").is_err());
        assert!(uint32(o, "neg", "neg").is_err());
        assert_eq!(string(o, "s", "s").unwrap(), None);
        let v = serde_json::json!({"exit_code": 3});
        assert_eq!(
            int32(object(&v).unwrap(), "exitCode", "exit_code").unwrap(),
            Some(3)
        );
        assert!(object(&serde_json::json!([])).is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(timestamp(1_796_601_600, 0), "2026-12-07T00:00:00Z");
    }
}
