//! The accept loop over real sockets: header read and idle timeouts, the connection cap (the
//! connection idle the longest makes room), and graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use mosaic_http::{AppState, ConnectionLimits, router, serve_with_limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const LIMITS: ConnectionLimits = ConnectionLimits {
    header_read_timeout: Duration::from_secs(30),
    idle_timeout: Duration::from_secs(30),
    max_connections: 100,
    shutdown_grace: Duration::from_secs(5),
};

struct Server {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(limits: ConnectionLimits) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = Router::new()
            .route(
                "/slow/{millis}",
                get(
                    |axum::extract::Path(millis): axum::extract::Path<u64>| async move {
                        tokio::time::sleep(Duration::from_millis(millis)).await;
                        "done"
                    },
                ),
            )
            .merge(router(AppState::new("test")));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_with_limits(
            listener,
            app,
            async {
                let _ = stopped.await;
            },
            limits,
        ));
        Self {
            address,
            stop: Some(stop),
            task,
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.address).await.unwrap()
    }

    fn shutdown(&mut self) {
        let _ = self.stop.take().unwrap().send(());
    }
}

async fn send_get(stream: &mut TcpStream, path: &str) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
}

/// Reads one response head and a small body; returns the status code.
async fn read_status(stream: &mut TcpStream) -> u16 {
    let mut buffer = vec![0_u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buffer[..read]);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"))
}

/// Whether the server closed the connection within `limit` (end of stream or reset).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0_u8; 1];
    match tokio::time::timeout(limit, stream.read(&mut byte)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) => panic!("unexpected data"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_half_sent_request_head_is_closed_after_the_header_read_timeout() {
    let server = Server::start(ConnectionLimits {
        header_read_timeout: Duration::from_secs(1),
        ..LIMITS
    })
    .await;
    let mut slow = server.connect().await;
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut slow, Duration::from_secs(5)).await);
    assert!(started.elapsed() >= Duration::from_millis(800));

    // A connection that never sends a byte gets the same time.
    let mut silent = server.connect().await;
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await);

    // A prompt client is unaffected.
    let mut prompt = server.connect().await;
    send_get(&mut prompt, "/health").await;
    assert_eq!(read_status(&mut prompt).await, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start(ConnectionLimits {
        idle_timeout: Duration::from_secs(1),
        ..LIMITS
    })
    .await;
    let mut client = server.connect().await;
    send_get(&mut client, "/health").await;
    assert_eq!(read_status(&mut client).await, 200);
    // Kept alive for a while: a second request on the same connection is served.
    send_get(&mut client, "/health").await;
    assert_eq!(read_status(&mut client).await, 200);
    let started = Instant::now();
    assert!(closed_within(&mut client, Duration::from_secs(5)).await);
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn at_the_cap_the_connection_idle_the_longest_makes_room() {
    let server = Server::start(ConnectionLimits {
        max_connections: 4,
        ..LIMITS
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(server.connect().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut fresh = server.connect().await;
    send_get(&mut fresh, "/health").await;
    assert_eq!(read_status(&mut fresh).await, 200);
    assert!(
        closed_within(&mut idle[0], Duration::from_secs(2)).await,
        "the oldest idle connection was closed"
    );
    assert!(
        !closed_within(&mut idle[3], Duration::from_millis(200)).await,
        "the newest idle connection stays"
    );
}

#[tokio::test]
async fn at_the_cap_a_request_in_flight_is_never_cut_off() {
    let server = Server::start(ConnectionLimits {
        max_connections: 1,
        ..LIMITS
    })
    .await;
    let mut busy = server.connect().await;
    send_get(&mut busy, "/slow/800").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = server.connect().await;
    send_get(&mut refused, "/health").await;
    assert!(closed_within(&mut refused, Duration::from_secs(2)).await);
    assert_eq!(read_status(&mut busy).await, 200);
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_closes_idle_connections() {
    let mut server = Server::start(LIMITS).await;
    let mut idle = server.connect().await;
    send_get(&mut idle, "/health").await;
    assert_eq!(read_status(&mut idle).await, 200);
    let mut busy = server.connect().await;
    send_get(&mut busy, "/slow/700").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.shutdown();
    assert!(closed_within(&mut idle, Duration::from_secs(2)).await);
    assert_eq!(read_status(&mut busy).await, 200);
    tokio::time::timeout(Duration::from_secs(3), &mut server.task)
        .await
        .expect("serve returns once the last request is answered")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(server.address).await.is_err());
}

#[tokio::test]
async fn after_the_grace_period_the_remaining_connections_are_closed() {
    let mut server = Server::start(ConnectionLimits {
        shutdown_grace: Duration::from_millis(300),
        ..LIMITS
    })
    .await;
    let mut busy = server.connect().await;
    send_get(&mut busy, "/slow/30000").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.shutdown();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), &mut server.task)
        .await
        .expect("serve returns after the grace period")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(closed_within(&mut busy, Duration::from_secs(1)).await);
}
