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

-- Optional, and never reported missing: they keep the reads around the release small.
--
-- The expiry events of a window (`unreserver events --since`) and the release-delay report
-- (`unreserver report`) read the expired reservations by released_at. A BRIN index suits that
-- append-mostly column: a few pages for millions of rows, next to nothing to maintain.
CREATE INDEX CONCURRENTLY IF NOT EXISTS unreserver_released_at_brin
    ON orders_inventoryreservation USING brin (released_at);

-- Every run counts the orders paid after the release cancelled them in the last 24 hours:
-- this index keeps that to the orders cancelled in that day. Its only column is cancelled_at,
-- so only the updates that set cancelled_at (cancellations) stop being HOT; the shop's updates
-- of an order's status or payment are not affected, as they would be by an index whose
-- predicate named those columns.
CREATE INDEX CONCURRENTLY IF NOT EXISTS unreserver_cancelled_at_idx
    ON orders_order (cancelled_at)
    WHERE cancelled_at IS NOT NULL;
