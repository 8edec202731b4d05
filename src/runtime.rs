//! Runtime init: the binding a control plane hands execd once it knows which
//! sandbox this is (`POST /internal/init`, upstream 1.1.0's wire).
//!
//! A binding carries the sandbox's identity, the access token's digest (the
//! raw token never reaches the sandbox), variables for every later command,
//! lifecycle hooks and telemetry attributes. It is one-shot: the first valid
//! call binds; every later one is `ALREADY_INITIALIZED`, except one with a
//! higher `generation` (a snapshot restored elsewhere, see `rebind_allowed`),
//! which re-binds. No HTTP here: `api::init` shapes the answers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::sync::watch;

use crate::server::auth::{Token, SHA256_PREFIX};

/// What the init-mode main process does when a binding arrives while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EntrypointPolicy {
    /// It keeps running (upstream's default).
    #[default]
    Keep,
    /// It is stopped, the `preStart` hooks run, and it starts again with
    /// the binding's variables.
    Restart,
}

impl EntrypointPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            EntrypointPolicy::Keep => "keep",
            EntrypointPolicy::Restart => "restart",
        }
    }
}

/// A lifecycle hook: a shell line run through the process engine.
#[derive(Clone, Debug, PartialEq)]
pub struct Hook {
    pub command: String,
    pub timeout: Option<Duration>,
}

/// A hook run every `interval` (a run still going when the next is due is
/// not doubled: that tick is skipped).
#[derive(Clone, Debug, PartialEq)]
pub struct PeriodicHook {
    pub hook: Hook,
    pub interval: Duration,
}

/// One applied binding.
#[derive(Debug)]
pub struct Binding {
    pub sandbox_id: String,
    pub generation: u64,
    pub entrypoint_policy: EntrypointPolicy,
    pub token: Token,
    /// Replace semantics: this set, whole, is what later commands get on top
    /// of the daemon's environment and `EXECD_ENVS` (a re-binding replaces
    /// the previous set; request `envs` still win).
    pub envs: Vec<(String, String)>,
    pub pre_start: Vec<Hook>,
    pub periodic: Vec<PeriodicHook>,
    pub attributes: BTreeMap<String, String>,
    pub bound_at: SystemTime,
}

/// Why a binding was not applied.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InitError {
    #[error("{0}")]
    Invalid(String),
    #[error("execd is already initialized (sandbox {sandbox_id}, generation {generation}); a re-binding needs a higher generation")]
    AlreadyInitialized { sandbox_id: String, generation: u64 },
    #[error("re-binding needs the current access token in X-EXECD-ACCESS-TOKEN")]
    RebindUnauthorized,
}

