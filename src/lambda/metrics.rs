//! CloudWatch metrics in Embedded Metric Format: one JSON document per invocation, written as a
//! bare line to stdout, where Lambda's log pipeline turns it into metrics.
//!
//! Namespace and service follow the Powertools conventions (`POWERTOOLS_METRICS_NAMESPACE`,
//! `POWERTOOLS_SERVICE_NAME`, a `service` dimension). Dimension values come from configuration
//! only, never from data (a tenant's name is from its configured list). A dry run's metrics carry a second dimension, `mode = dry_run`, so they
//! never feed the alarms, which watch the `service` dimension alone.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

pub use crate::config::MetricsConfig;
pub use crate::telemetry::metrics::{values, Observation, METRICS, TENANT_METRICS};

/// The dimension every document carries, and the one only dry runs add.
pub const SERVICE_DIMENSION: &str = "service";
pub const MODE_DIMENSION: &str = "mode";
/// The dimension a tenant's invocation adds to [`TENANT_METRICS`] (its value a checked tenant
/// name, from the configured list).
pub const TENANT_DIMENSION: &str = "tenant";

/// The EMF document for one invocation.
pub fn document(config: &MetricsConfig, obs: &Observation<'_>) -> Value {
    let values = values(obs);
    let mut doc_tenant = None;
    let dimensions: Vec<&str> = if obs.dry_run {
        vec![SERVICE_DIMENSION, MODE_DIMENSION]
    } else {
        vec![SERVICE_DIMENSION]
    };
    let definitions: Vec<Value> = values
        .iter()
        .map(|(m, _)| json!({"Name": m.name, "Unit": m.unit.cloudwatch()}))
        .collect();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut directives = vec![json!({
        "Namespace": config.namespace,
        "Dimensions": [dimensions],
        "Metrics": definitions,
    })];
    if let Some(tenant) = obs.tenant {
        // The few metrics the alarms watch per tenant, once more with the tenant's dimension
        // (one more dimension set each: the cost table in docs/tenants.md counts them).
        let per_tenant: Vec<Value> = values
            .iter()
            .filter(|(m, _)| TENANT_METRICS.contains(&m.name))
            .map(|(m, _)| json!({"Name": m.name, "Unit": m.unit.cloudwatch()}))
            .collect();
        if !per_tenant.is_empty() {
            let mut with_tenant = dimensions.clone();
            with_tenant.push(TENANT_DIMENSION);
            directives.push(json!({
                "Namespace": config.namespace,
                "Dimensions": [with_tenant],
                "Metrics": per_tenant,
            }));
        }
        doc_tenant = Some(tenant);
    }
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp,
            "CloudWatchMetrics": directives,
        }),
    );
    doc.insert(SERVICE_DIMENSION.into(), json!(config.service));
    if let Some(tenant) = doc_tenant {
        doc.insert(TENANT_DIMENSION.into(), json!(tenant));
    }
    doc.insert("run_id".into(), json!(obs.run_id));
    if obs.dry_run {
        doc.insert(MODE_DIMENSION.into(), json!("dry_run"));
    }
    for (m, value) in values {
        doc.insert(m.name.into(), json!(value));
    }
    Value::Object(doc)
}

