//! `events`: the expiry events of a window as the database holds them now, listed or published
//! again to `EVENT_BUS_NAME` (the database is the outbox). Command line only.

use std::time::SystemTime;

use serde_json::Value;

use crate::action::{open, Action, AppState, Failure, Front, Invocation, Reply};
use crate::db::sql::outbox;
use crate::error::{Error, Result};
use crate::events::{model, stock, Event, Published};

/// Print the expiry events of a window as the database holds them now, one JSON object a
/// line, or publish them again to EVENT_BUS_NAME.
///
/// The window, and whether to publish its events instead of listing them: `unreserver events
/// --since T [--until T] [--publish]` (the command line only).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Events {
    /// Start of the window (RFC 3339, e.g. 2026-11-25T10:00:00Z), included.
    #[arg(long, value_parser = parse_time)]
    pub since: SystemTime,
    /// End of the window, excluded (default: now, on the database clock).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<SystemTime>,
    /// Publish them to EVENT_BUS_NAME instead of printing them.
    #[arg(long)]
    #[serde(default)]
    pub publish: bool,
}

impl Action for Events {
    const NAME: &'static str = "events";
    const PAYLOAD: bool = false;
    type Answer = EventsAnswer;

    fn check(self, _front: Front) -> Result<Self> {
        Ok(self)
    }
}

/// A time given on the command line: RFC 3339.
fn parse_time(value: &str) -> std::result::Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(value)
        .map_err(|e| format!("{e}: expected RFC 3339, e.g. 2026-11-25T10:00:00Z"))
}

/// The window's events, or what publishing them did.
#[derive(Debug, Clone)]
pub enum EventsAnswer {
    Listed(Vec<Event>),
    Published(Published),
}

impl Reply for EventsAnswer {
    /// The events as a JSON array, or the publishing counts.
    fn to_json(&self) -> Value {
        let value = match self {
            EventsAnswer::Listed(events) => serde_json::to_value(events),
            EventsAnswer::Published(published) => serde_json::to_value(published),
        };
        value.unwrap_or(Value::Null)
    }

    /// One event a line (or the publishing counts).
    fn to_text(&self) -> String {
        match self {
            EventsAnswer::Listed(events) => events
                .iter()
                .map(|event| serde_json::to_string(event).unwrap_or_else(|_| "{}".into()))
                .collect::<Vec<_>>()
                .join("\n"),
            published => published.to_json().to_string(),
        }
    }
}

impl Events {
    pub async fn execute(
        self,
        state: &AppState,
        _invocation: &Invocation<'_>,
    ) -> std::result::Result<EventsAnswer, Failure> {
        let publisher = match (&state.publisher, self.publish) {
            (None, true) => {
                return Err(Error::Setting {
                    name: "EVENT_BUS_NAME".into(),
                    reason: "events --publish needs the bus to publish to".into(),
                }
                .into())
            }
            (publisher, publish) => publisher.as_ref().filter(|_| publish),
        };
        let db = open(state).await?;
        let timeout = crate::engine::batch::rules(&state.config.release).timeout_minutes;
        let rows = outbox::expired_in_window(&db.client, self.since, self.until, timeout).await?;
        let mut events = model::from_rows(&rows, None);
        let released = outbox::released_in_window(&db.client, self.since, self.until, timeout);
        events.extend(stock::of_window(&released.await?));
        let Some(publisher) = publisher else {
            if let Some(tenant) = &state.tenant {
                model::stamp_tenant(&mut events, tenant);
            }
            return Ok(EventsAnswer::Listed(events));
        };
        let published = publisher.publish(events).await;
        if published.failed > 0 {
            return Err(Error::Publish(format!(
                "{} of {} events not published (see the log for their order ids)",
                published.failed,
                published.failed + published.published
            ))
            .into());
        }
        Ok(EventsAnswer::Published(published))
    }
}
