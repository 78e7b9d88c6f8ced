//! The batch controller: how many rows the next batch takes, and whether a run's workers may
//! batch at once. Modeled on pt-online-schema-change's `--chunk-time` (each chunk sized from
//! the rows per second the last ones measured, to take a target time) with the reflex of
//! river's maintenance services (shrink at once when something is in the way):
//!
//! - while nothing competes, each batch is sized to take `BATCH_TARGET_MS` at the rate the
//!   batches measured (a moving average), at most twice and at least half the last size, within
//!   `BATCH_SIZE_MIN..=BATCH_SIZE_MAX`, and every worker of the run batches at once;
//! - the first sign of a shopper — a row the batch needed found held (a skipped order, a poll,
//!   a deferred order, a queue wait) or a session found waiting behind the batch's hot rows
//!   just before it committed — drops the size to `BATCH_SIZE_MIN` and the run to one batch at
//!   a time; it grows again only after [`CALM_BATCHES`] batches in a row and [`CALM_TIME`] met
//!   nobody (one quiet batch does not mean the shoppers left);
//! - a batch cut by its time budget halves the size.
//!
//! A pinned `BATCH_SIZE` keeps the size (halved after a cut, then doubled back) and still lets
//! the workers fall back to one at a time when shoppers compete.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::batch::BatchOutcome;
use crate::config::ReleaseSettings;

/// Batches in a row that must meet nobody before a batch may grow (or the workers batch at
/// once) again after a sign of shoppers.
pub const CALM_BATCHES: u32 = 3;
/// And the time since the last sign: shoppers checking out now and then may give none for a
/// few batches, not for a second.
pub const CALM_TIME: Duration = Duration::from_secs(1);
/// The rate (rows a millisecond) a release run's first batch is sized for, before any batch
/// measured one: the slowest measured here, batches on the test suite's busy server (a debug
/// build, four tests at once, load 6: 1,500 rows took over 500 ms). A first batch sized for a
/// quiet server's rate (about 24 rows a millisecond) was cut by its budget there and rolled
/// back, several times over; this one ends within it, and the next is sized from its rate.
pub const FIRST_BATCH_ROWS_PER_MS: f64 = 3.0;
/// Weight of the newest batch in the moving average of rows per millisecond.
const RATE_WEIGHT: f64 = 0.5;

/// What the controller did over a run, in its report.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ControllerStats {
    /// `adaptive`, or `pinned` (BATCH_SIZE set).
    pub mode: &'static str,
    /// The smallest, largest and last batch size (rows paged) the run used.
    pub batch_rows_min: u32,
    pub batch_rows_max: u32,
    pub batch_rows_last: u32,
    /// Connections the run drained with (1 when it never had more than a page to do, or the
    /// server had no connection to spare).
    pub workers: u32,
    /// Times the size was cut because shoppers competed for the batch's rows (to
    /// `BATCH_SIZE_MIN`, workers one at a time), because a batch was cut by its time budget
    /// (halved), or because batches ran longer than the target (sized down to it).
    pub shrinks_for_shoppers: u32,
    pub shrinks_for_cuts: u32,
    pub shrinks_for_time: u32,
    /// Batches run while shoppers competed (one at a time, at the floor).
    pub contended_batches: u32,
    /// Batch sizes over the run, for the benchmark's plot: (ms since the run started, rows the
    /// next batch takes, workers allowed to batch at once).
    #[serde(skip)]
    pub timeline: Vec<(f64, u32, u32)>,
}

impl ControllerStats {
    /// Adds the stats of a later pass of follow mode.
    pub fn add_pass(&mut self, later: &ControllerStats) {
        if later.batch_rows_max > 0 {
            self.batch_rows_min = match self.batch_rows_min {
                0 => later.batch_rows_min,
                n => n.min(later.batch_rows_min),
            };
            self.batch_rows_max = self.batch_rows_max.max(later.batch_rows_max);
            self.batch_rows_last = later.batch_rows_last;
        }
        self.workers = self.workers.max(later.workers);
        self.shrinks_for_shoppers += later.shrinks_for_shoppers;
        self.shrinks_for_cuts += later.shrinks_for_cuts;
        self.shrinks_for_time += later.shrinks_for_time;
        self.contended_batches += later.contended_batches;
    }
}

/// Whether a batch met a shopper: any row it needed found held, or any session waiting behind
/// its hot rows. Every shopper on a row the batch needs trips one of these: it either holds the
/// row when the batch takes it, or waits for it while the batch holds it.
pub fn met_shoppers(batch: &BatchOutcome) -> bool {
    let c = &batch.counts;
    c.skipped_locked > 0
        || c.held_wait_ms > 0.0
        || c.queue_waits > 0
        || c.counters_written_by_others > 0
        || !batch.deferred_orders.is_empty()
        || !batch.deferred_holds.is_empty()
        || !batch.long_held.is_empty()
}

