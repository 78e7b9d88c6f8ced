//! `purge`: deletes what the release left behind — `expired` reservations released more than
//! DAYS ago and, asked to, the orders the release cancelled with their lines — as gently as
//! pt-archiver: small committed chunks keyed on the primary key (`db::sql::purge`), each
//! locking only rows nobody holds, sized by the drain's own controller (quiet: grows to its
//! target time, a third of the batch budget at most; a row found held, or other sessions at
//! work on the database when the chunk is about to commit — a shopper checking out, one
//! waiting on the chunk's locks: back to the floor, then a rest `PURGE_REST_RATIO` times as
//! long as the chunk took, its looks at the replicas and the release included: `pace`; a chunk
//! past `STATEMENT_TIMEOUT_MS` or in a lock conflict rolls back, halves the size and is tried
//! again). Before a chunk, every 250 ms at most, it looks at the replicas and the release, and
//! waits while a streaming replica's replay lag exceeds `max_lag` and while the release has due
//! work (the backlog count, the release's own rule): the release always goes first. It stops
//! before a chunk that could not finish before the deadline; the next purge starts where the
//! rows left begin (each pass walks the id range of what may go, read at its start). Each
//! chunk that deleted rows records the retention horizon in its own transaction
//! (`db::sql::retention`), which `report`, `events` and `revive` read.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::error::SqlState;

use super::batch;
use super::budget::batch_budget;
use super::controller::{Controller, ControllerStats};
use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::db::sql::purge::{self as sql, ForeignKey, WindowBounds};
use crate::db::sql::retention;
use crate::db::sql::BatchTimeouts;
use crate::error::{is_cancelled, is_conflict, Error, Result};

mod pace;

/// Chunks in a row that may fail (cut by the budget, a lock conflict) before the purge fails.
const FAILED_CHUNKS: u32 = 5;
/// Most orders an answer names of those kept because another table references them.
pub const ORDERS_NAMED: usize = 100;
/// Where the purge role's grants are.
pub const PURGE_ROLE_SQL: &str = "infra/purge-role.sql";

/// What to purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Delete; without it, count what would go and change nothing.
    pub apply: bool,
    /// Also the orders the release cancelled, with their lines.
    pub orders: bool,
    /// Rows released (orders cancelled) more than this many days ago.
    pub older_than_days: u32,
    /// Pause while a streaming replica's replay lag exceeds this.
    pub max_lag: Duration,
    /// No chunk starts unless it can finish before this.
    pub deadline: Option<Instant>,
}

/// Reservations the purge took (or, in a dry run, would take).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReservationsPurged {
    /// Found old enough to go, in the windows the purge walked.
    pub eligible: u64,
    pub deleted: u64,
    /// Held by another transaction when their chunk came: left for the next purge.
    pub skipped_locked: u64,
}

/// An order kept because rows of other tables reference it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReferencedOrder {
    pub order_id: i64,
    /// The referencing keys, as `schema.table(column)`.
    pub referenced_by: Vec<String>,
}

/// Orders the purge took with their lines (or, in a dry run, would take).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct OrdersPurged {
    /// Cancelled by the release, unpaid, every line old enough, in the windows walked.
    pub eligible: u64,
    pub deleted: u64,
    /// Their lines, deleted with them (a dry run: counted).
    pub lines_deleted: u64,
    /// The order or one of its lines was held by another transaction: left for the next purge.
    pub skipped_locked: u64,
    /// Another table references the order: kept (named below, up to 100).
    pub skipped_referenced: u64,
    pub referenced: Vec<ReferencedOrder>,
    /// The foreign keys checked, as `schema.table(column)` (the reservations' own aside).
    pub foreign_keys: Vec<String>,
}

/// What the purge saw of the streaming replicas.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Replicas {
    /// Replicas `pg_stat_replication` shows with their state.
    pub visible: i64,
    /// Replicas shown without their state (the role lacks `pg_monitor`): their lag is unknown.
    pub lag_hidden: i64,
    /// The largest replay lag seen, in milliseconds.
    pub max_replay_lag_ms: f64,
    /// The bound the purge paused at.
    pub max_lag_ms: u64,
    /// Why the lag could not be watched, when it could not.
    pub note: Option<String>,
}

