//! The role of `infra/role.sql` can do what the release needs (every other test runs the release
//! as it) and nothing else on these tables.

use tokio_postgres::error::SqlState;

use crate::common::{connect_url, run, settings, Res, TestDb};

#[tokio::test]
async fn the_release_role_can_do_nothing_but_the_release() {
    let t = TestDb::new().await;
    let v = t.variant(1).await;
    let order = t.order("pending", "pending").await;
    t.reservation(Res::new(Some(order), v, 1, "-1 minute"))
        .await;
    let mut db = t.open().await;
    assert_eq!(
        run(&mut db, &settings(), false)
            .await
            .counts
            .reservations_released,
        1
    );

    let role = connect_url(&t.release_url()).await;
    // It reads the purge's horizon (report, events and revive answer what a purge removed).
    role.batch_execute("SELECT purged_before, max_order_id FROM unreserver_purge_horizon")
        .await
        .unwrap_or_else(|e| panic!("the release role cannot read the purge's horizon: {e}"));
    for sql in [
        "DELETE FROM orders_order",
        "INSERT INTO orders_order (order_number) VALUES ('X-1')",
        "SELECT created_at FROM orders_order",
        "UPDATE orders_order SET payment_status = 'paid'",
        "UPDATE products_productvariant SET stock_quantity = 0",
        "SELECT sku FROM products_productvariant",
        "UPDATE orders_inventoryreservation SET created_at = now()",
        "UPDATE orders_order SET order_number = 'X'",
        "UPDATE drops_dropproduct SET drop_quantity = 0",
        "UPDATE orders_inventoryreservation SET quantity = 1",
        "DELETE FROM orders_inventoryreservation",
        "UPDATE drops_dropproduct SET sold_quantity = 0",
        "TRUNCATE orders_inventoryreservation",
        "CREATE TABLE unreserver_scratch (i int)",
        // The purge's horizon (infra/purge-role.sql): read only.
        "INSERT INTO unreserver_purge_horizon (purged_before) VALUES (now())",
        "UPDATE unreserver_purge_horizon SET max_order_id = 0",
        "DELETE FROM unreserver_purge_horizon",
    ] {
        let err = role
            .batch_execute(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("the release role may run: {sql}"));
        assert_eq!(
            err.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {err}"
        );
    }
}

/// `infra/role.sql` stored a SCRAM verifier, never the password (and `scripts/test.sh` fails
/// if the password reached the server's log, every statement logged).
#[tokio::test]
async fn the_role_password_is_stored_as_a_scram_verifier() {
    let t = TestDb::new().await;
    let stored = t
        .text(&format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = '{}'",
            crate::common::RELEASE_ROLE
        ))
        .await;
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");
    assert!(!stored.contains(crate::common::RELEASE_PASSWORD));
}

/// `infra/role.sql -v connection_limit=N` (the stack's `RoleConnectionLimit` output) bounds the
/// role's connections: `scripts/test.sh` passes 500.
#[tokio::test]
async fn the_role_gets_the_connection_limit_it_is_given() {
    let t = TestDb::new().await;
    let limit = t
        .i64(&format!(
            "SELECT rolconnlimit::int8 FROM pg_roles WHERE rolname = '{}'",
            crate::common::RELEASE_ROLE
        ))
        .await;
    assert_eq!(limit, 500);
}
