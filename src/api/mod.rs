//! One file per resource: parse and validate the request, call the domain,
//! shape the response. `app.rs` is the state and the front door,
//! `routes.rs` the table, `error.rs` the domain errors' statuses; the HTTP
//! plumbing (`server/`) knows none of them.

pub mod agent_sandbox;
mod app;
pub mod code;
pub mod command;
pub mod directories;
mod error;
pub mod files;
pub mod health;
pub mod init;
pub mod isolated;
pub mod metrics;
pub mod operation;
pub mod proxy;
pub mod pty;
pub mod resume;
pub mod routes;
pub mod sandboxd;
pub mod session;
pub mod transfer;
pub mod watch;
pub mod wire;

pub use app::App;

/// One request on its way through a handler.
pub type Ctx = crate::server::Ctx<App>;
