//! One file per resource: parse and validate the request, call the domain,
//! shape the response.

pub mod command;
pub mod health;
pub mod pty;
pub mod wire;
