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
        run(&mut db, &settings(), false).await.reservations_released,
        1
    );

    let role = connect_url(&t.release_url()).await;
    for sql in [
        "DELETE FROM orders_order",
        "INSERT INTO orders_order (order_number) VALUES ('X-1')",
        "SELECT order_number FROM orders_order",
        "UPDATE orders_order SET payment_status = 'paid'",
        "UPDATE products_productvariant SET stock_quantity = 0",
        "SELECT sku FROM products_productvariant",
        "UPDATE orders_inventoryreservation SET quantity = 1",
        "DELETE FROM orders_inventoryreservation",
        "UPDATE drops_dropproduct SET sold_quantity = 0",
        "TRUNCATE orders_inventoryreservation",
        "CREATE TABLE unreserver_scratch (i int)",
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
