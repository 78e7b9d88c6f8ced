//! A follower's HTTP endpoints (`unreserver follow --listen ADDR`), for Prometheus, Kubernetes'
//! probes and a person:
//! - `/metrics`: the metrics in OpenMetrics text ([`crate::telemetry::prometheus`]);
//! - `/healthz`: 200 while the follow loop runs (503 once it ended);
//! - `/readyz`: 200 while the follower's last database round trip (a look at what is due, or a
//!   pass) succeeded within [`READY_WITHIN`], or a pass is in flight; a probe opens no
//!   connection, it reads what the loop recorded;
//! - `/`: the follower's page ([`crate::telemetry::page`]): its backlog, its last hour
//!   ([`crate::telemetry::history`]) as a chart, its last passes; with a status at most
//!   [`PAGE_STATUS_MAX_AGE`] old, read as `/status` reads one;
//! - `/status`: `unreserver status`'s JSON as the follower last read it, on its own connection,
//!   between passes, at most once per [`STATUS_MAX_AGE`]: a request for an older one asks the
//!   loop for a new one and waits for it up to [`STATUS_WAIT`] (then answers the older one).
//!
//! The server stops with the follower (SIGTERM: the batch in flight finishes, the report is
//! printed, the process ends).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::error::{Error, Result};
use crate::telemetry::history::{unix_now, History};
use crate::telemetry::metrics::Observation;
use crate::telemetry::page::{render, PageInput};
use crate::telemetry::prometheus::{Exposition, Prometheus, CONTENT_TYPE};

/// How recent the last database round trip must be for `/readyz` (a follower looks at least
/// every second).
pub const READY_WITHIN: Duration = Duration::from_secs(30);
/// How old a status `/status` answers may be before it asks for a new one.
pub const STATUS_MAX_AGE: Duration = Duration::from_secs(10);
/// How old a status the page may show before it asks for a new one (the page reloads itself
/// every minute: a status, which reads whole tables, at most once a minute for it).
pub const PAGE_STATUS_MAX_AGE: Duration = Duration::from_secs(60);
/// How long `/status` waits for the loop to read a new status.
pub const STATUS_WAIT: Duration = Duration::from_secs(5);

/// What the follow loop records for the endpoints.
#[derive(Debug)]
pub struct Monitor {
    pub metrics: Prometheus,
    alive: AtomicBool,
    in_pass: AtomicBool,
    last_round_trip: Mutex<Option<Instant>>,
    status: Mutex<Option<(Instant, serde_json::Value)>>,
    status_wanted: AtomicBool,
    status_read: Notify,
    history: Mutex<History>,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            metrics: Prometheus::new(Exposition::Service),
            alive: AtomicBool::new(false),
            in_pass: AtomicBool::new(false),
            last_round_trip: Mutex::new(None),
            status: Mutex::new(None),
            status_wanted: AtomicBool::new(false),
            status_read: Notify::new(),
            history: Mutex::new(History::default()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Monitor {
    /// The loop started (true) or ended (false).
    pub fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::Relaxed);
    }

    /// A database round trip succeeded; `idle`: it found nothing to do (a success for
    /// `unreserver_last_success_timestamp_seconds`).
    pub fn round_trip(&self, idle: bool) {
        *lock(&self.last_round_trip) = Some(Instant::now());
        if idle {
            self.metrics.succeeded();
        }
    }

    /// A pass starts.
    pub fn pass_started(&self) {
        self.in_pass.store(true, Ordering::Relaxed);
    }

    /// A pass ended: its metrics (also when it failed).
    pub fn pass_ended(&self, obs: &Observation<'_>) {
        self.in_pass.store(false, Ordering::Relaxed);
        self.metrics.observe(obs);
        if let Some(report) = obs.report {
            lock(&self.history).record(report, obs.failed, unix_now());
        }
        if !obs.failed {
            self.round_trip(false);
        }
    }

    /// Whether the follower is ready: a recent round trip, or a pass in flight.
    pub fn ready(&self) -> bool {
        let recent = lock(&self.last_round_trip).is_some_and(|at| at.elapsed() <= READY_WITHIN);
        self.alive.load(Ordering::Relaxed) && (recent || self.in_pass.load(Ordering::Relaxed))
    }