/// The answer of `purge`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PurgeReport {
    pub apply: bool,
    pub older_than_days: u32,
    pub reservations: ReservationsPurged,
    /// None without `--orders`.
    pub orders: Option<OrdersPurged>,
    /// Chunks committed (a dry run: windows read).
    pub chunks: u64,
    /// Chunks rolled back (past `STATEMENT_TIMEOUT_MS`, or a lock conflict) and tried again
    /// smaller.
    pub chunks_retried: u64,
    /// Pauses while a replica lagged, and while the release had due work.
    pub lag_pauses: u64,
    pub release_yields: u64,
    pub paused_ms: u64,
    /// Time rested after chunks that met others (`PURGE_REST_RATIO` times the chunk's time).
    pub rested_ms: u64,
    pub replicas: Replicas,
    /// The rows' share of the tables' size (indexes included), from the planner's statistics:
    /// space the tables reuse after `VACUUM`. None before the tables were ever analyzed.
    pub estimated_bytes_freed: Option<u64>,
    /// `done`, `time_budget`, `replica_lag` or `release_due_work` (the last two: a pause
    /// outlasted the time left).
    pub stopped: &'static str,
    pub controller: ControllerStats,
}

impl PurgeReport {
    /// Rows left that this purge could have taken: a dry run's finds, held rows, or a stop
    /// before the end. Orders kept because they are referenced are not: they wait for the
    /// shop.
    pub fn work_remains(&self) -> bool {
        let orders = self.orders.clone().unwrap_or_default();
        let found = if self.apply {
            0
        } else {
            self.reservations.eligible + orders.eligible.saturating_sub(orders.skipped_referenced)
        };
        self.stopped != "done"
            || found > 0
            || self.reservations.skipped_locked > 0
            || orders.skipped_locked > 0
    }
}

/// One purge: the reservations, then (asked to) the orders.
pub async fn purge(
    db: &mut Database,
    settings: &ReleaseSettings,
    options: &Options,
) -> Result<PurgeReport> {
    let budget = batch_budget(settings, db)?;
    let mut purge = Purge {
        settings,
        options,
        timeouts: batch::timeouts(settings),
        budget,
        days: i32::try_from(options.older_than_days).unwrap_or(i32::MAX),
        controller: Controller::new(settings, budget),
        pace: pace::Pace::default(),
        report: PurgeReport {
            apply: options.apply,
            older_than_days: options.older_than_days,
            reservations: ReservationsPurged::default(),
            orders: options.orders.then(OrdersPurged::default),
            chunks: 0,
            chunks_retried: 0,
            lag_pauses: 0,
            release_yields: 0,
            paused_ms: 0,
            rested_ms: 0,
            replicas: Replicas {
                max_lag_ms: options.max_lag.as_millis() as u64,
                ..Replicas::default()
            },
            estimated_bytes_freed: None,
            stopped: "done",
            controller: ControllerStats::default(),
        },
    };
    let row_bytes = sql::row_bytes(&db.client).await?;
    let outcome = purge.reservations(db).await;
    let outcome = match outcome {
        Ok(true) if options.orders => purge.orders(db).await,
        other => other,
    };
    outcome.map_err(privileges)?;
    let mut report = purge.report;
    report.controller = purge.controller.stats.clone();
    report.estimated_bytes_freed = estimate(&report, row_bytes);
    tracing::info!(
        apply = report.apply,
        older_than_days = report.older_than_days,
        reservations_deleted = report.reservations.deleted,
        orders_deleted = report.orders.as_ref().map_or(0, |o| o.deleted),
        chunks = report.chunks,
        stopped = report.stopped,
        "purged"
    );
    Ok(report)
}

/// A purge's state while it walks.
struct Purge<'a> {
    settings: &'a ReleaseSettings,
    options: &'a Options,
    timeouts: BatchTimeouts,
    budget: Duration,
    days: i32,
    controller: Controller,
    pace: pace::Pace,
    report: PurgeReport,
}

/// What one chunk did: the window's last id (None: nothing left) and size, and whether it met
/// others: a row another transaction held, or other sessions at work as it was about to commit
/// (`sql::others_at_work`).
struct Walked {
    last_id: Option<i64>,
    scanned: i64,
    met_others: bool,
}

