//! Every metric the tool emits, one row each (name, unit, kind, help, and how its value is read
//! from an invocation): the one definition every backend writes from. Today the Lambda
//! function writes them as CloudWatch Embedded Metric Format (`lambda::metrics`); another
//! backend reads the same rows: `telemetry::prometheus` names each by Prometheus's conventions
//! (`unreserver_` prefix, base units, `_total` counters) and adds the histograms of
//! [`HISTOGRAMS`]. Adding a metric is one row.

use crate::engine::purge::PurgeReport;
use crate::engine::reconcile::ReconcileReport;
use crate::engine::run_report::{RunReport, StopReason, FOLLOW_DUPLICATE, FOLLOW_STALE};

/// The unit of a metric's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Seconds,
    Milliseconds,
    Bytes,
}

impl Unit {
    /// The unit as CloudWatch names it.
    pub fn cloudwatch(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Seconds => "Seconds",
            Unit::Milliseconds => "Milliseconds",
            Unit::Bytes => "Bytes",
        }
    }
}

/// What a metric's value is, for a backend that tells them apart (Prometheus, OpenTelemetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// How many of something one invocation did: summed over invocations.
    Counter,
    /// A level when the invocation ended (a backlog, an age, a 0/1 flag).
    Gauge,
    /// A measurement that varies by invocation (a duration, a percentile).
    Distribution,
}

/// One metric: its name, unit, kind and one line of help, and its value in an invocation
/// (None: not emitted then). Every backend writes its document from these rows.
#[derive(Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub unit: Unit,
    pub kind: Kind,
    pub help: &'static str,
    value: fn(&Observation<'_>) -> Option<f64>,
}

impl std::fmt::Debug for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.unit.cloudwatch())
    }
}