    /// Whether `/status` asked for a new status (cleared by [`Monitor::set_status`]).
    pub fn status_wanted(&self) -> bool {
        self.status_wanted.load(Ordering::Relaxed)
    }

    /// The status the loop read (or the error it got, as `{"error": ...}`).
    pub fn set_status(&self, status: serde_json::Value) {
        *lock(&self.status) = Some((Instant::now(), status));
        self.status_wanted.store(false, Ordering::Relaxed);
        self.status_read.notify_waiters();
    }

    /// The last status, asking for a new one and waiting for it when it is older than
    /// `max_age`.
    async fn status(&self, max_age: Duration) -> Option<serde_json::Value> {
        let fresh = |s: &Option<(Instant, serde_json::Value)>| {
            s.as_ref().is_some_and(|(at, _)| at.elapsed() <= max_age)
        };
        if !fresh(&lock(&self.status)) && self.alive.load(Ordering::Relaxed) {
            let read = self.status_read.notified();
            self.status_wanted.store(true, Ordering::Relaxed);
            let _ = tokio::time::timeout(STATUS_WAIT, read).await;
        }
        lock(&self.status).as_ref().map(|(_, s)| s.clone())
    }
}

/// Binds `addr` (an error names `--listen`), then serves the endpoints until `stop` is raised.
pub async fn serve(
    addr: SocketAddr,
    monitor: Arc<Monitor>,
    stop: Option<watch::Receiver<bool>>,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.map_err(|e| Error::Setting {
        name: "--listen".into(),
        reason: format!("cannot listen on {addr}: {e}"),
    })?;
    tracing::info!(%addr, "serving /, /metrics, /healthz, /readyz and /status");
    Ok(tokio::spawn(accept(listener, monitor, stop)))
}

async fn accept(
    listener: TcpListener,
    monitor: Arc<Monitor>,
    mut stop: Option<watch::Receiver<bool>>,
) {
    loop {
        let stopped = async {
            match stop.as_mut() {
                Some(stop) => {
                    let _ = stop.wait_for(|s| *s).await;
                }
                None => std::future::pending().await,
            }
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "could not accept a connection");
                    continue;
                }
            },
            () = stopped => return,
        };
        let monitor = monitor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let monitor = monitor.clone();
                async move { Ok::<_, Infallible>(respond(&monitor, &request).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "connection ended");
            }
        });
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// The answer to one request.
async fn respond(monitor: &Monitor, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = "text/plain; charset=utf-8";
    let ok_or = |ok: bool, what: &str| {
        if ok {
            text(StatusCode::OK, plain, "ok\n".into())
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, plain, format!("{what}\n"))
        }
    };
    match request.uri().path() {
        "/metrics" => text(StatusCode::OK, CONTENT_TYPE, monitor.metrics.encode()),
        "/healthz" => ok_or(monitor.alive.load(Ordering::Relaxed), "follow loop ended"),
        "/readyz" => ok_or(monitor.ready(), "no recent database round trip"),
        "/" => {
            let status = monitor.status(PAGE_STATUS_MAX_AGE).await;
            text(
                StatusCode::OK,
                "text/html; charset=utf-8",
                page(monitor, status.as_ref()),
            )
        }
        "/status" => match monitor.status(STATUS_MAX_AGE).await {
            Some(status) => text(StatusCode::OK, "application/json", status.to_string()),
            None => ok_or(false, "no status read yet"),
        },
        _ => text(StatusCode::NOT_FOUND, plain, "not found\n".into()),
    }
}

/// The follower's page, from what the loop recorded.
fn page(monitor: &Monitor, status: Option<&serde_json::Value>) -> String {
    let now = unix_now();
    let (minutes, passes) = {
        let history = lock(&monitor.history);
        let passes: Vec<_> = history.last_passes().cloned().collect();
        (history.last_hour(now), passes)
    };
    render(&PageInput {
        now,
        alive: monitor.alive.load(Ordering::Relaxed),
        ready: monitor.ready(),
        status,
        minutes: &minutes,
        passes: &passes,
    })
}
