//! The SQL layer: every statement, each with what it locks and why, and beside it its typed
//! wrapper: a params struct (or plain arguments) bound in one place and a row struct decoded in
//! one place, by column name, with `try_get` (a type that does not fit is an error, never a
//! panic). No caller passes `$n` by position or reads a column by index. A test prepares every
//! statement and checks it against the wrapper's types (`tests/it/sql_types.rs`).
//!
//! Split by job: `rules` (the rules of release as SQL fragments — what is releasable, when a
//! reservation is due and when next the clock makes one due, how long it has been, what the
//! release cancelled, which worker owns an id — shared by every statement so that none can
//! disagree), `transaction` (session, timeouts, savepoints), `claim` (the page and the claims),
//! `contention` (what the batch controller reads of the shop's sessions), `release` (the
//! release steps), `reads` (backlog, drift, catalog), and the statements around the release:
//! `on_request` (one order released on request), `follow` (when the next reservation falls
//! due), `warnings` (orders whose hold runs out soon), `outbox` (the events as the database
//! holds them), `revive`, `reconcile`, `delay_report`, `purge` (what the release left
//! behind, deleted in small chunks) and `tenants` (listing them, a schema's backlog). Every time comparison is against the
//! database clock (`now()`, the batch transaction's start), never the client's.
//!
//! Every column a statement returns is cast to the type the code reads (ids to `int8`,
//! quantities to `int4`, conditions coalesced to booleans), so a shop whose ids are `integer`
//! or whose columns allow NULL gets correct results, never a panic in the row decoder.
//!
//! Lock order of a batch, the same as the shop's payment code: order rows → reservation rows →
//! variant rows → drop rows (each kind in ascending id). No statement of a batch waits in a
//! lock queue: order, variant and drop rows are locked `SKIP LOCKED`, reservation rows `NOWAIT`,
//! so the release can never close a lock cycle with a shopper's transaction. `lock_timeout`,
//! set per batch well below the server's `deadlock_timeout`, is only a safeguard.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Statement, ToStatement};

use crate::error::{Error, Result};

/// The release's rule parameters, shared by every statement that decides what is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// When a legacy row (NULL `expires_at`) is due: `created_at` plus this, in minutes.
    pub timeout_minutes: i32,
    /// Extra minutes for an order whose payment is `processing`.
    pub grace_minutes: i32,
}

/// Runs `statement` with `params` and decodes every row with `decode`; any error names
/// `context`.
async fn fetch<C, S, T>(
    client: &C,
    statement: &S,
    params: &[&(dyn ToSql + Sync)],
    context: &'static str,
    decode: fn(&Row) -> std::result::Result<T, tokio_postgres::Error>,
) -> Result<Vec<T>>
where
    C: GenericClient + Sync,
    S: ?Sized + ToStatement + Sync + Send,
{
    let rows = client
        .query(statement, params)
        .await
        .map_err(Error::db(context))?;
    rows.iter()
        .map(|row| decode(row).map_err(Error::db(context)))
        .collect()
}

/// Like [`fetch`], for a statement that returns exactly one row.
async fn fetch_one<C, S, T>(
    client: &C,
    statement: &S,
    params: &[&(dyn ToSql + Sync)],
    context: &'static str,
    decode: fn(&Row) -> std::result::Result<T, tokio_postgres::Error>,
) -> Result<T>
where
    C: GenericClient + Sync,
    S: ?Sized + ToStatement + Sync + Send,
{
    let row = client
        .query_one(statement, params)
        .await
        .map_err(Error::db(context))?;
    decode(&row).map_err(Error::db(context))
}

