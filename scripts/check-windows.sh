#!/usr/bin/env bash
# Checks that the command line compiles for Windows (x86_64-pc-windows-gnu: Debian's mingw-w64
# for the C parts; its signal handling is Ctrl-C and Ctrl-Break there) with clippy's lints, no
# release build. Installs the rustup target and Debian's gcc-mingw-w64-x86-64 when missing,
# and says clearly when it cannot (then it skips, exit 0).
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-pc-windows-gnu
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  rustup target add "$target" >&2 || { echo "== cannot install the rustup target $target: Windows check skipped" >&2; exit 0; }
fi
if ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-mingw-w64-x86-64 >&2 ||
      { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-mingw-w64-x86-64 >&2; } || true
  fi
  command -v x86_64-w64-mingw32-gcc >/dev/null ||
    { echo "== Debian's gcc-mingw-w64-x86-64 cannot be installed: Windows check skipped" >&2; exit 0; }
fi
cargo clippy --locked --target "$target" --bin unreserver -- -D warnings
