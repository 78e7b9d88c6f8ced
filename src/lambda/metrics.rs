//! CloudWatch metrics in Embedded Metric Format: one JSON document per invocation, written as a
//! bare line to stdout, where Lambda's log pipeline turns it into metrics.
//!
//! Namespace and service follow the Powertools conventions (`POWERTOOLS_METRICS_NAMESPACE`,
//! `POWERTOOLS_SERVICE_NAME`, a `service` dimension). Dimension values come from configuration
//! only, never from data. A dry run's metrics carry a second dimension, `mode = dry_run`, so they
//! never feed the alarms, which watch the `service` dimension alone.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

pub use crate::config::MetricsConfig;
use crate::engine::report::RunReport;

/// Every metric the function emits, with its unit. `template.yaml`'s alarms and dashboard may use
/// only these (a test checks it).
pub const METRICS: &[(&str, &str)] = &[
    (RESERVATIONS_RELEASED, "Count"),
    (UNITS_RELEASED, "Count"),
    (ORDERS_CANCELLED, "Count"),
    (BATCHES, "Count"),
    (BATCH_RETRIES, "Count"),
    (SKIPPED_LOCKED, "Count"),
    (DEFERRED_ORDERS, "Count"),
    (MISSING_INDEXES, "Count"),
    (OLDEST_DEFERRED_AGE, "Seconds"),
    (COUNTERS_CLAMPED, "Count"),
    (PAID_ORDERS_WITH_DUE_RESERVATIONS, "Count"),
    (BACKLOG_REMAINING, "Count"),
    (OLDEST_DUE_AGE, "Seconds"),
    (BATCH_P99, "Milliseconds"),
    (RUN_DURATION, "Milliseconds"),
    (RUN_FAILED, "Count"),
    (COLD_START, "Count"),
    (EVENTS_PUBLISHED, "Count"),
    (EVENTS_FAILED, "Count"),
    (PAID_AFTER_RELEASE, "Count"),
    (RELEASE_DELAY_P95, "Seconds"),
];

pub const RESERVATIONS_RELEASED: &str = "ReservationsReleased";
pub const UNITS_RELEASED: &str = "UnitsReleased";
pub const ORDERS_CANCELLED: &str = "OrdersCancelled";
pub const BATCHES: &str = "Batches";
pub const BATCH_RETRIES: &str = "BatchRetries";
pub const SKIPPED_LOCKED: &str = "SkippedLocked";
pub const DEFERRED_ORDERS: &str = "DeferredOrders";
pub const MISSING_INDEXES: &str = "MissingIndexes";
pub const OLDEST_DEFERRED_AGE: &str = "OldestDeferredAge";
pub const COUNTERS_CLAMPED: &str = "CountersClamped";
pub const PAID_ORDERS_WITH_DUE_RESERVATIONS: &str = "PaidOrdersWithDueReservations";
pub const BACKLOG_REMAINING: &str = "BacklogRemaining";
pub const OLDEST_DUE_AGE: &str = "OldestDueReservationAge";
pub const BATCH_P99: &str = "BatchDurationP99";
pub const RUN_DURATION: &str = "RunDuration";
pub const RUN_FAILED: &str = "RunFailed";
pub const COLD_START: &str = "ColdStart";
pub const EVENTS_PUBLISHED: &str = "EventsPublished";
pub const EVENTS_FAILED: &str = "EventsFailed";
pub const PAID_AFTER_RELEASE: &str = "PaidAfterRelease";
pub const RELEASE_DELAY_P95: &str = "ReleaseDelayP95";

/// The dimension every document carries, and the one only dry runs add.
pub const SERVICE_DIMENSION: &str = "service";
pub const MODE_DIMENSION: &str = "mode";

/// What one invocation contributes to the metrics.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The run's id, a property of the document (not a dimension).
    pub run_id: &'a str,
    /// The run's report (partial when the run failed part-way); None when it never started.
    pub report: Option<&'a RunReport>,
    pub failed: bool,
    pub dry_run: bool,
    pub cold_start: bool,
    pub duration_ms: u64,
}