/// Limits on a binding's lists, so a binding is bounded like every request.
pub const MAX_ENVS: usize = 1024;
pub const MAX_HOOKS: usize = 16;
pub const MAX_ATTRIBUTES: usize = 64;
const MAX_ID: usize = 256;
/// Periodic hooks run at most this often.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    #[serde(default)]
    pub sandbox_id: String,
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub entrypoint_policy: Option<String>,
    #[serde(default)]
    pub access_token_hash: String,
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    #[serde(default)]
    pub lifecycle: LifecycleRequest,
    #[serde(default)]
    pub telemetry: TelemetryRequest,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleRequest {
    #[serde(default)]
    pub pre_start: Vec<HookRequest>,
    #[serde(default)]
    pub periodic: Vec<HookRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRequest {
    pub command: String,
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
    /// Periodic hooks only.
    #[serde(default)]
    pub interval_seconds: Option<f64>,
}

#[derive(Deserialize, Default)]
pub struct TelemetryRequest {
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

fn seconds(what: &str, s: Option<f64>) -> Result<Option<Duration>, InitError> {
    match s {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= 1e7 => Ok(Some(Duration::from_secs_f64(s))),
        Some(_) => Err(InitError::Invalid(format!(
            "{what}: expected a positive number of seconds"
        ))),
    }
}

fn hook(what: &str, h: &HookRequest) -> Result<Hook, InitError> {
    if h.command.trim().is_empty() || h.command.contains('\0') {
        return Err(InitError::Invalid(format!(
            "{what}.command: a non-empty shell line without NUL is required"
        )));
    }
    Ok(Hook {
        command: h.command.clone(),
        timeout: seconds(&format!("{what}.timeoutSeconds"), h.timeout_seconds)?,
    })
}

impl InitRequest {
    /// Checks every field; an error here does not consume the one-shot slot.
    pub fn validate(self) -> Result<Binding, InitError> {
        let bad = |m: &str| Err(InitError::Invalid(m.to_string()));
        if self.sandbox_id.is_empty()
            || self.sandbox_id.len() > MAX_ID
            || self.sandbox_id.chars().any(char::is_control)
        {
            return bad("sandboxId: 1-256 characters without control characters are required");
        }
        let entrypoint_policy = match self.entrypoint_policy.as_deref() {
            None | Some("") | Some("keep") => EntrypointPolicy::Keep,
            Some("restart") => EntrypointPolicy::Restart,
            Some(_) => return bad("entrypointPolicy: expected \"keep\" or \"restart\""),
        };
        if !self.access_token_hash.starts_with(SHA256_PREFIX) {
            return bad("accessTokenHash: expected \"sha256:<64 hex digits>\"");
        }
        let token = Token::parse(&self.access_token_hash).map_err(InitError::Invalid)?;
        if self.envs.len() > MAX_ENVS {
            return Err(InitError::Invalid(format!(
                "envs: at most {MAX_ENVS} variables"
            )));
        }
        for (k, v) in &self.envs {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                // The name only: a value may be a secret.
                return Err(InitError::Invalid(format!(
                    "envs: invalid variable {k:?} (names: non-empty, no '=' or NUL; values: no NUL)"
                )));
            }
        }
        let l = &self.lifecycle;
        if l.pre_start.len() > MAX_HOOKS || l.periodic.len() > MAX_HOOKS {
            return Err(InitError::Invalid(format!(
                "lifecycle: at most {MAX_HOOKS} hooks of each kind"
            )));
        }
        let pre_start = l
            .pre_start
            .iter()
            .enumerate()
            .map(|(i, h)| hook(&format!("lifecycle.preStart[{i}]"), h))
            .collect::<Result<Vec<_>, _>>()?;
        let mut periodic = Vec::new();
        for (i, h) in l.periodic.iter().enumerate() {
            let what = format!("lifecycle.periodic[{i}]");
            let interval = seconds(&format!("{what}.intervalSeconds"), h.interval_seconds)?
                .filter(|d| *d >= MIN_PERIOD)
                .ok_or_else(|| {
                    InitError::Invalid(format!(
                        "{what}.intervalSeconds: at least 1 second is required"
                    ))
                })?;
            periodic.push(PeriodicHook {
                hook: hook(&what, h)?,
                interval,
            });
        }
        let attributes = self.telemetry.attributes;
        if attributes.len() > MAX_ATTRIBUTES
            || attributes
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > MAX_ID || v.len() > 1024)
        {
            return Err(InitError::Invalid(format!(
                "telemetry.attributes: at most {MAX_ATTRIBUTES}, non-empty keys of at most 256 bytes, values of at most 1024"
            )));
        }
        Ok(Binding {
            sandbox_id: self.sandbox_id,
            generation: self.generation,
            entrypoint_policy,
            token,
            envs: self.envs.into_iter().collect(),
            pre_start,
            periodic,
            attributes,
            bound_at: SystemTime::now(),
        })
    }
}

/// The daemon's binding, if any, and whether one is required before serving.
pub struct Runtime {
    /// `--runtime-init`: every route but `/ping`, `/ready` and
    /// `/internal/init` answers 503 until bound.
    pub required: bool,
    binding: watch::Sender<Option<Arc<Binding>>>,
    /// Serialises applies, so two racing first calls bind once.
    apply: Mutex<()>,
}

impl Runtime {
    pub fn new(required: bool) -> Runtime {
        Runtime {
            required,
            binding: watch::Sender::new(None),
            apply: Mutex::new(()),
        }
    }

    pub fn current(&self) -> Option<Arc<Binding>> {
        self.binding.borrow().clone()
    }