/// The release's statements, prepared once per connection when it opens: each batch then costs
/// one round trip a statement, and no prepare ever runs inside a batch that holds a row a
/// shopper may be waiting for. (Prepared on first use instead, an empty run saved 0.4 to 1.3 ms
/// of its 15, and a batch's first prepares ran while it held the rows it had claimed: a giant
/// order's buyer waited past the bound on a loaded server.) Each method is the typed wrapper of
/// the statement of the same name.
pub struct Statements {
    set_batch_timeouts: Statement,
    page: Statement,
    claim_orders: Statement,
    classify_unclaimed: Statement,
    claim_holds: Statement,
    release_reservations: Statement,
    return_variant_units: Statement,
    return_drop_units: Statement,
    probe_held: Statement,
    deferred_age: Statement,
    backlog: Statement,
}

/// Opens the transaction the statements are prepared in ([`Statements::prepare`]). Locks
/// nothing itself; each prepare takes `ACCESS SHARE` on the tables it names, until the commit.
pub const BEGIN_PREPARES: &str = "BEGIN";

/// Ends that transaction: a commit, or — after a prepare failed — a rollback (a `COMMIT` of a
/// failed transaction rolls it back). The statements prepared stay: they belong to the
/// session, not to the transaction.
pub const END_PREPARES: &str = "COMMIT";

impl Statements {
    /// Prepares every statement of the release on `client` in one flight, inside a
    /// transaction ([`BEGIN_PREPARES`], the eleven prepares, [`END_PREPARES`], sent at once and
    /// answered in order): one round trip instead of eleven. The transaction is what makes
    /// sending them at once safe: a table a migration holds makes the first prepare that needs
    /// it wait `lock_timeout` (2 s) and fail, the transaction is then aborted, and every later
    /// prepare fails at once instead of waiting its own `lock_timeout` in turn
    /// (`failures::a_table_lock_stops_the_run_cleanly_and_the_next_run_goes_on`). The first
    /// failure, in the statements' order, is the one returned.
    pub async fn prepare(client: &Client) -> Result<Statements> {
        let context = "preparing the release statements";
        // Each future sends on its first poll, and `join!` polls them in this order. Boxed: one
        // future holding eleven prepares in place outgrew a debug test thread's stack.
        let prepare = |text: &'static str| Box::pin(client.prepare(text));
        let (begun, prepared, ended) = tokio::join!(
            client.batch_execute(BEGIN_PREPARES),
            async {
                tokio::join!(
                    prepare(SET_BATCH_TIMEOUTS),
                    prepare(PAGE),
                    prepare(CLAIM_ORDERS),
                    prepare(CLASSIFY_UNCLAIMED),
                    prepare(CLAIM_HOLDS),
                    prepare(RELEASE_RESERVATIONS),
                    prepare(RETURN_VARIANT_UNITS),
                    prepare(RETURN_DROP_UNITS),
                    prepare(PROBE_HELD),
                    prepare(DEFERRED_AGE),
                    prepare(BACKLOG),
                )
            },
            client.batch_execute(END_PREPARES),
        );
        begun.map_err(Error::db(context))?;
        let (a, b, c, d, e, f, g, h, i, j, k) = prepared;
        let statements = Statements {
            set_batch_timeouts: a.map_err(Error::db(context))?,
            page: b.map_err(Error::db(context))?,
            claim_orders: c.map_err(Error::db(context))?,
            classify_unclaimed: d.map_err(Error::db(context))?,
            claim_holds: e.map_err(Error::db(context))?,
            release_reservations: f.map_err(Error::db(context))?,
            return_variant_units: g.map_err(Error::db(context))?,
            return_drop_units: h.map_err(Error::db(context))?,
            probe_held: i.map_err(Error::db(context))?,
            deferred_age: j.map_err(Error::db(context))?,
            backlog: k.map_err(Error::db(context))?,
        };
        ended.map_err(Error::db(context))?;
        Ok(statements)
    }
}

#[macro_use]
mod rules;
mod claim;
pub mod contention;
pub mod delay_report;
pub mod follow;
pub mod on_request;
pub mod outbox;
pub mod purge;
mod reads;
pub mod reconcile;
mod release;
pub mod retention;
pub mod revive;
pub mod tenants;
mod transaction;
pub mod warnings;

pub use claim::*;
pub use reads::*;
pub use release::*;
pub use transaction::*;
