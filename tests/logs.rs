//! Black-box test of `--log-format json`.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn json_log_lines_parse_and_carry_no_secrets() {
    let dir = std::env::temp_dir().join(format!("execd-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("execd.log");
    let log_arg = log.to_str().unwrap();
    let mut d = Daemon::start_with(
        &[
            "--log-format",
            "json",
            "--log-file",
            log_arg,
            "--log-level",
            "7",
        ],
        &[],
    );
    // A binding with a secret variable, then commands that use it.
    let token = "raw-token-7f1c9e";
    let hash = {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(token.as_bytes());
        format!(
            "sha256:{}",
            h.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    };
    let r = d
        .post_json(
            "/internal/init",
            &json!({"sandboxId": "sbx-log", "accessTokenHash": hash,
                    "envs": {"SECRET_VAR": "env-value-3b8d"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.token = Some(token.into());
    let evs = d
        .run(
            json!({"command": "echo \"$SECRET_VAR\" > /dev/null; echo file-content-91ae",
                    "envs": {"REQ_SECRET": "req-value-55c2"}}),
        )
        .await;
    assert!(evs.iter().any(|e| e["type"] == "execution_complete"));
    d.signal(libc::SIGTERM);
    d.wait_exit(std::time::Duration::from_secs(20));

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(lines.len() >= 3, "{text}");
    for l in &lines {
        assert!(l["time"].is_string() && l["level"].is_string(), "{l}");
    }
    assert!(lines
        .iter()
        .any(|l| l["message"] == "runtime binding applied" && l["sandbox_id"] == "sbx-log"));
    for secret in [
        token,
        "env-value-3b8d",
        "req-value-55c2",
        "file-content-91ae",
    ] {
        assert!(!text.contains(secret), "{secret} in the log");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
