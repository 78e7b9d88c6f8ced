//! Reading the due rows in passes, when no index serves the keyset page (a shop that has not
//! applied `infra/indexes.sql`, nor an equivalent index). Paging then would read and sort all the
//! remaining due rows again for every batch; instead each pass is one scan of the reservation table
//! that yields up to `PASS_SIZE` (50,000) due rows in due order, kept in memory (about 40 bytes a
//! row: 2 MB by default) and worked through in batches, as large as the controller sizes them (or
//! `BATCH_SIZE` when set). The batches re-check every rule under lock, so a row that changed since
//! the scan is simply not released; rows that fall due during the run are taken by a later pass or
//! the next run. Rows of an order a batch released are dropped from the pass: the release took them
//! along.

use std::collections::{HashSet, VecDeque};

use super::batch::{self, Cursor};
use crate::db::session::Database;
use crate::db::sql::{PageParams, PageRow, Rules, Share};
use crate::error::Result;

/// The rows of the current pass not yet worked through.
#[derive(Debug)]
pub struct Passes {
    /// Due rows one pass reads at most.
    size: i64,
    rows: VecDeque<PageRow>,
    /// The last pass returned fewer than `size` rows: nothing more is due after it.
    exhausted: bool,
    /// Scans made so far (for the report and the logs).
    pub scans: u32,
}

impl Passes {
    pub fn new(size: u32) -> Self {
        Passes {
            size: i64::from(size),
            rows: VecDeque::new(),
            exhausted: false,
            scans: 0,
        }
    }

    /// Makes sure rows are waiting, scanning once more (after `cursor`, which it moves on)
    /// when the current pass is used up; false when nothing more is due.
    pub async fn refill(
        &mut self,
        db: &Database,
        cursor: &mut Cursor,
        rules: Rules,
        share: Share,
    ) -> Result<bool> {
        if !self.rows.is_empty() {
            return Ok(true);
        }
        if self.exhausted {
            return Ok(false);
        }
        let p = PageParams {
            expiring_after: cursor.expiring,
            legacy_after: cursor.legacy,
            limit: self.size,
            rules,
            share,
        };
        // Outside any batch transaction: a read that locks nothing, bounded by the session's
        // statement timeout rather than a batch's.
        let rows = db.statements.page(&db.client, &p).await?;
        self.scans += 1;
        self.exhausted = (rows.len() as i64) < self.size;
        *cursor = batch::advance(cursor, &rows);
        tracing::debug!(
            rows = rows.len(),
            scan = self.scans,
            "read a pass of due rows"
        );
        self.rows = rows.into();
        Ok(!self.rows.is_empty())
    }

    /// Gives back the rows not yet worked through, for workers that each scan their own share:
    /// moves `cursor` back to just before the first of them of each kind (expiring, legacy),
    /// so that the next scans read them again. A run reads its first pass alone; were the rest
    /// of that pass kept by the first worker while the others scan on after it, the first
    /// would be left with most of the backlog and work alone once the others were done.
    pub fn rewind(&mut self, cursor: &mut Cursor) {
        let first = |legacy: bool| self.rows.iter().find(|row| row.legacy == legacy);
        if let Some(row) = first(false) {
            cursor.expiring = (row.due_key, row.id.saturating_sub(1));
        }
        if let Some(row) = first(true) {
            cursor.legacy = (row.due_key, row.id.saturating_sub(1));
        }
        self.rows.clear();
        self.exhausted = false;
    }

    /// The next `n` rows (fewer at the end of the pass), left in place until [`Self::consume`].
    pub fn front(&self, n: usize) -> Vec<PageRow> {
        self.rows.iter().take(n).cloned().collect()
    }

    /// Drops the first `n` rows, which a batch has worked through, and the rows further on of
    /// the orders it released: all their active reservations went with them, so each such row
    /// would only cost a later batch a claim that finds nothing (an order's rows can be far
    /// apart in due order).
    pub fn consume(&mut self, n: usize, released_orders: &[i64]) {
        self.rows.drain(..n.min(self.rows.len()));
        if released_orders.is_empty() {
            return;
        }
        let released: HashSet<i64> = released_orders.iter().copied().collect();
        self.rows
            .retain(|row| row.order_id.is_none_or(|order| !released.contains(&order)));
    }
}