    /// Whether requests are held at the gate (runtime-init mode, not bound yet).
    pub fn gated(&self) -> bool {
        self.required && self.binding.borrow().is_none()
    }

    /// The token requests must carry: the binding's once bound, else the
    /// start-up one.
    pub fn token(&self, startup: Option<&Token>) -> Option<Token> {
        match &*self.binding.borrow() {
            Some(b) => Some(b.token.clone()),
            None => startup.cloned(),
        }
    }

    /// A receiver that sees every binding applied (the daemon's main loop).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Binding>>> {
        self.binding.subscribe()
    }

    /// Applies `b` unless a binding is in place. A binding of a higher
    /// generation re-binds when `current_token_ok` (the caller showed the
    /// current binding's token); `on_apply` runs under the apply lock, before
    /// the binding is visible, so the variables are in place by then.
    pub fn apply(
        &self,
        b: Binding,
        current_token_ok: impl FnOnce(&Token) -> bool,
        on_apply: impl FnOnce(&Binding),
    ) -> Result<(Arc<Binding>, bool), InitError> {
        let _g = self.apply.lock().unwrap_or_else(|p| p.into_inner());
        let rebind = match self.current() {
            None => false,
            Some(cur) if b.generation > cur.generation => {
                if !current_token_ok(&cur.token) {
                    return Err(InitError::RebindUnauthorized);
                }
                true
            }
            Some(cur) => {
                return Err(InitError::AlreadyInitialized {
                    sandbox_id: cur.sandbox_id.clone(),
                    generation: cur.generation,
                })
            }
        };
        on_apply(&b);
        let b = Arc::new(b);
        self.binding.send_replace(Some(b.clone()));
        Ok((b, rebind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> Result<Binding, InitError> {
        serde_json::from_value::<InitRequest>(v).unwrap().validate()
    }

    const HASH: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn validation() {
        let ok = req(serde_json::json!({"sandboxId": "s", "accessTokenHash": HASH})).unwrap();
        assert_eq!(ok.entrypoint_policy, EntrypointPolicy::Keep);
        assert!(ok.token.matches(b"test"));
        for bad in [
            serde_json::json!({"accessTokenHash": HASH}),
            serde_json::json!({"sandboxId": "s"}),
            serde_json::json!({"sandboxId": "s", "accessTokenHash": "test"}),
            serde_json::json!({"sandboxId": "s", "accessTokenHash": "sha256:zz"}),
            serde_json::json!({"sandboxId": "s", "accessTokenHash": HASH, "entrypointPolicy": "x"}),
            serde_json::json!({"sandboxId": "s", "accessTokenHash": HASH, "envs": {"A=B": "1"}}),
            serde_json::json!({"sandboxId": "s", "accessTokenHash": HASH,
                "lifecycle": {"periodic": [{"command": "true"}]}}),
            serde_json::json!({"sandboxId": "s", "accessTokenHash": HASH,
                "lifecycle": {"periodic": [{"command": "true", "intervalSeconds": 0.1}]}}),
            serde_json::json!({"sandboxId": "s", "accessTokenHash": HASH,
                "lifecycle": {"preStart": [{"command": " "}]}}),
        ] {
            assert!(req(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_shot_then_higher_generation_rebinds_with_the_current_token() {
        let rt = Runtime::new(true);
        assert!(rt.gated());
        let b = |g: u64| {
            req(serde_json::json!({"sandboxId": "s", "generation": g, "accessTokenHash": HASH}))
                .unwrap()
        };
        assert!(!rt.apply(b(1), |_| false, |_| {}).unwrap().1);
        assert!(!rt.gated());
        assert!(matches!(
            rt.apply(b(1), |_| true, |_| {}),
            Err(InitError::AlreadyInitialized { .. })
        ));
        assert_eq!(
            rt.apply(b(2), |_| false, |_| {}).unwrap_err(),
            InitError::RebindUnauthorized
        );
        assert!(rt.apply(b(2), |t| t.matches(b"test"), |_| {}).unwrap().1);
        assert_eq!(rt.current().unwrap().generation, 2);
    }
}
