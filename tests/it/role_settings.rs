//! The role's own session defaults (`ALTER ROLE ... SET`, or the database's) never change what
//! the release does: the session pins every setting a statement's meaning depends on.

use unreserver::Database;

use crate::common::{run, settings, TestDb};

/// A role whose sessions default to `SERIALIZABLE` and read-only transactions, as some shops set
/// role- or database-wide: the release's session is read-write `READ COMMITTED` all the same,
/// and a due order is released (read-only, the old session failed its first batch with "cannot
/// execute UPDATE in a read-only transaction"; serializable, every batch that met a checkout's
/// commit failed with SQLSTATE 40001 until `retries_exhausted`).
#[tokio::test]
async fn a_role_set_to_serializable_and_read_only_still_releases() {
    let t = TestDb::new().await;
    let (variant, order, _) = t.one_due_order(2).await;
    let role = t.role("pinned").await;
    t.exec(&format!(
        "ALTER ROLE {role} SET default_transaction_isolation = 'serializable'; \
         ALTER ROLE {role} SET default_transaction_read_only = on"
    ))
    .await;
    let mut config = t.config();
    config.user(&role).password("pinned");
    unreserver::apply_defaults(&mut config);
    let s = settings();
    let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
    let mut db = Database::open(&config, &tls, s.lock_timeout_ms)
        .await
        .unwrap_or_else(|e| panic!("cannot open: {}", e.chain()));
    let row = db
        .client
        .query_one(
            "SELECT current_setting('transaction_isolation') AS isolation, \
                    current_setting('transaction_read_only') AS read_only",
            &[],
        )
        .await
        .unwrap();
    let pinned: (String, String) = (row.get("isolation"), row.get("read_only"));
    assert_eq!(pinned, ("read committed".into(), "off".into()));
    let report = run(&mut db, &s, false).await;
    assert_eq!(report.counts.reservations_released, 1, "{report:?}");
    assert_eq!(t.reserved(variant).await, 0);
    assert_eq!(t.order_status(order).await, "cancelled");
}
