-- The database role unreserver connects as: it may do exactly what the release needs on the
-- four tables, and nothing else (column-level privileges; no INSERT, DELETE, DDL or other table).
-- Run once per database, as the tables' owner or a superuser:
--
--     psql "$ADMIN_URL" -v role=unreserver -f infra/role.sql
--     psql "$ADMIN_URL" -c '\password unreserver'
--
-- `\password` asks for the password and sends only its SCRAM verifier: the password is never on
-- a command line, in the shell's history, or in a statement the server may log. Unattended,
-- pass a verifier made by scripts/scram-verifier.py (it reads the password on standard input):
--
--     psql "$ADMIN_URL" -v role=unreserver \
--          -v password_verifier="$(printf %s "$PASSWORD" | scripts/scram-verifier.py)" -f infra/role.sql
--
-- then store the role and password in the Secrets Manager secret. With RDS IAM database
-- authentication instead, skip the password and grant the role rds_iam (RDS only):
--
--     GRANT rds_iam TO unreserver;
--
-- Up to PostgreSQL 14 every role may create objects in the schema public, through PUBLIC, which
-- cannot be revoked for one role. To take that right away (it affects the shop's own roles too:
-- check that its migrations run as the schema's owner), opt in with -v revoke_public_create=on.
-- PostgreSQL 15 and later grant it to the database owner only.
--
-- The connections the role may hold at once: pass the stack's RoleConnectionLimit output (the
-- template's functions' concurrency times their connections, plus two for an operator), so
-- that a burst of invocations can never take the connections the shop's checkouts need:
--
--     psql "$ADMIN_URL" -v role=unreserver -v connection_limit=13 -f infra/role.sql
--
-- A connection beyond it is refused (SQLSTATE 53300), which the tool reports as the retryable
-- TooManyConnections. Without it the role's limit is left as it is (-1 for a new role: none).
--
-- Running it again updates the grants (and the password, when a verifier is given).
--
-- Tenants in schemas (TENANT_KIND=schema, docs/tenants.md): pass the schemas, separated by
-- commas, and the grants below are made in each (run it again when a tenant is added: column
-- privileges have no default privileges):
--
--     psql "$ADMIN_URL" -v role=unreserver -v schemas=shop_a,shop_b -f infra/role.sql
--
-- Without -v schemas, the grants are made in the current schema (public by default).
\set ON_ERROR_STOP on
\if :{?schemas}
\else
SELECT current_schema() AS schemas \gset
\endif

SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
\if :{?password_verifier}
SELECT CASE WHEN :'password_verifier' LIKE 'SCRAM-SHA-256$%'
            THEN format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'password_verifier')
            ELSE 'DO $$ BEGIN RAISE EXCEPTION ''password_verifier is not a SCRAM-SHA-256 verifier (make one with scripts/scram-verifier.py)''; END $$'
       END \gexec
\endif
\if :{?connection_limit}
SELECT format('ALTER ROLE %I CONNECTION LIMIT %s', :'role', (:'connection_limit')::int) \gexec
\endif
\if :{?revoke_public_create}
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
\endif
CREATE TEMPORARY TABLE unreserver_grant_schemas AS
  SELECT DISTINCT btrim(name) AS name FROM unnest(string_to_array(:'schemas', ',')) AS name
   WHERE btrim(name) <> '';
SELECT format('GRANT USAGE ON SCHEMA %I TO %I', name, :'role') FROM unreserver_grant_schemas \gexec

-- Reservations: read what decides and what was held; mark released (FOR UPDATE needs UPDATE);
-- revive (a late payment) makes them active again with a new expires_at.
SELECT format('GRANT SELECT (id, order_id, product_variant_id, drop_product_id, quantity, status, '
              'created_at, expires_at, released_at), UPDATE (status, released_at, expires_at) '
              'ON %I.orders_inventoryreservation TO %I', name, :'role') FROM unreserver_grant_schemas \gexec
-- Orders: read the statuses; cancel (and reopen on revive). The expiry events read
-- order_number and cancelled_at.
SELECT format('GRANT SELECT (id, order_number, status, payment_status, cancelled_at), '
              'UPDATE (status, cancelled_at, updated_at) ON %I.orders_order TO %I', name, :'role')
  FROM unreserver_grant_schemas \gexec
-- Counters: give units back; revive reads the stock columns to check there is room. xmin (a
-- system column, granted like any other): which transaction wrote a counter row last, the sign
-- that a checkout updated it between two batches (docs/design.md, "Batch size and workers").
SELECT format('GRANT SELECT (id, stock_quantity, reserved_quantity, xmin), '
              'UPDATE (reserved_quantity, updated_at) ON %I.products_productvariant TO %I', name,
              :'role') FROM unreserver_grant_schemas \gexec
SELECT format('GRANT SELECT (id, drop_quantity, reserved_quantity, sold_quantity, xmin), '
              'UPDATE (reserved_quantity, updated_at) ON %I.drops_dropproduct TO %I', name, :'role')
  FROM unreserver_grant_schemas \gexec