impl Purge<'_> {
    /// The reservations' pass. Whether it got to the end.
    async fn reservations(&mut self, db: &mut Database) -> Result<bool> {
        let keep = self.options.orders;
        let range = sql::reservation_range(&db.client, self.days, keep).await?;
        let (Some(first), Some(last)) = (range.first, range.last) else {
            return Ok(true);
        };
        let mut after = first - 1;
        while after < last {
            let bounds = WindowBounds {
                after,
                until: last,
                size: i64::from(self.controller.size()),
            };
            match self.chunk(db, bounds, Pass::Reservations).await? {
                Some(next) => after = next,
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// The orders' pass. Whether it got to the end.
    async fn orders(&mut self, db: &mut Database) -> Result<bool> {
        let keys = sql::foreign_keys_to_orders(&db.client).await?;
        if let Some(orders) = self.report.orders.as_mut() {
            orders.foreign_keys = keys.iter().map(ForeignKey::label).collect();
        }
        let check = (!keys.is_empty()).then(|| sql::referenced_orders(&keys));
        let range = sql::order_range(&db.client, self.days).await?;
        let (Some(first), Some(last)) = (range.first, range.last) else {
            return Ok(true);
        };
        let mut after = first - 1;
        while after < last {
            let bounds = WindowBounds {
                after,
                until: last,
                size: i64::from(self.controller.size()),
            };
            let pass = Pass::Orders {
                keys: &keys,
                check: check.as_deref(),
            };
            match self.chunk(db, bounds, pass).await? {
                Some(next) => after = next,
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Runs one chunk after the pauses, retrying it smaller when cut or in conflict. Returns
    /// the id the next window starts after (the range's end when this one was empty), or None
    /// when the purge must stop.
    async fn chunk(
        &mut self,
        db: &mut Database,
        mut bounds: WindowBounds,
        pass: Pass<'_>,
    ) -> Result<Option<i64>> {
        let mut failures = 0;
        loop {
            if !self.may_go_on(db).await? {
                return Ok(None);
            }
            let started = Instant::now();
            let outcome = match pass {
                Pass::Reservations => self.reservation_chunk(db, bounds).await,
                Pass::Orders { keys, check } => self.order_chunk(db, bounds, keys, check).await,
            };
            let took = started.elapsed();
            match outcome {
                Ok(walked) => {
                    self.report.chunks += 1;
                    let rows = usize::try_from(walked.scanned).unwrap_or(0);
                    self.controller.observe(rows, took, walked.met_others);
                    self.rest_after(took, walked.met_others).await;
                    return Ok(Some(walked.last_id.unwrap_or(bounds.until)));
                }
                Err(error) if is_cancelled(&error) || is_conflict(&error) => {
                    failures += 1;
                    self.report.chunks_retried += 1;
                    if failures >= FAILED_CHUNKS || bounds.size <= 1 {
                        return Err(error);
                    }
                    bounds.size = i64::from(self.controller.cut());
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One chunk of reservations, in a transaction of its own.
    async fn reservation_chunk(
        &mut self,
        db: &mut Database,
        bounds: WindowBounds,
    ) -> Result<Walked> {
        let tx = db
            .client
            .transaction()
            .await
            .map_err(Error::db("beginning a purge chunk"))?;
        db.statements
            .set_batch_timeouts(&tx, &self.timeouts)
            .await?;
        let apply = self.options.apply;
        let chunk =
            sql::purge_reservation_chunk(&tx, bounds, self.days, self.options.orders, apply)
                .await?;
        if chunk.deleted > 0 {
            retention::mark_purged(&tx, self.days, None).await?;
        }
        let others = sql::others_at_work(&tx).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing a purge chunk"))?;
        let r = &mut self.report.reservations;
        r.eligible += count(chunk.eligible);
        r.deleted += count(chunk.deleted);
        let held = if apply {
            count(chunk.eligible - chunk.deleted)
        } else {
            0
        };
        r.skipped_locked += held;
        Ok(Walked {
            last_id: chunk.window.last_id,
            scanned: chunk.window.scanned,
            met_others: held > 0 || others > 0,
        })
    }

    /// One chunk of orders with their lines, in a transaction of its own: orders locked, then
    /// their lines, then what references them read, then lines and orders deleted.
    async fn order_chunk(
        &mut self,
        db: &mut Database,
        bounds: WindowBounds,
        keys: &[ForeignKey],
        check: Option<&str>,
    ) -> Result<Walked> {
        let apply = self.options.apply;
        let tx = db
            .client
            .transaction()
            .await
            .map_err(Error::db("beginning a purge chunk"))?;
        db.statements
            .set_batch_timeouts(&tx, &self.timeouts)
            .await?;
        let chunk = sql::lock_order_chunk(&tx, bounds, self.days, apply).await?;
        let whole = if apply {
            sql::lock_order_lines(&tx, &chunk.locked).await?
        } else {
            chunk.eligible.clone()
        };
        let referenced = match check {
            Some(statement) if !whole.is_empty() => sql::references(&tx, statement, &whole).await?,
            _ => Vec::new(),
        };
        let kept: Vec<&sql::Referenced> =
            referenced.iter().filter(|r| !r.keys.is_empty()).collect();
        let free: Vec<i64> = whole
            .iter()
            .copied()
            .filter(|id| !kept.iter().any(|r| r.id == *id))
            .collect();
        let (lines, deleted) = if apply && !free.is_empty() {
            let lines = sql::order_rows(&tx, sql::DELETE_ORDER_LINES, &free).await?;
            let deleted = sql::order_rows(&tx, sql::DELETE_ORDERS, &free).await?;
            retention::mark_purged(&tx, self.days, free.iter().max().copied()).await?;
            (lines, deleted)
        } else if free.is_empty() {
            (0, 0)
        } else {
            (
                sql::order_rows(&tx, sql::COUNT_ORDER_LINES, &free).await?,
                0,
            )
        };
        let others = sql::others_at_work(&tx).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing a purge chunk"))?;
        let held = if apply {
            chunk.eligible.len().saturating_sub(whole.len()) as u64
        } else {
            0
        };
        self.book_orders(&chunk.eligible, held, (lines, deleted), &kept, keys);
        Ok(Walked {
            last_id: chunk.window.last_id,
            scanned: chunk.window.scanned,
            met_others: held > 0 || others > 0,
        })
    }
    /// Adds one chunk of orders to the report: `eligible` found, `held` skipped, `rows` (lines,
    /// orders) deleted, `kept` referenced through `keys`.
    fn book_orders(
        &mut self,
        eligible: &[i64],
        held: u64,
        (lines, deleted): (i64, i64),
        kept: &[&sql::Referenced],
        keys: &[ForeignKey],
    ) {
        let Some(orders) = self.report.orders.as_mut() else {
            return;
        };
        orders.eligible += eligible.len() as u64;
        orders.deleted += count(deleted);
        orders.lines_deleted += count(lines);
        orders.skipped_locked += held;
        orders.skipped_referenced += kept.len() as u64;
        for r in kept {
            if orders.referenced.len() < ORDERS_NAMED {
                orders.referenced.push(ReferencedOrder {
                    order_id: r.id,
                    referenced_by: r
                        .keys
                        .iter()
                        .filter_map(|k| usize::try_from(*k).ok())
                        .filter_map(|k| keys.get(k).map(ForeignKey::label))
                        .collect(),
                });
            }
        }
    }
}

/// Which pass a chunk belongs to.
#[derive(Clone, Copy)]
enum Pass<'k> {
    Reservations,
    Orders {
        keys: &'k [ForeignKey],
        check: Option<&'k str>,
    },
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Whether `deadline` leaves less than `allowance`.
fn past(deadline: Option<Instant>, allowance: Duration) -> bool {
    deadline.is_some_and(|d| Instant::now() + allowance >= d)
}

/// The space the rows deleted (a dry run: the rows it would delete) take, from the tables'
/// average row size; None when a size is unknown.
fn estimate(report: &PurgeReport, bytes: sql::RowBytes) -> Option<u64> {
    let orders = report.orders.clone().unwrap_or_default();
    let (reservations, lines, orders) = if report.apply {
        (
            report.reservations.deleted,
            orders.lines_deleted,
            orders.deleted,
        )
    } else {
        (
            report.reservations.eligible,
            orders.lines_deleted,
            orders.eligible.saturating_sub(orders.skipped_referenced),
        )
    };
    let reservation = bytes
        .reservation
        .or((reservations + lines == 0).then_some(0.0))?;
    let order = bytes.order.or((orders == 0).then_some(0.0))?;
    Some(((reservations + lines) as f64 * reservation + orders as f64 * order).round() as u64)
}

/// A statement refused for lack of a privilege, or of the horizon's table (an older
/// `infra/purge-role.sql`), names the purge role's grants.
fn privileges(error: Error) -> Error {
    match error {
        Error::Database { context, source }
            if source.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
                || source.code() == Some(&SqlState::UNDEFINED_TABLE) =>
        {
            Error::Privilege {
                context,
                hint: PURGE_ROLE_SQL,
                source,
            }
        }
        other => other,
    }
}
