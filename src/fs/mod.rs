//! File-system operations. No HTTP types in here.

pub mod path;
