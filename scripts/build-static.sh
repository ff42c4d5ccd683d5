#!/usr/bin/env bash
# build-static.sh [--print-path] — builds the fully static release binary and checks it.
#
#   cargo build --release --target x86_64-unknown-linux-gnu with -C target-feature=+crt-static
#   in its own target dir ($CARGO_TARGET_DIR/static, default target/static) so that the
#   shared debug build is not rebuilt; then checks that `file` says "statically linked" and
#   `ldd` says "not a dynamic executable", prints the size and the headroom left, and fails
#   if the binary is larger than the budget (IDRELAY_SIZE_BUDGET bytes, default 4 MiB =
#   4194304).
# The release profile (Cargo.toml) strips, uses lto, codegen-units = 1 and panic = "abort".
# Prints the binary's path on the last line of stdout (--print-path: only that line).
# Exit: 0 ok; 1 build failed or a check failed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=x86_64-unknown-linux-gnu
BUDGET=${IDRELAY_SIZE_BUDGET:-4194304}
QUIET=0
case "${1:-}" in
  --print-path) QUIET=1 ;;
  "") ;;
  -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "build-static.sh: unknown argument $1" >&2; exit 2 ;;
esac
say() { if [ "$QUIET" = 0 ]; then echo "$@"; else echo "$@" >&2; fi; }
fail() { echo "build-static.sh: FAIL: $*" >&2; exit 1; }

cd "$ROOT"
OUT=${CARGO_TARGET_DIR:-$ROOT/target}/static
locked=()
if [ -f Cargo.lock ]; then locked=(--locked); fi
say "building static release binary for $TARGET in $OUT"
# RUSTFLAGS applies to the target only when --target is given (build scripts stay dynamic).
# Link flags (the linker is rustc's LLD on this target), each to stay under the budget:
#   -z pack-relative-relocs  RELR relocations: a static PIE keeps ASLR but its relocation
#                            table shrinks from ~130 KiB to a few KiB (glibc >= 2.36);
#   --icf=all                folds identical functions (monomorphised generics);
#   --no-eh-frame-hdr        no unwind lookup table: with panic = "abort" nothing unwinds;
#                            the only loss is a symbolised backtrace under RUST_BACKTRACE.
LINK="-C link-arg=-Wl,-z,pack-relative-relocs -C link-arg=-Wl,--icf=all -C link-arg=-Wl,--no-eh-frame-hdr"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static $LINK" \
  CARGO_TARGET_DIR=$OUT \
  cargo build --release --target "$TARGET" "${locked[@]}" --bin idrelay >&2 ||
  fail "cargo build failed"
BIN=$OUT/$TARGET/release/idrelay
[ -x "$BIN" ] || fail "no executable at $BIN"
# The unwind tables (.eh_frame, ~430 KiB, most of it from the precompiled std and the static
# glibc) are unreachable in this binary: without .eh_frame_hdr (above) the unwinder finds no
# table, and with panic = "abort" nothing unwinds; a panic still prints its message and
# aborts. So they are removed after the link. Cargo rebuilds the file only when the sources
# change, so it is stripped again only if it still has the section.
if readelf -S "$BIN" 2>/dev/null | grep -q '[[:space:]]\.eh_frame[[:space:]]'; then
  command -v objcopy >/dev/null || fail "objcopy (Debian package binutils) is needed"
  objcopy --remove-section=.eh_frame "$BIN" "$BIN.noeh" || fail "objcopy failed on $BIN"
  mv -f "$BIN.noeh" "$BIN"
  say "removed the unreachable .eh_frame section"
fi

what=$(file -b "$BIN")
case "$what" in
  *"statically linked"* | *"static-pie linked"*) say "file: $what" ;;
  *) fail "file does not report a static binary: $what" ;;
esac
ldd_out=$(ldd "$BIN" 2>&1 || true)
case "$ldd_out" in
  *"not a dynamic executable"* | *"statically linked"*) say "ldd: $(echo "$ldd_out" | head -n 1 | sed 's/^[[:space:]]*//')" ;;
  *) fail "ldd lists shared libraries: $ldd_out" ;;
esac

size=$(stat -c %s "$BIN")
mib=$(awk -v b="$size" 'BEGIN { printf "%.2f", b / 1048576 }')
budget_mib=$(awk -v b="$BUDGET" 'BEGIN { printf "%.2f", b / 1048576 }')
say "size: $size bytes ($mib MiB; budget $BUDGET bytes = $budget_mib MiB)"
[ "$size" -le "$BUDGET" ] || fail "the binary is $size bytes, $((size - BUDGET)) over the budget of $BUDGET bytes"
say "headroom: $((BUDGET - size)) bytes under the budget"
"$BIN" version >/dev/null 2>&1 || fail "$BIN does not run (\`idrelay version\` failed)"
say "version: $("$BIN" version)"
echo "$BIN"
