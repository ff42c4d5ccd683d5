//! Errors of the LDAP side, and LDAP result codes with their RFC 4511 names.
//!
//! Every variant names what failed (URL, DN, search base and filter, attribute) and, when the
//! server answered, the result code with its name and the server's diagnostic text. No
//! variant ever holds a password: the bind password never leaves [`crate::secret::Secret`]
//! except on the wire.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// An LDAP result code (RFC 4511 section 4.1.9, plus the common extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultCode(pub u32);

impl ResultCode {
    /// 0: the operation succeeded.
    pub const SUCCESS: ResultCode = ResultCode(0);
    /// 10: the server sent a referral instead of an answer.
    pub const REFERRAL: ResultCode = ResultCode(10);
    /// 32: the base or target DN does not exist.
    pub const NO_SUCH_OBJECT: ResultCode = ResultCode(32);
    /// 49: wrong DN or password (or a locked / expired account).
    pub const INVALID_CREDENTIALS: ResultCode = ResultCode(49);
    /// 50: the bound identity may not do this.
    pub const INSUFFICIENT_ACCESS_RIGHTS: ResultCode = ResultCode(50);

    /// The RFC name of the code (`"invalidCredentials"`), or `"unknown"`.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "success",
            1 => "operationsError",
            2 => "protocolError",
            3 => "timeLimitExceeded",
            4 => "sizeLimitExceeded",
            5 => "compareFalse",
            6 => "compareTrue",
            7 => "authMethodNotSupported",
            8 => "strongerAuthRequired",
            10 => "referral",
            11 => "adminLimitExceeded",
            12 => "unavailableCriticalExtension",
            13 => "confidentialityRequired",
            14 => "saslBindInProgress",
            16 => "noSuchAttribute",
            17 => "undefinedAttributeType",
            18 => "inappropriateMatching",
            19 => "constraintViolation",
            20 => "attributeOrValueExists",
            21 => "invalidAttributeSyntax",
            32 => "noSuchObject",
            33 => "aliasProblem",
            34 => "invalidDNSyntax",
            36 => "aliasDereferencingProblem",
            48 => "inappropriateAuthentication",
            49 => "invalidCredentials",
            50 => "insufficientAccessRights",
            51 => "busy",
            52 => "unavailable",
            53 => "unwillingToPerform",
            54 => "loopDetect",
            64 => "namingViolation",
            65 => "objectClassViolation",
            66 => "notAllowedOnNonLeaf",
            67 => "notAllowedOnRDN",
            68 => "entryAlreadyExists",
            69 => "objectClassModsProhibited",
            71 => "affectsMultipleDSAs",
            80 => "other",
            118 => "canceled",
            119 => "noSuchOperation",
            120 => "tooLate",
            121 => "cannotCancel",
            122 => "assertionFailed",
            123 => "authorizationDenied",
            4096 => "e-syncRefreshRequired",
            _ => "unknown",
        }
    }

    /// 4096: e-syncRefreshRequired (RFC 4533): the content-sync cookie can no longer be
    /// served; the consumer must start over with a full refresh.
    pub const SYNC_REFRESH_REQUIRED: ResultCode = ResultCode(4096);

    /// Whether this is code 0.
    pub fn is_success(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.name())
    }
}

/// What went wrong talking to the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LdapError {
    /// The URL is not `ldap://host[:port]` or `ldaps://host[:port]`.
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// Why it was refused.
        detail: String,
    },
    /// The configured CA file could not be read or holds no usable certificate.
    CaFile {
        /// The configured path.
        path: PathBuf,
        /// What was wrong with it.
        detail: String,
    },
    /// No CA file was configured and no system trust store could be loaded.
    TrustStore {
        /// The files that were tried and why they failed.
        detail: String,
    },
    /// The TCP connection could not be opened (refused, unreachable, name not resolved).
    Connect {
        /// The server URL.
        url: String,
        /// The operating system's reason.
        detail: String,
    },
    /// TLS failed: handshake, certificate verification, or the server refused StartTLS.
    Tls {
        /// The server URL.
        url: String,
        /// What failed (rustls' reason, or the StartTLS result code).
        detail: String,
    },
    /// The simple bind was refused.
    Bind {
        /// The server URL.
        url: String,
        /// The bind DN (never the password).
        dn: String,
        /// The server's result code.
        code: ResultCode,
        /// The server's diagnostic text (may be empty).
        message: String,
    },
    /// A bind DN was configured with an empty password; such a bind would succeed as an
    /// *unauthenticated* bind (RFC 4513 section 5.1.2) and read as anonymous, so it is refused.
    EmptyPassword {
        /// The bind DN.
        dn: String,
    },
    /// A search (or a base read) ended with a result code other than success.
    Search {
        /// The search base.
        base: String,
        /// The filter.
        filter: String,
        /// The server's result code.
        code: ResultCode,
        /// The server's diagnostic text (may be empty).
        message: String,
    },
    /// The filter is not valid LDAP filter syntax (RFC 4515); nothing was sent.
    InvalidFilter {
        /// The filter as given.
        filter: String,
    },
    /// An operation got no answer within the configured timeout.
    Timeout {
        /// What was waiting ("bind as cn=x", "search dc=x (objectClass=*)").
        operation: String,
        /// The configured timeout.
        after: Duration,
    },
    /// The connection to the server broke (closed by the server or the network).
    ConnectionLost {
        /// The server URL.
        url: String,
        /// What was going on when it broke.
        detail: String,
    },
    /// The server sent something that is not a well-formed LDAP message.
    Protocol {
        /// What could not be decoded.
        detail: String,
    },
    /// AD ranged retrieval of a multi-valued attribute could not be completed.
    Range {
        /// The entry being read.
        dn: String,
        /// The attribute (`member`).
        attribute: String,
        /// Why the values are incomplete.
        detail: String,
    },
    /// The thread that runs the LDAP client is gone (it could not start or it panicked).
    Worker {
        /// What was observed.
        detail: String,
    },
}