/// The size of the next batch and the run's concurrency.
#[derive(Debug, Clone)]
pub struct Controller {
    pinned: Option<u32>,
    min: u32,
    max: u32,
    target_ms: f64,
    size: u32,
    /// Batches in a row that met nobody.
    calm: u32,
    /// When a batch last met a shopper (or was cut).
    last_sign: Option<Instant>,
    calm_time: Duration,
    /// Rows per millisecond, moving average.
    rate: Option<f64>,
    /// Whether a quiet batch may grow straight to the size its rate calls for, not at most
    /// twice the last ([`Controller::sized_from_what_is_due`]), until the first sign of a
    /// shopper.
    grow_to_rate: bool,
    started: Instant,
    pub stats: ControllerStats,
}

impl Controller {
    /// A controller for a run whose batches may take `budget` at most: the target is kept to a
    /// third of it, so that a batch sized for it is not cut.
    pub fn new(settings: &ReleaseSettings, budget: Duration) -> Self {
        let budget_ms = budget.as_secs_f64() * 1000.0;
        let target_ms = (settings.batch_target.as_secs_f64() * 1000.0).min(budget_ms / 3.0);
        Controller {
            pinned: settings.batch_size,
            min: settings.batch_floor(),
            max: settings.batch_ceiling(),
            target_ms: target_ms.max(1.0),
            size: settings.initial_batch_size(),
            calm: CALM_BATCHES,
            last_sign: None,
            calm_time: CALM_TIME,
            rate: None,
            grow_to_rate: false,
            started: Instant::now(),
            stats: ControllerStats {
                mode: if settings.batch_size.is_some() {
                    "pinned"
                } else {
                    "adaptive"
                },
                workers: 1,
                ..ControllerStats::default()
            },
        }
    }

    /// The controller of a release run: an adaptive first batch pages what the time target
    /// allows at [`FIRST_BATCH_ROWS_PER_MS`] (450 rows with the defaults), within
    /// `BATCH_SIZE_MIN..=BATCH_SIZE_MAX`, so that it takes a small backlog whole (the page
    /// returns no more than is due); and until the first sign of a shopper, each quiet batch
    /// grows straight to the size the measured rate calls for (not at most twice the last):
    /// a smaller batch's rate is the pessimistic one (its fixed cost is spread over fewer rows),
    /// so that size still keeps to the target. 5,000 due go in three batches this way (the
    /// first, then one per worker) where growing from the floor took about ten. After a sign
    /// of shoppers the size comes back as before (at the floor, at most doubling).
    pub fn sized_from_what_is_due(mut self) -> Self {
        if self.pinned.is_none() {
            let allowed = (self.target_ms * FIRST_BATCH_ROWS_PER_MS)
                .round()
                .clamp(1.0, f64::from(u32::MAX)) as u32;
            self.size = allowed.clamp(self.min, self.max);
            self.grow_to_rate = true;
        }
        self
    }

    /// Rows the next batch pages.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Whether the run's workers may batch at once (and a batch grow): nobody competed for
    /// [`CALM_BATCHES`] batches and [`CALM_TIME`].
    pub fn parallel(&self) -> bool {
        self.calm >= CALM_BATCHES
            && self
                .last_sign
                .is_none_or(|at| at.elapsed() >= self.calm_time)
    }

    /// Books a batch that committed: `rows` paged (or worked), in `took`, meeting shoppers or
    /// not. Returns the size of the next batch.
    pub fn observe(&mut self, rows: usize, took: Duration, met_shoppers: bool) -> u32 {
        self.record_size();
        let ms = took.as_secs_f64() * 1000.0;
        if rows > 0 && ms > 0.0 {
            let rate = rows as f64 / ms;
            self.rate = Some(
                self.rate
                    .map_or(rate, |r| r * (1.0 - RATE_WEIGHT) + rate * RATE_WEIGHT),
            );
        }
        if met_shoppers {
            self.stats.contended_batches += 1;
            self.calm = 0;
            self.last_sign = Some(Instant::now());
            if self.pinned.is_none() && self.size > self.min {
                self.stats.shrinks_for_shoppers += 1;
                self.size = self.min;
            }
        } else {
            self.calm = self.calm.saturating_add(1);
            if self.parallel() {
                self.size = self.next_size();
            }
        }
        self.sample();
        self.size
    }

    /// Rows that take the batch target at the rate measured by `rows` worked in `took` (at
    /// least 1): how a part of a large order is sized from the part before it, by the same
    /// target as every batch.
    pub fn rows_for_target(&self, rows: usize, took: Duration) -> u32 {
        let ms = took.as_secs_f64() * 1000.0;
        if rows == 0 || ms <= 0.0 {
            return 1;
        }
        (rows as f64 / ms * self.target_ms)
            .round()
            .clamp(1.0, f64::from(u32::MAX)) as u32
    }

