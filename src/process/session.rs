//! Bash sessions: runs that share exported variables and the working directory.
//!
//! There is no long-lived shell reading commands from stdin (that design hangs
//! on heredocs and on programs that read stdin). Each run is its own
//! `bash -c` process, started from the session's state: its exported
//! environment and its directory. The run's script installs an EXIT trap that
//! writes the state back, NUL-separated, into a file that execd created for
//! it beforehand (0600, exclusively, in its private data directory) and reads
//! back through its own descriptor; a run that ends
//! without the trap (`exec`, a timeout kill) simply leaves the state as it was.
//! Output is the process's real stdout and stderr, kept apart.
//!
//! Runs within one session are serialised: a run while another is in
//! progress is refused (the caller maps that to 409).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Command, CommandSpec, Engine, Program};

/// Session errors, mapped to HTTP in `api/error.rs`.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session {0} not found")]
    NotFound(String),
    #[error("session {0} is busy with another run; runs in a session are serialised")]
    Busy(String),
    #[error("sessions need bash, which is not installed")]
    NoBash,
    #[error("cannot create the session directory {path}: {source}")]
    Cwd {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot prepare the session state file: {0}")]
    State(std::io::Error),
    #[error("too many sessions (at most {0}, --max-sessions); delete some first")]
    TooMany(usize),
    #[error("too many commands running (at most {0}, --max-running); retry once some end")]
    TooManyRunning(usize),
}

/// What a session carries from one run to the next.
#[derive(Debug, Clone)]
struct SessionState {
    env: Vec<(OsString, OsString)>,
    cwd: PathBuf,
}

/// One session.
pub struct Session {
    pub id: String,
    state: Arc<tokio::sync::Mutex<SessionState>>,
    running: Mutex<Option<Arc<Command>>>,
    /// When the session was created, or a run of it started or ended.
    used: Mutex<Instant>,
    /// The trees of this session's runs whose members may still live
    /// (background jobs outlive their run): deleting the session ends them.
    trees: Mutex<Vec<Arc<super::tree::Tree>>>,
}

impl Session {
    /// Kills what the session's runs left running.
    fn end_trees(&self) {
        let trees = std::mem::take(&mut *self.trees.lock().unwrap_or_else(|p| p.into_inner()));
        for tree in trees {
            tree.kill();
        }
    }

    fn touch(&self) {
        *self.used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Idle for at least `idle`, with no run in progress or saving its state.
    fn expired(&self, idle: Duration, now: Instant) -> bool {
        let used = *self.used.lock().unwrap_or_else(|p| p.into_inner());
        now.saturating_duration_since(used) >= idle
            && self
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none()
            && self.state.try_lock().is_ok()
    }
}

/// All sessions.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    runs: std::sync::atomic::AtomicU64,
}

impl Sessions {
    fn get(&self, id: &str) -> Result<Arc<Session>, SessionError> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| SessionError::NotFound(id.to_string()))
    }
}

/// Variables never carried over: bash maintains them itself.
/// Nor is a run's tree marker (each run is a tree of its own).
const NOT_PERSISTED: &[&str] = &["_", "SHLVL", "BASH_EXECUTION_STRING", super::tree::MARKER];

/// The script around a user's command. `$1` is the state file.
fn script(command: &str) -> String {
    format!(
        "__execd_state=$1; shift\n\
         trap '__execd_rc=$?; {{ for __execd_n in $(compgen -e); do printf \"%s=%s\\0\" \"$__execd_n\" \"${{!__execd_n}}\"; done; \
         printf \"=%s\\0\" \"$PWD\"; }} > \"$__execd_state\" 2>/dev/null; exit $__execd_rc' EXIT\n\
         {command}\n"
    )
}

/// Parses a state dump: `NAME=value\0` entries, and `=cwd\0` for the directory.
fn parse_state(dump: &[u8]) -> Option<SessionState> {
    use std::os::unix::ffi::OsStrExt;
    let mut env = Vec::new();
    let mut cwd = None;
    for entry in dump.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        if let Some(dir) = entry.strip_prefix(b"=") {
            cwd = Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir)));
            continue;
        }
        let eq = entry.iter().position(|b| *b == b'=')?;
        let (k, v) = (&entry[..eq], &entry[eq + 1..]);
        if k.starts_with(b"__execd_") || NOT_PERSISTED.iter().any(|n| n.as_bytes() == k) {
            continue;
        }
        env.push((
            std::ffi::OsStr::from_bytes(k).to_os_string(),
            std::ffi::OsStr::from_bytes(v).to_os_string(),
        ));
    }
    Some(SessionState { env, cwd: cwd? })
}

