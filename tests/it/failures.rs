//! Failures leave nothing half-done: a failed batch is rolled back whole, and a schema that
//! does not fit is named before anything changes.

use unreserver::Error;
use unreserver::RunOptions;
use unreserver::StopReason;

use crate::common::{run, settings, Res, TestDb};

/// A batch that fails part-way (here a trigger on the drop counters, which are updated last)
/// leaves every row of that batch as it was; batches committed before it stay committed; the
/// next run, once the fault is gone, completes the work.
#[tokio::test]
async fn a_failed_batch_leaves_its_rows_unchanged() {
    let t = TestDb::new().await;
    let v = t.variant(3).await;
    let d = t.drop_product(v, 2).await;
    let first = t.order("pending", "pending").await;
    t.reservation(Res::new(Some(first), v, 1, "-10 minutes"))
        .await;
    let second = t.order("pending", "pending").await;
    let mut r = Res::new(Some(second), v, 2, "-5 minutes");
    r.drop = Some(d);
    t.reservation(r).await;
    t.exec(
        "CREATE FUNCTION fail_drop_update() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$; \
         CREATE TRIGGER fail_drop_update BEFORE UPDATE ON drops_dropproduct \
           FOR EACH ROW EXECUTE FUNCTION fail_drop_update()",
    )
    .await;
    let mut s = settings();
    s.batch_size = Some(1);
    let mut db = t.open_with(&s).await;
    let second_before = t.order_snapshot(second).await;
    let options = RunOptions::default();
    let failure = unreserver::run(&mut db, &s, &options).await.unwrap_err();
    assert!(
        failure.error.chain().contains("injected fault"),
        "{}",
        failure.error.chain()
    );
    assert!(!failure.error.is_retryable());
    assert_eq!(failure.report.stopped_reason, StopReason::Failed);
    assert_eq!(
        failure.report.counts.reservations_released, 1,
        "the first batch committed"
    );
    let second_after = t.order_snapshot(second).await;
    assert_eq!(
        second_before, second_after,
        "the failed batch left changes behind"
    );
    assert_eq!(
        t.reserved(v).await,
        2,
        "only the first batch's unit came back"
    );
    assert_eq!(t.drop_reserved(d).await, 2);

    t.exec("DROP TRIGGER fail_drop_update ON drops_dropproduct")
        .await;
    let report = run(&mut db, &s, false).await;
    assert_eq!(report.counts.reservations_released, 1);
    assert_eq!((t.reserved(v).await, t.drop_reserved(d).await), (0, 0));
}

/// A missing column or table is reported by name when the connection is opened, before the
/// release changes anything.
#[tokio::test]
async fn a_missing_column_or_table_is_named_before_anything_changes() {
    for (ddl, named) in [
        (
            "ALTER TABLE orders_order DROP COLUMN cancelled_at",
            "column orders_order.cancelled_at",
        ),
        (
            "ALTER TABLE orders_inventoryreservation RENAME COLUMN expires_at TO expiry",
            "column orders_inventoryreservation.expires_at",
        ),
        (
            "ALTER TABLE drops_dropproduct RENAME TO drops_product",
            "table drops_dropproduct",
        ),
    ] {
        let t = TestDb::new().await;
        let v = t.variant(1).await;
        let order = t.order("pending", "pending").await;
        t.reservation(Res::new(Some(order), v, 1, "-1 minute"))
            .await;
        t.exec(ddl).await;
        let before = t
            .text("SELECT string_agg(r::text, ';') FROM orders_inventoryreservation r")
            .await;
        let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
        let err = match unreserver::Database::open(&t.release_config(), &tls, 100).await {
            Ok(_) => panic!("{ddl}: the schema check passed"),
            Err(err) => err,
        };
        assert!(matches!(err, Error::Schema(_)), "{ddl}: {err}");
        assert!(err.to_string().contains(named), "{ddl}: {err}");
        assert!(!err.is_retryable());
        let after = t
            .text("SELECT string_agg(r::text, ';') FROM orders_inventoryreservation r")
            .await;
        assert_eq!(before, after);
    }
}

