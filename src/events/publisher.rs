//! Publishing events to one EventBridge bus: `PutEvents` requests of at most 10 entries that
//! together hold at most 256 KB (the API's limits; an order larger than one entry was split into
//! parts by the model), a few requests in flight at once; entries EventBridge refuses are tried again, twice, after a
//! short pause (the SDK itself retries throttling and transient call errors). What still fails
//! is logged by order id (or hold reservation id; variant and drop product id for `Stock
//! Released`) and counted — never an error of the run.

use std::time::Duration;

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde::Serialize;
use tokio::task::JoinSet;

use super::model::{Event, Subject, MAX_ENTRY_BYTES};

/// Entries per `PutEvents` call: the API's maximum.
pub const CHUNK: usize = 10;
/// `PutEvents` calls in flight at once.
const IN_FLIGHT: usize = 4;
/// Tries of an entry EventBridge refused (its `ErrorCode` set), the first included.
const ENTRY_ATTEMPTS: u32 = 3;
/// Pause before the second try of refused entries; doubled for the third.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How many events were published and how many could not be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Published {
    pub published: u64,
    pub failed: u64,
}

impl Published {
    pub fn add(&mut self, other: Published) {
        self.published += other.published;
        self.failed += other.failed;
    }
}

/// An EventBridge client and the bus it publishes to.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: aws_sdk_eventbridge::Client,
    bus: String,
    /// The tenant whose events these are ([`super::model::stamp_tenant`]), for a tenant's state.
    tenant: Option<String>,
}

impl Publisher {
    pub fn new(client: aws_sdk_eventbridge::Client, bus: String) -> Self {
        Publisher {
            client,
            bus,
            tenant: None,
        }
    }

    /// This publisher for tenant `name`'s events: each is stamped with it before it is packed.
    pub fn for_tenant(&self, name: &str) -> Self {
        Publisher {
            tenant: Some(name.to_string()),
            ..self.clone()
        }
    }

    /// A publisher to `bus` with the process's AWS configuration.
    pub async fn from_env(bus: String) -> Self {
        let sdk = crate::aws::sdk_config().await;
        Publisher::new(aws_sdk_eventbridge::Client::new(&sdk), bus)
    }

    pub fn bus(&self) -> &str {
        &self.bus
    }

    /// Publishes `events` in [`requests`], [`IN_FLIGHT`] calls at a time.
    pub async fn publish(&self, mut events: Vec<Event>) -> Published {
        if let Some(tenant) = &self.tenant {
            super::model::stamp_tenant(&mut events, tenant);
        }
        let mut total = Published::default();
        let mut calls = JoinSet::new();
        let mut chunks = requests(events).into_iter();
        loop {
            while calls.len() < IN_FLIGHT {
                let Some(chunk) = chunks.next() else { break };
                let this = self.clone();
                calls.spawn(async move { this.publish_chunk(chunk).await });
            }
            match calls.join_next().await {
                Some(Ok(done)) => total.add(done),
                Some(Err(error)) => {
                    tracing::error!(%error, "an event publishing task failed");
                }
                None => return total,
            }
        }
    }

    /// One chunk: sent, and its refused entries sent again up to [`ENTRY_ATTEMPTS`] tries.
    async fn publish_chunk(&self, mut pending: Vec<Event>) -> Published {
        let mut done = Published::default();
        let mut pause = RETRY_PAUSE;
        let mut last_error = String::new();
        for attempt in 1..=ENTRY_ATTEMPTS {
            match self.put(&pending).await {
                Ok(refused) => {
                    done.published += (pending.len() - refused.len()) as u64;
                    pending = refused.iter().map(|(i, _)| pending[*i].clone()).collect();
                    if let Some((_, error)) = refused.first() {
                        last_error.clone_from(error);
                    }
                }
                Err(error) => {
                    // The whole call failed after the SDK's own retries (an unknown bus, a
                    // missing permission): trying it again here will not help.
                    last_error = error;
                    break;
                }
            }
            if pending.is_empty() {
                return done;
            }
            if attempt < ENTRY_ATTEMPTS {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
        let subjects: Vec<Subject> = pending.iter().map(|e| e.subject).collect();
        log_failed(&self.bus, &subjects, &last_error);
        done.failed += pending.len() as u64;
        done
    }

    /// One `PutEvents` call: the indexes of the entries refused, each with its error, or the
    /// call's error.
    async fn put(&self, events: &[Event]) -> Result<Vec<(usize, String)>, String> {
        let entries = events
            .iter()
            .map(|e| {
                PutEventsRequestEntry::builder()
                    .event_bus_name(&self.bus)
                    .source(e.source)
                    .detail_type(e.detail_type)
                    .detail(e.detail.to_string())
                    .build()
            })
            .collect();
        let output = self
            .client
            .put_events()
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| aws_sdk_eventbridge::error::DisplayErrorContext(e).to_string())?;
        let refused = output
            .entries()
            .iter()
            .enumerate()
            .filter_map(|(i, entry)| {
                let code = entry.error_code()?;
                let message = entry.error_message().unwrap_or_default();
                Some((i, format!("{code}: {message}")))
            })
            .collect();
        Ok(refused)
    }
}

/// `events` packed, in their order, into `PutEvents` requests of at most [`CHUNK`] entries and
/// [`MAX_ENTRY_BYTES`] in all.
pub fn requests(events: Vec<Event>) -> Vec<Vec<Event>> {
    let mut requests: Vec<Vec<Event>> = Vec::new();
    let mut size = 0;
    for event in events {
        let entry = event.entry_size();
        match requests.last_mut() {
            Some(last) if last.len() < CHUNK && size + entry <= MAX_ENTRY_BYTES => {
                size += entry;
                last.push(event);
            }
            _ => {
                size = entry;
                requests.push(vec![event]);
            }
        }
    }
    requests
}

/// Logs the events that could not be published, by order id and hold reservation id (and, for
/// `Stock Released`, by variant id and drop product id).
pub(crate) fn log_failed(bus: &str, subjects: &[Subject], error: &str) {
    let (mut orders, mut holds) = (Vec::new(), Vec::new());
    let (mut variants, mut drops) = (Vec::new(), Vec::new());
    for subject in subjects {
        match *subject {
            Subject::Order(id) => orders.push(id),
            Subject::Hold(id) => holds.push(id),
            Subject::Variant(id) => variants.push(id),
            Subject::Drop(id) => drops.push(id),
        }
    }
    tracing::error!(
        bus,
        failed = subjects.len(),
        order_ids = ?orders,
        hold_reservation_ids = ?holds,
        stock_released_variant_ids = ?variants,
        stock_released_drop_product_ids = ?drops,
        error,
        "expiry events not published (the release itself is committed; \
         `unreserver events --since ... --publish` sends them again)"
    );
}
