//! PostgreSQL's cancel request, sent as libpq sends it: on a connection of its own, the request
//! written, nothing more (no shutdown, no TLS `close_notify`), and then the answer awaited — the
//! server (or pooler) closing that connection once it has processed the request.
//!
//! tokio-postgres's `CancelToken::cancel_query` half-closes its end as soon as the request is
//! written and then drops it. A pooler that sees that close before it has passed the request on
//! may fail: PgBouncer from 1.18.0 up to 1.19.0 (Debian 12's `pgbouncer` is 1.18) exits with
//! `FATAL … disconnect_client(): bad client state: 0`, dropping every shopper's connection
//! ([pgbouncer#846](https://github.com/pgbouncer/pgbouncer/pull/846), fixed in 1.19.1: "It's
//! possible for the client to disconnect itself, which would cause the client object to be
//! freed, before the linked server is"), and 1.18.0 up to 1.20.1 exits on any byte a
//! cancelling client sends after the request (pgbouncer#928, fixed in 1.21.0). libpq's cancel
//! waits for the close "which indicates that it's processed the request": so the release's
//! does too, which also means a cancel that returned can no longer land on a later statement.
//!
//! The request's key is the one tokio-postgres holds for the connection (its `CancelToken`
//! keeps it private): the token writes its request into memory here, and those 16 bytes go out
//! on the real connection, with the connection's own TLS settings.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_postgres::config::{Host, SslMode, SslNegotiation};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{CancelToken, Config};

use super::tls::Tls;

/// The protocol's CancelRequest: its length (16) and code (80877102), then the process id and
/// the secret key.
const CANCEL_HEAD: [u8; 8] = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
/// The protocol's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// How long the answer (the close) is awaited before the caller goes on: a server answers in
/// milliseconds, and PgBouncer as soon as the server has answered it. One that is silent this
/// long may not pass the request on, and the caller cancels through SQL as well.
pub const ANSWER_WAIT: Duration = Duration::from_millis(250);
/// How long an unanswered request's connection is still kept open, in the background, for a
/// late answer: never closed first by us while a pooler may still be passing it on (PgBouncer
/// gives up on a cancel after its `cancel_wait_timeout`, 10 s by default).
const LINGER: Duration = Duration::from_secs(30);

/// What became of a request that was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The other end closed the connection: the request was processed (or dropped by a proxy
    /// that does not pass it on — the statement's own end says which).
    Answered,
    /// No close within [`ANSWER_WAIT`]: the request may never reach the server. Its connection
    /// is left open in the background for a late answer.
    Unanswered,
}

/// Why a cancel request could not be sent. Never raised to a run: the caller cancels through
/// SQL instead, so a retry of the request itself does not help.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("the connection names {0} hosts; the one this session reached is not known")]
    NotOneHost(usize),
    #[error("tokio-postgres wrote no cancel request")]
    NoRequest,
    #[error("could not reach the server to cancel: {0}")]
    Io(#[from] io::Error),
    #[error("the server refused TLS for the cancel request")]
    TlsRefused,
    #[error("the TLS handshake of the cancel request failed: {0}")]
    Handshake(Box<dyn std::error::Error + Send + Sync>),
}

