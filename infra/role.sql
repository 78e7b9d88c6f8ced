-- The database role unreserver connects as: it may do exactly what the release needs on the
-- four tables, and nothing else (column-level privileges; no INSERT, DELETE, DDL or other table).
-- Run once per database, as the tables' owner or a superuser:
--
--     psql "$ADMIN_URL" -v role=unreserver -v password="$(openssl rand -hex 24)" -f infra/role.sql
--
-- then store the role and password in the Secrets Manager secret. Running it again updates the
-- password and the grants.
\set ON_ERROR_STOP on

SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'password') \gexec
SELECT format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), :'role') \gexec

-- Reservations: read what decides and what was held; mark released (FOR UPDATE needs UPDATE).
SELECT format('GRANT SELECT (id, order_id, product_variant_id, drop_product_id, quantity, status, '
              'created_at, expires_at, released_at), UPDATE (status, released_at) '
              'ON orders_inventoryreservation TO %I', :'role') \gexec
-- Orders: read the statuses; cancel.
SELECT format('GRANT SELECT (id, status, payment_status), UPDATE (status, cancelled_at, updated_at) '
              'ON orders_order TO %I', :'role') \gexec
-- Counters: give units back.
SELECT format('GRANT SELECT (id, reserved_quantity), UPDATE (reserved_quantity, updated_at) '
              'ON products_productvariant TO %I', :'role') \gexec
SELECT format('GRANT SELECT (id, reserved_quantity), UPDATE (reserved_quantity, updated_at) '
              'ON drops_dropproduct TO %I', :'role') \gexec
