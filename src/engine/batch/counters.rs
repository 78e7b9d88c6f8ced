//! Step 5 of a batch: the units given back to the variants, then the drops, all or nothing,
//! polling for held counter rows without holding any between tries.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::*;
use crate::db::sql::{
    self, Counter, HeldReservation, ReleasedReservation, ReturnedUnits, UnitsParams,
};
use crate::engine::retry::RetryPolicy;
use crate::error::Result;

/// Counter rows a round gave up on, as the reservations that need them.
#[derive(Debug)]
pub(super) struct HeldCounters {
    /// Held at the last try: their orders and holds are left out of the batch.
    pub(super) last: Vec<HeldReservation>,
    /// Held at every try: held for long (an open admin transaction, an import), not by the
    /// checkouts of a hot row taking turns; later batches of the run do not poll for them.
    pub(super) always: Vec<HeldReservation>,
}

/// Step 5: gives the units back to the variants, then the drops, all or nothing, after
/// [`sql::COUNTERS_SAVEPOINT`], so that the hot rows are held only from these updates to the
/// commit. Each try takes what is free (`SKIP LOCKED`); a row held makes it roll back to the
/// counters' savepoint — giving back every counter row it took, keeping the reservations
/// released and the orders cancelled — and try again after a pause, holding no hot row
/// between tries, so no shopper ever queues behind the batch's polling. Returns the counters
/// clamped at zero (variants, drops), or, when rows are still held after `LOCK_TIMEOUT_MS` (at
/// once when they are known to be held for long), the released reservations that need them.
pub(super) async fn take_counters(
    cx: BatchContext<'_, '_>,
    tally: &Tally,
    released: &[ReleasedReservation],
    patience: Patience<'_>,
    turn: &mut Turn,
    waited_ms: &mut f64,
) -> Result<std::result::Result<Written, HeldCounters>> {
    sql::counters_savepoint(cx.tx, false).await?;
    let mut poller = RetryPolicy::POLL.until(Some(patience.until));
    let mut polling_since = None;
    let mut always: Option<(BTreeSet<i64>, BTreeSet<i64>)> = None;
    // The time from the first try that met a held row to the last try: pauses and tries.
    let mut count_wait = |since: Option<Instant>| {
        *waited_ms += since.map_or(0.0, |s: Instant| s.elapsed().as_secs_f64() * 1000.0);
    };
    loop {
        turn.take().await;
        patience.hot.start();
        let variants = return_units(cx, Counter::Variants, &tally.units_by_variant).await?;
        let drops = return_units(cx, Counter::Drops, &tally.units_by_drop).await?;
        let (held_variants, held_drops) = match (variants, drops) {
            (Ok(v), Ok(d)) => {
                count_wait(polling_since);
                return Ok(Ok(Written::new(v, d)));
            }
            (v, d) => (v.err().unwrap_or_default(), d.err().unwrap_or_default()),
        };
        sql::counters_savepoint(cx.tx, true).await?;
        turn.give_back();
        let (always_v, always_d) =
            always.get_or_insert_with(|| (held_variants.clone(), held_drops.clone()));
        always_v.retain(|v| held_variants.contains(v));
        always_d.retain(|d| held_drops.contains(d));
        let held = needing(released, &held_variants, &held_drops);
        // Rows known to be held for long are not polled for; the others until the patience
        // runs out (the one retry policy: 2 ms doubling to 32, jittered, cut at the deadline).
        let pause = match patience.long_held.covers(&held) {
            true => None,
            false => poller.next_pause(),
        };
        let Some(pause) = pause else {
            count_wait(polling_since);
            let always = needing(released, always_v, always_d);
            return Ok(Err(HeldCounters { last: held, always }));
        };
        polling_since.get_or_insert_with(Instant::now);
        tokio::time::sleep(pause).await;
    }
}

/// One kind of counter's update (ascending ids, as a `BTreeMap` iterates): the rows updated, or
/// the ids of the rows another transaction holds (the rows that
/// were free are updated all the same; the caller rolls them back).
pub(super) async fn return_units(
    cx: BatchContext<'_, '_>,
    counter: Counter,
    units: &BTreeMap<i64, i64>,
) -> Result<std::result::Result<Vec<ReturnedUnits>, BTreeSet<i64>>> {
    let (ids, amounts): (Vec<i64>, Vec<i64>) = units.iter().map(|(id, n)| (*id, *n)).unzip();
    let p = UnitsParams {
        ids: &ids,
        units: &amounts,
    };
    let rows = cx.st.return_units(cx.tx, counter, &p).await?;
    if rows.len() < ids.len() {
        let taken: BTreeSet<i64> = rows.iter().map(|row| row.id).collect();
        return Ok(Err(ids
            .into_iter()
            .filter(|id| !taken.contains(id))
            .collect()));
    }
    Ok(Ok(rows))
}

/// The counter rows a batch updated.
#[derive(Debug, Default)]
pub(super) struct Written {
    pub(super) variants: Vec<ReturnedUnits>,
    pub(super) drops: Vec<ReturnedUnits>,
}

impl Written {
    pub(super) fn new(variants: Vec<ReturnedUnits>, drops: Vec<ReturnedUnits>) -> Self {
        Written { variants, drops }
    }

    pub(super) fn rows(&self) -> impl Iterator<Item = (Counter, &ReturnedUnits)> {
        let variants = self.variants.iter().map(|r| (Counter::Variants, r));
        variants.chain(self.drops.iter().map(|r| (Counter::Drops, r)))
    }

    pub(super) fn clamped(rows: &[ReturnedUnits]) -> u64 {
        rows.iter().map(|r| u64::from(r.clamped)).sum()
    }
}

/// The released reservations that need one of the held counter rows, as the probe would
/// report them.
pub(super) fn needing(
    released: &[ReleasedReservation],
    variants: &BTreeSet<i64>,
    drops: &BTreeSet<i64>,
) -> Vec<HeldReservation> {
    released
        .iter()
        .filter_map(|r| {
            let variant = variants.contains(&r.variant_id).then_some(r.variant_id);
            let drop = r.drop_id.filter(|d| drops.contains(d));
            (variant.is_some() || drop.is_some()).then_some(HeldReservation {
                id: r.id,
                order_id: r.order_id,
                reservation_held: false,
                variant,
                drop,
            })
        })
        .collect()
}
