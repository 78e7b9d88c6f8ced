//! `events`: the expiry events of a window as the database holds them now, listed or published
//! again to `EVENT_BUS_NAME` (the database is the outbox). Command line only.

use std::time::SystemTime;

use serde_json::Value;

use crate::action::{open, AppState};
use crate::db::sql::outbox;
use crate::error::{Error, Result};
use crate::events::{model, Event, Published};

/// The window, and whether to publish its events instead of listing them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Events {
    /// Start of the window, included.
    pub since: SystemTime,
    /// End of the window, excluded (None: now, on the database clock).
    pub until: Option<SystemTime>,
    pub publish: bool,
}

/// The window's events, or what publishing them did.
#[derive(Debug, Clone)]
pub enum EventsAnswer {
    Listed(Vec<Event>),
    Published(Published),
}

impl EventsAnswer {
    /// The events as a JSON array, or the publishing counts.
    pub fn to_json(&self) -> Value {
        let value = match self {
            EventsAnswer::Listed(events) => serde_json::to_value(events),
            EventsAnswer::Published(published) => serde_json::to_value(published),
        };
        value.unwrap_or(Value::Null)
    }
}

impl Events {
    pub async fn execute(self, state: &AppState) -> Result<EventsAnswer> {
        let publisher = match (&state.publisher, self.publish) {
            (None, true) => {
                return Err(Error::Setting {
                    name: "EVENT_BUS_NAME".into(),
                    reason: "events --publish needs the bus to publish to".into(),
                })
            }
            (publisher, publish) => publisher.as_ref().filter(|_| publish),
        };
        let db = open(state).await?;
        let timeout = crate::engine::batch::rules(&state.config.release).timeout_minutes;
        let rows = outbox::expired_in_window(&db.client, self.since, self.until, timeout).await?;
        let events = model::from_rows(&rows, None);
        let Some(publisher) = publisher else {
            return Ok(EventsAnswer::Listed(events));
        };
        let published = publisher.publish(events).await;
        if published.failed > 0 {
            return Err(Error::Publish(format!(
                "{} of {} events not published (see the log for their order ids)",
                published.failed,
                published.failed + published.published
            )));
        }
        Ok(EventsAnswer::Published(published))
    }
}
