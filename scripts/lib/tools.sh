# Checks for the tools the scripts need, installing the PyPI ones when missing. Source this file.

tools_die() { echo "$*" >&2; exit 1; }

# need_debian_pkg COMMAND PACKAGE: installs Debian's PACKAGE when COMMAND is missing (reading
# the package lists first if needed); false when it stays missing.
need_debian_pkg() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's '$pkg' package (for $cmd)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >&2 ||
      { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >&2; } ||
      true
  fi
  command -v "$cmd" >/dev/null
}

# need_chromium: Debian's headless Chromium, for the screenshot of the follower's page
# (tests/it/page.rs); says so when it cannot be installed (the test then skips its screenshot).
need_chromium() {
  need_debian_pkg chromium chromium ||
    echo "== Debian's chromium cannot be installed here: the page's screenshot test is skipped" >&2
}

need_cargo() {
  command -v cargo >/dev/null || tools_die "cargo missing: install Rust with rustup (https://rustup.rs)"
}

# need_pip_tool COMMAND PIP-SPEC: installs PIP-SPEC from PyPI when COMMAND is missing.
need_pip_tool() {
  local cmd=$1 spec=$2
  command -v "$cmd" >/dev/null && return 0
  command -v python3 >/dev/null || tools_die "python3 missing: needed to install $spec from PyPI"
  echo "installing $spec from PyPI (for $cmd)" >&2
  python3 -m pip install -q "$spec" >&2 || tools_die "could not install $spec with pip"
  hash -r
  command -v "$cmd" >/dev/null || tools_die "$cmd still missing after pip install $spec (is pip's bin directory on PATH?)"
}

need_cargo_lambda() {
  cargo lambda --version >/dev/null 2>&1 && return 0
  need_pip_tool cargo-lambda cargo-lambda
  cargo lambda --version >/dev/null 2>&1 || tools_die "cargo lambda does not run after installing cargo-lambda"
}

# need_gnu_time: GNU time at /usr/bin/time (the benchmark's peak-RSS figures), installing
# Debian's 'time' package when missing and possible.
need_gnu_time() {
  [ -x /usr/bin/time ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's 'time' package (GNU time, for the peak RSS figures)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >&2 || true
  fi
  [ -x /usr/bin/time ] || tools_die "/usr/bin/time missing: install GNU time (Debian's 'time' package)"
}

# need_stress_ng: stress-ng (the CPU hog CI runs a test pass beside), installing Debian's
# 'stress-ng' package when missing and possible (reading the package lists first if needed).
need_stress_ng() {
  command -v stress-ng >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's 'stress-ng' package (the CPU hog of the loaded test pass)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stress-ng >&2 ||
      { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stress-ng >&2; } ||
      true
  fi
  command -v stress-ng >/dev/null || tools_die "stress-ng missing: install it (Debian's 'stress-ng' package)"
}

# wait_for_port PORT NAME LOG: waits up to 60 s for a listener on 127.0.0.1:PORT.
wait_for_port() {
  local port=$1 name=$2 log=$3
  for _ in $(seq 1 120); do
    if python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(('127.0.0.1', $port)))" 2>/dev/null; then
      return 0
    fi
    sleep 0.5
  done
  cat "$log" >&2
  tools_die "$name did not start listening on port $port"
}

# need_pip_module MODULE PIP-SPEC: installs PIP-SPEC from PyPI when python3 cannot import MODULE.
need_pip_module() {
  local module=$1 spec=$2
  python3 -c "import $module" 2>/dev/null && return 0
  echo "installing $spec from PyPI (for the Python module $module)" >&2
  python3 -m pip install -q "$spec" >&2 || tools_die "could not install $spec with pip"
  python3 -c "import $module" 2>/dev/null || tools_die "$module still missing after pip install $spec"
}
