#!/usr/bin/env bash
# build-deb.sh [--bin PATH] [--out DIR] — builds idrelay_<version>_amd64.deb with dpkg-deb.
#
# The binary: --bin PATH (or IDRELAY_BIN), else scripts/build-static.sh builds the static
# release binary (minutes). The package (no build dependency beyond dpkg-deb):
#   /usr/bin/idrelay                          the static binary
#   /lib/systemd/system/idrelay.service       packaging/idrelay.service
#   /etc/idrelay/idrelay.toml.example         packaging/idrelay.toml (conffile)
#   /usr/share/doc/idrelay/copyright, README.md
#   DEBIAN/ control (packaging/deb/control with @VERSION@, @INSTALLED_SIZE@ filled in),
#          conffiles, postinst (creates the system user idrelay and /var/lib/idrelay; never
#          starts the service), prerm (stops it), postrm (purge removes /var/lib/idrelay)
# The version is Cargo.toml's. Files are owned by root (dpkg-deb --root-owner-group, no
# fakeroot). Writes DIR/idrelay_<version>_amd64.deb (default target/deb) and prints its path
# on the last line.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=$ROOT/packaging
BIN=${IDRELAY_BIN:-}
OUT=${CARGO_TARGET_DIR:-$ROOT/target}/deb
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=${2:?--bin needs a path}; shift ;;
    --out) OUT=${2:?--out needs a directory}; shift ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
die() { echo "build-deb.sh: $*" >&2; exit 1; }
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (Debian package dpkg)"

VERSION=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$ROOT/Cargo.toml" | head -n 1)
[ -n "$VERSION" ] || die "no version in Cargo.toml"
if [ -z "$BIN" ]; then
  BIN=$("$ROOT/scripts/build-static.sh" --print-path | tail -n 1)
fi
[ -x "$BIN" ] || die "no executable at $BIN"
file -b "$BIN" | grep -Eq 'statically linked|static-pie linked' ||
  die "$BIN is not a static binary (build it with scripts/build-static.sh)"

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/idrelay-deb.XXXXXX")
chmod 0755 "$STAGE"
trap 'rm -rf "$STAGE"' EXIT
umask 022
install -D -m 0755 "$BIN" "$STAGE/usr/bin/idrelay"
install -D -m 0644 "$P/idrelay.service" "$STAGE/lib/systemd/system/idrelay.service"
install -D -m 0644 "$P/idrelay.toml" "$STAGE/etc/idrelay/idrelay.toml.example"
install -D -m 0644 "$P/deb/copyright" "$STAGE/usr/share/doc/idrelay/copyright"
install -D -m 0644 "$P/README.md" "$STAGE/usr/share/doc/idrelay/README.md"
install -d -m 0755 "$STAGE/DEBIAN"
install -m 0644 "$P/deb/conffiles" "$STAGE/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "$P/deb/$s" "$STAGE/DEBIAN/$s"; done
SIZE_KB=$(du -sk --apparent-size --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@INSTALLED_SIZE@/$SIZE_KB/" "$P/deb/control" >"$STAGE/DEBIAN/control"
if grep -q '@[A-Z_]*@' "$STAGE/DEBIAN/control"; then die "unfilled placeholder in DEBIAN/control"; fi

mkdir -p "$OUT"
DEB=$OUT/idrelay_${VERSION}_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >&2
echo "$DEB"
