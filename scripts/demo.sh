#!/usr/bin/env bash
# The demo: a throwaway PostgreSQL with the reference schema and sample data covering every case
# the release decides; shows the data, `unreserver status`, a dry run (and that it changed
# nothing), a real run, and the data after. Needs cargo; installs PostgreSQL when missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=lib/tools.sh
source scripts/lib/tools.sh
need_cargo

echo "== building unreserver" >&2
cargo build --quiet --locked --bin unreserver
bin="${CARGO_TARGET_DIR:-$root/target}/debug/unreserver"

pg_start unreserver-demo
trap pg_stop EXIT
url=$(pg_create_db shop)
psql -qX -v ON_ERROR_STOP=1 "$url" -f infra/sample-data.sql >/dev/null
demo_started=$(date -u -d '-1 second' +%Y-%m-%dT%H:%M:%SZ)
# unreserver connects as production does: TLS required, chain and host name verified against
# the CA the cluster's certificate was made with.
export DATABASE_URL="${url/@127.0.0.1:/@localhost:}"
DATABASE_URL="${DATABASE_URL/sslmode=disable/sslmode=require}"
export DB_CA_BUNDLE=$PG_CA_CERT

show() {
  psql -X -P pager=off "$url" -c "
    SELECT o.order_number AS order_or_hold, o.status, o.payment_status AS payment,
           r.id AS res, r.status AS res_status, r.quantity AS qty, v.sku,
           CASE WHEN r.expires_at IS NULL THEN 'legacy, created ' || to_char(now() - r.created_at, 'HH24:MI') || ' ago'
                WHEN r.expires_at <= now() THEN 'expired ' || to_char(now() - r.expires_at, 'HH24:MI') || ' ago'
                ELSE 'expires in ' || to_char(r.expires_at - now(), 'HH24:MI') END AS expiry
      FROM orders_inventoryreservation r
      LEFT JOIN orders_order o ON o.id = r.order_id
      JOIN products_productvariant v ON v.id = r.product_variant_id
     ORDER BY r.id"
  psql -X -P pager=off "$url" -c "
    SELECT v.sku, v.reserved_quantity AS reserved,
           COALESCE(d.reserved_quantity::text, '-') AS drop_reserved
      FROM products_productvariant v LEFT JOIN drops_dropproduct d ON d.product_variant_id = v.id
     ORDER BY v.id"
}
fingerprint() {
  psql -qtAX "$url" -c "SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM (
      SELECT row(r.*)::text AS t FROM orders_inventoryreservation r UNION ALL
      SELECT row(o.*)::text FROM orders_order o UNION ALL
      SELECT row(v.*)::text FROM products_productvariant v UNION ALL
      SELECT row(d.*)::text FROM drops_dropproduct d) all_rows"
}

echo "== before"
show
echo "== unreserver status"
"$bin" status | python3 -m json.tool
before=$(fingerprint)
echo "== unreserver run --dry-run"
"$bin" run --dry-run | python3 -m json.tool
if [ "$(fingerprint)" = "$before" ]; then
  echo "(the dry run changed nothing: every row is as it was)"
else
  echo "demo: the dry run changed data" >&2
  exit 1
fi
echo "== unreserver run"
"$bin" run | python3 -m json.tool
echo "== after"
show
echo "== unreserver run (again: nothing more is due)"
"$bin" run | python3 -m json.tool

# Around the release: what the shop would be told, a late payment, the day's report.
echo "== unreserver events --since (the expiry events of this demo, read back from the database)"
"$bin" events --since "$demo_started"
late=$(psql "$url" -qAtX -c "SELECT o.id FROM orders_order o WHERE o.status = 'cancelled'
  AND EXISTS (SELECT 1 FROM orders_inventoryreservation r WHERE r.order_id = o.id
              AND r.status = 'expired' AND r.released_at = o.cancelled_at) ORDER BY o.id LIMIT 1")
if [ -n "$late" ]; then
  echo "== a payment arrives late for order $late: unreserver revive $late"
  psql "$url" -qX -c "UPDATE orders_order SET payment_status = 'paid' WHERE id = $late"
  "$bin" revive "$late" | python3 -m json.tool
fi
echo "== unreserver report --days 2"
"$bin" report --days 2 | python3 -m json.tool
