//! The messages of `proto/envd/process.proto` and `filesystem.proto`, as
//! prost structs written by hand to match those files (field numbers and
//! types are the contract), with their proto3 JSON: requests are read
//! ([`FromJson`]), responses written ([`ToJson`]).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::connect::json::{self as j, FromJson, ToJson};

// ---- process ----

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct PtySize {
    #[prost(uint32, tag = "1")]
    pub cols: u32,
    #[prost(uint32, tag = "2")]
    pub rows: u32,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Pty {
    #[prost(message, optional, tag = "1")]
    pub size: Option<PtySize>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessConfig {
    #[prost(string, tag = "1")]
    pub cmd: String,
    #[prost(string, repeated, tag = "2")]
    pub args: Vec<String>,
    #[prost(map = "string, string", tag = "3")]
    pub envs: HashMap<String, String>,
    #[prost(string, optional, tag = "4")]
    pub cwd: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessInfo {
    #[prost(message, optional, tag = "1")]
    pub config: Option<ProcessConfig>,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
    #[prost(string, optional, tag = "3")]
    pub tag: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListResponse {
    #[prost(message, repeated, tag = "1")]
    pub processes: Vec<ProcessInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StartRequest {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessConfig>,
    #[prost(message, optional, tag = "2")]
    pub pty: Option<Pty>,
    #[prost(string, optional, tag = "3")]
    pub tag: Option<String>,
    #[prost(bool, optional, tag = "4")]
    pub stdin: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateRequest {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessSelector>,
    #[prost(message, optional, tag = "2")]
    pub pty: Option<Pty>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

pub type ListRequest = Empty;
pub type UpdateResponse = Empty;
pub type SendInputResponse = Empty;
pub type StreamInputResponse = Empty;
pub type SendSignalResponse = Empty;
pub type CloseStdinResponse = Empty;
pub type RemoveResponse = Empty;
pub type RemoveWatcherResponse = Empty;

#[derive(Clone, PartialEq, prost::Message)]
pub struct StartEvent {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Output {
    #[prost(bytes, tag = "1")]
    Stdout(Vec<u8>),
    #[prost(bytes, tag = "2")]
    Stderr(Vec<u8>),
    #[prost(bytes, tag = "3")]
    Pty(Vec<u8>),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DataEvent {
    #[prost(oneof = "Output", tags = "1, 2, 3")]
    pub output: Option<Output>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EndEvent {
    #[prost(sint32, tag = "1")]
    pub exit_code: i32,
    #[prost(bool, tag = "2")]
    pub exited: bool,
    #[prost(string, tag = "3")]
    pub status: String,
    #[prost(string, optional, tag = "4")]
    pub error: Option<String>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Event {
    #[prost(message, tag = "1")]
    Start(StartEvent),
    #[prost(message, tag = "2")]
    Data(DataEvent),
    #[prost(message, tag = "3")]
    End(EndEvent),
    #[prost(message, tag = "4")]
    Keepalive(Empty),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessEvent {
    #[prost(oneof = "Event", tags = "1, 2, 3, 4")]
    pub event: Option<Event>,
}

/// `StartResponse` and `ConnectResponse` (the same shape).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventResponse {
    #[prost(message, optional, tag = "1")]
    pub event: Option<ProcessEvent>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Input {
    #[prost(bytes, tag = "1")]
    Stdin(Vec<u8>),
    #[prost(bytes, tag = "2")]
    Pty(Vec<u8>),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessInput {
    #[prost(oneof = "Input", tags = "1, 2")]
    pub input: Option<Input>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SendInputRequest {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessSelector>,
    #[prost(message, optional, tag = "2")]
    pub input: Option<ProcessInput>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamStart {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessSelector>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamData {
    #[prost(message, optional, tag = "2")]
    pub input: Option<ProcessInput>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum StreamEvent {
    #[prost(message, tag = "1")]
    Start(StreamStart),
    #[prost(message, tag = "2")]
    Data(StreamData),
    #[prost(message, tag = "3")]
    Keepalive(Empty),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamInputRequest {
    #[prost(oneof = "StreamEvent", tags = "1, 2, 3")]
    pub event: Option<StreamEvent>,
}

pub const SIGNAL_SIGKILL: i32 = 9;
pub const SIGNAL_SIGTERM: i32 = 15;

fn signal_by_name(s: &str) -> Option<i32> {
    match s {
        "SIGNAL_UNSPECIFIED" => Some(0),
        "SIGNAL_SIGKILL" => Some(SIGNAL_SIGKILL),
        "SIGNAL_SIGTERM" => Some(SIGNAL_SIGTERM),
        _ => None,
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SendSignalRequest {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessSelector>,
    #[prost(int32, tag = "2")]
    pub signal: i32,
}

/// `CloseStdinRequest` and `ConnectRequest` (the same shape).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SelectRequest {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessSelector>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Selector {
    #[prost(uint32, tag = "1")]
    Pid(u32),
    #[prost(string, tag = "2")]
    Tag(String),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessSelector {
    #[prost(oneof = "Selector", tags = "1, 2")]
    pub selector: Option<Selector>,
}

// ---- filesystem ----

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

pub const FILE_TYPE_FILE: i32 = 1;
pub const FILE_TYPE_DIRECTORY: i32 = 2;
pub const FILE_TYPE_SYMLINK: i32 = 3;

fn file_type_name(t: i32) -> &'static str {
    match t {
        FILE_TYPE_FILE => "FILE_TYPE_FILE",
        FILE_TYPE_DIRECTORY => "FILE_TYPE_DIRECTORY",
        FILE_TYPE_SYMLINK => "FILE_TYPE_SYMLINK",
        _ => "FILE_TYPE_UNSPECIFIED",
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int32, tag = "2")]
    pub r#type: i32,
    #[prost(string, tag = "3")]
    pub path: String,
    #[prost(int64, tag = "4")]
    pub size: i64,
    #[prost(uint32, tag = "5")]
    pub mode: u32,
    #[prost(string, tag = "6")]
    pub permissions: String,
    #[prost(string, tag = "7")]
    pub owner: String,
    #[prost(string, tag = "8")]
    pub group: String,
    #[prost(message, optional, tag = "9")]
    pub modified_time: Option<Timestamp>,
    #[prost(string, optional, tag = "10")]
    pub symlink_target: Option<String>,
    #[prost(map = "string, string", tag = "11")]
    pub metadata: HashMap<String, String>,
    #[prost(bool, tag = "12")]
    pub is_symlink: bool,
}

/// `StatRequest`, `MakeDirRequest` and `RemoveRequest` (the same shape).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PathRequest {
    #[prost(string, tag = "1")]
    pub path: String,
}

/// `StatResponse`, `MakeDirResponse` and `MoveResponse` (the same shape).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryResponse {
    #[prost(message, optional, tag = "1")]
    pub entry: Option<EntryInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MoveRequest {
    #[prost(string, tag = "1")]
    pub source: String,
    #[prost(string, tag = "2")]
    pub destination: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListDirRequest {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(uint32, tag = "2")]
    pub depth: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListDirResponse {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<EntryInfo>,
}

/// `WatchDirRequest` and `CreateWatcherRequest` (the same shape).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchRequest {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(bool, tag = "2")]
    pub recursive: bool,
    #[prost(bool, tag = "3")]
    pub include_entry: bool,
    #[prost(bool, tag = "4")]
    pub allow_network_mounts: bool,
}

/// `GetWatcherEventsRequest` and `RemoveWatcherRequest` (the same shape).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatcherRequest {
    #[prost(string, tag = "1")]
    pub watcher_id: String,
}

pub const EVENT_TYPE_CREATE: i32 = 1;
pub const EVENT_TYPE_WRITE: i32 = 2;
pub const EVENT_TYPE_REMOVE: i32 = 3;
pub const EVENT_TYPE_RENAME: i32 = 4;
pub const EVENT_TYPE_CHMOD: i32 = 5;

fn event_type_name(t: i32) -> &'static str {
    match t {
        EVENT_TYPE_CREATE => "EVENT_TYPE_CREATE",
        EVENT_TYPE_WRITE => "EVENT_TYPE_WRITE",
        EVENT_TYPE_REMOVE => "EVENT_TYPE_REMOVE",
        EVENT_TYPE_RENAME => "EVENT_TYPE_RENAME",
        EVENT_TYPE_CHMOD => "EVENT_TYPE_CHMOD",
        _ => "EVENT_TYPE_UNSPECIFIED",
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FilesystemEvent {
    /// Relative to the watched directory.
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int32, tag = "2")]
    pub r#type: i32,
    #[prost(message, optional, tag = "3")]
    pub entry: Option<EntryInfo>,
}

// One event at a time, moved straight into its envelope: not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum WatchEvent {
    #[prost(message, tag = "1")]
    Start(Empty),
    #[prost(message, tag = "2")]
    Filesystem(FilesystemEvent),
    #[prost(message, tag = "3")]
    Keepalive(Empty),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchDirResponse {
    #[prost(oneof = "WatchEvent", tags = "1, 2, 3")]
    pub event: Option<WatchEvent>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateWatcherResponse {
    #[prost(string, tag = "1")]
    pub watcher_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetWatcherEventsResponse {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<FilesystemEvent>,
}

// ---- JSON: requests ----

fn obj(v: &Value) -> Result<&j::Object, String> {
    j::object(v)
}

impl FromJson for Empty {
    fn from_json(v: &Value) -> Result<Self, String> {
        obj(v).map(|_| Empty {})
    }
}

impl FromJson for PtySize {
    fn from_json(v: &Value) -> Result<Self, String> {
        let o = obj(v)?;
        Ok(PtySize {
            cols: j::uint32(o, "cols", "cols")?.unwrap_or_default(),
            rows: j::uint32(o, "rows", "rows")?.unwrap_or_default(),
        })
    }
}

impl FromJson for Pty {
    fn from_json(v: &Value) -> Result<Self, String> {
        Ok(Pty {
            size: j::message(obj(v)?, "size", "size")?,
        })
    }
}

impl FromJson for ProcessConfig {
    fn from_json(v: &Value) -> Result<Self, String> {
        let o = obj(v)?;
        Ok(ProcessConfig {
            cmd: j::string(o, "cmd", "cmd")?.unwrap_or_default(),
            args: j::strings(o, "args", "args")?,
            envs: j::string_map(o, "envs", "envs")?,
            cwd: j::string(o, "cwd", "cwd")?,
        })
    }
}

impl FromJson for StartRequest {
    fn from_json(v: &Value) -> Result<Self, String> {
        let o = obj(v)?;
        Ok(StartRequest {
            process: j::message(o, "process", "process")?,
            pty: j::message(o, "pty", "pty")?,
            tag: j::string(o, "tag", "tag")?,
            stdin: j::boolean(o, "stdin", "stdin")?,
        })
    }
}

impl FromJson for ProcessSelector {
    fn from_json(v: &Value) -> Result<Self, String> {
        let o = obj(v)?;
        let selector = match (j::uint32(o, "pid", "pid")?, j::string(o, "tag", "tag")?) {
            (Some(_), Some(_)) => return Err("selector: give pid or tag, not both".into()),
            (Some(p), None) => Some(Selector::Pid(p)),
            (None, Some(t)) => Some(Selector::Tag(t)),
            (None, None) => None,
        };
        Ok(ProcessSelector { selector })
    }
}

impl FromJson for SelectRequest {
    fn from_json(v: &Value) -> Result<Self, String> {
        Ok(SelectRequest {
            process: j::message(obj(v)?, "process", "process")?,
        })
    }
}

impl FromJson for UpdateRequest {
    fn from_json(v: &Value) -> Result<Self, String> {
        let o = obj(v)?;
        Ok(UpdateRequest {
            process: j::message(o, "process", "process")?,
            pty: j::message(o, "pty", "pty")?,
        })
    }
}

impl FromJson for ProcessInput {
    fn from_json(v: &Value) -> Result<Self, String> {
        let o = obj(v)?;
        let input = match (j::bytes(o, "stdin", "stdin")?, j::bytes(o, "pty", "pty")?) {
            (Some(_), Some(_)) => return Err("input: give stdin or pty, not both".into()),
            (Some(b), None) => Some(Input::Stdin(b)),
            (None, Some(b)) => Some(Input::Pty(b)),
            (None, None) => None,
        };
        Ok(ProcessInput { input })
    }
}

impl FromJson for SendInputRequest {
    fn from_json(v: &Value) -> Result<Self, String> {
        let o = obj(v)?;
        Ok(SendInputRequest {
            process: j::message(o, "process", "process")?,
            input: j::message(o, "input", "input")?,
        })
    }
}

impl FromJson for StreamInputRequest {
    fn from_json(v: &Value) -> Result<Self, String> {
        let o = obj(v)?;
        let event = if let Some(s) = j::field(o, "start", "start") {
            Some(StreamEvent::Start(StreamStart {
                process: j::message(obj(s)?, "process", "process")?,
            }))
        } else if let Some(d) = j::field(o, "data", "data") {
            Some(StreamEvent::Data(StreamData {
                input: j::message(obj(d)?, "input", "input")?,
            }))
        } else if j::field(o, "keepalive", "keepalive").is_some() {
            Some(StreamEvent::Keepalive(Empty {}))
        } else {
            None
        };
        Ok(StreamInputRequest { event })
    }
}

impl FromJson for SendSignalRequest {
    fn from_json(v: &Value) -> Result<Self, String> {
        let o = obj(v)?;
        Ok(SendSignalRequest {
            process: j::message(o, "process", "process")?,
            signal: j::enumeration(o, "signal", "signal", signal_by_name)?.unwrap_or_default(),
        })
    }
}

impl FromJson for PathRequest {
    fn from_json(v: &Value) -> Result<Self, String> {
        Ok(PathRequest {
            path: j::string(obj(v)?, "path", "path")?.unwrap_or_default(),
        })
    }
}

impl FromJson for MoveRequest {
    fn from_json(v: &Value) -> Result<Self, String> {
        let o = obj(v)?;
        Ok(MoveRequest {
            source: j::string(o, "source", "source")?.unwrap_or_default(),
            destination: j::string(o, "destination", "destination")?.unwrap_or_default(),
        })
    }
}

impl FromJson for ListDirRequest {
    fn from_json(v: &Value) -> Result<Self, String> {
        let o = obj(v)?;
        Ok(ListDirRequest {
            path: j::string(o, "path", "path")?.unwrap_or_default(),
            depth: j::uint32(o, "depth", "depth")?.unwrap_or_default(),
        })
    }
}

impl FromJson for WatchRequest {
    fn from_json(v: &Value) -> Result<Self, String> {
        let o = obj(v)?;
        Ok(WatchRequest {
            path: j::string(o, "path", "path")?.unwrap_or_default(),
            recursive: j::boolean(o, "recursive", "recursive")?.unwrap_or_default(),
            include_entry: j::boolean(o, "includeEntry", "include_entry")?.unwrap_or_default(),
            allow_network_mounts: j::boolean(o, "allowNetworkMounts", "allow_network_mounts")?
                .unwrap_or_default(),
        })
    }
}

impl FromJson for WatcherRequest {
    fn from_json(v: &Value) -> Result<Self, String> {
        Ok(WatcherRequest {
            watcher_id: j::string(obj(v)?, "watcherId", "watcher_id")?.unwrap_or_default(),
        })
    }
}

// ---- JSON: responses ----

impl ToJson for Empty {
    fn to_json(&self) -> Value {
        json!({})
    }
}

impl ToJson for ProcessConfig {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("cmd".into(), json!(self.cmd));
        m.insert("args".into(), json!(self.args));
        m.insert("envs".into(), json!(self.envs));
        if let Some(c) = &self.cwd {
            m.insert("cwd".into(), json!(c));
        }
        Value::Object(m)
    }
}

impl ToJson for ListResponse {
    fn to_json(&self) -> Value {
        let ps: Vec<Value> = self
            .processes
            .iter()
            .map(|p| {
                let mut m = Map::new();
                if let Some(c) = &p.config {
                    m.insert("config".into(), c.to_json());
                }
                m.insert("pid".into(), json!(p.pid));
                if let Some(t) = &p.tag {
                    m.insert("tag".into(), json!(t));
                }
                Value::Object(m)
            })
            .collect();
        json!({ "processes": ps })
    }
}

impl ToJson for EventResponse {
    fn to_json(&self) -> Value {
        let ev = match self.event.as_ref().and_then(|e| e.event.as_ref()) {
            None => json!({}),
            Some(Event::Start(s)) => json!({"start": {"pid": s.pid}}),
            Some(Event::Data(d)) => match &d.output {
                None => json!({"data": {}}),
                Some(Output::Stdout(b)) => json!({"data": {"stdout": j::b64(b)}}),
                Some(Output::Stderr(b)) => json!({"data": {"stderr": j::b64(b)}}),
                Some(Output::Pty(b)) => json!({"data": {"pty": j::b64(b)}}),
            },
            Some(Event::End(e)) => {
                let mut m = Map::new();
                m.insert("exitCode".into(), json!(e.exit_code));
                m.insert("exited".into(), json!(e.exited));
                m.insert("status".into(), json!(e.status));
                if let Some(err) = &e.error {
                    m.insert("error".into(), json!(err));
                }
                json!({ "end": Value::Object(m) })
            }
            Some(Event::Keepalive(_)) => json!({"keepalive": {}}),
        };
        json!({ "event": ev })
    }
}

impl ToJson for EntryInfo {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("type".into(), json!(file_type_name(self.r#type)));
        m.insert("path".into(), json!(self.path));
        m.insert("size".into(), json!(self.size.to_string()));
        m.insert("mode".into(), json!(self.mode));
        m.insert("permissions".into(), json!(self.permissions));
        m.insert("owner".into(), json!(self.owner));
        m.insert("group".into(), json!(self.group));
        if let Some(t) = &self.modified_time {
            m.insert(
                "modifiedTime".into(),
                json!(j::timestamp(t.seconds, t.nanos.max(0) as u32)),
            );
        }
        if let Some(s) = &self.symlink_target {
            m.insert("symlinkTarget".into(), json!(s));
        }
        if !self.metadata.is_empty() {
            m.insert("metadata".into(), json!(self.metadata));
        }
        if self.is_symlink {
            m.insert("isSymlink".into(), json!(true));
        }
        Value::Object(m)
    }
}

impl ToJson for EntryResponse {
    fn to_json(&self) -> Value {
        match &self.entry {
            Some(e) => json!({ "entry": e.to_json() }),
            None => json!({}),
        }
    }
}

impl ToJson for ListDirResponse {
    fn to_json(&self) -> Value {
        let es: Vec<Value> = self.entries.iter().map(ToJson::to_json).collect();
        json!({ "entries": es })
    }
}

impl ToJson for FilesystemEvent {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("type".into(), json!(event_type_name(self.r#type)));
        if let Some(e) = &self.entry {
            m.insert("entry".into(), e.to_json());
        }
        Value::Object(m)
    }
}

impl ToJson for WatchDirResponse {
    fn to_json(&self) -> Value {
        match &self.event {
            None => json!({}),
            Some(WatchEvent::Start(_)) => json!({"start": {}}),
            Some(WatchEvent::Filesystem(e)) => json!({"filesystem": e.to_json()}),
            Some(WatchEvent::Keepalive(_)) => json!({"keepalive": {}}),
        }
    }
}

impl ToJson for CreateWatcherResponse {
    fn to_json(&self) -> Value {
        json!({"watcherId": self.watcher_id})
    }
}

impl ToJson for GetWatcherEventsResponse {
    fn to_json(&self) -> Value {
        let es: Vec<Value> = self.events.iter().map(ToJson::to_json).collect();
        json!({ "events": es })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn start_request_as_the_sdk_writes_it() {
        let v = json!({
            "process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo hi"], "envs": {"A": "1"}},
            "stdin": false
        });
        let r = StartRequest::from_json(&v).unwrap();
        let p = r.process.unwrap();
        assert_eq!(p.args, ["-l", "-c", "echo hi"]);
        assert_eq!(p.envs["A"], "1");
        assert_eq!(r.stdin, Some(false));
        assert!(r.pty.is_none() && r.tag.is_none());
    }

    #[test]
    fn selectors_signals_and_input() {
        let r = SendSignalRequest::from_json(
            &json!({"process": {"pid": 12}, "signal": "SIGNAL_SIGKILL"}),
        )
        .unwrap();
        assert_eq!(r.signal, SIGNAL_SIGKILL);
        assert_eq!(r.process.unwrap().selector, Some(Selector::Pid(12)));
        let r = SendInputRequest::from_json(
            &json!({"process": {"tag": "t"}, "input": {"stdin": "aGk="}}),
        )
        .unwrap();
        assert_eq!(r.input.unwrap().input, Some(Input::Stdin(b"hi".to_vec())));
        assert!(SendSignalRequest::from_json(&json!({"signal": "SIGHUP"})).is_err());
    }

    #[test]
    fn events_in_json_and_proto() {
        let r = EventResponse {
            event: Some(ProcessEvent {
                event: Some(Event::End(EndEvent {
                    exit_code: -1,
                    exited: false,
                    status: "signal: killed".into(),
                    error: None,
                })),
            }),
        };
        assert_eq!(
            r.to_json(),
            json!({"event": {"end": {"exitCode": -1, "exited": false, "status": "signal: killed"}}})
        );
        assert_eq!(EventResponse::decode(&r.encode_to_vec()[..]).unwrap(), r);
        let d = EventResponse {
            event: Some(ProcessEvent {
                event: Some(Event::Data(DataEvent {
                    output: Some(Output::Stdout(b"hi\n".to_vec())),
                })),
            }),
        };
        assert_eq!(d.to_json(), json!({"event": {"data": {"stdout": "aGkK"}}}));
    }

    #[test]
    fn entry_info_json() {
        let e = EntryInfo {
            name: "a".into(),
            r#type: FILE_TYPE_DIRECTORY,
            size: 5,
            modified_time: Some(Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        };
        let v = e.to_json();
        assert_eq!(v["type"], "FILE_TYPE_DIRECTORY");
        assert_eq!(v["size"], "5");
        assert_eq!(v["modifiedTime"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn watch_events_in_json_and_proto() {
        let r = WatchDirResponse {
            event: Some(WatchEvent::Filesystem(FilesystemEvent {
                name: "a/b".into(),
                r#type: EVENT_TYPE_RENAME,
                entry: None,
            })),
        };
        assert_eq!(
            r.to_json(),
            json!({"filesystem": {"name": "a/b", "type": "EVENT_TYPE_RENAME"}})
        );
        // filesystem = 2, its name = 1 and type = 2 (as envd's descriptor).
        assert_eq!(r.encode_to_vec(), b"\x12\x07\x0a\x03a/b\x10\x04".to_vec());
        let s = WatchDirResponse {
            event: Some(WatchEvent::Start(Empty {})),
        };
        assert_eq!(s.encode_to_vec(), b"\x0a\x00".to_vec());
        assert_eq!(s.to_json(), json!({"start": {}}));
        let k = WatchDirResponse {
            event: Some(WatchEvent::Keepalive(Empty {})),
        };
        assert_eq!(k.encode_to_vec(), b"\x1a\x00".to_vec());
    }
}
