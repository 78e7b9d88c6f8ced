//! The metrics for Prometheus, from the same rows as the CloudWatch ones
//! ([`super::metrics::METRICS`] and [`super::metrics::HISTOGRAMS`]), written with the Prometheus
//! project's own client (`prometheus-client`, OpenMetrics text). Names follow Prometheus's
//! conventions: the `unreserver_` prefix, the row's name in snake case, base units (seconds,
//! bytes; milliseconds are converted) as a suffix, `_total` on counters.
//!
//! Two expositions, for the two ways the tool runs off AWS:
//! - [`Exposition::Service`] (`unreserver follow --listen`): a counter row adds up every pass
//!   (`unreserver_reservations_released_total`), a gauge holds the last pass's value, the
//!   histograms take every sample, and `unreserver_runs_total{outcome}` counts the passes by how
//!   they ended;
//! - [`Exposition::Batch`] (`unreserver run` pushing to a Pushgateway or writing a textfile): one
//!   run's values, as Prometheus's guidance for batch jobs has them — a counter row becomes the
//!   gauge `unreserver_last_run_<name>` (a pushed counter would restart at every run), and
//!   `unreserver_last_run_outcome{outcome}` is 1.
//!
//! Both carry `unreserver_last_success_timestamp_seconds`, the Unix time of the last successful
//! run (a follower also sets it at each successful look that found nothing due).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit as PromUnit};

use super::metrics::{Kind, Metric, Observation, Unit, HISTOGRAMS, METRICS};
use crate::engine::run_report::StopReason;

/// The prefix of every name.
pub const PREFIX: &str = "unreserver";
/// The content type of [`Prometheus::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which values the metrics hold: a long-running service's, or one batch run's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    Service,
    Batch,
}

/// The name of a row without the prefix and the unit's suffix (which the client adds), and the
/// unit Prometheus names it in: `ReservationsReleased` → `reservations_released`,
/// `RunDuration` (ms) → `run_duration` in seconds, `PurgeBytesFreed` → `purge_freed` in bytes.
pub fn base_name(name: &str, unit: Unit) -> (String, Option<PromUnit>) {
    let mut words: Vec<String> = Vec::new();
    for c in name.chars() {
        if c.is_ascii_uppercase() || words.is_empty() {
            words.push(String::new());
        }
        if let Some(word) = words.last_mut() {
            word.push(c.to_ascii_lowercase());
        }
    }
    let unit = match unit {
        Unit::Count => None,
        Unit::Seconds | Unit::Milliseconds => Some(PromUnit::Seconds),
        Unit::Bytes => Some(PromUnit::Bytes),
    };
    if let Some(unit) = &unit {
        words.retain(|w| w != unit.as_str());
    }
    (words.join("_"), unit)
}

/// The full name a row is scraped under in `exposition` (the histograms add `_bucket`, `_sum`,
/// `_count`).
pub fn full_name(metric: &Metric, exposition: Exposition) -> String {
    let (base, unit) = base_name(metric.name, metric.unit);
    let unit = unit.map(|u| format!("_{}", u.as_str())).unwrap_or_default();
    match (metric.kind, exposition) {
        (Kind::Counter, Exposition::Service) => format!("{PREFIX}_{base}{unit}_total"),
        (Kind::Counter, Exposition::Batch) => format!("{PREFIX}_last_run_{base}{unit}"),
        _ => format!("{PREFIX}_{base}{unit}"),
    }
}

/// A row's value in its Prometheus unit.
fn scaled(unit: Unit, value: f64) -> f64 {
    match unit {
        Unit::Milliseconds => value / 1000.0,
        _ => value,
    }
}

/// What the invocations observed so far.
#[derive(Debug, Default)]
struct State {
    /// Counter rows: summed (service) or the last run's (batch).
    counters: BTreeMap<&'static str, f64>,
    /// Gauge and distribution rows: the last value.
    gauges: BTreeMap<&'static str, f64>,
    /// Runs by how they ended.
    outcomes: BTreeMap<&'static str, u64>,
    last_outcome: Option<&'static str>,
    last_success: Option<f64>,
}

/// The metrics of a process, fed by [`Prometheus::observe`] and read by [`Prometheus::encode`].
#[derive(Debug)]
pub struct Prometheus {
    exposition: Exposition,
    state: Mutex<State>,
    histograms: Vec<Histogram>,
}

