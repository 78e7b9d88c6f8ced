//! The parameters every batch of a run shares, converted once to the types the SQL takes, and
//! the hot phase of the batch running now.

use std::time::{Duration, Instant};

use super::*;
use crate::config::ReleaseSettings;
use crate::db::sql::{BatchTimeouts, Rules, Share};

/// When the batch running now first locked a variant or drop row (the hot rows shoppers
/// queue on): from then on, shoppers may wait on it. The run's timer reads it to give a batch
/// of one large order its budget from that moment.
#[derive(Debug, Clone, Default)]
pub struct HotPhase(std::sync::Arc<tokio::sync::watch::Sender<Option<Instant>>>);

impl HotPhase {
    /// A receiver of the hot phase's start.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Instant>> {
        self.0.subscribe()
    }

    pub(crate) fn reset(&self) {
        self.0.send_replace(None);
    }

    /// Marks now as the start, unless it started already.
    pub(super) fn start(&self) {
        self.0.send_if_modified(|at| {
            let first = at.is_none();
            if first {
                *at = Some(Instant::now());
            }
            first
        });
    }
}

/// The parameters every batch of a run shares, converted once to the types the SQL takes.
#[derive(Debug, Clone)]
pub struct BatchParams {
    /// Due reservations per page; the run halves it for a batch cut by the time budget.
    pub page_size: i64,
    /// How long a batch polls for rows another transaction holds before leaving out the
    /// orders that need them (`LOCK_TIMEOUT_MS`).
    pub lock_wait: Duration,
    /// Counter rows found held for long by earlier batches of the run (see [`LongHeld`]).
    pub long_held: LongHeld,
    /// The timeouts of a queue batch: its `lock_timeout` (how long it waits in the row's
    /// queue) is a quarter of the shop's `deadlock_timeout` (half the batch budget), set by
    /// the run.
    pub queue_timeouts: BatchTimeouts,
    /// When the current batch first locked a hot row.
    pub hot_phase: HotPhase,
    /// The share of the due rows this worker pages ([`Share::ALL`] for a run of one worker).
    pub share: Share,
    /// Shared by the workers of one run (None: one worker): see [`HotTurn`].
    pub hot_turn: Option<HotTurn>,
    /// Who last wrote each counter row the run updated (shared by its workers).
    pub counter_writers: CounterWriters,
    pub(super) rules: Rules,
    pub(super) timeouts: BatchTimeouts,
    pub(super) dry_run: bool,
}

impl BatchParams {
    pub fn new(settings: &ReleaseSettings, dry_run: bool) -> Self {
        BatchParams {
            page_size: i64::from(settings.initial_batch_size()),
            lock_wait: settings.lock_timeout(),
            long_held: LongHeld::default(),
            queue_timeouts: timeouts(settings),
            hot_phase: HotPhase::default(),
            share: Share::ALL,
            hot_turn: None,
            counter_writers: CounterWriters::default(),
            rules: rules(settings),
            timeouts: timeouts(settings),
            dry_run,
        }
    }

    /// The rule parameters of the statements.
    pub fn rules(&self) -> Rules {
        self.rules
    }

    /// The parameters of another worker of the same run: its own share and hot phase, the
    /// hot turn shared, nothing learnt yet of held rows.
    pub fn for_worker(&self, share: Share, hot_turn: HotTurn) -> Self {
        BatchParams {
            share,
            hot_turn: Some(hot_turn),
            hot_phase: HotPhase::default(),
            long_held: LongHeld::default(),
            ..self.clone()
        }
    }
}

/// The release rules of `settings` as the statements take them.
pub fn rules(settings: &ReleaseSettings) -> Rules {
    Rules {
        timeout_minutes: clamp_i32(settings.reservation_timeout_minutes),
        grace_minutes: clamp_i32(settings.payment_processing_grace_minutes),
    }
}

/// The lock and statement timeouts of `settings`, as a transaction of the release (a batch, a
/// revive, a counter repair) sets them for itself.
pub fn timeouts(settings: &ReleaseSettings) -> BatchTimeouts {
    BatchTimeouts {
        lock_timeout: format!("{}ms", settings.lock_timeout_ms),
        statement_timeout: format!("{}ms", settings.statement_timeout_ms),
    }
}

pub(super) fn clamp_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}
