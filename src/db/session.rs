//! A checked connection ready to release: the client with its session settings pinned, what
//! the preflight found, the release's statements prepared once per connection, and a way to
//! cancel the statement it is running (the batch's time budget).

use super::tls::Tls;
use tokio_postgres::{Client, Config};

use super::cancel;
use super::connect;
use super::preflight::{self, Preflight};
use super::sql::{self, Statements};
use crate::error::{Error, Result};

/// One connection, checked and prepared.
pub struct Database {
    pub client: Client,
    pub statements: Statements,
    pub preflight: Preflight,
    /// `user@host:port/dbname`, for messages (never the password).
    pub target: String,
    /// The connector a cancel request goes through (the same TLS as the connection).
    tls: Tls,
    /// What opened it, to open it again ([`Database::reconnect`]); its `Debug` redacts the
    /// password.
    config: Config,
    lock_timeout_ms: u32,
    /// The schema a tenant's session is confined to (its `search_path`), None for the role's.
    schema: Option<String>,
    /// The session's backend pid, for [`Canceller`]'s fallback.
    pid: i32,
    /// The follow minute this session holds (follow mode's lock, `sql::follow`): taken again
    /// by the new session when this one is replaced ([`Database::reconnect`]).
    follow_minute: Option<i32>,
}

