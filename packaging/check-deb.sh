#!/usr/bin/env bash
# check-deb.sh DEB — proves a built idrelay .deb without touching this host's system:
#   1. dpkg-deb --info and --contents (printed);
#   2. every expected file is in it, the binary is static, the example is a conffile;
#   3. install into a scratch root: dpkg --root=DIR --force-script-chrootless runs the
#      maintainer scripts on the host with DPKG_ROOT=DIR (no chroot, so DIR needs no shell);
#      postinst then creates the user with `useradd --prefix DIR` in DIR/etc/passwd, not the
#      host's. --force-depends: the scratch root's dpkg database has no `adduser` package.
#      Checks: package "ii", user idrelay in DIR/etc/passwd, DIR/var/lib/idrelay 0700 owned by it;
#   4. systemd-analyze verify of the installed unit (ExecStart pointed at DIR/usr/bin/idrelay);
#   5. purge: the package is gone and DIR/var/lib/idrelay with it.
# Needs root (useradd --prefix and chown in DIR), dpkg, and systemd-analyze for step 4.
set -euo pipefail
DEB=${1:?usage: check-deb.sh DEB}
[ -f "$DEB" ] || { echo "check-deb.sh: no file $DEB" >&2; exit 2; }
fail() { echo "check-deb.sh: FAIL: $*" >&2; exit 1; }
ok() { echo "check-deb.sh: ok: $*"; }
[ "$(id -u)" = 0 ] || fail "run as root (useradd --prefix writes the scratch root's passwd)"

echo "== dpkg-deb --info $DEB"
dpkg-deb --info "$DEB"
echo "== dpkg-deb --contents $DEB"
CONTENTS=$(dpkg-deb --contents "$DEB")
echo "$CONTENTS"
for f in ./usr/bin/idrelay ./lib/systemd/system/idrelay.service ./etc/idrelay/idrelay.toml.example \
  ./usr/share/doc/idrelay/copyright; do
  grep -q " $f\$" <<<"$CONTENTS" || fail "$f is not in the package"
done
if grep -v ' \./$' <<<"$CONTENTS" | grep -qv ' root/root '; then fail "a file is not owned by root"; fi
ok "files present and owned by root"

R=$(mktemp -d "${TMPDIR:-/tmp}/idrelay-scratch-root.XXXXXX")
trap 'rm -rf "$R"' EXIT
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/lib/dpkg/triggers" "$R/etc"
: >"$R/var/lib/dpkg/status"
: >"$R/var/lib/dpkg/available"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"
printf 'root:*:19000:0:99999:7:::\n' >"$R/etc/shadow"
printf 'root:*::\n' >"$R/etc/gshadow"
chmod 640 "$R/etc/shadow" "$R/etc/gshadow"

echo "== dpkg --root=$R -i"
dpkg --root="$R" --force-script-chrootless --force-depends -i "$DEB"
dpkg --root="$R" -l idrelay | grep -q '^ii  idrelay ' || fail "idrelay is not installed in the scratch root"
file -b "$R/usr/bin/idrelay" | grep -Eq 'statically linked|static-pie linked' || fail "the binary is not static"
"$R/usr/bin/idrelay" version
entry=$(grep '^idrelay:' "$R/etc/passwd") || fail "postinst created no user idrelay in the scratch root"
echo "$entry"
uid=$(cut -d: -f3 <<<"$entry")
[ "$(stat -c '%a %u' "$R/var/lib/idrelay")" = "700 $uid" ] || fail "$R/var/lib/idrelay is not 0700 owned by idrelay"
grep -A2 '^Conffiles:' "$R/var/lib/dpkg/status" | grep -q '/etc/idrelay/idrelay.toml.example' ||
  fail "the example config is not registered as a conffile"
ok "installed into the scratch root: user, state directory, conffile"

if command -v systemd-analyze >/dev/null; then
  sed "s|/usr/bin/idrelay|$R/usr/bin/idrelay|" "$R/lib/systemd/system/idrelay.service" >"$R/idrelay.service"
  out=$(systemd-analyze verify "$R/idrelay.service" 2>&1) || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify warned: $out"
  ok "systemd-analyze verify of the installed unit: no findings"
else
  echo "check-deb.sh: systemd-analyze not installed: unit not verified"
fi

echo "== dpkg --root=$R --purge idrelay"
dpkg --root="$R" --force-script-chrootless --purge idrelay
if dpkg --root="$R" -l idrelay 2>/dev/null | grep -q '^[ip]i'; then fail "idrelay is still installed"; fi
[ ! -e "$R/var/lib/idrelay" ] || fail "purge left $R/var/lib/idrelay"
[ ! -e "$R/usr/bin/idrelay" ] || fail "remove left the binary"
ok "purged: binary, unit, example and state directory gone"