impl Engine {
    /// Creates a session in `cwd` (created if missing; default: execd's directory).
    /// Every session: its id and the command id of the run in progress.
    pub fn list_sessions(&self) -> Vec<(String, Option<String>)> {
        let map = self.sessions.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map
            .values()
            .map(|s| {
                let run = s
                    .running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|c| c.id.clone());
                (s.id.clone(), run)
            })
            .collect();
        v.sort();
        v
    }

    pub fn create_session(&self, cwd: Option<PathBuf>) -> Result<String, SessionError> {
        if self.bash().is_none() {
            return Err(SessionError::NoBash);
        }
        let cwd = match cwd {
            Some(p) => {
                std::fs::create_dir_all(&p).map_err(|source| SessionError::Cwd {
                    path: p.display().to_string(),
                    source,
                })?;
                p
            }
            None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
        };
        let env = self.default_env();
        let id = uuid_like(&super::new_id());
        let session = Arc::new(Session {
            id: id.clone(),
            state: Arc::new(tokio::sync::Mutex::new(SessionState { env, cwd })),
            running: Mutex::new(None),
            used: Mutex::new(Instant::now()),
            trees: Mutex::new(Vec::new()),
        });
        let mut map = self.sessions.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.cfg.max_sessions {
            return Err(SessionError::TooMany(self.cfg.max_sessions));
        }
        map.insert(id.clone(), session);
        Ok(id)
    }

    /// Deletes sessions idle for `--session-idle-timeout`; returns how many.
    pub fn expire_sessions(&self) -> usize {
        let (idle, now) = (self.cfg.session_idle, Instant::now());
        let expired: Vec<Arc<Session>> = {
            let mut map = self.sessions.map.lock().unwrap_or_else(|p| p.into_inner());
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, s)| s.expired(idle, now))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        // An expired session ends as a deleted one does: what its runs left
        // running (background jobs) goes with it.
        for session in &expired {
            session.end_trees();
        }
        expired.len()
    }

    /// Starts a run in a session. The state is updated when it ends.
    pub async fn run_in_session(
        &self,
        id: &str,
        command: String,
        cwd: Option<PathBuf>,
        timeout: Option<Duration>,
    ) -> Result<Arc<Command>, SessionError> {
        let session = self.sessions.get(id)?;
        let guard = match session.state.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) => {
                // A run still executing makes this one a conflict; a run that has
                // ended is only saving its state, which takes a moment: wait for it.
                let busy = session
                    .running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .is_some_and(|c| c.is_running());
                if busy {
                    return Err(SessionError::Busy(id.to_string()));
                }
                session.state.clone().lock_owned().await
            }
        };
        let bash = self.bash().ok_or(SessionError::NoBash)?;
        let n = self
            .sessions
            .runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The state file is created here, by execd, exclusively and 0600 in
        // its private directory: the run's shell only writes into it, and
        // its contents are read back through this descriptor.
        let state_name = format!("session-{id}-{n}.state");
        let state_file = self
            .data
            .create(&state_name, false)
            .map_err(SessionError::State)?;
        let state_path = self.data.path().join(&state_name);
        let spec = CommandSpec {
            program: Program::Argv(vec![
                bash.display().to_string(),
                "--noprofile".into(),
                "--norc".into(),
                "-c".into(),
                script(&command),
                "execd-session".into(),
                state_path.display().to_string(),
            ]),
            cwd: Some(cwd.unwrap_or_else(|| guard.cwd.clone())),
            envs: Vec::new(),
            timeout,
            uid: None,
            gid: None,
            background: false,
            stdin: false,
        };
        let cmd = self
            .launch(spec, command, Some(guard.env.clone()))
            .map_err(|e| match e {
                super::ProcessError::TooManyRunning(max) => SessionError::TooManyRunning(max),
                other => SessionError::State(std::io::Error::other(other.to_string())),
            })?;
        session.touch();
        if let Some(tree) = &cmd.tree {
            let mut trees = session.trees.lock().unwrap_or_else(|p| p.into_inner());
            trees.retain(|t| t.alive());
            trees.push(tree.clone());
        }
        *session.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(cmd.clone());
        let (session2, cmd2) = (session.clone(), cmd.clone());
        let self_data = self.data.clone();
        self.tasks.spawn(async move {
            let mut guard = guard;
            let mut head = cmd2.log.watch();
            let _ = head.wait_for(|h| h.finished).await;
            let data = self_data.clone();
            let dump = tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut d = Vec::new();
                // The shell truncated and rewrote the file: read it from the start.
                let r = (&state_file).read_to_end(&mut d);
                data.remove(&state_name);
                r.ok().map(|_| d)
            })
            .await
            .ok()
            .flatten();
            if let Some(state) = dump.as_deref().and_then(parse_state) {
                *guard = state;
            }
            session2.touch();
            *session2.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
        });
        Ok(cmd)
    }

    /// Deletes a session, killing every process its runs started (the
    /// running run's tree and what earlier runs left in the background).
    pub fn delete_session(&self, id: &str) -> Result<(), SessionError> {
        let session = self
            .sessions
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        let running = session
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(cmd) = running {
            cmd.mark_interrupted();
            cmd.kill_tree();
        }
        session.end_trees();
        Ok(())
    }

    fn bash(&self) -> Option<PathBuf> {
        if self.cfg.shell.file_name().is_some_and(|n| n == "bash") {
            Some(self.cfg.shell.clone())
        } else {
            super::spawn::find_in_path("bash")
        }
    }
}

/// Formats 32 hex digits as a UUID-shaped id, as upstream's session ids are.
fn uuid_like(hex: &str) -> String {
    if hex.len() != 32 {
        return hex.to_string();
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dump_parsing() {
        let dump = b"A=1\0B=x=y\0_=/bin/ls\0SHLVL=2\0__execd_state=/f\0MULTI=a\nb\0=/tmp/dir\0";
        let s = parse_state(dump).unwrap();
        let names: Vec<_> = s
            .env
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["A", "B", "MULTI"]);
        assert_eq!(s.env[1].1, "x=y");
        assert_eq!(s.env[2].1, "a\nb");
        assert_eq!(s.cwd, PathBuf::from("/tmp/dir"));
        assert!(
            parse_state(b"A=1\0").is_none(),
            "a dump without the directory is incomplete"
        );
    }

    #[test]
    fn ids_look_like_uuids() {
        let id = uuid_like("0123456789abcdef0123456789abcdef");
        assert_eq!(id, "01234567-89ab-cdef-0123-456789abcdef");
    }
}
