//! execd: the in-sandbox execution daemon.
//!
//! - `config`: flags and environment variables.
//! - `server`: HTTP plumbing (accept loop, route matching, auth, the error envelope, streaming
//!   bodies); serves any `server::Service` and imports no resource.
//! - `app`: `App`, the daemon's state every front serves from (no routes).
//! - `api`: the main port: its front door, THE route table, one module per resource,
//!   and `api::transfer`, what file routes share (ranges, download responses, file bodies,
//!   form bounds).
//! - `e2b`: E2B envd's port, a front of its own over `app` (and `api::transfer`).
//! - `process`: the process engine (spawn, the one reaper, output logs, records). No HTTP.
//! - `fs`: file-system operations. No HTTP.
//! - `kernel`: code contexts, Jupyter kernels driven over ZeroMQ. No HTTP.
//! - `isolate`: isolated sessions (namespaces, overlays) and their helper modes. No HTTP.
//!
//! Arrows point one way: `main -> daemon -> {api, e2b} -> {app, server, process, fs, kernel,
//! isolate}`, `e2b -> api::transfer`, never `api -> e2b`;
//! `server` imports no resource.
//! A command's output flows pipe -> `process::run` (line splitting) ->
//! `process::output::OutputLog` (memory window + capped spill) -> any number of
//! readers (`api::command::event_stream`, the logs route), each at its own pace.

pub mod api;
pub mod app;
pub mod config;
pub mod connect;
pub mod counters;
pub mod daemon;
pub mod date;
pub mod e2b;
pub mod fs;
pub mod grpc;
pub mod isolate;
pub mod kernel;
pub mod lifecycle;
pub mod logfmt;
pub mod metrics;
pub mod operations;
pub mod process;
pub mod runtime;
pub mod server;
