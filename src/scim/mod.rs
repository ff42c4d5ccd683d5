//! SCIM side: resources, profile mapping, provisioning client.

pub mod resource;

pub use resource::ResourceKind;