const fn metric(
    name: &'static str,
    unit: Unit,
    kind: Kind,
    help: &'static str,
    value: fn(&Observation<'_>) -> Option<f64>,
) -> Metric {
    Metric {
        name,
        unit,
        kind,
        help,
        value,
    }
}

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

/// A value of the run's report, when the run started.
fn reported(obs: &Observation<'_>, value: impl Fn(&RunReport) -> f64) -> Option<f64> {
    obs.report.map(value)
}

/// A value the run counts at its end: known only when it got there (not failed).
fn counted(obs: &Observation<'_>, value: impl Fn(&RunReport) -> f64) -> Option<f64> {
    obs.report.filter(|_| !obs.failed).map(value)
}

/// Every metric the function emits: one row each. `template.yaml`'s alarms and dashboard may
/// use only these (a test checks it).
pub const METRICS: &[Metric] = &[
    metric(
        "RunFailed",
        Unit::Count,
        Kind::Gauge,
        "1 when the run failed (also emitted with the partial report of a run that failed part-way), else 0",
        |o| run(o).then(|| flag(o.failed))),
    metric(
        "ColdStart",
        Unit::Count,
        Kind::Gauge,
        "1 when the invocation was the first of its execution environment, else 0",
        |o| Some(flag(o.cold_start))),
    metric(
        "RunDuration",
        Unit::Milliseconds,
        Kind::Distribution,
        "how long the run took, from its start to its report",
        |o| {
        run(o).then_some(o.duration_ms as f64)
    }),
    metric(
        "ReservationsReleased",
        Unit::Count,
        Kind::Counter,
        "reservations the run expired",
        |o| {
        reported(o, |r| r.counts.reservations_released as f64)
    }),
    metric(
        "UnitsReleased",
        Unit::Count,
        Kind::Counter,
        "units the run gave back to the variants",
        |o| {
        reported(o, |r| r.counts.units_released as f64)
    }),
    metric(
        "OrdersCancelled",
        Unit::Count,
        Kind::Counter,
        "pending orders the run cancelled",
        |o| {
        reported(o, |r| r.counts.orders_cancelled as f64)
    }),
    metric(
        "Batches",
        Unit::Count,
        Kind::Counter,
        "batch transactions the run committed (or rolled back, in a dry run)",
        |o| {
        reported(o, |r| f64::from(r.batches))
    }),
    metric(
        "BatchRetries",
        Unit::Count,
        Kind::Counter,
        "batch tries rolled back on a lock conflict or a cut, and tried again",
        |o| {
        reported(o, |r| f64::from(r.batch_retries))
    }),
    metric(
        "SkippedLocked",
        Unit::Count,
        Kind::Counter,
        "due orders and holds a shopper held when the batch claimed them",
        |o| {
        reported(o, |r| r.counts.skipped_locked as f64)
    }),
    metric(
        "CountersClamped",
        Unit::Count,
        Kind::Counter,
        "variant and drop counters that would have gone below zero (they had drifted)",
        |o| {
        reported(o, |r| {
            (r.counts.clamped_variants + r.counts.clamped_drops) as f64
        })
    }),
    metric(
        "PaidOrdersWithDueReservations",
        Unit::Count,
        Kind::Gauge,
        "paid orders met that still hold due reservations (never touched)",
        |o| {
        reported(o, |r| r.paid_orders_with_due_reservations as f64)
    }),
    metric(
        "BatchDurationP99",
        Unit::Milliseconds,
        Kind::Distribution,
        "99th percentile of the run's batch durations: how long a batch holds its rows",
        |o| {
        reported(o, |r| r.batch_ms_p99)
    }),
    metric(
        "HotRowHoldMax",
        Unit::Milliseconds,
        Kind::Distribution,
        "the longest a batch held the shop's hot counter rows, from taking them to its commit: \
         the longest a checkout could wait on the release",
        |o| {
        reported(o, |r| r.hot_hold_ms_max)
    }),
    // What the batch controller did: the largest batch, the connections it drained with, and
    // the batches that met shoppers (run one at a time at the floor).
    metric(
        "BatchSizeMax",
        Unit::Count,
        Kind::Gauge,
        "the largest batch the controller used, in rows",
        |o| {
        reported(o, |r| f64::from(r.controller.batch_rows_max))
    }),
    metric(
        "Workers",
        Unit::Count,
        Kind::Gauge,
        "connections the run drained with",
        |o| {
        reported(o, |r| f64::from(r.controller.workers))
    }),
    metric(
        "ContendedBatches",
        Unit::Count,
        Kind::Counter,
        "batches that met shoppers on their rows and ran one at a time at the floor",
        |o| {
        reported(o, |r| f64::from(r.controller.contended_batches))
    }),
    metric(
        "MissingIndexes",
        Unit::Count,
        Kind::Gauge,
        "recommended indexes no equivalent index stands in for",
        |o| {
        reported(o, |r| r.missing_indexes.len() as f64)
    }),
    metric(
        "EventsPublished",
        Unit::Count,
        Kind::Counter,
        "events published to EVENT_BUS_NAME",
        |o| {
        reported(o, |r| r.events_published as f64)
    }),
    metric(
        "EventsFailed",
        Unit::Count,
        Kind::Counter,
        "events that could not be published (their order ids are logged)",
        |o| {
        reported(o, |r| r.events_failed as f64)
    }),
    // Only a run that released something has a release delay.
    metric(
        "ReleaseDelayP95",
        Unit::Seconds,
        Kind::Distribution,
        "95th percentile of the release delay of the reservations released: from due to released",
        |o| {
        o.report.and_then(|r| r.release_delay_p95_seconds)
    }),
    // The backlog is known only when the run got to count it.
    metric(
        "BacklogRemaining",
        Unit::Count,
        Kind::Gauge,
        "due reservations still active when the run ended",
        |o| {
        counted(o, |r| r.backlog_remaining as f64)
    }),
    metric(
        "OldestDueReservationAge",
        Unit::Seconds,
        Kind::Gauge,
        "age of the oldest due reservation still active when the run ended",
        |o| {
        counted(o, |r| r.oldest_due_age_seconds.unwrap_or(0.0))
    }),
    metric(
        "DeferredOrders",
        Unit::Count,
        Kind::Gauge,
        "orders and holds left out because another transaction held a row they need",
        |o| {
        counted(o, |r| r.deferred as f64)
    }),
    metric(
        "TableLocked",
        Unit::Count,
        Kind::Gauge,
        "1 when the run stopped on a table another session locked, else 0",
        |o| {
        reported(o, |r| flag(r.stopped_reason == StopReason::TableLocked))
    }),
    metric(
        "LargeOrdersLeft",
        Unit::Count,
        Kind::Gauge,
        "large orders not released within their budget even alone",
        |o| {
        reported(o, |r| r.large_orders_left as f64)
    }),
    metric(
        "PaidAfterRelease",
        Unit::Count,
        Kind::Gauge,
        "orders paid in the last 24 hours after the release cancelled them",
        |o| {
        counted(o, |r| r.paid_after_release as f64)
    }),
    metric(
        "OldestDeferredAge",
        Unit::Seconds,
        Kind::Gauge,
        "age of the oldest deferred order, from when it fell due",
        |o| {
        counted(o, |r| r.oldest_deferred_age_seconds.unwrap_or(0.0))
    }),
    // Scheduled follow events answered at once, without following (action::follow).
    metric(
        "StaleFollows",
        Unit::Count,
        Kind::Counter,
        "follow events answered at once because their scheduled minute had ended",
        |o| {
        reported(o, |r| flag(r.follow.as_ref().is_some_and(|f| f.ended == FOLLOW_STALE)))
    }),
    metric(
        "DuplicateFollows",
        Unit::Count,
        Kind::Counter,
        "follow events answered at once because another session already followed their minute",
        |o| {
        reported(o, |r| flag(r.follow.as_ref().is_some_and(|f| f.ended == FOLLOW_DUPLICATE)))
    }),
    metric(
        "CountersDrifted",
        Unit::Count,
        Kind::Gauge,
        "counters a reconcile found disagreeing with their active reservations",
        |o| {
        o.reconcile.map(|r| r.drifted as f64)
    }),
    metric(
        "CountersRepaired",
        Unit::Count,
        Kind::Counter,
        "counters a reconcile set right",
        |o| {
        o.reconcile.map(|r| r.repaired as f64)
    }),
    metric(
        "ReservationsPurged",
        Unit::Count,
        Kind::Counter,
        "expired reservations a purge deleted (order lines included)",
        |o| {
        o.purge.map(|p| (p.reservations.deleted + p.orders.as_ref().map_or(0, |o| o.lines_deleted)) as f64)
    }),
    metric(
        "OrdersPurged",
        Unit::Count,
        Kind::Counter,
        "orders the release cancelled that a purge deleted with their lines",
        |o| {
        o.purge.map(|p| p.orders.as_ref().map_or(0, |o| o.deleted) as f64)
    }),
    metric(
        "PurgeSkipped",
        Unit::Count,
        Kind::Gauge,
        "rows and orders a purge left: held by another transaction, or orders another table references",
        |o| {
        o.purge.map(|p| {
            let orders = p.orders.as_ref().map_or(0, |o| o.skipped_locked + o.skipped_referenced);
            (p.reservations.skipped_locked + orders) as f64
        })
    }),
    metric(
        "PurgePauses",
        Unit::Count,
        Kind::Counter,
        "times a purge paused for a lagging replica or for the release's due work",
        |o| {
        o.purge.map(|p| (p.lag_pauses + p.release_yields) as f64)
    }),
    metric(
        "PurgeBytesFreed",
        Unit::Bytes,
        Kind::Counter,
        "estimated bytes a purge freed in the tables (reused after VACUUM)",
        |o| {
        o.purge.and_then(|p| p.estimated_bytes_freed).map(|b| b as f64)
    }),
];

/// A metric a backend with histograms (Prometheus) writes from every sample of an invocation,
/// where CloudWatch gets a percentile row of [`METRICS`]: its name, unit, help, bucket bounds and
/// samples. Adding one is one row of [`HISTOGRAMS`].
#[derive(Clone, Copy)]
pub struct Histogram {
    pub name: &'static str,
    pub unit: Unit,
    pub help: &'static str,
    /// Upper bounds of the buckets, ascending (in `unit`).
    pub buckets: &'static [f64],
    samples: for<'a> fn(&Observation<'a>) -> &'a [f64],
}

