//! A TCP proxy in front of the test server: it forwards connections and records how each began
//! (its first 8 bytes: a startup packet, an SSLRequest or a CancelRequest in the clear), and,
//! as asked, drops cancel requests (a proxy or pooler that does not pass them on) or goes
//! silent (a pooler that accepts and never answers).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::config::SslMode;
use tokio_postgres::Config;

use crate::common::{TestDb, RELEASE_PASSWORD, RELEASE_ROLE};

/// The protocol's CancelRequest, as it begins: length 16, code 80877102.
const CANCEL_REQUEST: [u8; 8] = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
/// The protocol's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// What the proxy does with a connection.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// Forwards every connection.
    Forward,
    /// Closes a cancel request's connection without passing it on; forwards the others.
    DropCancels,
    /// Forwards the first `n` connections; holds every later one open and never answers.
    SilentAfter(usize),
}

pub struct Proxy {
    pub port: u16,
    heads: Arc<Mutex<Vec<[u8; 8]>>>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1, in front of the test server.
    pub async fn start(behaviour: Behaviour) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            let mut accepted = 0;
            while let Ok((mut client, _)) = listener.accept().await {
                accepted += 1;
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = [0_u8; 8];
                    if client.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    seen.lock().unwrap().push(head);
                    match behaviour {
                        Behaviour::DropCancels if head == CANCEL_REQUEST => return,
                        Behaviour::SilentAfter(n) if accepted > n => {
                            // Reads whatever comes until the client goes; answers nothing.
                            let _ = tokio::io::copy(&mut client, &mut tokio::io::sink()).await;
                            return;
                        }
                        _ => {}
                    }
                    let addr = format!("127.0.0.1:{}", crate::common::pg_port());
                    let Ok(mut server) = tokio::net::TcpStream::connect(addr).await else {
                        return;
                    };
                    if server.write_all(&head).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Proxy { port, heads }
    }

    /// The release role's connection to `t`'s database through this proxy, at `host` (the
    /// name TLS verifies), with the front-ends' defaults.
    pub fn release_config(&self, t: &TestDb, host: &str, ssl_mode: SslMode) -> Config {
        let mut config = Config::new();
        config
            .host(host)
            .port(self.port)
            .user(RELEASE_ROLE)
            .password(RELEASE_PASSWORD)
            .dbname(&t.name)
            .ssl_mode(ssl_mode);
        unreserver::apply_defaults(&mut config);
        config
    }

    /// Connections so far.
    pub fn connections(&self) -> usize {
        self.heads.lock().unwrap().len()
    }

    /// Connections that began with a cancel request in the clear.
    pub fn cancels_in_the_clear(&self) -> usize {
        self.count(CANCEL_REQUEST)
    }

    /// Connections that began by asking for TLS.
    pub fn tls_requests(&self) -> usize {
        self.count(SSL_REQUEST)
    }

    fn count(&self, head: [u8; 8]) -> usize {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .filter(|h| **h == head)
            .count()
    }
}