/// A `LOCK_TIMEOUT_MS` that would not give up before the server's deadlock check is refused.
#[tokio::test]
async fn a_lock_timeout_near_deadlock_timeout_is_refused() {
    let t = TestDb::new().await;
    let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
    let err = match unreserver::Database::open(&t.release_config(), &tls, 600).await {
        Ok(_) => panic!("a 600 ms lock timeout was accepted with a 1 s deadlock_timeout"),
        Err(err) => err,
    };
    assert!(err.to_string().contains("LOCK_TIMEOUT_MS"), "{err}");
    assert!(err.to_string().contains("deadlock_timeout"), "{err}");
}

/// A migration or a `LOCK TABLE` holding a table the tool needs: the run does not wait behind
/// it for a minute — it stops within the session's 2 s `lock_timeout` with `TableLocked`,
/// changing nothing, and the next run, once the lock is gone, releases as usual. The
/// statements are prepared in one flight, inside a transaction: the first prepare that needs
/// the table waits and fails, the rest fail at once (without the transaction each waited its
/// own `lock_timeout` in turn: the run took 18.7 s).
#[tokio::test]
async fn a_table_lock_stops_the_run_cleanly_and_the_next_run_goes_on() {
    let t = crate::app::TestApp::spawn().await;
    let (_, _, r) = t.one_due_order(1).await;
    let holder = t.connect().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE orders_inventoryreservation IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let out = t.cli(&["run"]).await;
    let stderr = &out.stderr;
    assert_eq!(out.code, Some(1), "{stderr}");
    assert!(stderr.contains("[TableLocked]"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(t.reservation_status(r).await, "active", "nothing changed");
    let mut db = t.open().await;
    let report = crate::common::run(&mut db, &crate::common::settings(), false).await;
    assert_eq!(report.counts.reservations_released, 1);
}

/// A table lock taken once the run's session is open (mid-run: a non-concurrent `CREATE INDEX`
/// takes `SHARE` on a counter table, a migration `ACCESS EXCLUSIVE` on the reservations): the
/// run stops at once with its own reason, `table_locked`, naming the table — not `TooSlow`
/// after polling rows nobody holds, nor retries — and changes nothing; once the lock is gone
/// the next run releases as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_lock_met_mid_run_stops_it_with_its_own_reason() {
    for (table, mode) in [
        ("products_productvariant", "SHARE"),
        ("drops_dropproduct", "SHARE"),
        ("orders_inventoryreservation", "ACCESS EXCLUSIVE"),
    ] {
        let t = TestDb::new().await;
        let v = t.variant(1).await;
        let d = t.drop_product(v, 1).await;
        let order = t.order("pending", "pending").await;
        let mut r = Res::new(Some(order), v, 1, "-1 minute");
        r.drop = Some(d);
        let r = t.reservation(r).await;
        let s = settings();
        let mut db = t.open_with(&s).await;
        let holder = t.connect().await;
        holder
            .batch_execute(&format!("BEGIN; LOCK TABLE {table} IN {mode} MODE"))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let report = run(&mut db, &s, false).await;
        let took = started.elapsed();
        holder.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            (report.stopped_reason, report.locked_tables.clone()),
            (StopReason::TableLocked, vec![table.to_string()]),
            "{table}: {report:?}"
        );
        assert_eq!(report.batch_retries, 0, "{table}: {report:?}");
        assert!(
            took < std::time::Duration::from_secs(1),
            "{table}: {took:?}"
        );
        assert_eq!(
            t.reservation_status(r).await,
            "active",
            "{table}: nothing changed"
        );
        let report = run(&mut db, &s, false).await;
        assert_eq!(
            (report.stopped_reason, report.counts.reservations_released),
            (StopReason::Drained, 1),
            "{table}: {report:?}"
        );
    }
}