    /// Books a batch cut by its time budget: the size is halved. Returns it.
    pub fn cut(&mut self) -> u32 {
        self.stats.shrinks_for_cuts += 1;
        self.calm = 0;
        self.last_sign = Some(Instant::now());
        self.size = (self.size / 2).max(1);
        self.sample();
        self.size
    }

    /// The size of a quiet batch: a pinned size grows back to itself; an adaptive one is sized
    /// to the target at the measured rate, within half and twice the last and the bounds.
    fn next_size(&mut self) -> u32 {
        if let Some(pinned) = self.pinned {
            return self.size.saturating_mul(2).min(pinned);
        }
        let Some(rate) = self.rate else {
            return self.size;
        };
        let ideal = (rate * self.target_ms)
            .round()
            .clamp(1.0, f64::from(u32::MAX)) as u32;
        let most = if self.grow_to_rate && self.last_sign.is_none() {
            self.max
        } else {
            self.size.saturating_mul(2)
        };
        let next = ideal
            .clamp(self.size / 2, most.max(self.size / 2))
            .clamp(self.min, self.max);
        if next < self.size {
            self.stats.shrinks_for_time += 1;
        }
        next
    }

    fn record_size(&mut self) {
        let s = &mut self.stats;
        s.batch_rows_min = match s.batch_rows_min {
            0 => self.size,
            n => n.min(self.size),
        };
        s.batch_rows_max = s.batch_rows_max.max(self.size);
        s.batch_rows_last = self.size;
    }

    fn sample(&mut self) {
        let at = self.started.elapsed().as_secs_f64() * 1000.0;
        let workers = if self.parallel() {
            self.stats.workers
        } else {
            1
        };
        self.stats.timeline.push((at, self.size, workers));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pinned: Option<u32>) -> ReleaseSettings {
        ReleaseSettings {
            batch_size: pinned,
            batch_size_min: 100,
            batch_size_max: 4000,
            batch_target: Duration::from_millis(150),
            ..ReleaseSettings::default()
        }
    }

    const BUDGET: Duration = Duration::from_millis(500);

    /// A controller whose calm needs batches only (no wall-clock wait in a unit test).
    fn controller(pinned: Option<u32>, budget: Duration) -> Controller {
        Controller {
            calm_time: Duration::ZERO,
            ..Controller::new(&settings(pinned), budget)
        }
    }

    #[test]
    fn a_quiet_drain_grows_towards_the_target_at_most_doubling() {
        let mut c = controller(None, BUDGET);
        assert_eq!(c.size(), 100);
        // 10 rows a millisecond: the target of 150 ms wants 1500 rows.
        let mut sizes = Vec::new();
        for _ in 0..6 {
            let rows = c.size() as usize;
            sizes.push(c.observe(rows, Duration::from_millis(rows as u64 / 10), false));
        }
        assert_eq!(sizes, vec![200, 400, 800, 1500, 1500, 1500]);
        assert!(c.parallel());
    }

    #[test]
    fn a_release_run_starts_at_what_the_target_allows_then_grows_to_the_rate() {
        let mut c = controller(None, BUDGET).sized_from_what_is_due();
        // 150 ms at 3 rows a millisecond.
        assert_eq!(c.size(), 450);
        // 15 rows a millisecond measured: straight to the 2,250 the target wants.
        assert_eq!(c.observe(450, Duration::from_millis(30), false), 2250);
        // A slower batch (5 rows a millisecond, 10 on average): down to what that wants.
        assert_eq!(c.observe(2250, Duration::from_millis(450), false), 1500);
        assert_eq!(c.stats.shrinks_for_time, 1);
        // A shopper met drops it to the floor; once calm again it grows at most twice a batch.
        assert_eq!(c.observe(1500, Duration::from_millis(75), true), 100);
        for _ in 0..CALM_BATCHES - 1 {
            assert_eq!(c.observe(100, Duration::from_millis(5), false), 100);
        }
        assert_eq!(c.observe(100, Duration::from_millis(5), false), 200);
        // A short budget shortens the target, and so the first batch; a pinned size stays.
        let short = controller(None, Duration::from_millis(90)).sized_from_what_is_due();
        assert_eq!(short.size(), 100);
        // The controller of the purge (not sized this way) still grows at most twice.
        let mut purge = controller(None, BUDGET);
        assert_eq!(purge.observe(100, Duration::from_millis(5), false), 200);
        assert_eq!(
            controller(Some(70), BUDGET).sized_from_what_is_due().size(),
            70
        );
    }