/// The metric values of one invocation.
fn values(obs: &Observation<'_>) -> Vec<(&'static str, f64)> {
    let mut values: Vec<(&str, f64)> = vec![
        (RUN_FAILED, if obs.failed { 1.0 } else { 0.0 }),
        (COLD_START, if obs.cold_start { 1.0 } else { 0.0 }),
        (RUN_DURATION, obs.duration_ms as f64),
    ];
    if let Some(r) = obs.report {
        values.extend([
            (RESERVATIONS_RELEASED, r.reservations_released as f64),
            (UNITS_RELEASED, r.units_released as f64),
            (ORDERS_CANCELLED, r.orders_cancelled as f64),
            (BATCHES, f64::from(r.batches)),
            (BATCH_RETRIES, f64::from(r.batch_retries)),
            (SKIPPED_LOCKED, r.skipped_locked as f64),
            (
                COUNTERS_CLAMPED,
                (r.clamped_variants + r.clamped_drops) as f64,
            ),
            (
                PAID_ORDERS_WITH_DUE_RESERVATIONS,
                r.paid_orders_with_due_reservations as f64,
            ),
            (BATCH_P99, r.batch_ms_p99),
            (MISSING_INDEXES, r.missing_indexes.len() as f64),
            (EVENTS_PUBLISHED, r.events_published as f64),
            (EVENTS_FAILED, r.events_failed as f64),
        ]);
        // Only a run that released something has a release delay.
        if let Some(p95) = r.release_delay_p95_seconds {
            values.push((RELEASE_DELAY_P95, p95));
        }
        // The backlog is known only when the run got to count it.
        if !obs.failed {
            values.push((BACKLOG_REMAINING, r.backlog_remaining as f64));
            values.push((OLDEST_DUE_AGE, r.oldest_due_age_seconds.unwrap_or(0.0)));
            values.push((DEFERRED_ORDERS, r.deferred as f64));
            values.push((PAID_AFTER_RELEASE, r.paid_after_release as f64));
            values.push((
                OLDEST_DEFERRED_AGE,
                r.oldest_deferred_age_seconds.unwrap_or(0.0),
            ));
        }
    }
    values
}

/// The EMF document for one invocation.
pub fn document(config: &MetricsConfig, obs: &Observation<'_>) -> Value {
    let values = values(obs);
    let dimensions: Vec<&str> = if obs.dry_run {
        vec![SERVICE_DIMENSION, MODE_DIMENSION]
    } else {
        vec![SERVICE_DIMENSION]
    };
    let definitions: Vec<Value> = values
        .iter()
        .map(|(name, _)| json!({"Name": name, "Unit": unit(name)}))
        .collect();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp,
            "CloudWatchMetrics": [{
                "Namespace": config.namespace,
                "Dimensions": [dimensions],
                "Metrics": definitions,
            }]
        }),
    );
    doc.insert(SERVICE_DIMENSION.into(), json!(config.service));
    doc.insert("run_id".into(), json!(obs.run_id));
    if obs.dry_run {
        doc.insert(MODE_DIMENSION.into(), json!("dry_run"));
    }
    for (name, value) in values {
        doc.insert(name.into(), json!(value));
    }
    Value::Object(doc)
}

fn unit(name: &str) -> &'static str {
    METRICS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("None", |(_, u)| u)
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
        assert_eq!(directives.len(), 1);
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
                assert!(["Count", "Seconds", "Milliseconds"].contains(&unit));
            }
        }
    }

    #[test]
    fn a_run_document_is_valid_emf_with_every_metric() {
        let mut report = RunReport::new(false);
        report.reservations_released = 5;
        report.clamped_variants = 1;
        report.clamped_drops = 2;
        report.oldest_due_age_seconds = Some(42.5);
        report.release_delay_p95_seconds = Some(7.25);
        report.events_failed = 2;
        report.paid_after_release = 1;
        let obs = Observation {
            run_id: "r-1",
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
            METRICS.len()
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
    fn a_failure_still_reports_run_failed_and_a_dry_run_has_its_own_dimension() {
        let doc = document(
            &config(),
            &Observation {
                run_id: "r-1",
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
                run_id: "r-1",
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