/// The Unix time now, in seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Prometheus {
    pub fn new(exposition: Exposition) -> Self {
        Prometheus {
            exposition,
            state: Mutex::new(State::default()),
            histograms: HISTOGRAMS
                .iter()
                .map(|h| Histogram::new(h.buckets.iter().copied()))
                .collect(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-written in a way that
        // matters: keep serving them.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes in one invocation (a run, or one pass of a follower).
    pub fn observe(&self, obs: &Observation<'_>) {
        let mut state = self.state();
        for (metric, value) in super::metrics::values(obs) {
            let value = scaled(metric.unit, value);
            match (metric.kind, self.exposition) {
                (Kind::Counter, Exposition::Service) => {
                    *state.counters.entry(metric.name).or_default() += value;
                }
                (Kind::Counter, Exposition::Batch) => {
                    state.counters.insert(metric.name, value);
                }
                _ => {
                    state.gauges.insert(metric.name, value);
                }
            }
        }
        for (row, histogram) in HISTOGRAMS.iter().zip(&self.histograms) {
            for sample in row.samples(obs) {
                histogram.observe(scaled(row.unit, *sample));
            }
        }
        if obs.reconcile.is_none() && obs.purge.is_none() {
            let outcome = match obs.report {
                _ if obs.failed => StopReason::Failed.as_str(),
                Some(report) => report.stopped_reason.as_str(),
                None => StopReason::Failed.as_str(),
            };
            *state.outcomes.entry(outcome).or_default() += 1;
            state.last_outcome = Some(outcome);
            if !obs.failed && !obs.dry_run && obs.report.is_some() {
                state.last_success = Some(unix_now());
            }
        }
    }

    /// Records a success without a run: a follower's look that found nothing due.
    pub fn succeeded(&self) {
        self.state().last_success = Some(unix_now());
    }

    /// Carries over the last success of an earlier process (a textfile's), unless this one has
    /// its own.
    pub fn carry_last_success(&self, at: f64) {
        let mut state = self.state();
        if state.last_success.is_none() {
            state.last_success = Some(at);
        }
    }

    /// Whether a successful run was observed.
    pub fn has_success(&self) -> bool {
        self.state().last_success.is_some()
    }

    /// The metrics as OpenMetrics text (which Prometheus, the Pushgateway and node_exporter's
    /// textfile collector read). Only the rows observed so far are written.
    pub fn encode(&self) -> String {
        let registry = self.registry();
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }

    fn registry(&self) -> Registry {
        let state = self.state();
        let mut registry = Registry::with_prefix(PREFIX);
        let rows = METRICS.iter().filter_map(|m| {
            let value = match m.kind {
                Kind::Counter => state.counters.get(m.name),
                _ => state.gauges.get(m.name),
            };
            value.map(|v| (m, *v))
        });
        for (metric, value) in rows {
            let (base, unit) = base_name(metric.name, metric.unit);
            let help = metric.help;
            match (metric.kind, self.exposition) {
                (Kind::Counter, Exposition::Service) => {
                    register(&mut registry, base, help, unit, ConstCounter::new(value));
                }
                (Kind::Counter, Exposition::Batch) => {
                    let name = format!("last_run_{base}");
                    let help = format!("{help} (the last run)");
                    register(&mut registry, name, &help, unit, ConstGauge::new(value));
                }
                _ => register(&mut registry, base, help, unit, ConstGauge::new(value)),
            }
        }
        for (row, histogram) in HISTOGRAMS.iter().zip(&self.histograms) {
            let (base, unit) = base_name(row.name, row.unit);
            register(&mut registry, base, row.help, unit, histogram.clone());
        }
        match self.exposition {
            Exposition::Service => {
                let runs = Family::<[(&'static str, &'static str); 1], Counter<u64>>::default();
                for (outcome, n) in &state.outcomes {
                    runs.get_or_create(&[("outcome", *outcome)]).inc_by(*n);
                }
                let help = "runs (a follower's passes) by how they ended: the run report's stopped_reason, or failed";
                registry.register("runs", help, runs);
            }
            Exposition::Batch => {
                let last = Family::<[(&'static str, &'static str); 1], Gauge<i64>>::default();
                if let Some(outcome) = state.last_outcome {
                    last.get_or_create(&[("outcome", outcome)]).set(1);
                }
                let help = "1, labelled with how the last run ended: its stopped_reason, or failed";
                registry.register("last_run_outcome", help, last);
            }
        }
        if let Some(at) = state.last_success {
            let help = "Unix time of the last successful run (or a follower's look that found nothing due)";
            let gauge = ConstGauge::new(at);
            register(
                &mut registry,
                "last_success_timestamp".into(),
                help,
                Some(PromUnit::Seconds),
                gauge,
            );
        }
        registry
    }
}

/// Registers one metric, with its unit when it has one.
fn register(
    registry: &mut Registry,
    name: String,
    help: &str,
    unit: Option<PromUnit>,
    metric: impl prometheus_client::registry::Metric,
) {
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, metric),
        None => registry.register(name, help, metric),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::run_report::RunReport;

    fn observation(report: &RunReport, failed: bool) -> Observation<'_> {
        Observation {
            reconcile: None,
            purge: None,
            run_id: "r",
            tenant: None,
            report: Some(report),
            failed,
            dry_run: false,
            cold_start: false,
            duration_ms: 1500,
        }
    }

    /// Names by Prometheus's conventions: prefix, snake case, base units, `_total` counters.
    #[test]
    fn every_row_is_named_by_prometheus_conventions() {
        let by_name = |name: &str| METRICS.iter().find(|m| m.name == name).copied();
        let cases = [
            (
                "ReservationsReleased",
                "unreserver_reservations_released_total",
            ),
            ("RunDuration", "unreserver_run_duration_seconds"),
            (
                "OldestDueReservationAge",
                "unreserver_oldest_due_reservation_age_seconds",
            ),
            ("PurgeBytesFreed", "unreserver_purge_freed_bytes_total"),
            ("ReleaseDelayP95", "unreserver_release_delay_p95_seconds"),
            ("RunFailed", "unreserver_run_failed"),
        ];
        for (row, expected) in cases {
            let metric = by_name(row).expect(row);
            assert_eq!(full_name(&metric, Exposition::Service), expected);
        }
        let released = by_name("ReservationsReleased").expect("row");
        assert_eq!(
            full_name(&released, Exposition::Batch),
            "unreserver_last_run_reservations_released"
        );
        let valid = regex::Regex::new("^[a-z_][a-z0-9_]*$").expect("regex");
        let mut names: Vec<String> = METRICS
            .iter()
            .map(|m| full_name(m, Exposition::Service))
            .collect();
        assert!(names.iter().all(|n| valid.is_match(n)), "{names:?}");
        names.sort();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
    }

    /// A follower's counters add up its passes; the histogram takes each delay; the outcome and
    /// the last success are there.
    #[test]
    fn a_service_adds_up_its_passes() {
        let prometheus = Prometheus::new(Exposition::Service);
        let mut report = RunReport::new(false);
        report.counts.reservations_released = 3;
        report.delays = vec![0.05, 0.7, 42.0];
        prometheus.observe(&observation(&report, false));
        prometheus.observe(&observation(&report, false));
        let text = prometheus.encode();
        assert!(
            text.contains("unreserver_reservations_released_total 6"),
            "{text}"
        );
        assert!(
            text.contains("unreserver_run_duration_seconds 1.5"),
            "{text}"
        );
        assert!(
            text.contains("unreserver_release_delay_seconds_count 6"),
            "{text}"
        );
        assert!(
            text.contains("unreserver_release_delay_seconds_bucket{le=\"0.1\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("unreserver_release_delay_seconds_bucket{le=\"1800.0\"} 6"),
            "{text}"
        );
        assert!(
            text.contains("unreserver_runs_total{outcome=\"drained\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("unreserver_last_success_timestamp_seconds "),
            "{text}"
        );
        assert!(
            !text.contains("release_delay_p95"),
            "not released: no p95 row\n{text}"
        );
    }

    /// A batch run writes its own values, counters as `last_run_` gauges; a failed one has no
    /// last success of its own.
    #[test]
    fn a_batch_run_writes_its_own_values() {
        let prometheus = Prometheus::new(Exposition::Batch);
        let mut report = RunReport::new(false);
        report.counts.reservations_released = 3;
        prometheus.observe(&observation(&report, true));
        let text = prometheus.encode();
        assert!(
            text.contains("# TYPE unreserver_last_run_reservations_released gauge"),
            "{text}"
        );
        assert!(
            text.contains("unreserver_last_run_reservations_released 3"),
            "{text}"
        );
        assert!(
            text.contains("unreserver_last_run_outcome{outcome=\"failed\"} 1"),
            "{text}"
        );
        assert!(text.contains("unreserver_run_failed 1"), "{text}");
        assert!(!text.contains("last_success"), "{text}");
        assert!(!prometheus.has_success());
        prometheus.carry_last_success(1_700_000_000.0);
        assert!(prometheus
            .encode()
            .contains("unreserver_last_success_timestamp_seconds 1700000000"));
    }
}
