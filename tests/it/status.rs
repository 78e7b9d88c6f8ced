//! `status`: the backlog, paid orders holding stock, counter drift and missing indexes.

use crate::common::{settings, Res, TestDb};

#[tokio::test]
async fn status_reports_backlog_anomalies_drift_and_missing_indexes() {
    let t = TestDb::new().await;
    let v = t.variant(0).await;
    let w = t.variant(9).await;
    for expires in ["-2 hours", "-1 minute", "10 minutes"] {
        let order = t.order("pending", "pending").await;
        t.reservation(Res::new(Some(order), v, 1, expires)).await;
    }
    let paid = t.order("confirmed", "paid").await;
    t.reservation(Res::new(Some(paid), w, 2, "-1 hour")).await;
    // v holds 3 active units but its counter says 0: drifted. w's counter says 9, holds 2.
    let db = t.open().await;
    let report = unreserver::status(&db, &settings()).await.unwrap();
    assert_eq!(report.due_reservations, 2);
    let age = report.oldest_due_age_seconds.unwrap();
    assert!((7190.0..7300.0).contains(&age), "{age}");
    assert_eq!(report.paid_orders_with_active_reservations, 1);
    assert_eq!(report.variants_out_of_sync_count, 2);
    assert_eq!(report.variants_out_of_sync[0].id, v.min(w));
    let drift_v = report
        .variants_out_of_sync
        .iter()
        .find(|d| d.id == v)
        .unwrap();
    assert_eq!((drift_v.reserved_quantity, drift_v.active_reserved), (0, 3));
    assert!(report.missing_indexes.is_empty());
    assert_eq!(report.deadlock_timeout_ms, 1000);

    t.exec("DROP INDEX unreserver_active_legacy_idx").await;
    let db = t.open().await;
    let report = unreserver::status(&db, &settings()).await.unwrap();
    assert_eq!(
        report.missing_indexes,
        vec!["unreserver_active_legacy_idx".to_string()]
    );
}