impl LdapError {
    /// The server's result code, when the server answered with one.
    pub fn code(&self) -> Option<ResultCode> {
        match self {
            LdapError::Bind { code, .. } | LdapError::Search { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the server answered a content-sync search with 4096 e-syncRefreshRequired:
    /// the cookie is no longer usable and a full resync (no cookie) is needed.
    pub fn is_sync_refresh_required(&self) -> bool {
        self.code() == Some(ResultCode::SYNC_REFRESH_REQUIRED)
    }
}

/// `": text"` when the server gave diagnostic text, else nothing.
struct Diag<'a>(&'a str);

impl fmt::Display for Diag<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.trim_end_matches(['\0', '\n', ' ']);
        if text.is_empty() {
            Ok(())
        } else {
            // The server's diagnostic text: one line, no forged priority.
            write!(f, ": {}", crate::logging::escape(text))
        }
    }
}

impl fmt::Display for LdapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LdapError::InvalidUrl { url, detail } => {
                write!(f, "invalid LDAP URL {url:?}: {detail}")
            }
            LdapError::CaFile { path, detail } => {
                write!(f, "CA file {}: {detail}", path.display())
            }
            LdapError::TrustStore { detail } => {
                write!(
                    f,
                    "no CA file configured and no system trust store: {detail}"
                )
            }
            LdapError::Connect { url, detail } => write!(f, "cannot connect to {url}: {detail}"),
            LdapError::Tls { url, detail } => write!(f, "TLS with {url} failed: {detail}"),
            LdapError::Bind {
                url,
                dn,
                code,
                message,
            } => write!(
                f,
                "bind as {dn:?} to {url} refused: {code}{}",
                Diag(message)
            ),
            LdapError::EmptyPassword { dn } => write!(
                f,
                "bind DN {dn:?} has an empty password; refusing an unauthenticated bind"
            ),
            LdapError::Search {
                base,
                filter,
                code,
                message,
            } => write!(
                f,
                "search of {base:?} with filter {filter} failed: {code}{}",
                Diag(message)
            ),
            LdapError::InvalidFilter { filter } => {
                write!(f, "invalid LDAP filter {filter:?}")
            }
            LdapError::Timeout { operation, after } => {
                write!(f, "{operation}: no answer within {} s", after.as_secs_f32())
            }
            LdapError::ConnectionLost { url, detail } => {
                write!(f, "connection to {url} lost: {detail}")
            }
            LdapError::Protocol { detail } => write!(f, "malformed LDAP message: {detail}"),
            LdapError::Range {
                dn,
                attribute,
                detail,
            } => write!(f, "ranged retrieval of {attribute} of {dn:?}: {detail}"),
            LdapError::Worker { detail } => write!(f, "LDAP client thread: {detail}"),
        }
    }
}

impl std::error::Error for LdapError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_diagnostic_text_is_one_escaped_line() {
        let e = LdapError::Bind {
            url: "ldap://127.0.0.1".into(),
            dn: "cn=s,dc=b".into(),
            code: ResultCode(49),
            message: "<0>80090308: LdapErr\nforged line\u{1b}[2J\0\n".into(),
        };
        let text = e.to_string();
        assert!(
            text.ends_with(": \\x3c0>80090308: LdapErr\\nforged line\\x1b[2J"),
            "{text}"
        );
        assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text}");
    }

    #[test]
    fn result_codes_have_their_rfc_names() {
        assert_eq!(ResultCode(49).to_string(), "49 (invalidCredentials)");
        assert_eq!(ResultCode(32).to_string(), "32 (noSuchObject)");
        assert_eq!(ResultCode(0).name(), "success");
        assert_eq!(ResultCode(10).name(), "referral");
        assert_eq!(ResultCode(4096).name(), "e-syncRefreshRequired");
        assert_eq!(ResultCode(9999).name(), "unknown");
        assert!(ResultCode::SUCCESS.is_success());
    }

    #[test]
    fn bind_error_names_dn_url_and_code() {
        let e = LdapError::Bind {
            url: "ldap://127.0.0.1:389".into(),
            dn: "cn=syncer,dc=x".into(),
            code: ResultCode::INVALID_CREDENTIALS,
            message: "80090308: LdapErr: AcceptSecurityContext error, data 52e\0".into(),
        };
        assert_eq!(
            e.to_string(),
            "bind as \"cn=syncer,dc=x\" to ldap://127.0.0.1:389 refused: 49 (invalidCredentials): \
             80090308: LdapErr: AcceptSecurityContext error, data 52e"
        );
        assert_eq!(e.code(), Some(ResultCode(49)));
    }

    #[test]
    fn search_error_without_text_has_no_trailing_colon() {
        let e = LdapError::Search {
            base: "ou=gone,dc=x".into(),
            filter: "(objectClass=*)".into(),
            code: ResultCode::NO_SUCH_OBJECT,
            message: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "search of \"ou=gone,dc=x\" with filter (objectClass=*) failed: 32 (noSuchObject)"
        );
    }
}
