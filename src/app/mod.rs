//! The application: the only place that knows the config file and the command line.
//!
//! `main.rs` hands the arguments to [`cli`], loads the file through [`config`] and runs one
//! of [`commands`]. Each command builds the settings of the layers it drives (the
//! directory's [`crate::ldap::DirectoryConfig`], the SCIM client's, the engine's, the
//! link's) from the [`config::Config`]; no module below `app` reads the config file or
//! imports this module (docs/architecture.md, enforced by `tests/layout.rs`).

pub mod cli;
pub mod commands;
pub mod config;