/// How long a follower's old session waits to see the new one queued for the minute before it
/// closes all the same ([`Database::reconnect`]).
pub const HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Database {
    /// Connects, runs the preflight (schema, `deadlock_timeout`, indexes) and prepares the
    /// statements. Fails before changing anything when the schema does not fit.
    pub async fn open(config: &Config, tls: &Tls, lock_timeout_ms: u32) -> Result<Self> {
        Database::open_in(config, tls, lock_timeout_ms, None).await
    }

    /// [`Database::open`] with the session confined to `schema` (a schema tenant): its
    /// `search_path` is that schema alone, set in the pin before the preflight reads the tables,
    /// so every statement reads and locks that tenant's tables and never another schema's.
    pub async fn open_in(
        config: &Config,
        tls: &Tls,
        lock_timeout_ms: u32,
        schema: Option<&str>,
    ) -> Result<Self> {
        let client = connect::connect(config, tls).await?;
        sql::probe_pooling(&client).await?;
        // Pipelined (sent at once, answered in order): the session pinned first, then the
        // preflight's catalog reads, the pid and the statements' prepares — one round trip for
        // all (`Statements::prepare`: a table a migration holds fails the first prepare that
        // needs it, and the rest at once). The verdicts are taken in that order: a missing table
        // fails the preflight, naming it, before its prepare's error is looked at.
        let defaults = connect::session_defaults(config);
        let (pinned, preflight, pid, statements) = tokio::join!(
            sql::pin_session(&client, &defaults, schema),
            preflight::preflight(&client, config, lock_timeout_ms),
            sql::backend_pid(&client),
            Statements::prepare(&client),
        );
        pinned?;
        let preflight = preflight.map_err(Error::when_opening)?;
        let pid = pid?;
        let statements = statements.map_err(Error::when_opening)?;
        Ok(Database {
            client,
            statements,
            preflight,
            target: connect::describe(config),
            tls: tls.clone(),
            config: config.clone(),
            lock_timeout_ms,
            schema: schema.map(str::to_string),
            pid,
            follow_minute: None,
        })
    }

    /// Replaces the connection with a new one, checked and prepared the same way. After a cut
    /// batch: a cancel request still on its way can only reach the old session, which is gone,
    /// never a statement of the next batch.
    ///
    /// A follower's minute goes with its session, so the new session queues for the minute's
    /// lock ([`sql::follow::lock_minute`]) while the old one still holds it, and the old one
    /// closes only once it sees the new one waiting ([`sql::follow::queued_for_minute`], for at
    /// most [`HANDOVER_WAIT`]): the lock passes straight to the queued session, never free for
    /// a moment in which a duplicate delivery of that minute could take it and follow beside
    /// this one.
    pub async fn reconnect(&mut self) -> Result<()> {
        let next = self.sibling().await?;
        let old = std::mem::replace(self, next);
        let Some(minute) = old.follow_minute else {
            // The old session closes here (its backend exits and gives up its locks).
            return Ok(());
        };
        let lock = sql::follow::lock_minute(&self.client, minute);
        tokio::pin!(lock);
        let until = std::time::Instant::now() + HANDOVER_WAIT;
        let taken = loop {
            tokio::select! {
                biased;
                // Sent on its first poll; done only once the old session has let go.
                taken = &mut lock => break Some(taken),
                queued = sql::follow::queued_for_minute(&old.client, self.pid) => {
                    // A failed look (a late cancel of the old session) ends the wait too.
                    if queued.unwrap_or(true) || std::time::Instant::now() >= until {
                        break None;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        };
        // The old session closes here; the minute passes to the new one, queued for it.
        drop(old);
        match taken {
            Some(taken) => taken?,
            None => lock.await?,
        }
        self.follow_minute = Some(minute);
        Ok(())
    }

    /// Records that this session holds the follow lock of `minute` (taken by the caller), so
    /// that a new session takes it again ([`Database::reconnect`]).
    pub fn keeps_follow_minute(&mut self, minute: i32) {
        self.follow_minute = Some(minute);
    }

    /// Another connection to the same database, checked and prepared the same way: a worker
    /// of a run.
    pub async fn sibling(&self) -> Result<Database> {
        let schema = self.schema.as_deref();
        Database::open_in(&self.config, &self.tls, self.lock_timeout_ms, schema).await
    }

    /// A handle that cancels whatever statement this connection runs when called (from
    /// another task: the connection itself is busy).
    pub fn canceller(&self) -> Canceller {
        Canceller {
            token: self.client.cancel_token(),
            tls: self.tls.clone(),
            config: self.config.clone(),
            pid: self.pid,
            side: None,
        }
    }

    /// Whether the connection is gone (killed, server restarted): open a new one.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// Cancels the statement a connection is running, through a separate connection, as
/// PostgreSQL's cancel protocol works and as libpq sends it ([`cancel`]: the answer awaited, so
/// no pooler sees the request dropped half-way) — or, when that connection is refused or not
/// answered (a proxy or pooler that does not forward cancel requests), through a session of its
/// own with `pg_cancel_backend` ([`sql::CANCEL_BACKEND`]), so that a cut batch still stops at
/// once instead of at the statement timeout.
pub struct Canceller {
    token: tokio_postgres::CancelToken,
    tls: Tls,
    config: Config,
    pid: i32,
    /// The session the fallback cancels through, opened at its first use.
    side: Option<Client>,
}

impl Canceller {
    /// Sends the cancel request and waits for its answer; when it cannot be sent or is not
    /// answered in time, cancels through SQL (as well). A failure of both is logged, not
    /// raised (the statement timeout still bounds the statement). Says which way went.
    pub async fn cancel(&mut self) -> CancelledBy {
        let sent = self.request().await;
        if sent == Some(cancel::Sent::Answered) {
            return CancelledBy::Request;
        }
        match (sent, self.cancel_through_sql().await) {
            (Some(_), CancelledBy::Sql) => CancelledBy::RequestAndSql,
            (Some(_), _) => CancelledBy::RequestUnanswered,
            (None, by_sql) => by_sql,
        }
    }

    /// Sends the cancel request and waits for its answer ([`cancel::cancel_and_wait`]): what
    /// became of it, None when it could not be sent (logged). Unless answered, what is left is
    /// [`Canceller::cancel_through_sql`]. Await it to its end: dropped during the wait, the
    /// request's connection closes first, which a pooler may not survive.
    pub async fn request(&mut self) -> Option<cancel::Sent> {
        match cancel::cancel_and_wait(&self.token, &self.config, &self.tls).await {
            Ok(sent) => {
                if sent == cancel::Sent::Unanswered {
                    tracing::warn!(
                        "the cancel request was not answered; cancelling through SQL too"
                    );
                }
                Some(sent)
            }
            Err(cancel::CancelError::NotOneHost(hosts)) => {
                tracing::debug!(
                    hosts,
                    "the session's host is not known: cancelling through SQL"
                );
                None
            }
            Err(error) => {
                tracing::warn!(error = %error, "could not send the cancel request; cancelling through SQL");
                None
            }
        }
    }

    /// Cancels through a session of its own with `pg_cancel_backend`: for a cancel request
    /// that was sent but never reached the server (a proxy that drops it looks, to the sender,
    /// like a server that took it). A failure is logged, not raised.
    pub async fn cancel_through_sql(&mut self) -> CancelledBy {
        if self.side.is_none() {
            match connect::connect(&self.config, &self.tls).await {
                Ok(client) => self.side = Some(client),
                Err(error) => {
                    tracing::warn!(error = %error.chain(), "could not connect to cancel through SQL");
                    return CancelledBy::Nothing;
                }
            }
        }
        let Some(client) = &self.side else {
            return CancelledBy::Nothing;
        };
        match sql::cancel_backend(client, self.pid).await {
            Ok(true) => CancelledBy::Sql,
            Ok(false) => CancelledBy::Nothing,
            Err(error) => {
                tracing::warn!(error = %error.chain(), "could not cancel through SQL");
                CancelledBy::Nothing
            }
        }
    }
}

/// Which way a [`Canceller`] reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelledBy {
    /// The cancel request, answered.
    Request,
    /// The cancel request, not answered in time, and then `pg_cancel_backend` as well.
    RequestAndSql,
    /// The cancel request, not answered in time; the fallback failed (logged).
    RequestUnanswered,
    /// `pg_cancel_backend` from a session of its own: the request could not be sent.
    Sql,
    /// Neither reached the backend (logged, or the backend had ended).
    Nothing,
}

impl CancelledBy {
    /// Whether the cancel request was sent on its connection (answered or not).
    pub fn sent_the_request(self) -> bool {
        matches!(
            self,
            CancelledBy::Request | CancelledBy::RequestAndSql | CancelledBy::RequestUnanswered
        )
    }
}
