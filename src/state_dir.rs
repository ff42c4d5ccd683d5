//! The state directory (`agent.state_dir`): the check before the agent trusts it, and the
//! one way to create, open and replace the files in it.
//!
//! Owns: the rules below, and [`options`], the `OpenOptions` every file of the state
//! directory is opened with (queue segments and ledger, anchors, member store, diskmap
//! scratch files, parked and held objects, runtime and relay status, `idrelay.prom`,
//! `provisioning.jsonl`, the cloud profile, the locks).
//!
//! Rules:
//! * the directory is created mode 0700 (subdirectories too: [`create_private_dir`]);
//! * an existing directory is refused when another user owns it, or when its group or
//!   others may write to it: both would let someone else plant or swap the agent's files.
//!   The error names `agent.state_dir` and the fix. Group or other *read* bits are taken
//!   away (0700) without a fuss, as before;
//! * files are created mode 0600 and opened with `O_NOFOLLOW`: a symlink planted at a state
//!   file's name makes the open fail (ELOOP) instead of reading or writing its target.
//!   Whole-file replacement goes to a temporary name opened the same way and is renamed
//!   over the old file (a rename replaces a symlink, it never follows it).
//!
//! The directory itself may be a symlink (an administrator's choice, e.g. to move it to
//! another disk): its target is what is checked.
//!
//! The queue (`queue/`, which otherwise imports nothing of the crate) uses [`options`] too,
//! so that there is one rule for every file the agent keeps.
//!
//! Off Unix (Windows) there are no mode bits and no `O_NOFOLLOW`: the checks pass and the
//! directory's ACL (see `packaging/windows/README.md`) protects it.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Why the state directory is not used.
#[derive(Debug)]
#[non_exhaustive]
pub enum StateDirError {
    /// It could not be created, or its metadata read.
    Io {
        /// The state directory.
        dir: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Another user owns it.
    Owner {
        /// The state directory.
        dir: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// The uid idrelay runs as.
        euid: u32,
    },
    /// Its group or others may write to it.
    Mode {
        /// The state directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

impl fmt::Display for StateDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateDirError::Io { dir, what, source } => {
                write!(
                    f,
                    "agent.state_dir {}: cannot {what}: {source}",
                    dir.display()
                )
            }
            StateDirError::Owner { dir, owner, euid } => write!(
                f,
                "agent.state_dir {} is owned by uid {owner}, but idrelay runs as uid {euid}: \
                 another user could change the agent's state; run `chown -R {euid} {}` (or \
                 point agent.state_dir at a directory of the service user)",
                dir.display(),
                dir.display()
            ),
            StateDirError::Mode { dir, mode } => write!(
                f,
                "agent.state_dir {} has mode {mode:04o}: its group or others may write to it \
                 and plant or swap the agent's files; run `chmod 700 {}`",
                dir.display(),
                dir.display()
            ),
        }
    }
}

impl std::error::Error for StateDirError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StateDirError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What [`judge`] decided about an existing directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Use it as it is.
    Fine,
    /// Use it after taking away group and other read bits (chmod 0700).
    Tighten,
}

/// The decision about a state directory with `owner` and `mode`, for a process running as
/// `euid` (pure).
pub fn judge(dir: &Path, owner: u32, mode: u32, euid: u32) -> Result<Verdict, StateDirError> {
    if owner != euid {
        return Err(StateDirError::Owner {
            dir: dir.to_path_buf(),
            owner,
            euid,
        });
    }
    if mode & 0o022 != 0 {
        return Err(StateDirError::Mode {
            dir: dir.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(if mode & 0o077 != 0 {
        Verdict::Tighten
    } else {
        Verdict::Fine
    })
}

/// Creates the state directory (0700) when it is missing, and checks an existing one
/// against the rules of this module.
pub fn prepare(dir: &Path) -> Result<(), StateDirError> {
    let io = |what, source| StateDirError::Io {
        dir: dir.to_path_buf(),
        what,
        source,
    };
    create_private_dir(dir).map_err(|e| io("create it", e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(dir).map_err(|e| io("read its metadata", e))?;
        let euid = rustix::process::geteuid().as_raw();
        if judge(dir, meta.uid(), meta.mode(), euid)? == Verdict::Tighten {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io("set its mode to 0700", e))?;
        }
    }
    Ok(())
}

/// Creates `dir` and its missing parents with mode 0700 (an existing one is left as it is).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Whether an I/O error is a full disk or an exceeded quota ("no space left", EDQUOT):
/// freeing space fixes it, so the writer pauses and retries instead of ending.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(28) | Some(122)) // ENOSPC, EDQUOT on Linux
}

/// The options every file of the state directory is opened with: created 0600, never
/// through a symlink. The caller adds read / write / create / truncate / append.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    o
}

/// A new scratch file `.{stem}.{pid}.{n}` in `dir`, read and write, opened as
/// [`options`] says; on unix unlinked at once (a crash leaves nothing behind), elsewhere
/// its path is for the caller to remove when done. Each call names a new file.
pub fn scratch_file(dir: &Path, stem: &str) -> io::Result<(File, std::path::PathBuf)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".{stem}.{}.{n}", std::process::id()));
    let file = options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    #[cfg(unix)]
    std::fs::remove_file(&path)?;
    Ok((file, path))
}