/// Writes the document as one bare line on stdout.
pub fn emit(doc: &Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A metrics line that cannot be written is not worth failing the run over.
    let _ = writeln!(out, "{doc}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::reconcile::ReconcileReport;
    use crate::engine::run_report::RunReport;

    fn config() -> MetricsConfig {
        MetricsConfig::from_lookup(&|_: &str| None).unwrap()
    }

    /// The EMF specification's rules: `_aws` with a millisecond Timestamp and CloudWatchMetrics
    /// directives; each directive's Namespace, Dimensions (arrays of at most 30 dimension
    /// names, each a string member of the root) and Metrics (at most 100, each Name a number
    /// member of the root, Unit a CloudWatch unit).
    fn assert_valid_emf(doc: &Value) {
        let aws = &doc["_aws"];
        assert!(aws["Timestamp"].as_u64().unwrap() > 1_600_000_000_000);
        let directives = aws["CloudWatchMetrics"].as_array().unwrap();
        assert!(!directives.is_empty() && directives.len() <= 2);
        for d in directives {
            let ns = d["Namespace"].as_str().unwrap();
            assert!(!ns.is_empty() && ns.len() <= 255);
            for set in d["Dimensions"].as_array().unwrap() {
                let set = set.as_array().unwrap();
                assert!(!set.is_empty() && set.len() <= 30);
                for dim in set {
                    assert!(
                        doc[dim.as_str().unwrap()].is_string(),
                        "dimension {dim} missing"
                    );
                }
            }
            let metrics = d["Metrics"].as_array().unwrap();
            assert!(metrics.len() <= 100);
            for m in metrics {
                let name = m["Name"].as_str().unwrap();
                assert!(doc[name].is_number(), "metric {name} has no value");
                let unit = m["Unit"].as_str().unwrap();
                assert!(["Count", "Seconds", "Milliseconds", "Bytes"].contains(&unit));
            }
        }
    }

    #[test]
    fn a_run_document_is_valid_emf_with_every_metric() {
        let mut report = RunReport::new(false);
        report.counts.reservations_released = 5;
        report.counts.clamped_variants = 1;
        report.counts.clamped_drops = 2;
        report.oldest_due_age_seconds = Some(42.5);
        report.release_delay_p95_seconds = Some(7.25);
        report.events_failed = 2;
        report.paid_after_release = 1;
        let obs = Observation {
            reconcile: None,
            purge: None,
            run_id: "r-1",
            tenant: None,
            report: Some(&report),
            failed: false,
            dry_run: false,
            cold_start: true,
            duration_ms: 12,
        };
        let doc = document(&config(), &obs);
        assert_valid_emf(&doc);
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .unwrap()
                .len(),
            METRICS.len() - RECONCILE_ONLY.len() - PURGE_ONLY.len(),
            "a run's document has every metric but the reconcile's and the purge's"
        );
        assert_eq!(doc["ReservationsReleased"], 5.0);
        assert_eq!(doc["CountersClamped"], 3.0);
        assert_eq!(doc["OldestDueReservationAge"], 42.5);
        assert_eq!(doc["ColdStart"], 1.0);
        assert_eq!(doc["RunFailed"], 0.0);
        assert_eq!(doc["ReleaseDelayP95"], 7.25);
        assert_eq!(doc["EventsFailed"], 2.0);
        assert_eq!(doc["PaidAfterRelease"], 1.0);
        assert_eq!(doc["service"], "unreserver");
        assert_eq!(doc["run_id"], "r-1");
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["service"]])
        );
    }

    #[test]
    fn a_tenants_run_adds_its_dimension_to_the_alarms_metrics_only() {
        let mut report = RunReport::new(false);
        report.oldest_due_age_seconds = Some(42.5);
        report.release_delay_p95_seconds = Some(7.25);
        let obs = Observation {
            reconcile: None,
            purge: None,
            run_id: "r-1",
            tenant: Some("shop_a"),
            report: Some(&report),
            failed: false,
            dry_run: false,
            cold_start: false,
            duration_ms: 12,
        };
        let doc = document(&config(), &obs);
        assert_valid_emf(&doc);
        let directives = &doc["_aws"]["CloudWatchMetrics"];
        assert_eq!(
            directives[0]["Dimensions"],
            json!([["service"]]),
            "the aggregate"
        );
        assert_eq!(directives[1]["Dimensions"], json!([["service", "tenant"]]));
        let names: Vec<&str> = directives[1]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), TENANT_METRICS.len(), "{names:?}");
        assert!(
            names.iter().all(|n| TENANT_METRICS.contains(n)),
            "{names:?}"
        );
        assert_eq!(doc["tenant"], "shop_a");
        // Every one of them is a metric a run writes.
        assert!(TENANT_METRICS
            .iter()
            .all(|n| METRICS.iter().any(|m| m.name == *n)));
    }

    const RECONCILE_ONLY: [&str; 2] = ["CountersDrifted", "CountersRepaired"];
    const PURGE_ONLY: [&str; 5] = [
        "ReservationsPurged",
        "OrdersPurged",
        "PurgeSkipped",
        "PurgePauses",
        "PurgeBytesFreed",
    ];

    #[test]
    fn a_purge_document_carries_its_counts_and_no_run_metric() {
        use crate::engine::purge::{OrdersPurged, PurgeReport, ReservationsPurged};
        let report = PurgeReport {
            apply: true,
            older_than_days: 60,
            reservations: ReservationsPurged {
                eligible: 12,
                deleted: 10,
                skipped_locked: 2,
            },
            orders: Some(OrdersPurged {
                eligible: 4,
                deleted: 3,
                lines_deleted: 5,
                skipped_referenced: 1,
                ..OrdersPurged::default()
            }),
            chunks: 3,
            chunks_retried: 0,
            lag_pauses: 1,
            release_yields: 2,
            paused_ms: 750,
            rested_ms: 0,
            replicas: Default::default(),
            estimated_bytes_freed: Some(4096),
            stopped: "done",
            controller: Default::default(),
        };
        let doc = document(
            &config(),
            &Observation {
                reconcile: None,
                purge: Some(&report),
                run_id: "r-1",
                tenant: None,
                report: None,
                failed: false,
                dry_run: false,
                cold_start: false,
                duration_ms: 3,
            },
        );
        assert_valid_emf(&doc);
        assert_eq!(doc["ReservationsPurged"], 15.0, "rows and order lines");
        assert_eq!(doc["OrdersPurged"], 3.0);
        assert_eq!(doc["PurgeSkipped"], 3.0, "held rows and referenced orders");
        assert_eq!(doc["PurgePauses"], 3.0);
        assert_eq!(doc["PurgeBytesFreed"], 4096.0);
        for run_only in ["RunFailed", "RunDuration", "ReservationsReleased"] {
            assert!(
                doc.get(run_only).is_none(),
                "{run_only}: a purge is not a run"
            );
        }
        for name in PURGE_ONLY {
            assert!(METRICS.iter().any(|m| m.name == name));
        }
    }

    #[test]
    fn a_reconcile_document_carries_its_counts_and_no_run_metric() {
        let report = ReconcileReport {
            apply: true,
            checked: 10,
            drifted: 3,
            repaired: 2,
            skipped_locked: 1,
            rows: Vec::new(),
            paid_orders_with_active_reservations: Vec::new(),
            cancelled_orders_with_active_reservations: Vec::new(),
        };
        let doc = document(
            &config(),
            &Observation {
                reconcile: Some(&report),
                purge: None,
                run_id: "r-1",
                tenant: None,
                report: None,
                failed: false,
                dry_run: false,
                cold_start: false,
                duration_ms: 3,
            },
        );
        assert_valid_emf(&doc);
        assert_eq!(
            (
                doc["CountersDrifted"].clone(),
                doc["CountersRepaired"].clone()
            ),
            (json!(3.0), json!(2.0))
        );
        for run_only in [
            "RunFailed",
            "RunDuration",
            "ReservationsReleased",
            "BacklogRemaining",
        ] {
            assert!(
                doc.get(run_only).is_none(),
                "{run_only}: a reconcile is not a run"
            );
        }
        for name in RECONCILE_ONLY {
            assert!(METRICS.iter().any(|m| m.name == name));
        }
    }

    #[test]
    fn a_failure_still_reports_run_failed_and_a_dry_run_has_its_own_dimension() {
        let doc = document(
            &config(),
            &Observation {
                reconcile: None,
                purge: None,
                run_id: "r-1",
                tenant: None,
                report: None,
                failed: true,
                dry_run: false,
                cold_start: false,
                duration_ms: 3,
            },
        );
        assert_valid_emf(&doc);
        assert_eq!(doc["RunFailed"], 1.0);
        assert!(doc.get("BacklogRemaining").is_none());

        let report = RunReport::new(true);
        let doc = document(
            &config(),
            &Observation {
                reconcile: None,
                purge: None,
                run_id: "r-1",
                tenant: None,
                report: Some(&report),
                failed: false,
                dry_run: true,
                cold_start: false,
                duration_ms: 3,
            },
        );
        assert_valid_emf(&doc);
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["service", "mode"]])
        );
        assert_eq!(doc["mode"], "dry_run");
    }

    #[test]
    fn names_come_from_configuration_and_are_checked() {
        let lookup = |n: &str| match n {
            "POWERTOOLS_METRICS_NAMESPACE" => Some("Shop/Inventory".to_string()),
            "POWERTOOLS_SERVICE_NAME" => Some("shop-unreserver".to_string()),
            _ => None,
        };
        let c = MetricsConfig::from_lookup(&lookup).unwrap();
        assert_eq!(
            (c.namespace.as_str(), c.service.as_str()),
            ("Shop/Inventory", "shop-unreserver")
        );
        let bad = |n: &str| (n == "POWERTOOLS_SERVICE_NAME").then(|| "a b".to_string());
        let err = MetricsConfig::from_lookup(&bad).unwrap_err();
        assert!(err.to_string().contains("POWERTOOLS_SERVICE_NAME"));
    }
}
