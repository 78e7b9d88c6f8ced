//! `follow` across every tenant (`unreserver follow --all-tenants`, a follow payload naming no
//! tenant while tenants are configured, or `"tenant": "*"`): one follower sweeping all tenants
//! by their next due time. Each tenant keeps its own follow clock (`engine::follow::Follower`,
//! the one rule of when to pass again: due by the clock, made due, deferred work retried); its
//! looks run on one shared session (a schema tenant's: `search_path` set to it first) or a short
//! session of its own (a database tenant's), and its passes — a run with its events — on a
//! connection of its own, as many tenants at once as a sweep runs (`sweep::connections`). A
//! tenant whose look or pass fails is named with its error and looked at again after
//! `RETRY_DEFERRED`; the others go on. A scheduled follow's minute is taken once, for all.
//!
//! Input: `follow::Follow` (`--listen` follows one tenant: a follower of all serves no page).
//! Answer: [`FollowedTenants`]. Metrics: none (each pass's report is in its log line).

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

use super::follow::{pass, sleep_or_stop, Follow};
use super::sweep::{connections, probe_session};
use super::{open, tenancy, AppState, Failure, Invocation, Reply};
use crate::db::sql::follow::lock_minute;
use crate::db::sql::tenants::set_search_path;
use crate::engine::follow::{Follower, Next, REREAD, RETRY_DEFERRED};
use crate::engine::run_report::{FOLLOW_DUPLICATE, FOLLOW_STALE};
use crate::error::{Error, Result};
use crate::tenant::TenantKind;

/// What one tenant's follow did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TenantFollowed {
    pub tenant: String,
    /// Passes run.
    pub passes: u64,
    /// Reservations released by its passes.
    pub released: u64,
    /// Looks or passes that failed.
    pub failures: u64,
    /// The last failure: kind, whether a retry can help, the cause chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Value>,
}

/// The answer of a follow across every tenant.
#[derive(Debug, Clone, Serialize)]
pub struct FollowedTenants {
    pub run_id: String,
    /// Each tenant, by name.
    pub tenants: Vec<TenantFollowed>,
    /// Reservations released across the tenants.
    pub released: u64,
    /// The tenants that had a failure, by name.
    pub failed: Vec<String>,
    /// Why it ended: `time`, `signal`, `stale` or `duplicate`.
    pub ended: &'static str,
    pub duration_ms: u64,
}