/// Opens an existing state file for reading.
pub fn open(path: &Path) -> io::Result<File> {
    options().read(true).open(path)
}

/// Reads a whole state file.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads a whole state file as UTF-8.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// How hard [`replace`] tries to make the new content survive a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Renamed into place; no fsync (a status file rewritten every few seconds).
    Rename,
    /// fsync of the file before the rename and of the directory after it.
    Sync,
}

/// Replaces `path` with `bytes`: written to `.NAME.tmp` beside it (0600, no symlink
/// followed), then renamed over it.
pub fn replace(path: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    #[cfg(unix)]
    {
        // A file left under the temporary name by an older version keeps its mode: set it.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    if durability == Durability::Sync {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)?;
    if durability == Durability::Sync {
        sync_parent(path);
    }
    Ok(())
}

/// fsyncs the directory holding `path` (best effort; not possible on Windows).
pub fn sync_parent(path: &Path) {
    #[cfg(unix)]
    if let Some(parent) = path.parent() {
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_and_an_exceeded_quota_are_disk_full_and_nothing_else_is() {
        assert!(is_disk_full(&io::Error::from_raw_os_error(28)));
        assert!(is_disk_full(&io::Error::from_raw_os_error(122)));
        assert!(is_disk_full(&io::Error::from(io::ErrorKind::StorageFull)));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(13))); // EACCES
        assert!(!is_disk_full(&io::Error::from(io::ErrorKind::NotFound)));
    }

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "idrelay-statedir-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn another_owner_or_group_or_other_write_is_refused_with_the_fix() {
        let d = Path::new("/var/lib/idrelay");
        assert_eq!(judge(d, 998, 0o40700, 998).unwrap(), Verdict::Fine);
        assert_eq!(judge(d, 998, 0o755, 998).unwrap(), Verdict::Tighten);
        assert_eq!(judge(d, 998, 0o750, 998).unwrap(), Verdict::Tighten);
        for bad in [0o777, 0o770, 0o720, 0o702, 0o1777] {
            let e = judge(d, 998, bad, 998).unwrap_err().to_string();
            assert!(e.contains("agent.state_dir /var/lib/idrelay"), "{e}");
            assert!(e.contains(&format!("{:04o}", bad & 0o7777)), "{e}");
            assert!(e.contains("chmod 700 /var/lib/idrelay"), "{e}");
        }
        for owner in [0, 1000] {
            let e = judge(d, owner, 0o700, 998).unwrap_err().to_string();
            assert!(e.contains("agent.state_dir") && e.contains("chown"), "{e}");
            assert!(e.contains(&format!("uid {owner}")), "{e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn prepare_creates_0700_tightens_read_bits_and_refuses_others_write() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let base = temp("prepare");
        let fresh = base.join("a/b/state");
        prepare(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let readable = base.join("readable");
        std::fs::create_dir(&readable).unwrap();
        std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&readable).unwrap();
        assert_eq!(mode(&readable), 0o700);
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare(&open).unwrap_err();
        assert!(matches!(e, StateDirError::Mode { mode: 0o777, .. }), "{e}");
        assert_eq!(mode(&open), 0o777, "a refused directory is left alone");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[cfg(unix)]
    #[test]
    fn files_are_0600_and_symlinks_are_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let d = temp("files");
        let victim = d.join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let link = d.join("runtime.json");
        std::os::unix::fs::symlink(&victim, &link).unwrap();

        // Opening through the link fails, for reading and for writing.
        assert!(read(&link).is_err());
        assert!(options().append(true).create(true).open(&link).is_err());
        assert!(options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&link)
            .is_err());
        // A link at the temporary name: replace fails, the target is untouched.
        let other = d.join("idrelay.prom");
        std::os::unix::fs::symlink(&victim, d.join(".idrelay.prom.tmp")).unwrap();
        assert!(replace(&other, b"x", Durability::Rename).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");

        // Replacing a link swaps the link itself for a private file.
        replace(&link, b"new", Durability::Sync).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(read_to_string(&link).unwrap(), "new");
        let m = std::fs::symlink_metadata(&link).unwrap();
        assert!(m.file_type().is_file());
        assert_eq!(m.permissions().mode() & 0o777, 0o600);

        // New files are 0600 whatever the umask.
        let f = d.join("anchors.jsonl");
        options().write(true).create_new(true).open(&f).unwrap();
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
