//! The packaging contract (`packaging/`): the systemd unit carries every hardening directive
//! the issue asks for, the example config parses with the library's own loader and names the
//! same secret files the unit hands over as credentials, and the .deb's control template,
//! conffiles and maintainer scripts are well formed.
//!
//! Checks that need a tool skip with a note when it is missing: `dpkg-deb` (builds a small
//! .deb from the real control template, without the binary) and `systemd-analyze verify`.
//! The full .deb with the static binary is `packaging/build-deb.sh`'s job, not a test's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use idrelay::app::config::{Config, SecretSource};

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging")
}

fn read(rel: &str) -> String {
    let p = packaging().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `key=value` lines of a unit file, every value of a repeated key in order.
fn unit_directives(text: &str) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') || line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').expect("key=value");
        map.entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    map
}

fn tool(name: &str) -> bool {
    Command::new(name).arg("--version").output().is_ok()
}

const REQUIRED: &[(&str, &str)] = &[
    ("User", "idrelay"),
    ("StateDirectory", "idrelay"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallArchitectures", "native"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("UMask", "0077"),
    ("StateDirectoryMode", "0700"),
    // A core dump would hold the bind password and the tokens.
    ("LimitCORE", "0"),
    ("LoadCredential", "ldap-password:/etc/idrelay/ldap-password"),
    ("LoadCredential", "scim-token:/etc/idrelay/scim-token"),
    (
        "ExecStart",
        "/usr/bin/idrelay --config /etc/idrelay/idrelay.toml run",
    ),
    ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ("Restart", "on-failure"),
    ("WantedBy", "multi-user.target"),
];

#[test]
fn unit_has_every_hardening_directive() {
    let unit = unit_directives(&read("idrelay.service"));
    let mut missing = Vec::new();
    for (key, value) in REQUIRED {
        if !unit
            .get(*key)
            .is_some_and(|vs| vs.iter().any(|v| v == value))
        {
            missing.push(format!("{key}={value}"));
        }
    }
    assert!(missing.is_empty(), "missing from the unit: {missing:?}");
    for key in ["RestartSec", "TimeoutStopSec"] {
        assert!(unit.contains_key(key), "{key} is not set");
    }
    // Nothing may widen what the sandbox allows.
    for (key, bad) in [
        ("AmbientCapabilities", "CAP_"),
        ("CapabilityBoundingSet", "CAP_"),
    ] {
        assert!(
            !unit[key].iter().any(|v| v.contains(bad)),
            "{key} grants a capability"
        );
    }
}

/// Any `/etc/idrelay/...` file holds a fake secret; other paths do not exist.
struct FakeSecrets;

impl SecretSource for FakeSecrets {
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        if path.starts_with("/etc/idrelay") {
            Ok("not-a-secret\n".into())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is not under /etc/idrelay", path.display()),
            ))
        }
    }
    fn var(&self, _name: &str) -> Option<String> {
        None
    }
}

#[test]
fn example_config_parses_and_matches_the_unit() {
    let text = read("idrelay.toml");
    let path = packaging().join("idrelay.toml");
    let c = Config::parse(&path, &text, &FakeSecrets).unwrap_or_else(|e| panic!("{e}"));
    // StateDirectory=idrelay is /var/lib/idrelay.
    assert_eq!(c.agent.state_dir, Path::new("/var/lib/idrelay"));
    assert_eq!(c.directory.password.expose(), "not-a-secret");

    // The secret files the config reads are the ones the unit loads as credentials and
    // binds back at the same path inside the sandbox.
    let raw: toml::Table = toml::from_str(&text).unwrap();
    let unit = unit_directives(&read("idrelay.service"));
    for (table, key, credential) in [
        ("directory", "password_file", "ldap-password"),
        ("scim", "token_file", "scim-token"),
    ] {
        let file = raw[table][key].as_str().expect("a *_file key");
        assert!(
            unit["LoadCredential"].contains(&format!("{credential}:{file}")),
            "LoadCredential={credential}:{file} missing"
        );
        assert!(
            unit["BindReadOnlyPaths"].contains(&format!("%d/{credential}:{file}")),
            "BindReadOnlyPaths=%d/{credential}:{file} missing"
        );
    }
}