impl Histogram {
    /// The samples of one invocation (none for a dry run: it released nothing).
    pub fn samples<'a>(&self, obs: &Observation<'a>) -> &'a [f64] {
        if obs.dry_run {
            return &[];
        }
        (self.samples)(obs)
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, histogram)", self.name, self.unit.cloudwatch())
    }
}

/// The release delay of every reservation a run released: from due to released.
fn release_delays<'a>(obs: &Observation<'a>) -> &'a [f64] {
    obs.report.map_or(&[], |r| r.delays.as_slice())
}

/// Every histogram: one row each. The release delay's buckets run from 0.1 s (follow mode's
/// seconds) to 1,800 s (interval mode's minutes, and a backlog half an hour late).
pub const HISTOGRAMS: &[Histogram] = &[Histogram {
    name: "ReleaseDelay",
    unit: Unit::Seconds,
    help: "release delay of each reservation released: from when it fell due to its release",
    buckets: &[
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0,
    ],
    samples: release_delays,
}];

/// Whether the invocation is a run (a reconcile's or a purge's document carries no run metric:
/// it must not count as a run for the alarms).
fn run(obs: &Observation<'_>) -> bool {
    obs.reconcile.is_none() && obs.purge.is_none()
}

/// What one invocation contributes to the metrics: a run's, or a reconcile's.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The reconcile's answer, for a reconcile invocation (None for a run).
    pub reconcile: Option<&'a ReconcileReport>,
    /// The purge's answer, for a purge invocation.
    pub purge: Option<&'a PurgeReport>,
    /// The run's id, a property of the document (not a dimension).
    pub run_id: &'a str,
    /// The tenant the invocation served: the metrics alarms need ([`TENANT_METRICS`]) carry it
    /// as a dimension; the others aggregate.
    pub tenant: Option<&'a str>,
    /// The run's report (partial when the run failed part-way); None when it never started.
    pub report: Option<&'a RunReport>,
    pub failed: bool,
    pub dry_run: bool,
    pub cold_start: bool,
    pub duration_ms: u64,
}

/// The metrics that carry a tenant's dimension beside the service's: those the alarms watch per
/// tenant (custom metrics are billed per name and dimension set: a few, not all).
pub const TENANT_METRICS: &[&str] = &["RunFailed", "OldestDueReservationAge", "ReleaseDelayP95"];

/// The metric values of one invocation, with their units.
pub fn values(obs: &Observation<'_>) -> Vec<(&'static Metric, f64)> {
    METRICS
        .iter()
        .filter_map(|m| (m.value)(obs).map(|v| (m, v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row names one metric, with one line of help; a counter counts.
    #[test]
    fn every_metric_is_one_row_with_its_help() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "a metric is named twice");
        for m in METRICS {
            assert!(!m.help.is_empty() && !m.help.contains('\n'), "{m:?}");
            assert!(
                m.kind != Kind::Counter || matches!(m.unit, Unit::Count | Unit::Bytes),
                "{m:?}"
            );
        }
    }
}
