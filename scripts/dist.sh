#!/usr/bin/env bash
# Builds what a shop can download, by hand (not in CI: release builds are heavy):
#   dist/unreserver-VERSION-x86_64-linux-musl, dist/unreserver-VERSION-aarch64-linux-musl
#     static binaries (musl; OpenSSL built from source and linked in: the vendored-openssl
#     feature), each shown static (`file`, and run in an empty root with no libc);
#   dist/unreserver-VERSION-x86_64-windows.exe (x86_64-pc-windows-gnu, Debian's mingw-w64), run
#     under Wine (`--version`; then `run` against DIST_DATABASE_URL, or else against a
#     throwaway PostgreSQL with the sample data (scripts/lib/pg.sh): over TLS through Windows'
#     own stack first, with sslmode=disable and the reason when Wine's cannot);
#   dist/SHA256SUMS;
#   an OCI image unreserver:VERSION, FROM scratch (the static binary, the CA bundle, user
#     65532), built offline with buildah (cgroup v1 here: --cgroup-manager=cgroupfs) and saved
#     as dist/unreserver-VERSION-image.tar.
# `unreserver --version` names the commit: "0.1.0 (commit abc1234)".
# Tools: rustup targets (installed when missing), cargo-zigbuild and ziglang from PyPI (the
# aarch64 cross-link), Debian's musl-tools, gcc-mingw-w64-x86-64, wine64, buildah, file. Each
# step says clearly when a tool cannot be had, and skips only that step.
# Usage: scripts/dist.sh [--no-image] [--no-windows]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib/tools.sh
source scripts/lib/tools.sh
# shellcheck source=lib/pg.sh
source scripts/lib/pg.sh
need_cargo
# Where cargo puts what it builds (CARGO_TARGET_DIR, as the other scripts honour it).
target_dir=${CARGO_TARGET_DIR:-$root/target}

image=1 windows=1
for arg in "$@"; do
  case $arg in
    --no-image) image=0 ;;
    --no-windows) windows=0 ;;
    *) tools_die "usage: scripts/dist.sh [--no-image] [--no-windows]" ;;
  esac
done

version=$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')
commit=$(git rev-parse --short=12 HEAD)
git diff --quiet HEAD || commit="$commit-dirty"
export UNRESERVER_VERSION="$version (commit $commit)"
out="$root/dist"
rm -rf "$out"
mkdir -p "$out"
skipped=()

apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 ||
    { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2; }
}

need_target() {
  rustup target list --installed | grep -qx "$1" || rustup target add "$1" >&2
}

# A static Linux binary for TARGET, named NAME: a release build with OpenSSL vendored.
build_linux() {
  local target=$1 name=$2
  echo "== $target" >&2
  need_target "$target" || { skipped+=("$name: rustup target $target cannot be installed"); return 0; }
  command -v cargo-zigbuild >/dev/null || python3 -m pip install -q cargo-zigbuild ziglang >&2 || true
  if command -v cargo-zigbuild >/dev/null; then
    cargo zigbuild --locked --release --features vendored-openssl --target "$target" --bin unreserver
  elif [ "$target" = x86_64-unknown-linux-musl ] && { command -v musl-gcc >/dev/null || apt_install musl-tools; }; then
    CC_x86_64_unknown_linux_musl=musl-gcc \
      cargo build --locked --release --features vendored-openssl --target "$target" --bin unreserver
  else
    skipped+=("$name: neither cargo-zigbuild (PyPI) nor musl-tools (Debian) can be had")
    return 0
  fi
  cp "$target_dir/$target/release/unreserver" "$out/$name"
  command -v file >/dev/null || apt_install file || true
  if command -v file >/dev/null; then
    file "$out/$name" | tee /dev/stderr | grep -q "statically linked" ||
      tools_die "$name is not statically linked"
  fi
  # Run it where there is nothing but itself: no libc, no loader, no CA bundle.
  if [ "$target" = x86_64-unknown-linux-musl ] && command -v chroot >/dev/null && [ "$(id -u)" = 0 ]; then
    local empty
    empty=$(mktemp -d)
    cp "$out/$name" "$empty/unreserver"
    chroot "$empty" /unreserver --version | tee /dev/stderr | grep -qF "commit $commit" ||
      tools_die "$name does not run in an empty root, or does not name the commit"
    rm -rf "$empty"
  fi
}

build_linux x86_64-unknown-linux-musl "unreserver-$version-x86_64-linux-musl"
build_linux aarch64-unknown-linux-musl "unreserver-$version-aarch64-linux-musl"