impl Reply for FollowedTenants {
    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// One tenant's follow clock and books.
struct Followed {
    follower: Follower,
    wake: Instant,
    books: TenantFollowed,
}

/// Follows every tenant until `follow`'s time is up or a stop is asked.
pub async fn follow_all(
    follow: Follow,
    state: &AppState,
    invocation: &Invocation<'_>,
) -> std::result::Result<FollowedTenants, Failure> {
    if follow.listen.is_some() {
        return Err(Error::Setting {
            name: "--listen".into(),
            reason: "serves one follower's page: follow one tenant with it (--tenant NAME)".into(),
        }
        .into());
    }
    let started = Instant::now();
    let Some(length) = follow.length(SystemTime::now()) else {
        follow.stale(invocation.run_id);
        return Ok(answer(invocation, started, Vec::new(), FOLLOW_STALE));
    };
    let until = invocation
        .deadline
        .map_or(started + length, |d| d.min(started + length));
    let schema = state
        .config
        .tenants
        .as_ref()
        .is_some_and(|t| t.kind == TenantKind::Schema);
    // The shared look session of schema tenants (database tenants have no shared database:
    // their settings name `{tenant}`); it also holds a scheduled follow's minute.
    let shared = match schema {
        true => Some(probe_session(state).await?),
        false => None,
    };
    let taken = match &shared {
        Some(session) => follow.takes_its_minute(session).await?,
        None => true,
    };
    if !taken {
        return Ok(answer(invocation, started, Vec::new(), FOLLOW_DUPLICATE));
    }
    let names = tenancy::list(state).await?;
    let minute = follow.scheduled_time.map(|s| s.minute);
    let mut all = AllTenants::new(names, shared, minute, state, until);
    let mut stop = invocation.stop.clone();
    let ended = loop {
        if stop.as_ref().is_some_and(|s| *s.borrow()) {
            break "signal";
        }
        if Instant::now() >= all.until {
            break "time";
        }
        if !all.keeps_its_minute(state).await {
            break FOLLOW_DUPLICATE;
        }
        let due = all.look(state).await;
        all.pass(due, state, invocation, stop.clone()).await;
        let pause = all.pause();
        if !pause.is_zero() {
            sleep_or_stop(pause, stop.as_mut()).await;
        }
    };
    let books = all.tenants.into_values().map(|f| f.books).collect();
    Ok(answer(invocation, started, books, ended))
}

/// The answer from each tenant's books.
fn answer(
    invocation: &Invocation<'_>,
    started: Instant,
    tenants: Vec<TenantFollowed>,
    ended: &'static str,
) -> FollowedTenants {
    let answer = FollowedTenants {
        run_id: invocation.run_id.to_string(),
        released: tenants.iter().map(|t| t.released).sum(),
        failed: tenants
            .iter()
            .filter(|t| t.failures > 0)
            .map(|t| t.tenant.clone())
            .collect(),
        tenants,
        ended,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(
        tenants = answer.tenants.len(),
        released = answer.released,
        failed = ?answer.failed,
        ended = answer.ended,
        "tenants followed"
    );
    answer
}

impl Followed {
    fn new(name: String, state: &AppState, until: Instant) -> Self {
        Followed {
            follower: Follower::new(&state.config.release, until),
            wake: Instant::now(),
            books: TenantFollowed {
                tenant: name,
                ..TenantFollowed::default()
            },
        }
    }
}

/// The tenants followed, and the shared look session.
struct AllTenants {
    tenants: BTreeMap<String, Followed>,
    /// Schema tenants' look session; None for database tenants.
    shared: Option<tokio_postgres::Client>,
    /// The scheduled minute the look session holds (its follow lock), if any.
    minute: Option<i32>,
    until: Instant,
}

impl AllTenants {
    /// The tenants `names`, each due for a look now; `minute`, the scheduled minute, is the
    /// look session's to hold (none without a shared session: database tenants hold none).
    fn new(
        names: Vec<String>,
        shared: Option<tokio_postgres::Client>,
        minute: Option<i32>,
        state: &AppState,
        until: Instant,
    ) -> Self {
        AllTenants {
            tenants: names
                .into_iter()
                .map(|name| (name.clone(), Followed::new(name, state, until)))
                .collect(),
            minute: minute.filter(|_| shared.is_some()),
            shared,
            until,
        }
    }

    /// Reopens the look session when it closed (a lost connection), taking its scheduled
    /// minute again on the new one — the one rule of a replaced follower session
    /// (`sql::follow::lock_minute`, as `Database::reconnect`): the minute's lock went with the
    /// old session, and a duplicate delivery would otherwise follow beside this one. False when
    /// the minute could not be taken again (another follower took it in between, or the old
    /// backend outlived the `lock_timeout`): this follow ends as a duplicate would. A session
    /// that cannot be reopened is logged and tried again at the next look.
    async fn keeps_its_minute(&mut self, state: &AppState) -> bool {
        if !self.shared.as_ref().is_some_and(|s| s.is_closed()) {
            return true;
        }
        let session = match probe_session(state).await {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(error = %error.chain(), "cannot reopen the look session");
                return true;
            }
        };
        if let Some(minute) = self.minute {
            if let Err(error) = lock_minute(&session, minute).await {
                tracing::warn!(
                    error = %error.chain(),
                    minute,
                    "the reopened look session could not take its minute again: ending"
                );
                return false;
            }
        }
        self.shared = Some(session);
        true
    }

    /// Looks at each tenant whose time has come; the names of those to pass now.
    async fn look(&mut self, state: &AppState) -> Vec<String> {
        let now = Instant::now();
        let mut due = Vec::new();
        for (name, followed) in self.tenants.iter_mut().filter(|(_, f)| f.wake <= now) {
            let looked = match &self.shared {
                Some(shared) => look_in_schema(shared, name, &mut followed.follower).await,
                None => look_in_database(state, name, &mut followed.follower).await,
            };
            match looked {
                Ok(Next::Pass) => due.push(name.clone()),
                Ok(Next::Sleep(pause)) => followed.wake = now + pause,
                Ok(Next::Done) => followed.wake = self.until,
                Err(error) => failed(followed, &error, now),
            }
        }
        due
    }

    /// The passes of the tenants `due`, as many at once as a sweep runs, each on a connection
    /// of its own with its events; each tenant's clock told how its pass ended.
    async fn pass(
        &mut self,
        due: Vec<String>,
        state: &AppState,
        invocation: &Invocation<'_>,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) {
        let (at_once, _) = connections(state);
        let passes: Vec<(String, Result<_>)> = stream::iter(due)
            .map(|name| {
                let stop = stop.clone();
                async move {
                    let span = tracing::info_span!("tenant", tenant = %name);
                    let ran = async {
                        let tenant = state.for_tenant(&name).await?;
                        let mut db = open(&tenant).await?;
                        pass(&mut db, &tenant, invocation, stop)
                            .await
                            .map_err(|failure| failure.error)
                    }
                    .instrument(span)
                    .await;
                    (name, ran)
                }
            })
            .buffered(at_once as usize)
            .collect()
            .await;
        let now = Instant::now();
        for (name, ran) in passes {
            let Some(followed) = self.tenants.get_mut(&name) else {
                continue;
            };
            match ran {
                Ok(report) => {
                    followed.follower.passed(&report);
                    followed.books.passes += 1;
                    followed.books.released += report.counts.reservations_released;
                    followed.wake = now;
                }
                Err(error) => failed(followed, &error, now),
            }
        }
    }

    /// How long to sleep: until the first tenant's time, at most `REREAD`, never past the end.
    fn pause(&self) -> std::time::Duration {
        let now = Instant::now();
        let next = self
            .tenants
            .values()
            .map(|f| f.wake)
            .min()
            .unwrap_or(self.until);
        next.saturating_duration_since(now)
            .min(REREAD)
            .min(self.until.saturating_duration_since(now))
    }
}

/// A failed look or pass: counted and named; the tenant is looked at again after
/// `RETRY_DEFERRED`.
fn failed(followed: &mut Followed, error: &Error, now: Instant) {
    tracing::warn!(tenant = %followed.books.tenant, error = %error.chain(), "a tenant's follow failed; trying it again later");
    followed.books.failures += 1;
    followed.books.last_error = Some(error.summary());
    followed.wake = now + RETRY_DEFERRED;
}

/// A schema tenant's look, on the shared session confined to its schema first.
async fn look_in_schema(
    shared: &tokio_postgres::Client,
    name: &str,
    follower: &mut Follower,
) -> Result<Next> {
    crate::tenant::check_name(name)?;
    shared
        .batch_execute(&set_search_path(name))
        .await
        .map_err(Error::db("confining the look to a tenant's schema"))?;
    follower.next_on(shared).await
}

/// A database tenant's look, on a short session of its own (closed after it).
async fn look_in_database(state: &AppState, name: &str, follower: &mut Follower) -> Result<Next> {
    let tenant = state.for_tenant(name).await?;
    let session = probe_session(&tenant).await?;
    follower.next_on(&session).await
}
