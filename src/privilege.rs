//! Privilege checks at start-up: the agent refuses to run as root (unless the administrator
//! says `--allow-root`), refuses secret files that group or others may read or write or
//! that another user owns, and makes itself non-dumpable ([`make_non_dumpable`]).
//!
//! Owns: finding the effective user id without `libc` or `unsafe` (from `/proc/self/status`,
//! falling back to the owner of `/proc/self`), and the two refusals with messages that name
//! the file, its mode and the fix.
//!
//! Invariants and limits:
//! * when the effective uid cannot be found, [`refuse_root`] fails closed (an error that
//!   names `--allow-root`), it never assumes "not root";
//! * a secret check looks at the permission bits (`mode & 0o077`) and the owner (this
//!   process's user or root; another user could change or swap the secret), following
//!   symlinks to the file that would be read; it does not check the parent directories;
//! * a file that systemd's `LoadCredential=` placed in `$CREDENTIALS_DIRECTORY` is mode 0400
//!   and passes;
//! * off Unix (Windows) both checks pass: there is no uid 0 and no mode bits there; the
//!   Windows service runs under its own account (see `packaging/windows/README.md`).
//!
//! Errors never include the content of a secret file, only its path and mode.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why the agent refuses to start.
#[derive(Debug)]
#[non_exhaustive]
pub enum PrivilegeError {
    /// The effective uid is 0 and `--allow-root` was not given.
    Root,
    /// The effective uid could not be read (no `/proc`?); the check fails closed.
    UidUnknown {
        /// Why `/proc/self/status` and `/proc/self` could not be read.
        source: std::io::Error,
    },
    /// A secret file is readable or writable by its group or by others.
    SecretFileMode {
        /// The secret file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },
    /// A secret file is owned by a user other than root and the one idrelay runs as.
    SecretFileOwner {
        /// The secret file.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// The uid idrelay runs as.
        euid: u32,
    },
    /// A secret file's metadata could not be read.
    SecretFileUnreadable {
        /// The secret file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl fmt::Display for PrivilegeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivilegeError::Root => f.write_str(
                "refusing to run as root: run idrelay as an unprivileged user (the packaged \
                 systemd unit runs it as `idrelay`), or pass --allow-root to run as root anyway",
            ),
            PrivilegeError::UidUnknown { source } => write!(
                f,
                "cannot tell whether idrelay runs as root (reading /proc/self/status: {source}); \
                 pass --allow-root to skip this check"
            ),
            PrivilegeError::SecretFileMode { path, mode } => write!(
                f,
                "secret file {} has mode {mode:04o}: it is readable or writable by group or \
                 others; run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
            PrivilegeError::SecretFileOwner { path, owner, euid } => write!(
                f,
                "secret file {} is owned by uid {owner}, another user than the one idrelay runs \
                 as (uid {euid}), who could change or swap it; run `chown {euid} {}` (or keep \
                 it root-owned, mode 600, and hand it over with systemd's LoadCredential=)",
                path.display(),
                path.display()
            ),
            PrivilegeError::SecretFileUnreadable { path, source } => {
                write!(f, "cannot check secret file {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for PrivilegeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PrivilegeError::UidUnknown { source }
            | PrivilegeError::SecretFileUnreadable { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The effective uid of this process, from `/proc/self/status` (`Uid:` line, second field),
/// else the owner of `/proc/self` (which Linux sets to the effective uid).
#[cfg(unix)]
pub fn effective_uid() -> Result<u32, PrivilegeError> {
    use std::os::unix::fs::MetadataExt;
    let from_status = std::fs::read_to_string("/proc/self/status").and_then(|s| {
        parse_status_euid(&s).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no parsable `Uid:` line in /proc/self/status",
            )
        })
    });
    match from_status {
        Ok(uid) => Ok(uid),
        Err(source) => std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .map_err(|_| PrivilegeError::UidUnknown { source }),
    }
}

/// The effective uid from the text of `/proc/PID/status`: the line
/// `Uid:\t<real>\t<effective>\t<saved>\t<filesystem>`.
pub fn parse_status_euid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The decision behind [`refuse_root`], without I/O.
pub fn check_uid(euid: u32, allow_root: bool) -> Result<(), PrivilegeError> {
    if euid == 0 && !allow_root {
        Err(PrivilegeError::Root)
    } else {
        Ok(())
    }
}

/// Refuses to run as root unless `allow_root`; fails closed when the uid is unknown.
#[cfg(unix)]
pub fn refuse_root(allow_root: bool) -> Result<(), PrivilegeError> {
    if allow_root {
        return Ok(());
    }
    check_uid(effective_uid()?, allow_root)
}

/// Refuses to run as root unless `allow_root` (no such thing off Unix: always allowed).
#[cfg(not(unix))]
pub fn refuse_root(_allow_root: bool) -> Result<(), PrivilegeError> {
    Ok(())
}

/// Makes this process non-dumpable (Linux: `prctl(PR_SET_DUMPABLE, 0)`): no core dump is
/// written and other processes of the same user cannot ptrace it or read its memory, so
/// the secrets it holds (bind password, tokens) stay in it. Call it before secrets are
/// read. The systemd unit sets `LimitCORE=0` as well.
#[cfg(target_os = "linux")]
pub fn make_non_dumpable() -> std::io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(std::io::Error::from)
}

/// Off Linux there is no `PR_SET_DUMPABLE`: nothing to do (limit core dumps with the
/// service manager instead).
#[cfg(not(target_os = "linux"))]
pub fn make_non_dumpable() -> std::io::Result<()> {
    Ok(())
}

/// The decision behind [`check_secret_file`], without I/O: refuses any group or other bit.
pub fn check_secret_mode(path: &Path, mode: u32) -> Result<(), PrivilegeError> {
    if mode & 0o077 != 0 {
        Err(PrivilegeError::SecretFileMode {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        })
    } else {
        Ok(())
    }
}

/// The owner rule behind [`check_secret_file`], without I/O: the file belongs to the user
/// idrelay runs as, or to root.
pub fn check_secret_owner(path: &Path, owner: u32, euid: u32) -> Result<(), PrivilegeError> {
    if owner == euid || owner == 0 {
        Ok(())
    } else {
        Err(PrivilegeError::SecretFileOwner {
            path: path.to_path_buf(),
            owner,
            euid,
        })
    }
}

/// Refuses a secret file (password, token, key) that group or others may read or write, or
/// that another user than root and this process's own owns. Symlinks are followed: the
/// file that would be read is what counts.
#[cfg(unix)]
pub fn check_secret_file(path: &Path) -> Result<(), PrivilegeError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(path).map_err(|source| PrivilegeError::SecretFileUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    check_secret_mode(path, meta.permissions().mode())?;
    check_secret_owner(path, meta.uid(), rustix::process::geteuid().as_raw())
}

/// Refuses a secret file that group or others may read (no mode bits off Unix: always passes;
/// protect the file with an ACL for the service account instead).
#[cfg(not(unix))]
pub fn check_secret_file(_path: &Path) -> Result<(), PrivilegeError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_gives_the_effective_uid() {
        let status = "Name:\tidrelay\nUmask:\t0077\nUid:\t1000\t0\t1000\t0\nGid:\t5\t5\t5\t5\n";
        assert_eq!(parse_status_euid(status), Some(0));
        assert_eq!(parse_status_euid("Uid:\t998\t998\t998\t998\n"), Some(998));
        assert_eq!(parse_status_euid("Name:\tx\n"), None);
        assert_eq!(parse_status_euid("Uid:\t1000\n"), None);
        assert_eq!(parse_status_euid("Uid:\tx\ty\n"), None);
    }

    #[test]
    fn root_is_refused_unless_allowed() {
        let e = check_uid(0, false).unwrap_err().to_string();
        assert!(e.contains("--allow-root"), "{e}");
        assert!(e.contains("root"), "{e}");
        assert!(check_uid(0, true).is_ok());
        assert!(check_uid(998, false).is_ok());
    }

    #[test]
    fn group_or_other_bits_are_refused_with_the_fix() {
        let p = Path::new("/etc/idrelay/ldap-password");
        for ok in [0o600, 0o400, 0o100600, 0o700] {
            assert!(check_secret_mode(p, ok).is_ok(), "{ok:o}");
        }
        for bad in [0o640, 0o604, 0o644, 0o620, 0o602, 0o100644, 0o660] {
            let e = check_secret_mode(p, bad).unwrap_err().to_string();
            assert!(e.contains("/etc/idrelay/ldap-password"), "{e}");
            assert!(e.contains(&format!("{:04o}", bad & 0o7777)), "{e}");
            assert!(e.contains("chmod 600 /etc/idrelay/ldap-password"), "{e}");
        }
    }

    #[test]
    fn secrets_of_another_user_are_refused_root_and_own_pass() {
        let p = Path::new("/etc/idrelay/scim-token");
        assert!(check_secret_owner(p, 998, 998).is_ok());
        assert!(check_secret_owner(p, 0, 998).is_ok());
        assert!(check_secret_owner(p, 0, 0).is_ok());
        for (owner, euid) in [(1000, 998), (998, 0)] {
            let e = check_secret_owner(p, owner, euid).unwrap_err().to_string();
            assert!(e.contains("/etc/idrelay/scim-token"), "{e}");
            assert!(e.contains(&format!("uid {owner}")), "{e}");
            assert!(
                e.contains(&format!("chown {euid} /etc/idrelay/scim-token")),
                "{e}"
            );
        }
    }

    /// Runs in a child test process (it changes the whole process): afterwards the kernel
    /// says "not dumpable".
    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_becomes_non_dumpable() {
        use rustix::process::{dumpable_behavior, DumpableBehavior};
        const CHILD: &str = "IDRELAY_TEST_NON_DUMPABLE_CHILD";
        if std::env::var_os(CHILD).is_some() {
            make_non_dumpable().unwrap();
            assert_eq!(dumpable_behavior().unwrap(), DumpableBehavior::NotDumpable);
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "privilege::tests::the_process_becomes_non_dumpable",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[cfg(unix)]
    fn temp_file(name: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "idrelay-privilege-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, "not-a-real-secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[cfg(unix)]
    #[test]
    fn secret_files_on_disk() {
        // Like a systemd credential: $CREDENTIALS_DIRECTORY/NAME is 0400.
        let cred = temp_file("ldap-password", 0o400);
        check_secret_file(&cred).unwrap();
        let ok = temp_file("scim-token", 0o600);
        check_secret_file(&ok).unwrap();
        let loose = temp_file("scim-token", 0o644);
        let e = check_secret_file(&loose).unwrap_err().to_string();
        assert!(e.contains(&loose.display().to_string()), "{e}");
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
        assert!(!e.contains("not-a-real-secret"), "never the content: {e}");
        let missing = cred.with_file_name("missing");
        let e = check_secret_file(&missing).unwrap_err();
        assert!(matches!(e, PrivilegeError::SecretFileUnreadable { .. }));
        assert!(e.to_string().contains("missing"), "{e}");
        for p in [&cred, &ok, &loose] {
            let _ = std::fs::remove_dir_all(p.parent().unwrap());
        }
    }

    #[cfg(unix)]
    #[test]
    fn effective_uid_matches_the_owner_of_proc_self_and_id() {
        use std::os::unix::fs::MetadataExt;
        let uid = effective_uid().unwrap();
        assert_eq!(uid, std::fs::metadata("/proc/self").unwrap().uid());
        // A file we create is owned by our (filesystem = effective) uid.
        let f = temp_file("owner", 0o600);
        assert_eq!(uid, std::fs::metadata(&f).unwrap().uid());
        let _ = std::fs::remove_dir_all(f.parent().unwrap());
        if let Ok(out) = std::process::Command::new("id").arg("-u").output() {
            let id: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            assert_eq!(uid, id);
        }
        // refuse_root agrees with the uid it found.
        assert_eq!(refuse_root(false).is_err(), uid == 0);
        assert!(refuse_root(true).is_ok());
    }
}