# wine_run WINE EXE: `EXE run` under Wine against DIST_DATABASE_URL, or a throwaway PostgreSQL
# with the sample data: over TLS first (Windows' own stack, SChannel, verifying the cluster's
# CA given in DB_CA_BUNDLE), else with sslmode=disable, saying why.
wine_run() {
  local wine=$1 exe=$2 url tls_url
  if [ -n "${DIST_DATABASE_URL:-}" ]; then
    url=$DIST_DATABASE_URL tls_url=$DIST_DATABASE_URL
  else
    pg_start unreserver-dist fast
    trap pg_stop EXIT
    url=$(pg_create_db dist)
    psql -qX -v ON_ERROR_STOP=1 "$url" -f infra/sample-data.sql >/dev/null
    tls_url=${url/@127.0.0.1:/@localhost:}
    tls_url=${tls_url/sslmode=disable/sslmode=require}
    export DB_CA_BUNDLE=$PG_CA_CERT
  fi
  if WINEDEBUG=-all DATABASE_URL="$tls_url" "$wine" "$exe" run >"$out/wine-run.json" 2>"$out/wine-run.log"; then
    echo "unreserver.exe run under Wine, over TLS (SChannel): $(head -c 300 "$out/wine-run.json")" >&2
    return 0
  fi
  echo "unreserver.exe run under Wine over TLS failed: $(tail -n 3 "$out/wine-run.log")" >&2
  [ "$tls_url" != "$url" ] || tools_die "unreserver.exe run failed under Wine against DIST_DATABASE_URL"
  WINEDEBUG=-all DATABASE_URL="$url" "$wine" "$exe" run >"$out/wine-run.json" 2>"$out/wine-run.log" ||
    tools_die "unreserver.exe run failed under Wine with sslmode=disable too: $(tail -n 3 "$out/wine-run.log")"
  echo "unreserver.exe run under Wine with sslmode=disable (TLS through Wine failed, above): $(head -c 300 "$out/wine-run.json")" >&2
}

# wine_shim DIR: DIR/bcryptprimitives.dll for the Wine run only (never shipped). Rust's standard
# library takes its random numbers from that DLL's ProcessPrng, which Windows 10 and later have
# and Wine 8 (Debian 12's) lacks: the .exe would not load ("bcryptprimitives.dll not found").
# The stand-in, built with mingw-w64, asks advapi32's RtlGenRandom instead.
wine_shim() {
  local dir=$1
  cat >"$dir/shim.c" <<'C'
#include <windows.h>
#define SystemFunction036 NTAPI SystemFunction036
#include <ntsecapi.h>
#undef SystemFunction036
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
  while (len > 0) {
    ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
    if (!RtlGenRandom(data, chunk)) return FALSE;
    data += chunk;
    len -= chunk;
  }
  return TRUE;
}
C
  x86_64-w64-mingw32-gcc -O2 -shared -o "$dir/bcryptprimitives.dll" "$dir/shim.c" -ladvapi32
}

if [ "$windows" = 1 ]; then
  echo "== x86_64-pc-windows-gnu" >&2
  exe="unreserver-$version-x86_64-windows.exe"
  if need_target x86_64-pc-windows-gnu && { command -v x86_64-w64-mingw32-gcc >/dev/null || apt_install gcc-mingw-w64-x86-64; }; then
    cargo build --locked --release --target x86_64-pc-windows-gnu --bin unreserver
    cp "$target_dir/x86_64-pc-windows-gnu/release/unreserver.exe" "$out/$exe"
    if command -v wine64 >/dev/null || command -v wine >/dev/null || apt_install wine64 wine; then
      wine=$(command -v wine64 || command -v wine)
      wine_dir=$(mktemp -d)
      cp "$out/$exe" "$wine_dir/unreserver.exe"
      wine_shim "$wine_dir"
      WINEDEBUG=-all "$wine" "$wine_dir/unreserver.exe" --version | tee /dev/stderr | grep -qF "commit $commit" ||
        tools_die "$exe does not run under Wine, or does not name the commit"
      wine_run "$wine" "$wine_dir/unreserver.exe"
      rm -rf "$wine_dir"
    else
      skipped+=("$exe under Wine: Debian's wine64 cannot be installed")
    fi
  else
    skipped+=("$exe: the rustup target or Debian's gcc-mingw-w64-x86-64 cannot be had")
  fi
fi

(cd "$out" && sha256sum unreserver-* >SHA256SUMS && cat SHA256SUMS >&2)

if [ "$image" = 1 ]; then
  echo "== image unreserver:$version (FROM scratch)" >&2
  bin="$out/unreserver-$version-x86_64-linux-musl"
  if [ ! -f "$bin" ]; then
    skipped+=("image: no static x86_64 binary")
  elif command -v buildah >/dev/null || apt_install buildah; then
    ctr=$(buildah --cgroup-manager=cgroupfs from scratch)
    buildah copy "$ctr" "$bin" /unreserver >/dev/null
    buildah copy "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
    buildah config --user 65532:65532 --entrypoint '["/unreserver"]' --cmd '["follow", "--listen", "0.0.0.0:9187"]' \
      --port 9187 --label "org.opencontainers.image.version=$UNRESERVER_VERSION" "$ctr"
    buildah commit "$ctr" "unreserver:$version" >/dev/null
    buildah rm "$ctr" >/dev/null
    buildah push "unreserver:$version" "oci-archive:$out/unreserver-$version-image.tar"
    (cd "$out" && sha256sum "unreserver-$version-image.tar" >>SHA256SUMS)
    # Run it if this machine's runtime can; otherwise the empty-root run above stands for it.
    if ! command -v podman >/dev/null; then
      echo "podman is not installed: the binary's run in an empty root stands for the image's" >&2
    elif podman --cgroup-manager=cgroupfs run --rm "localhost/unreserver:$version" --version 2>/dev/null; then
      echo "the image runs (podman)" >&2
    else
      echo "podman cannot run containers here: the binary's run in an empty root stands for it" >&2
    fi
  else
    skipped+=("image: Debian's buildah cannot be installed")
  fi
fi

echo "== dist/ for $UNRESERVER_VERSION:" >&2
ls -l "$out" >&2
for s in "${skipped[@]}"; do echo "skipped: $s" >&2; done
