//! Which kind of directory a server is, read from its rootDSE (pure; no I/O).
//!
//! The kind picks the change feed and the anchor attribute (see docs/architecture.md §2):
//!
//! * **Active Directory** (and Samba AD, and AD LDS): `supportedCapabilities` holds one of the
//!   AD capability OIDs ([`AD_CAPABILITY_OIDS`]). Feed: DirSync / uSNChanged; anchor
//!   `objectGUID`.
//! * **OpenLDAP**: `objectClass: OpenLDAProotDSE`. Feed: RFC 4533 syncrepl; anchor `entryUUID`.
//! * **389 Directory Server** (and Red Hat / Fedora DS): `vendorName` "389 Project" (or a
//!   `vendorVersion` starting with "389-Directory"). Anchor `nsUniqueId` (entryUUID only
//!   once its plugin is enabled; syncrepl names entries by nsUniqueId). Its RFC 4533 feed
//!   exists only with the Content Synchronization plugin enabled, and survives a restart
//!   only with the Retro Changelog keeping `targetUniqueId`: nothing about the feed is
//!   assumed from the vendor; [`supports_control`] and the `check` lines say what is there.
//! * **Generic**: everything else. A caller that wants syncrepl on a generic server asks
//!   [`supports_control`] for [`SYNC_REQUEST_OID`] instead of trusting the kind.

use std::fmt;

use super::Entry;

/// AD `supportedCapabilities` OIDs: AD DS (`.800`), AD LDS (`.1851`), and the per-version
/// capabilities that any AD-compatible DC also announces (2003 `.1670`, 2008 `.1935`,
/// 2008 R2 `.2080`, 2012 `.2237`).
pub const AD_CAPABILITY_OIDS: &[&str] = &[
    "1.2.840.113556.1.4.800",
    "1.2.840.113556.1.4.1851",
    "1.2.840.113556.1.4.1670",
    "1.2.840.113556.1.4.1935",
    "1.2.840.113556.1.4.2080",
    "1.2.840.113556.1.4.2237",
];

/// Simple Paged Results control (RFC 2696).
pub const PAGED_RESULTS_OID: &str = "1.2.840.113556.1.4.319";
/// AD DirSync control.
pub const DIRSYNC_OID: &str = "1.2.840.113556.1.4.841";
/// AD change notification control.
pub const NOTIFICATION_OID: &str = "1.2.840.113556.1.4.528";
/// AD show-deleted control.
pub const SHOW_DELETED_OID: &str = "1.2.840.113556.1.4.417";
/// RFC 4533 Sync Request control (syncrepl).
pub const SYNC_REQUEST_OID: &str = "1.3.6.1.4.1.4203.1.9.1.1";

/// The family of directory server, as far as the agent cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DirectoryKind {
    /// Microsoft Active Directory, AD LDS, or Samba AD.
    ActiveDirectory,
    /// OpenLDAP slapd.
    OpenLdap,
    /// 389 Directory Server.
    Ds389,
    /// Any other LDAPv3 server.
    Generic,
}

impl fmt::Display for DirectoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DirectoryKind::ActiveDirectory => "Active Directory",
            DirectoryKind::OpenLdap => "OpenLDAP",
            DirectoryKind::Ds389 => "389 Directory Server",
            DirectoryKind::Generic => "generic LDAP",
        })
    }
}

/// The kind of server that returned this rootDSE (read with attributes `*` and `+`).
pub fn detect_kind(root_dse: &Entry) -> DirectoryKind {
    let ad = root_dse
        .strs("supportedCapabilities")
        .any(|c| AD_CAPABILITY_OIDS.contains(&c.trim()));
    if ad {
        DirectoryKind::ActiveDirectory
    } else if root_dse.has_object_class("OpenLDAProotDSE") {
        DirectoryKind::OpenLdap
    } else if root_dse
        .strs("vendorName")
        .any(|v| v.trim().eq_ignore_ascii_case("389 Project"))
        || root_dse
            .strs("vendorVersion")
            .any(|v| v.trim().starts_with("389-Directory/"))
    {
        DirectoryKind::Ds389
    } else {
        DirectoryKind::Generic
    }
}

