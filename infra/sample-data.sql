-- Sample data for the demo: one row for every case the release decides, named in order_number.
-- Times are relative to the database clock at load time. Counters are set to the sum of the
-- active reservations, except one variant that has drifted (to show a clamp).

INSERT INTO products_productvariant (id, product_id, sku, stock_quantity) VALUES
  (1, 1, 'TEE-BLACK-M', 100), (2, 1, 'TEE-BLACK-L', 100), (3, 2, 'HOODIE-GREY-M', 50),
  (4, 3, 'SNEAKER-DROP-42', 20), (5, 4, 'CAP-RED', 30);
INSERT INTO drops_dropproduct (id, drop_id, product_variant_id, drop_quantity) VALUES (1, 1, 4, 20);

INSERT INTO orders_order (id, order_number, status, payment_status, created_at, cancelled_at) VALUES
  (1,  'EXPIRED-PENDING',           'pending',   'pending',    now() - interval '1 hour', NULL),
  (2,  'PARTLY-EXPIRED-PENDING',    'pending',   'pending',    now() - interval '20 minutes', NULL),
  (3,  'NOT-YET-EXPIRED',           'pending',   'pending',    now(), NULL),
  (4,  'PAID-ANOMALY',              'confirmed', 'paid',       now() - interval '1 hour', NULL),
  (5,  'PROCESSING-IN-GRACE',       'pending',   'processing', now() - interval '20 minutes', NULL),
  (6,  'PROCESSING-GRACE-OVER',     'pending',   'processing', now() - interval '1 hour', NULL),
  (7,  'CONFIRMED-UNPAID',          'confirmed', 'pending',    now() - interval '1 hour', NULL),
  (8,  'CANCELLED-STILL-HOLDING',   'cancelled', 'pending',    now() - interval '2 hours',
        now() - interval '90 minutes'),
  (9,  'PAYMENT-FAILED',            'pending',   'failed',     now() - interval '1 hour', NULL),
  (10, 'DROP-EXPIRED',              'pending',   'pending',    now() - interval '30 minutes', NULL),
  (11, 'CONVERTED-PAID',            'confirmed', 'paid',       now() - interval '1 hour', NULL),
  (12, 'LEGACY-EXPIRED',            'pending',   'pending',    now() - interval '40 minutes', NULL),
  (13, 'LEGACY-FRESH',              'pending',   'pending',    now() - interval '5 minutes', NULL),
  (14, 'DRIFTED-COUNTER',           'pending',   'pending',    now() - interval '1 hour', NULL),
  (15, 'REFUNDED',                  'pending',   'refunded',   now() - interval '1 hour', NULL);

INSERT INTO orders_inventoryreservation
  (order_id, product_variant_id, drop_product_id, quantity, status, created_at, expires_at) VALUES
  (1,    1, NULL, 2, 'active',    now() - interval '1 hour',     now() - interval '45 minutes'),
  (2,    1, NULL, 1, 'active',    now() - interval '20 minutes', now() - interval '5 minutes'),
  (2,    2, NULL, 3, 'active',    now() - interval '1 minute',   now() + interval '14 minutes'),
  (3,    2, NULL, 1, 'active',    now(),                         now() + interval '15 minutes'),
  (4,    3, NULL, 1, 'active',    now() - interval '1 hour',     now() - interval '45 minutes'),
  (5,    3, NULL, 2, 'active',    now() - interval '20 minutes', now() - interval '5 minutes'),
  (6,    3, NULL, 1, 'active',    now() - interval '1 hour',     now() - interval '45 minutes'),
  (7,    1, NULL, 1, 'active',    now() - interval '1 hour',     now() - interval '45 minutes'),
  (8,    2, NULL, 2, 'active',    now() - interval '2 hours',    now() - interval '105 minutes'),
  (9,    5, NULL, 1, 'active',    now() - interval '1 hour',     now() - interval '45 minutes'),
  (10,   4, 1,    2, 'active',    now() - interval '30 minutes', now() - interval '15 minutes'),
  (11,   4, 1,    1, 'converted', now() - interval '1 hour',     now() - interval '45 minutes'),
  (12,   1, NULL, 1, 'active',    now() - interval '40 minutes', NULL),
  (13,   1, NULL, 1, 'active',    now() - interval '5 minutes',  NULL),
  (14,   5, NULL, 4, 'active',    now() - interval '1 hour',     now() - interval '45 minutes'),
  (15,   5, NULL, 1, 'active',    now() - interval '1 hour',     now() - interval '45 minutes'),
  (NULL, 2, NULL, 1, 'active',    now() - interval '30 minutes', now() - interval '15 minutes'),
  (NULL, 5, NULL, 1, 'active',    now() - interval '5 minutes',  now() + interval '10 minutes');

-- Counters equal to what the active reservations hold...
UPDATE products_productvariant v SET reserved_quantity = COALESCE(
  (SELECT sum(quantity) FROM orders_inventoryreservation r
    WHERE r.product_variant_id = v.id AND r.status = 'active'), 0);
UPDATE drops_dropproduct d SET reserved_quantity = COALESCE(
  (SELECT sum(quantity) FROM orders_inventoryreservation r
    WHERE r.drop_product_id = d.id AND r.status = 'active'), 0);
-- ...but for CAP-RED, which has drifted 3 units low (the release clamps it at zero).
UPDATE products_productvariant SET reserved_quantity = reserved_quantity - 3 WHERE sku = 'CAP-RED';

SELECT setval('products_productvariant_id_seq', 100), setval('drops_dropproduct_id_seq', 100),
       setval('orders_order_id_seq', 100);
