-- Indexes unreserver recommends. Apply once, outside a transaction (CONCURRENTLY does not block
-- the shop's writes while it builds):
--
--     psql "$DATABASE_URL" -f infra/indexes.sql
--
-- The release is correct without them, but then every batch, and every idle run, scans the
-- whole reservation table; `unreserver status` lists the ones that are missing (by name).
--
-- Both are partial: they hold only the active reservations, so they stay small however many
-- expired and converted rows the table keeps, and a run with nothing due is one index lookup.

-- Due reservations in expiry order: the release pages through this index with a keyset cursor
-- (expires_at, id), so each due row is read once per run.
CREATE INDEX CONCURRENTLY IF NOT EXISTS unreserver_active_expiry_idx
    ON orders_inventoryreservation (expires_at, id)
    WHERE status = 'active';

-- Legacy reservations without expires_at, due by created_at plus the reservation timeout.
CREATE INDEX CONCURRENTLY IF NOT EXISTS unreserver_active_legacy_idx
    ON orders_inventoryreservation (created_at, id)
    WHERE status = 'active' AND expires_at IS NULL;

-- Optional, and never reported missing: it keeps the reads around the release small.
--
-- The expiry events of a window (`unreserver events --since`), the release-delay report
-- (`unreserver report`) and every run's count of orders paid after their release read the
-- expired reservations by released_at. A BRIN index suits that append-mostly column: a few
-- pages for millions of rows, next to nothing to maintain. (No index on orders_order is
-- recommended: one whose predicate named status would make every update of an order's status
-- a non-HOT update.)
CREATE INDEX CONCURRENTLY IF NOT EXISTS unreserver_released_at_brin
    ON orders_inventoryreservation USING brin (released_at);