/// Whether the rootDSE lists `oid` in `supportedControl`.
pub fn supports_control(root_dse: &Entry, oid: &str) -> bool {
    root_dse.strs("supportedControl").any(|c| c.trim() == oid)
}

/// The naming contexts the server holds (`namingContexts`), in server order.
pub fn naming_contexts(root_dse: &Entry) -> Vec<String> {
    root_dse.strs("namingContexts").map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samba() -> Entry {
        Entry::new("")
            .with("supportedCapabilities", "1.2.840.113556.1.4.800")
            .with("supportedCapabilities", "1.2.840.113556.1.4.1670")
            .with("vendorName", "Samba Team (https://www.samba.org)")
            .with("supportedControl", PAGED_RESULTS_OID)
            .with("supportedControl", DIRSYNC_OID)
    }

    #[test]
    fn samba_and_ad_are_active_directory() {
        assert_eq!(detect_kind(&samba()), DirectoryKind::ActiveDirectory);
        let lds = Entry::new("").with("supportedCapabilities", "1.2.840.113556.1.4.1851");
        assert_eq!(detect_kind(&lds), DirectoryKind::ActiveDirectory);
        let only_v51 = Entry::new("").with("SUPPORTEDCAPABILITIES", "1.2.840.113556.1.4.1670");
        assert_eq!(detect_kind(&only_v51), DirectoryKind::ActiveDirectory);
        assert!(supports_control(&samba(), DIRSYNC_OID));
        assert!(!supports_control(&samba(), SYNC_REQUEST_OID));
    }

    #[test]
    fn openldap_by_its_root_dse_class() {
        let dse = Entry::new("")
            .with("objectClass", "top")
            .with("objectClass", "OpenLDAProotDSE")
            .with("namingContexts", "dc=branch,dc=test")
            .with("supportedControl", SYNC_REQUEST_OID);
        assert_eq!(detect_kind(&dse), DirectoryKind::OpenLdap);
        assert_eq!(naming_contexts(&dse), vec!["dc=branch,dc=test".to_string()]);
        assert!(supports_control(&dse, SYNC_REQUEST_OID));
    }

    #[test]
    fn the_389_server_by_its_vendor_and_unknown_servers_are_generic() {
        let ds389 = Entry::new("")
            .with("objectClass", "top")
            .with("vendorName", "389 Project")
            .with("supportedControl", SYNC_REQUEST_OID);
        assert_eq!(detect_kind(&ds389), DirectoryKind::Ds389);
        let by_version = Entry::new("").with("vendorVersion", "389-Directory/2.3.1 B2025.016.1616");
        assert_eq!(detect_kind(&by_version), DirectoryKind::Ds389);
        let other_vendor = Entry::new("").with("vendorName", "Example Directory 389");
        assert_eq!(detect_kind(&other_vendor), DirectoryKind::Generic);
        assert_eq!(detect_kind(&Entry::new("")), DirectoryKind::Generic);
        // An unrelated Microsoft OID (LDAP_CAP_ACTIVE_DIRECTORY_LDAP_INTEG) alone is not AD.
        let other = Entry::new("").with("supportedCapabilities", "1.2.840.113556.1.4.1791");
        assert_eq!(detect_kind(&other), DirectoryKind::Generic);
    }

    #[test]
    fn kinds_display_for_people() {
        assert_eq!(
            DirectoryKind::ActiveDirectory.to_string(),
            "Active Directory"
        );
        assert_eq!(DirectoryKind::OpenLdap.to_string(), "OpenLDAP");
        assert_eq!(DirectoryKind::Ds389.to_string(), "389 Directory Server");
        assert_eq!(DirectoryKind::Generic.to_string(), "generic LDAP");
    }
}
