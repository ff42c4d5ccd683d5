#!/usr/bin/env bash
# install.sh [--bin PATH] [--destdir DIR] — installs idrelay without a package manager.
#
# Installs the same layout as the .deb, for hosts without dpkg:
#   /usr/bin/idrelay                        the binary (--bin PATH, else the static build in
#                                           target/static, else scripts/build-static.sh builds it)
#   /etc/systemd/system/idrelay.service     the hardened unit (admin-installed units go here)
#   /etc/idrelay/idrelay.toml.example       the example config (never overwrites idrelay.toml)
#   the system user `idrelay` and /var/lib/idrelay (0700, owned by idrelay)
# then reloads systemd. It never enables or starts the service. --destdir DIR installs the
# files under DIR only (no user, no systemctl): for staging or a look at the layout.
# Needs root unless --destdir is given. Refuses when the idrelay .deb is installed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=$ROOT/packaging
BIN=${IDRELAY_BIN:-}
DEST=
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=${2:?--bin needs a path}; shift ;;
    --destdir) DEST=${2:?--destdir needs a directory}; shift ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

if [ -z "$DEST" ]; then
  [ "$(id -u)" = 0 ] || die "run as root (or with --destdir DIR to stage the files)"
  if dpkg-query -W -f '${Status}' idrelay 2>/dev/null | grep -q 'ok installed'; then
    die "the idrelay package is installed: upgrade it with the .deb instead"
  fi
fi
if [ -z "$BIN" ]; then
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/static/x86_64-unknown-linux-gnu/release/idrelay
  [ -x "$BIN" ] || BIN=$("$ROOT/scripts/build-static.sh" --print-path | tail -n 1)
fi
[ -x "$BIN" ] || die "no executable at $BIN"
"$BIN" version >/dev/null || die "$BIN does not run on this host"

umask 022
install -D -m 0755 "$BIN" "$DEST/usr/bin/idrelay.new"
mv -f "$DEST/usr/bin/idrelay.new" "$DEST/usr/bin/idrelay" # atomic: a running agent keeps its file
install -D -m 0644 "$P/idrelay.service" "$DEST/etc/systemd/system/idrelay.service"
install -D -m 0644 "$P/idrelay.toml" "$DEST/etc/idrelay/idrelay.toml.example"
say "installed $DEST/usr/bin/idrelay ($("$DEST/usr/bin/idrelay" version))"
say "installed $DEST/etc/systemd/system/idrelay.service and $DEST/etc/idrelay/idrelay.toml.example"
if [ -n "$DEST" ]; then
  say "--destdir: no user, state directory or systemctl"
  exit 0
fi

if ! getent passwd idrelay >/dev/null; then
  if command -v adduser >/dev/null; then
    adduser --system --group --home /var/lib/idrelay --no-create-home \
      --gecos "idrelay sync agent" --quiet idrelay
  else
    useradd --system --user-group --home-dir /var/lib/idrelay --no-create-home \
      --shell /usr/sbin/nologin --comment "idrelay sync agent" idrelay
  fi
  say "created the system user idrelay"
fi
install -d -m 0700 -o idrelay -g idrelay /var/lib/idrelay
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  say "systemd reloaded"
fi
cat <<'NEXT'
Next:
  1. cp /etc/idrelay/idrelay.toml.example /etc/idrelay/idrelay.toml and edit it
  2. put the bind password and the SCIM token into root-only files (mode 600):
       sh -c 'umask 077; systemd-ask-password "LDAP bind password:" >/etc/idrelay/ldap-password'
       sh -c 'umask 077; systemd-ask-password "SCIM bearer token:" >/etc/idrelay/scim-token'
  3. idrelay --allow-root --config /etc/idrelay/idrelay.toml check
  4. systemctl enable --now idrelay; journalctl -u idrelay -f
NEXT
