-- The database role `unreserver purge` connects as: a role of its own, never the release's (which
-- may not delete). It may delete reservations and orders, read what decides which may go, and
-- read the replicas' lag (pg_monitor: without it pg_stat_replication hides the lag); nothing
-- else. Run once per database, as the tables' owner or a superuser, and again after the shop
-- adds a table that references orders_order (its key columns are granted for reading, so that
-- the purge can tell an order still referenced):
--
--     psql "$ADMIN_URL" -v role=unreserver_purge -f infra/purge-role.sql
--     psql "$ADMIN_URL" -c '\password unreserver_purge'
--
-- or, unattended, with a SCRAM verifier made by scripts/scram-verifier.py (as infra/role.sql):
--
--     psql "$ADMIN_URL" -v role=unreserver_purge \
--          -v password_verifier="$(printf %s "$PASSWORD" | scripts/scram-verifier.py)" \
--          -f infra/purge-role.sql
--
-- then store the role and password in a Secrets Manager secret of its own (docs/retention.md).
-- Running it again updates the grants (and the password, when a verifier is given).
\set ON_ERROR_STOP on

SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
\if :{?password_verifier}
SELECT CASE WHEN :'password_verifier' LIKE 'SCRAM-SHA-256$%'
            THEN format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'password_verifier')
            ELSE 'DO $$ BEGIN RAISE EXCEPTION ''password_verifier is not a SCRAM-SHA-256 verifier (make one with scripts/scram-verifier.py)''; END $$'
       END \gexec
\endif
SELECT format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), :'role') \gexec
-- The replicas' replay lag (pg_stat_replication), read before every chunk.
SELECT format('GRANT pg_monitor TO %I', :'role') \gexec

-- Reservations: read what the purge's rule and the release's due rule (the purge yields while
-- the release has due work) read; delete. UPDATE on released_at only because PostgreSQL
-- requires UPDATE on one column to lock a row (FOR UPDATE ... SKIP LOCKED); the purge never
-- updates.
SELECT format('GRANT SELECT (id, order_id, status, created_at, expires_at, released_at), '
              'UPDATE (released_at), DELETE ON orders_inventoryreservation TO %I', :'role') \gexec
-- Orders: read the statuses and cancelled_at (the rule "cancelled by the release"); delete.
-- UPDATE on cancelled_at only to lock the row, as above.
SELECT format('GRANT SELECT (id, status, payment_status, cancelled_at), UPDATE (cancelled_at), '
              'DELETE ON orders_order TO %I', :'role') \gexec
-- Every other table with a foreign key to orders_order: its key columns, read to skip an order
-- still referenced (the check the purge runs before it deletes an order).
SELECT format('GRANT SELECT (%s) ON %I.%I TO %I',
              (SELECT string_agg(format('%I', a.attname), ', ')
                 FROM pg_attribute a WHERE a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)),
              n.nspname, t.relname, :'role')
  FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
 WHERE c.contype = 'f' AND c.conparentid = 0 AND c.confrelid = to_regclass('orders_order')
   AND c.conrelid <> to_regclass('orders_inventoryreservation') \gexec

-- The retention horizon: one row, written by the purge in each chunk that deleted rows (how far
-- back rows may be gone, and the highest id of an order it deleted), read by the release's role
-- so that `report`, `events` and `revive` answer a purged range as purged, not as empty
-- (docs/retention.md). Created here, by the tables' owner: the purge role creates nothing.
CREATE TABLE IF NOT EXISTS unreserver_purge_horizon (
  id boolean PRIMARY KEY DEFAULT true CHECK (id),
  purged_before timestamptz NOT NULL,
  max_order_id bigint,
  updated_at timestamptz NOT NULL DEFAULT now()
);
SELECT format('GRANT SELECT, INSERT, UPDATE ON unreserver_purge_horizon TO %I', :'role') \gexec
-- The release's role (-v release_role=..., default unreserver) only reads it; infra/role.sql
-- grants the same when it runs after this file.
\if :{?release_role}
\else
\set release_role unreserver
\endif
SELECT format('GRANT SELECT ON unreserver_purge_horizon TO %I', :'release_role')
 WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'release_role') \gexec
