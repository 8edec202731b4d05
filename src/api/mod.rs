//! One file per resource: parse and validate the request, call the domain,
//! shape the response. `front.rs` is the front door (the state, `App`, is
//! `crate::app`, shared with the `e2b` front),
//! `routes.rs` the table, `error.rs` the domain errors' statuses; the HTTP
//! plumbing (`server/`) knows none of them.

pub mod agent_sandbox;
pub mod code;
pub mod command;
pub mod directories;
mod error;
pub mod files;
mod front;
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

pub use crate::app::App;

/// One request on its way through a handler.
pub type Ctx = crate::server::Ctx<App>;
