//! The sync engine: full pass, provisioning, anchor index, progress.
//!
//! What it must never do: take a failed or partial directory read for a smaller directory,
//! touch a SCIM resource it did not create or match by externalId (or, when allowed, by
//! userName), or send a write for an object whose representation has not changed.

pub mod adaptive;
pub mod admission;
pub mod anchors;
pub mod audit;
pub mod bulk;
pub mod bulk_members;
pub mod bulk_refs;
pub mod bulk_window;
pub mod change;
pub mod closure;
pub mod deletes;
pub mod diff;
pub mod diskmap;
pub mod flatten;
pub mod follow;
pub mod kept;
pub mod listing;
pub mod member_read;
pub mod members;
pub mod pass;
/// The polling feeds, at the path `commands` knows them by (they live with `run`'s other
/// feed code in [`follow`]).
pub use follow::poll;
pub mod progress;
pub mod provision;
pub mod scope_groups;
pub mod spool;