/// Sends the cancel request of `token`'s connection, opened with `config` and `tls`, and waits
/// for its answer.
pub async fn cancel_and_wait(
    token: &CancelToken,
    config: &Config,
    tls: &Tls,
) -> Result<Sent, CancelError> {
    let request = request_of(token).await?;
    let hosts = config.get_hosts();
    let [host] = hosts else {
        return Err(CancelError::NotOneHost(hosts.len()));
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let connect_timeout = super::connect::connect_timeout(config);
    match host {
        Host::Tcp(name) => {
            let address = match config.get_hostaddrs().first() {
                Some(ip) => ip.to_string(),
                None => name.clone(),
            };
            let stream = tokio::time::timeout(
                connect_timeout,
                tokio::net::TcpStream::connect((address.as_str(), port)),
            )
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            send(stream, config, tls, name, &request, connect_timeout).await
        }
        #[cfg(unix)]
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let stream =
                tokio::time::timeout(connect_timeout, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            send(stream, config, tls, "", &request, connect_timeout).await
        }
    }
}

/// Writes `request` on `stream` (over TLS unless the configuration disables it, negotiated as
/// the connection was, within `connect_timeout`: a peer that accepts and never answers must not
/// hold the cancel) and waits for the close.
async fn send<S>(
    mut stream: S,
    config: &Config,
    tls: &Tls,
    host: &str,
    request: &[u8; 16],
    connect_timeout: Duration,
) -> Result<Sent, CancelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if config.get_ssl_mode() == SslMode::Disable {
        return write_and_wait(stream, request).await;
    }
    let negotiate = async {
        if config.get_ssl_negotiation() == SslNegotiation::Postgres {
            stream.write_all(&SSL_REQUEST).await?;
            let mut answer = [0_u8];
            stream.read_exact(&mut answer).await?;
            if answer[0] != b'S' {
                return Err(CancelError::TlsRefused);
            }
        }
        let handshake = MakeTlsConnect::<S>::make_tls_connect(&mut tls.clone(), host)
            .map_err(|e| CancelError::Handshake(e.into()))?;
        handshake
            .connect(stream)
            .await
            .map_err(CancelError::Handshake)
    };
    // Nothing of the request has been sent yet: dropping the connection here is harmless.
    let stream = tokio::time::timeout(connect_timeout, negotiate)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    write_and_wait(stream, request).await
}

/// Writes the request, then waits up to [`ANSWER_WAIT`] for the other end to close; when it
/// has not, the connection stays open in the background for up to [`LINGER`] more. Nothing is
/// written after the request, not even a close.
async fn write_and_wait<S>(mut stream: S, request: &[u8; 16]) -> Result<Sent, CancelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    stream.write_all(request).await?;
    stream.flush().await?;
    if tokio::time::timeout(ANSWER_WAIT, closed(&mut stream))
        .await
        .is_ok()
    {
        return Ok(Sent::Answered);
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(LINGER, closed(&mut stream)).await;
    });
    Ok(Sent::Unanswered)
}

/// Reads (and drops) whatever comes until the other end closes the connection. An error is a
/// close too (a reset, or TLS ended without `close_notify`).
async fn closed<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut scratch = [0_u8; 64];
    while let Ok(read) = stream.read(&mut scratch).await {
        if read == 0 {
            break;
        }
    }
}

/// The 16 bytes of `token`'s cancel request: the token writes it into memory, through a TLS
/// "handshake" that changes nothing when its connection uses TLS.
async fn request_of(token: &CancelToken) -> Result<[u8; 16], CancelError> {
    let written = Arc::new(Mutex::new(Vec::new()));
    let memory = Memory {
        written: written.clone(),
        answered_ssl: false,
    };
    token
        .cancel_query_raw(memory, Passthrough)
        .await
        .map_err(|e| CancelError::Io(io::Error::other(e)))?;
    let written = written.lock().map_err(|_| CancelError::NoRequest)?;
    let start = written
        .len()
        .checked_sub(16)
        .ok_or(CancelError::NoRequest)?;
    let request: [u8; 16] = written[start..]
        .try_into()
        .map_err(|_| CancelError::NoRequest)?;
    if request[..8] != CANCEL_HEAD {
        return Err(CancelError::NoRequest);
    }
    Ok(request)
}

/// An in-memory stream: keeps what is written, answers an SSLRequest with `S` once, then reads
/// as closed.
struct Memory {
    written: Arc<Mutex<Vec<u8>>>,
    answered_ssl: bool,
}

impl AsyncRead for Memory {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.answered_ssl && buf.remaining() > 0 {
            self.answered_ssl = true;
            buf.put_slice(b"S");
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Memory {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.written.lock() {
            Ok(mut written) => {
                written.extend_from_slice(data);
                Poll::Ready(Ok(data.len()))
            }
            Err(_) => Poll::Ready(Err(io::Error::other("poisoned"))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl TlsStream for Memory {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// A "handshake" that hands the in-memory stream back as it is.
struct Passthrough;

impl TlsConnect<Memory> for Passthrough {
    type Stream = Memory;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<Memory>>;

    fn connect(self, stream: Memory) -> Self::Future {
        std::future::ready(Ok(stream))
    }
}
