//! SCIM side: resources, profile mapping, provisioning client.

pub mod bulk;
pub mod client;
pub mod filter;
pub mod mapping;
pub mod member_probe;
pub mod oauth;
pub mod outage;
pub mod profile;
pub mod profile_policy;
pub mod readback;
pub mod resource;
pub mod schema;
pub mod source_hash;
pub mod token_file;

pub use resource::ResourceKind;