    #[test]
    fn the_first_shopper_drops_to_the_floor_and_one_worker_until_calm() {
        let mut c = controller(None, BUDGET);
        for _ in 0..5 {
            let rows = c.size() as usize;
            c.observe(rows, Duration::from_millis(rows as u64 / 10), false);
        }
        assert_eq!(c.size(), 1500);
        assert_eq!(c.observe(1500, Duration::from_millis(150), true), 100);
        assert!(!c.parallel());
        assert_eq!(c.stats.shrinks_for_shoppers, 1);
        // Still at the floor while fewer than CALM_BATCHES quiet batches followed.
        for _ in 0..CALM_BATCHES - 1 {
            assert_eq!(c.observe(100, Duration::from_millis(10), false), 100);
            assert!(!c.parallel());
        }
        assert_eq!(c.observe(100, Duration::from_millis(10), false), 200);
        assert!(c.parallel());
        // A shopper again: back to the floor at once, counted once more.
        assert_eq!(c.observe(200, Duration::from_millis(20), true), 100);
        assert_eq!(c.stats.shrinks_for_shoppers, 2);
        assert_eq!(c.stats.contended_batches, 2);
    }

    #[test]
    fn slow_batches_shrink_by_half_at_most_and_never_below_the_floor() {
        let mut c = controller(None, BUDGET);
        for _ in 0..6 {
            let rows = c.size() as usize;
            c.observe(rows, Duration::from_millis(rows as u64 / 10), false);
        }
        assert_eq!(c.size(), 1500);
        // Suddenly 1 row a millisecond: the average halves the rate first.
        let next = c.observe(1500, Duration::from_millis(1500), false);
        assert!((750..1500).contains(&next), "{next}");
        assert!(c.stats.shrinks_for_time >= 1);
        for _ in 0..20 {
            let rows = c.size() as usize;
            c.observe(rows, Duration::from_millis(rows as u64 * 10), false);
        }
        assert_eq!(c.size(), 100);
    }

    #[test]
    fn a_cut_halves_the_size_and_the_target_fits_the_budget() {
        let mut c = controller(None, Duration::from_millis(60));
        // Target 150 ms capped at a third of a 60 ms budget: 20 ms, at 10 rows/ms 200 rows.
        for _ in 0..8 {
            let rows = c.size() as usize;
            c.observe(rows, Duration::from_millis(rows as u64 / 10), false);
        }
        assert_eq!(c.size(), 200);
        assert_eq!(c.cut(), 100);
        assert_eq!(c.stats.shrinks_for_cuts, 1);
        assert!(!c.parallel());
    }

    #[test]
    fn a_second_without_shoppers_is_needed_as_well_as_quiet_batches() {
        let mut c = Controller::new(&settings(None), BUDGET);
        assert!(c.parallel(), "nobody seen yet");
        c.observe(100, Duration::from_millis(10), true);
        for _ in 0..10 {
            assert_eq!(c.observe(100, Duration::from_millis(10), false), 100);
        }
        assert!(!c.parallel());
    }

    #[test]
    fn every_sign_of_a_shopper_alone_is_one() {
        use crate::engine::counts::Counts;
        assert!(!met_shoppers(&BatchOutcome::default()));
        let with = |counts: Counts| BatchOutcome {
            counts,
            ..BatchOutcome::default()
        };
        for batch in [
            with(Counts {
                skipped_locked: 1,
                ..Counts::default()
            }),
            with(Counts {
                held_wait_ms: 2.0,
                ..Counts::default()
            }),
            with(Counts {
                queue_waits: 1,
                ..Counts::default()
            }),
            with(Counts {
                counters_written_by_others: 1,
                ..Counts::default()
            }),
            BatchOutcome {
                deferred_orders: [7].into(),
                ..BatchOutcome::default()
            },
            BatchOutcome {
                deferred_holds: [7].into(),
                ..BatchOutcome::default()
            },
        ] {
            assert!(met_shoppers(&batch), "{batch:?}");
        }
    }

    #[test]
    fn a_pinned_size_stays_but_workers_still_fall_back() {
        let mut c = controller(Some(500), BUDGET);
        assert_eq!(c.size(), 500);
        assert_eq!(c.observe(500, Duration::from_millis(5), false), 500);
        assert_eq!(c.observe(500, Duration::from_millis(5), true), 500);
        assert!(!c.parallel());
        assert_eq!(c.cut(), 250);
        for _ in 0..CALM_BATCHES {
            c.observe(250, Duration::from_millis(5), false);
        }
        assert_eq!(c.size(), 500);
        assert_eq!(c.stats.shrinks_for_shoppers, 0);
        assert_eq!(c.stats.mode, "pinned");
    }
}
