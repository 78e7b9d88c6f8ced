//! What the release counts, in one type that flows from each batch into the run report (and
//! from there into the summary line and the metrics): adding a count is one line here, the
//! sum over batches comes with it.

use serde::Serialize;

/// Declares [`Counts`] and its sum, one line a count.
macro_rules! counts {
    ($($(#[$doc:meta])* $name:ident: $ty:ty,)*) => {
        /// The release's counts: a batch's, or (summed) a run's. In the run report they sit
        /// beside its other fields (flattened).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
        pub struct Counts {
            $($(#[$doc])* pub $name: $ty,)*
        }

        impl std::ops::AddAssign for Counts {
            fn add_assign(&mut self, other: Counts) {
                $(self.$name += other.$name;)*
            }
        }
    };
}

counts! {
    /// Reservations marked `expired` (in a dry run: that would be).
    reservations_released: u64,
    /// Units given back to variants (and drops), summed over the released reservations.
    units_released: u64,
    /// Pending orders cancelled.
    orders_cancelled: u64,
    /// Cart holds (reservations without an order) released; included in
    /// `reservations_released`.
    holds_released: u64,
    /// Eligible orders and holds skipped because a shopper's transaction held them.
    skipped_locked: u64,
    /// Claimed orders and holds found not due on the rows locked (extended after the claim),
    /// left alone.
    no_longer_due: u64,
    /// Milliseconds spent polling for rows another transaction held (a checkout's few
    /// milliseconds, at most `LOCK_TIMEOUT_MS` a batch). A counter row still held after that is
    /// tried once, without polling, by the later batches of the run.
    held_wait_ms: f64,
    /// Counter rows a batch updated that another transaction had updated since the run last
    /// wrote them (a checkout on a hot row in between): the sign of a shopper every checkout
    /// gives, whenever it ran (see `engine::controller`).
    counters_written_by_others: u64,
    /// Waits in the lock queue of a counter row that stayed held through the polling (a queue
    /// of checkouts on a hot variant), each holding nothing else, at most the queue's lock
    /// timeout (see `engine::batch::Source::Queue`).
    queue_waits: u64,
    /// Of those waits, the ones that ran out before the row was granted (its orders stay
    /// deferred).
    queue_timeouts: u64,
    /// Milliseconds spent in those waits.
    queue_wait_ms: f64,
    /// Orders with more active lines than a page, each released in a batch of its own whose
    /// budget runs from its first hot-row lock.
    large_orders: u64,
    /// Variant counters clamped at zero (they had drifted below their reservations).
    clamped_variants: u64,
    /// Drop counters clamped at zero.
    clamped_drops: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_field_by_field() {
        let mut a = Counts {
            reservations_released: 2,
            held_wait_ms: 1.5,
            ..Counts::default()
        };
        a += Counts {
            reservations_released: 3,
            clamped_drops: 1,
            held_wait_ms: 0.5,
            ..Counts::default()
        };
        assert_eq!(
            (a.reservations_released, a.clamped_drops, a.held_wait_ms),
            (5, 1, 2.0)
        );
    }
}
