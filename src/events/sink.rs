//! Publishing in the background while the run goes on: the run hands each committed batch's
//! events to a [`Sink`] (it never waits on EventBridge), and a task publishes them in order of
//! arrival. When the run ends the front-end waits for the task within the time it has left;
//! what is still unpublished then counts as failed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::model::Event;
use super::publisher::{Published, Publisher};

/// Where a run puts the events of each committed batch.
#[derive(Debug, Clone)]
pub struct Sink {
    tx: mpsc::UnboundedSender<Vec<Event>>,
    queued: Arc<Mutex<u64>>,
}

impl Sink {
    /// Queues `events` for publishing; never waits.
    pub fn send(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        if self.tx.send(events).is_ok() {
            if let Ok(mut queued) = self.queued.lock() {
                *queued += n;
            }
        } else {
            tracing::error!(
                failed = n,
                "the event publisher has stopped: events not published"
            );
        }
    }
}

/// The background task publishing what a [`Sink`] receives.
#[derive(Debug)]
pub struct PublishTask {
    handle: JoinHandle<()>,
    done: Arc<Mutex<Published>>,
    queued: Arc<Mutex<u64>>,
}

/// Starts the publishing task; drop every clone of the [`Sink`] when the run is over, then
/// call [`PublishTask::finish`].
pub fn spawn(publisher: Publisher) -> (Sink, PublishTask) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Event>>();
    let done = Arc::new(Mutex::new(Published::default()));
    let queued = Arc::new(Mutex::new(0));
    let progress = Arc::clone(&done);
    let handle = tokio::spawn(async move {
        while let Some(events) = rx.recv().await {
            let result = publisher.publish(events).await;
            if let Ok(mut total) = progress.lock() {
                total.add(result);
            }
        }
    });
    let sink = Sink {
        tx,
        queued: Arc::clone(&queued),
    };
    (
        sink,
        PublishTask {
            handle,
            done,
            queued,
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
            queued,
        } = self;
        if tokio::time::timeout(within, &mut handle).await.is_err() {
            handle.abort();
        }
        let mut result = done.lock().map(|d| *d).unwrap_or_default();
        let queued = queued.lock().map(|q| *q).unwrap_or_default();
        let unsent = queued.saturating_sub(result.published + result.failed);
        if unsent > 0 {
            tracing::error!(
                failed = unsent,
                "expiry events still unpublished when the time ran out"
            );
            result.failed += unsent;
        }
        result
    }
}