#[test]
fn control_template_and_maintainer_scripts() {
    let control = read("deb/control");
    let fields: HashMap<&str, &str> = control
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_once(": "))
        .collect();
    for (k, v) in [
        ("Package", "idrelay"),
        ("Version", "@VERSION@"),
        ("Architecture", "amd64"),
        ("Installed-Size", "@INSTALLED_SIZE@"),
        ("Depends", "adduser"),
        ("Section", "net"),
        ("Priority", "optional"),
    ] {
        assert_eq!(fields.get(k).copied(), Some(v), "control field {k}");
    }
    assert!(fields.get("Maintainer").is_some_and(|m| m.contains('<')));
    assert!(fields.contains_key("Description"));
    assert!(
        control
            .lines()
            .skip_while(|l| !l.starts_with("Description"))
            .nth(1)
            .is_some_and(|l| l.starts_with(' ')),
        "Description needs a long description"
    );
    assert_eq!(
        read("deb/conffiles").trim(),
        "/etc/idrelay/idrelay.toml.example"
    );

    let postinst = read("deb/postinst");
    assert!(
        postinst.contains("adduser --system"),
        "postinst creates the user"
    );
    for forbidden in [
        "systemctl start",
        "systemctl enable",
        "deb-systemd-invoke start",
    ] {
        assert!(
            !postinst.contains(forbidden),
            "postinst must not {forbidden}"
        );
    }
    assert!(read("deb/postrm").contains("purge)"));
    #[cfg(unix)]
    for s in ["deb/postinst", "deb/prerm", "deb/postrm"] {
        use std::os::unix::fs::PermissionsExt;
        let p = packaging().join(s);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{s} must be executable");
        assert!(read(s).starts_with("#!/bin/sh\n"), "{s}: #!/bin/sh");
        let ok = Command::new("sh").arg("-n").arg(&p).status().unwrap();
        assert!(ok.success(), "{s}: sh -n failed");
    }
    for s in ["build-deb.sh", "install.sh"] {
        let ok = Command::new("bash")
            .arg("-n")
            .arg(packaging().join(s))
            .status()
            .unwrap();
        assert!(ok.success(), "{s}: bash -n failed");
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "idrelay-packaging-{name}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn control_template_builds_a_package_with_dpkg_deb() {
    if !tool("dpkg-deb") {
        eprintln!("SKIPPED: dpkg-deb is not installed (Debian package dpkg)");
        return;
    }
    let dir = scratch_dir("deb");
    let stage = dir.join("stage");
    let debian = stage.join("DEBIAN");
    std::fs::create_dir_all(&debian).unwrap();
    std::fs::create_dir_all(stage.join("etc/idrelay")).unwrap();
    std::fs::write(
        stage.join("etc/idrelay/idrelay.toml.example"),
        read("idrelay.toml"),
    )
    .unwrap();
    let control = read("deb/control")
        .replace("@VERSION@", "0.0.0-test")
        .replace("@INSTALLED_SIZE@", "4");
    std::fs::write(debian.join("control"), control).unwrap();
    std::fs::write(debian.join("conffiles"), read("deb/conffiles")).unwrap();
    for s in ["postinst", "prerm", "postrm"] {
        std::fs::copy(packaging().join("deb").join(s), debian.join(s)).unwrap();
    }
    let deb = dir.join("test.deb");
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dpkg-deb --build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("dpkg-deb")
        .arg("--field")
        .arg(&deb)
        .args(["Package", "Version", "Architecture", "Depends"])
        .output()
        .unwrap();
    let fields = String::from_utf8_lossy(&out.stdout);
    for want in [
        "Package: idrelay",
        "Version: 0.0.0-test",
        "Architecture: amd64",
        "Depends: adduser",
    ] {
        assert!(fields.contains(want), "{want} in {fields}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unit_verifies_with_systemd_analyze() {
    if !tool("systemd-analyze") {
        eprintln!("SKIPPED: systemd-analyze is not installed (Debian package systemd)");
        return;
    }
    // verify checks that ExecStart is executable: point it at the binary under test.
    let dir = scratch_dir("unit");
    let unit = dir.join("idrelay.service");
    std::fs::write(
        &unit,
        read("idrelay.service").replace("/usr/bin/idrelay", env!("CARGO_BIN_EXE_idrelay")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    let own: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("idrelay.service"))
        .collect();
    assert!(own.is_empty(), "warnings about the unit: {own:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
