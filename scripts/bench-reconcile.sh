#!/usr/bin/env bash
# Measures `unreserver reconcile` over a shop of 2,000 variants, 500 drops and 1,000,000 active
# reservations with the recommended indexes (infra/indexes.sql): the dry run (the reading) and
# `--apply` with 30 counters drifted, medians of interleaved repetitions. Writes its own section
# of BENCHMARKS.md ("Reconcile"); `scripts/bench.sh` carries it over.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=lib/tools.sh
source scripts/lib/tools.sh
need_cargo
reps=${RECONCILE_REPS:-5}

echo "== building (release)" >&2
cargo build --release --locked --bin unreserver
bin="${CARGO_TARGET_DIR:-$root/target}/release/unreserver"

pg_start unreserver-bench-reconcile bench
trap pg_stop EXIT
url=$(pg_create_db reconcile_bench)
psql -qX "$url" -f infra/schema.sql >/dev/null
echo "== seeding 2,000 variants, 500 drops, 1,000,000 active reservations" >&2
psql -qX "$url" >/dev/null <<'SQL'
INSERT INTO products_productvariant (product_id, sku, stock_quantity)
  SELECT g, 'SKU-' || g, 1000000 FROM generate_series(1, 2000) g;
INSERT INTO drops_dropproduct (drop_id, product_variant_id, drop_quantity)
  SELECT 1, g, 1000000 FROM generate_series(1, 500) g;
INSERT INTO orders_inventoryreservation (product_variant_id, drop_product_id, quantity, expires_at)
  SELECT 1 + g % 2000, CASE WHEN g % 2000 < 500 THEN 1 + g % 2000 END, 1 + g % 3,
         now() + interval '1 day'
    FROM generate_series(1, 1000000) g;
UPDATE products_productvariant v SET reserved_quantity = s.units
  FROM (SELECT product_variant_id AS id, sum(quantity) AS units FROM orders_inventoryreservation
         WHERE status = 'active' GROUP BY 1) s WHERE s.id = v.id;
UPDATE drops_dropproduct d SET reserved_quantity = s.units
  FROM (SELECT drop_product_id AS id, sum(quantity) AS units FROM orders_inventoryreservation
         WHERE status = 'active' AND drop_product_id IS NOT NULL GROUP BY 1) s WHERE s.id = d.id;
SQL
psql -qX "$url" -f infra/indexes.sql >/dev/null
psql -qX "$url" -c "VACUUM ANALYZE" >/dev/null
drift() {
  psql -qX "$url" -c "UPDATE products_productvariant SET reserved_quantity = reserved_quantity + 2 \
    WHERE id % 100 = 7; UPDATE drops_dropproduct SET reserved_quantity = reserved_quantity + 1 \
    WHERE id % 50 = 3" >/dev/null
}
# One command, timed; its exit code must be the one given (0 nothing left, 3 drift listed).
timed() {
  local want=$1; shift
  local start end code=0
  start=$(date +%s%N)
  DATABASE_URL="$url" "$bin" reconcile "$@" >"$PG_DIR/out.json" 2>"$PG_DIR/err.log" || code=$?
  end=$(date +%s%N)
  [ "$code" = "$want" ] || { cat "$PG_DIR/err.log" >&2; pg_die "reconcile $* exited $code, not $want"; }
  echo $(( (end - start) / 1000000 ))
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
dry=() apply=() clean=()
for _ in $(seq "$reps"); do
  drift
  dry+=("$(timed 3)")
  drifted=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["drifted"])' "$PG_DIR/out.json")
  apply+=("$(timed 0 --apply)")
  clean+=("$(timed 0)")
done
rows=$(psql -qtAX "$url" -c "SELECT count(*) FROM orders_inventoryreservation WHERE status = 'active'")
{
  echo "## Reconcile"
  echo
  echo "Measured by \`scripts/bench-reconcile.sh\` on $(date -u +%Y-%m-%dT%H:%MZ): \`unreserver reconcile\`"
  echo "(release build, whole process: connect, preflight, read, confirm each drifted row under its"
  echo "lock, list the untouched orders) over 2,000 variants, 500 drops and $rows active"
  echo "reservations, with the recommended indexes; $drifted counters drifted before each"
  echo "repetition; medians of $reps interleaved repetitions, in ms."
  echo
  echo "| reconcile | median ms | all (ms) |"
  echo "|---|---|---|"
  echo "| dry run, $drifted drifted (exit 3) | $(printf '%s\n' "${dry[@]}" | median) | ${dry[*]} |"
  echo "| \`--apply\`, $drifted repaired (exit 0) | $(printf '%s\n' "${apply[@]}" | median) | ${apply[*]} |"
  echo "| dry run, nothing drifted (exit 0) | $(printf '%s\n' "${clean[@]}" | median) | ${clean[*]} |"
} | tee /dev/stderr | python3 scripts/lib/md-section.py put BENCHMARKS.md "Reconcile"
echo "wrote the Reconcile section of BENCHMARKS.md" >&2
