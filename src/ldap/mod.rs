//! LDAP side: connection, paged and ranged search, rootDSE, dialect detection, entry model.
//!
//! ldap3 runs on tokio; tokio lives only inside this module (owned by the ldap helper).

pub mod entry;

pub use entry::Entry;
