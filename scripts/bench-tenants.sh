#!/usr/bin/env bash
# The fixed cost of a tenant: a sweep of many quiet tenants (nothing due), end to end as a
# schedule or cron runs it — a new `unreserver run --all-tenants` process — against the loop
# around the CLI operators write without tenants (a new `unreserver run --tenant NAME` process
# per tenant, one after another), and against one quiet run of one shop. Both shapes: TENANTS
# schemas in one database (django-tenants' layout, listed by TENANTS_QUERY) and TENANTS
# databases (TENANT_KIND=database, {tenant} in the URL). Starts a throwaway PostgreSQL (durable
# commits), builds the release binary, and writes the "Tenants" section of BENCHMARKS.md.
# Usage: scripts/bench-tenants.sh [--tenants N] [--reps N]   (defaults: 100 tenants, 5 reps)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=lib/tools.sh
source scripts/lib/tools.sh
need_cargo

tenants=100 reps=5
while [ $# -gt 0 ]; do
  case $1 in
    --tenants) tenants=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    *) tools_die "usage: scripts/bench-tenants.sh [--tenants N] [--reps N]" ;;
  esac
done

echo "== building (release)" >&2
cargo build --release --locked --bin unreserver
binary="${CARGO_TARGET_DIR:-$root/target}/release/unreserver"

pg_start unreserver-bench-tenants bench
trap pg_stop EXIT
password=bench-tenant-password

echo "== $tenants schemas in one database" >&2
schema_url=$(pg_create_db tenants_schemas)
indexes=$(sed 's/CONCURRENTLY //' infra/indexes.sql)
{
  echo "CREATE TABLE public.customers_client (schema_name varchar(63) PRIMARY KEY);"
  for i in $(seq -w 1 "$tenants"); do
    echo "CREATE SCHEMA shop_$i; SET search_path = shop_$i;"
    cat infra/schema.sql
    echo ";"
    echo "$indexes"
    echo "; INSERT INTO public.customers_client VALUES ('shop_$i'); RESET search_path;"
  done
} | psql "$schema_url" -qX -v ON_ERROR_STOP=1 >/dev/null
schemas=$(seq -w 1 "$tenants" | sed 's/^/shop_/' | paste -sd, -)
verifier=$(printf %s "$password" | python3 scripts/scram-verifier.py)
psql "$schema_url" -qX -v role=unreserver_bench -v password_verifier="$verifier" \
  -v schemas="public,$schemas" -f infra/role.sql >/dev/null
psql "$schema_url" -qX -c "GRANT SELECT ON public.customers_client TO unreserver_bench" >/dev/null
# public keeps the shop tables of pg_create_db: the one-shop contender's database.
schema_release_url="postgres://unreserver_bench:$password@127.0.0.1:$PG_PORT/tenants_schemas?sslmode=disable"

echo "== $tenants databases" >&2
template_url=$(pg_create_db tenant_template)
psql "$template_url" -qX -v role=unreserver_bench -f infra/role.sql >/dev/null
for i in $(seq -w 1 "$tenants"); do
  echo "CREATE DATABASE db_$i TEMPLATE tenant_template;"
done | psql "$PG_ADMIN_URL" -qX -v ON_ERROR_STOP=1 >/dev/null
databases=$(seq -w 1 "$tenants" | sed 's/^/db_/' | paste -sd, -)
database_url="postgres://unreserver_bench:$password@127.0.0.1:$PG_PORT/{tenant}?sslmode=disable"

load=$(cut -d' ' -f1-3 /proc/loadavg)
section=$(BINARY=$binary SCHEMA_URL=$schema_release_url DATABASE_TEMPLATE_URL=$database_url \
  SCHEMAS=$schemas DATABASES=$databases REPS=$reps TENANTS=$tenants LOAD=$load \
  CORES=$(nproc) PG_VERSION=$PG_VERSION python3 - <<'PY'
import json, os, statistics, subprocess, time

binary, reps, n = os.environ["BINARY"], int(os.environ["REPS"]), int(os.environ["TENANTS"])
base = {"PATH": os.environ["PATH"], "TIME_BUDGET_SECONDS": "600"}

def timed(args, env):
    start = time.perf_counter()
    out = subprocess.run([binary, *args], env={**base, **env}, capture_output=True, text=True)
    wall = (time.perf_counter() - start) * 1000
    if out.returncode != 0:
        raise SystemExit(f"{args} failed ({out.returncode}): {out.stderr[-2000:]}")
    return wall, json.loads(out.stdout)

def median(f):
    return statistics.median(f() for _ in range(reps))

rows = []
shapes = [
    ("schemas in one database", {"DATABASE_URL": os.environ["SCHEMA_URL"],
        "TENANTS_QUERY": "SELECT schema_name FROM public.customers_client"},
     os.environ["SCHEMAS"].split(","), {"DATABASE_URL": os.environ["SCHEMA_URL"]}),
    ("databases", {"DATABASE_URL": os.environ["DATABASE_TEMPLATE_URL"],
        "TENANT_KIND": "database", "TENANTS": os.environ["DATABASES"]},
     os.environ["DATABASES"].split(","),
     {"DATABASE_URL": os.environ["DATABASE_TEMPLATE_URL"].replace("{tenant}", "tenant_template")}),
]
for shape, env, names, one_shop in shapes:
    def sweep():
        wall, answer = timed(["run", "--all-tenants"], env)
        assert len(answer["tenants"]) == n and not answer["failed"], answer
        return wall
    def loop():
        return sum(timed(["run", "--tenant", name], env)[0] for name in names)
    def one():
        return timed(["run"], one_shop)[0]
    s, l, o = median(sweep), median(loop), median(one)
    rows.append((shape, s, l, o))

print(f"## Tenants: the fixed cost of a quiet tenant\n")
print(f"{n} quiet tenants (nothing due), a new process per command as a schedule or cron runs it, "
      f"median of {reps}; `scripts/bench-tenants.sh --tenants {n} --reps {reps}`. The machine: "
      f"{os.environ['CORES']} cores, PostgreSQL {os.environ['PG_VERSION']}, no TLS; load average "
      f"(1, 5, 15 min) just before the run: {os.environ['LOAD']}.\n")
print("| shape | one sweep of all (`run --all-tenants`) | a loop of `run --tenant NAME`, one process each | loop ÷ sweep | one quiet shop (`run`) | a quiet tenant in a sweep |")
print("| --- | --- | --- | --- | --- | --- |")
for shape, s, l, o in rows:
    per = (s - o) / n
    print(f"| {shape} | {s:,.0f} ms | {l:,.0f} ms | {l / s:.1f}× | {o:,.1f} ms | {per:.2f} ms |")
print()
for shape, s, l, o in rows:
    per = (s - o) / n
    model = o + per * 1000
    print(f"- {shape}: 1,000 quiet tenants in one sweep ≈ {o:,.0f} ms + 1,000 × {per:.2f} ms = "
          f"{model / 1000:,.1f} s (the model: the one-shop run plus a quiet tenant's share, measured "
          f"at {n}).")
print("\nA quiet schema tenant costs its probe (one `BACKLOG` read on a shared session); a quiet "
      "database tenant costs a connection of its own (a backend fork and the password exchange) "
      "and its read. The loop pays a process, a connection, the preflight and the statements' "
      "preparation per tenant.")
PY
)
echo "$section" | tee /dev/stderr | python3 scripts/lib/md-section.py put BENCHMARKS.md "Tenants"
echo "wrote the Tenants section of BENCHMARKS.md" >&2
