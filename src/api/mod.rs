//! One file per resource: parse and validate the request, call the domain,
//! shape the response.

pub mod agent_sandbox;
pub mod code;
pub mod command;
pub mod directories;
pub mod files;
pub mod form;
pub mod health;
pub mod init;
pub mod isolated;
pub mod metrics;
pub mod operation;
pub mod proxy;
pub mod pty;
pub mod sandboxd;
pub mod session;
pub mod watch;
pub mod wire;
