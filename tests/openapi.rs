//! `openapi.yaml` describes exactly the routes of `routes::table()`: every
//! route is in the spec, and every operation in the spec is a route.
//!
//! Conventions for the comparison:
//! - a catch-all `{*name}` in the table is `{name}` in the spec (whose
//!   description says that it may contain `/`);
//! - an `ANY` route is in the spec once for each method of [`ANY_METHODS`].

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;

const SPEC: &str = include_str!("../openapi.yaml");

/// The methods an `ANY` route is documented with.
const ANY_METHODS: [&str; 7] = ["GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH"];

/// Routes the spec documents that are being added on other branches (PTY,
/// agent-sandbox). LEAD: delete each group of entries when its branch is
/// merged; the test then requires the route to be in the table.
const PENDING: &[(&str, &str)] = &[];

type Pairs = BTreeSet<(String, String)>;

fn from_table() -> Pairs {
    let mut out = Pairs::new();
    for r in execd::api::routes::table() {
        let path = r.path.replace("{*", "{");
        match &r.method {
            Some(m) => {
                out.insert((m.as_str().to_string(), path));
            }
            None => {
                for m in ANY_METHODS {
                    out.insert((m.to_string(), path.clone()));
                }
            }
        }
    }
    out
}

/// A line scanner for the `paths:` section of our own spec: path items at
/// two spaces of indentation (optionally with a `&anchor`), operations at
/// four, and `<<: *anchor` merge keys that reuse another path item's
/// operations.
fn from_spec(spec: &str) -> Pairs {
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let mut anchors: BTreeMap<String, String> = BTreeMap::new();
    let mut ops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_paths = false;
    for line in spec.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(rest) = line.strip_prefix("  /") {
            let (path, tail) = rest.split_once(':').expect("path item line ends with ':'");
            let path = format!("/{path}");
            if let Some(anchor) = tail.trim().strip_prefix('&') {
                anchors.insert(anchor.to_string(), path.clone());
            }
            assert!(
                ops.insert(path.clone(), BTreeSet::new()).is_none(),
                "{path} twice"
            );
            current = Some(path);
            continue;
        }
        let Some(key_line) = line.strip_prefix("    ") else {
            continue;
        };
        if key_line.starts_with(' ') {
            continue;
        }
        let path = current.clone().expect("an operation outside a path item");
        if let Some(anchor) = key_line.trim().strip_prefix("<<: *") {
            let from = anchors
                .get(anchor)
                .unwrap_or_else(|| panic!("unknown anchor {anchor}"));
            let methods = ops[from].clone();
            ops.get_mut(&path).unwrap().extend(methods);
            continue;
        }
        let key = key_line.split(':').next().unwrap();
        if METHODS.contains(&key) {
            ops.get_mut(&path).unwrap().insert(key.to_uppercase());
        }
    }
    let mut out = Pairs::new();
    for (path, methods) in ops {
        assert!(!methods.is_empty(), "{path} has no operations");
        for m in methods {
            out.insert((m, path.clone()));
        }
    }
    out
}

#[test]
fn spec_and_route_table_agree() {
    let table = from_table();
    let spec = from_spec(SPEC);
    let pending: Pairs = PENDING
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();

    let undocumented: Vec<_> = table.difference(&spec).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.yaml: {undocumented:?}"
    );
    let unserved: Vec<_> = spec
        .difference(&table)
        .filter(|p| !pending.contains(*p))
        .collect();
    assert!(
        unserved.is_empty(),
        "openapi.yaml documents routes the table lacks: {unserved:?}"
    );
    // A pending entry that has landed in the table must leave the list, and
    // every pending entry must still be documented.
    let landed: Vec<_> = pending.intersection(&table).collect();
    assert!(
        landed.is_empty(),
        "remove from PENDING in tests/openapi.rs, now served: {landed:?}"
    );
    let stale: Vec<_> = pending.difference(&spec).collect();
    assert!(
        stale.is_empty(),
        "PENDING entries not in the spec: {stale:?}"
    );
}

#[test]
fn scanner_reads_anchors_and_merge_keys() {
    let spec = "openapi: 3.1.0\npaths:\n  /a: &a\n    get:\n      x: 1\n    delete:\n      y: 2\n  /b/{id}:\n    <<: *a\n    parameters: []\n  /c:\n    post: {}\ncomponents:\n  /x:\n    get: {}\n";
    let got: Vec<_> = from_spec(spec).into_iter().collect();
    let want: Vec<(String, String)> = [
        ("DELETE", "/a"),
        ("DELETE", "/b/{id}"),
        ("GET", "/a"),
        ("GET", "/b/{id}"),
        ("POST", "/c"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn the_spec_is_served() {
    let d = Daemon::start();
    let r = d.get("/openapi.yaml").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/yaml"));
    assert_eq!(r.text(), SPEC);
}
