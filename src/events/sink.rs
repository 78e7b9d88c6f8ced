//! Publishing in the background while the run goes on: the run hands each committed batch's
//! events to a [`Sink`] (it never waits on EventBridge), and a task publishes them in order of
//! arrival. When the run ends the front-end waits for the task within the time it has left;
//! what is still unpublished then counts as failed and is logged by order id and hold id.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::model::{Event, Subject};
use super::publisher::{log_failed, Published, Publisher};

/// What the batches handed over and not yet through the publisher are about, by arrival
/// number: enough to name them if they never get through.
type Pending = Arc<Mutex<BTreeMap<u64, Vec<Subject>>>>;

/// Where a run puts the events of each committed batch.
#[derive(Debug, Clone)]
pub struct Sink {
    tx: mpsc::UnboundedSender<(u64, Vec<Event>)>,
    pending: Pending,
    next: Arc<Mutex<u64>>,
}

impl Sink {
    /// Queues `events` for publishing; never waits.
    pub fn send(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let seq = self.next.lock().map_or(0, |mut n| {
            *n += 1;
            *n
        });
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(seq, events.iter().map(|e| e.subject).collect());
        }
        if self.tx.send((seq, events)).is_err() {
            // The task is gone: these stay pending, and are named when the run finishes.
            tracing::error!("the event publisher has stopped");
        }
    }
}

/// The background task publishing what a [`Sink`] receives.
#[derive(Debug)]
pub struct PublishTask {
    handle: JoinHandle<()>,
    done: Arc<Mutex<Published>>,
    pending: Pending,
    bus: String,
}

/// Starts the publishing task; drop every clone of the [`Sink`] when the run is over, then
/// call [`PublishTask::finish`].
pub fn spawn(publisher: Publisher) -> (Sink, PublishTask) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Vec<Event>)>();
    let done = Arc::new(Mutex::new(Published::default()));
    let pending: Pending = Arc::default();
    let (progress, through) = (Arc::clone(&done), Arc::clone(&pending));
    let bus = publisher.bus().to_string();
    let handle = tokio::spawn(async move {
        while let Some((seq, events)) = rx.recv().await {
            // What publish could not send it logged by id already: either way it is through.
            let result = publisher.publish(events).await;
            if let Ok(mut total) = progress.lock() {
                total.add(result);
            }
            if let Ok(mut pending) = through.lock() {
                pending.remove(&seq);
            }
        }
    });
    let sink = Sink {
        tx,
        pending: Arc::clone(&pending),
        next: Arc::default(),
    };
    (
        sink,
        PublishTask {
            handle,
            done,
            pending,
            bus,
        },
    )
}

impl PublishTask {
    /// Waits up to `within` for the queued events to be published (the sink must be dropped
    /// first); what is left unpublished then counts as failed and is logged.
    pub async fn finish(self, within: Duration) -> Published {
        let PublishTask {
            mut handle,
            done,
            pending,
            bus,
        } = self;
        if tokio::time::timeout(within, &mut handle).await.is_err() {
            handle.abort();
        }
        let mut result = done.lock().map(|d| *d).unwrap_or_default();
        let unsent: Vec<Subject> = pending
            .lock()
            .map(|p| p.values().flatten().copied().collect())
            .unwrap_or_default();
        if !unsent.is_empty() {
            log_failed(
                &bus,
                &unsent,
                "still unpublished (or unconfirmed) when the time ran out",
            );
            result.failed += unsent.len() as u64;
        }
        result
    }
}
