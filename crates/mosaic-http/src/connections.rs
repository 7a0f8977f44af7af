//! The server's accept loop: HTTP/1.1 connections with a cap, an idle timeout and a header read
//! timeout, so idle or half-sent connections cannot make the webhook, `/health` or the API
//! unreachable.
//!
//! Every connection is registered with what it is doing: a request in flight, waiting idle
//! between requests, or receiving a request head. A sweeper closes a connection whose head has
//! taken longer than `header_read_timeout` (counted from the connection's start, or from the
//! first byte of a later request) or that stayed idle for `idle_timeout`. At the cap, the
//! connection idle the longest makes room for the new one, so a flood of idle clients cannot lock
//! out a real one; only when every connection has a request in flight is a new one refused.
//! Accept errors (EMFILE: no file descriptor left) free an idle connection and back off instead
//! of ending the loop or spinning.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// What the accept loop enforces (from the `[server]` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time a client has to send a request's head.
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Time in-flight requests get after the shutdown signal.
    pub shutdown_grace: Duration,
}

/// Marks "no request head being received" in [`Tracked::head_since`].
const NO_HEAD: u64 = u64::MAX;

/// How often timeouts are checked: a small fraction of the shortest timeout, within bounds.
fn sweep_interval(limits: &ConnectionLimits) -> Duration {
    (limits.header_read_timeout.min(limits.idle_timeout) / 10)
        .clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Pause after an accept error that is not about one connection (EMFILE, ENFILE, ENOBUFS):
/// long enough not to spin, short enough that clients barely notice.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Pause after an accept error once an idle connection was told to close: just long enough
/// for it to give its descriptor back.
const ACCEPT_RETRY: Duration = Duration::from_millis(5);

/// At most one log line per this period for each kind of overload.
const OVERLOAD_LOG_PERIOD: Duration = Duration::from_secs(10);

/// One open connection as the loop sees it. Times are milliseconds since the server started.
#[derive(Debug)]
struct Tracked {
    peer: SocketAddr,
    in_flight: AtomicUsize,
    /// When the connection last became idle (opened, or its last response was sent).
    idle_since: AtomicU64,
    /// When the head of the next request began to arrive, or [`NO_HEAD`].
    head_since: AtomicU64,
    /// Asked to close (only honoured while no request is in flight).
    close: tokio::sync::Notify,
}

impl Tracked {
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// When it last did anything: a quiet connection is the first to make room.
    fn last_active(&self) -> u64 {
        let head = self.head_since.load(Ordering::Acquire);
        let idle = self.idle_since.load(Ordering::Acquire);
        if head == NO_HEAD {
            idle
        } else {
            idle.max(head)
        }
    }
}

/// The open connections, shared by the loop, the sweeper and the connection tasks.
#[derive(Debug)]
struct Registry {
    started: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Tracked>>>,
}

impl Registry {
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Tracked>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn add(&self, peer: SocketAddr) -> (u64, Arc<Tracked>) {
        let now = self.now();
        let tracked = Arc::new(Tracked {
            peer,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            // A new connection is expected to send its first request head right away.
            head_since: AtomicU64::new(now),
            close: tokio::sync::Notify::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Arc::clone(&tracked));
        (id, tracked)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the connection idle the longest, if any is idle; returns whether one was.
    fn evict_longest_idle(&self) -> bool {
        let mut open = self.lock();
        let victim = open
            .iter()
            .filter(|(_, tracked)| tracked.is_idle())
            .min_by_key(|(_, tracked)| tracked.last_active())
            .map(|(id, _)| *id);
        match victim.and_then(|id| open.remove(&id)) {
            Some(tracked) => {
                tracked.close.notify_one();
                true
            }
            None => false,
        }
    }

    /// Closes every idle connection past a timeout; returns how many for each reason.
    fn sweep(&self, limits: &ConnectionLimits) -> (usize, usize) {
        let now = self.now();
        let header_ms = millis(limits.header_read_timeout);
        let idle_ms = millis(limits.idle_timeout);
        let (mut slow_heads, mut idle) = (0, 0);
        self.lock().retain(|_, tracked| {
            if !tracked.is_idle() {
                return true;
            }
            let head = tracked.head_since.load(Ordering::Acquire);
            let expired = if head == NO_HEAD {
                let over =
                    now.saturating_sub(tracked.idle_since.load(Ordering::Acquire)) >= idle_ms;
                idle += usize::from(over);
                over
            } else {
                let over = now.saturating_sub(head) >= header_ms;
                slow_heads += usize::from(over);
                over
            };
            if expired {
                tracked.close.notify_one();
            }
            !expired
        });
        (slow_heads, idle)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX - 1)
}

/// The socket, noting when the head of a request begins to arrive on an idle connection.
struct Watched {
    stream: TcpStream,
    tracked: Arc<Tracked>,
    registry: Arc<Registry>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before && self.tracked.is_idle() {
            let now = self.registry.now();
            let _ = self.tracked.head_since.compare_exchange(
                NO_HEAD,
                now,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Counts a request as in flight from its head until its response is ready.
struct InFlight {
    tracked: Arc<Tracked>,
    registry: Arc<Registry>,
}

impl InFlight {
    fn begin(tracked: &Arc<Tracked>, registry: &Arc<Registry>) -> Self {
        tracked.in_flight.fetch_add(1, Ordering::AcqRel);
        tracked.head_since.store(NO_HEAD, Ordering::Release);
        Self {
            tracked: Arc::clone(tracked),
            registry: Arc::clone(registry),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.tracked
            .idle_since
            .store(self.registry.now(), Ordering::Release);
        self.tracked.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One log line per burst of the same overload, with how many events it stands for.
#[derive(Debug, Default)]
struct BurstLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl BurstLog {
    /// Counts an event; returns the number of events to report when a line is due.
    fn event(&mut self) -> Option<u64> {
        self.unlogged += 1;
        let due = self
            .last
            .is_none_or(|last| last.elapsed() >= OVERLOAD_LOG_PERIOD);
        if due {
            self.last = Some(Instant::now());
            Some(std::mem::take(&mut self.unlogged))
        } else {
            None
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish within the grace period, and closes what is left.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ConnectionLimits,
) -> io::Result<()> {
    let registry = Arc::new(Registry {
        started: Instant::now(),
        next_id: AtomicU64::new(0),
        open: Mutex::new(HashMap::new()),
    });
    let stopping = CancellationToken::new();
    let closing = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut sweep = tokio::time::interval(sweep_interval(&limits));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut at_cap = BurstLog::default();
    let mut full = BurstLog::default();
    let mut accept_failures = BurstLog::default();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            _ = sweep.tick() => {
                let (slow_heads, idle) = registry.sweep(&limits);
                if slow_heads + idle > 0 {
                    tracing::debug!(slow_heads, idle, "closed connections past their timeout");
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) if is_per_connection(&err) => continue,
            Err(err) => {
                // Usually no file descriptor left: an idle connection gives one back.
                let freed = registry.evict_longest_idle();
                if let Some(count) = accept_failures.event() {
                    tracing::warn!(
                        error = %err,
                        failures = count,
                        freed_an_idle_connection = freed,
                        open = registry.len(),
                        "cannot accept connections; backing off"
                    );
                }
                // With a connection closing, its descriptor is back almost at once.
                let pause = if freed { ACCEPT_RETRY } else { ACCEPT_BACKOFF };
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        if registry.len() >= limits.max_connections {
            if registry.evict_longest_idle() {
                if let Some(count) = at_cap.event() {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        evicted = count,
                        "connection limit reached: closing the connections idle the longest \
                         to make room"
                    );
                }
            } else {
                if let Some(count) = full.event() {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        refused = count,
                        "connection limit reached with a request in flight on every \
                         connection: refusing new connections"
                    );
                }
                drop(stream);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let (id, tracked) = registry.add(peer);
        tasks.spawn(serve_connection(
            stream,
            app.clone(),
            id,
            tracked,
            Arc::clone(&registry),
            stopping.clone(),
            closing.clone(),
        ));
    }

    drop(listener);
    tracing::info!(
        grace_secs = limits.shutdown_grace.as_secs_f64(),
        open_connections = registry.len(),
        "shutting down: no new connections"
    );
    stopping.cancel();
    tasks.close();
    if tokio::time::timeout(limits.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period over: closing the connections still open");
        closing.cancel();
        tasks.wait().await;
    }
    Ok(())
}

/// Accept errors about one connection only (it went away before it was accepted).
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    id: u64,
    tracked: Arc<Tracked>,
    registry: Arc<Registry>,
    stopping: CancellationToken,
    closing: CancellationToken,
) {
    let peer = tracked.peer;
    let io = TokioIo::new(Watched {
        stream,
        tracked: Arc::clone(&tracked),
        registry: Arc::clone(&registry),
    });
    let service = {
        let tracked = Arc::clone(&tracked);
        let registry = Arc::clone(&registry);
        hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            let in_flight = InFlight::begin(&tracked, &registry);
            request.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(axum::body::Body::new)).await;
                drop(in_flight);
                response.map_err(|never: Infallible| match never {})
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                break;
            }
            () = tracked.close.notified() => {
                // Asked to make room or timed out: honoured only between requests.
                if tracked.is_idle() {
                    break;
                }
            }
            () = stopping.cancelled(), if !shutting_down => {
                shutting_down = true;
                // Finishes the request in flight, then closes; closes an idle connection now.
                connection.as_mut().graceful_shutdown();
            }
            () = closing.cancelled() => break,
        }
    }
    registry.remove(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_logs_once_with_its_count() {
        let mut log = BurstLog::default();
        assert_eq!(log.event(), Some(1));
        for _ in 0..99 {
            assert_eq!(log.event(), None);
        }
        log.last = Some(Instant::now() - OVERLOAD_LOG_PERIOD);
        assert_eq!(log.event(), Some(100));
    }

    #[test]
    fn the_longest_idle_connection_makes_room_never_a_busy_one() {
        let registry = Registry {
            started: Instant::now() - Duration::from_secs(100),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        };
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let (busy, busy_conn) = registry.add(peer);
        busy_conn.idle_since.store(0, Ordering::Release);
        busy_conn.head_since.store(NO_HEAD, Ordering::Release);
        busy_conn.in_flight.store(1, Ordering::Release);
        let (old, old_conn) = registry.add(peer);
        old_conn.idle_since.store(10, Ordering::Release);
        old_conn.head_since.store(NO_HEAD, Ordering::Release);
        let (recent, _) = registry.add(peer);

        assert!(registry.evict_longest_idle());
        let open = registry.lock().keys().copied().collect::<Vec<_>>();
        assert!(!open.contains(&old), "the oldest idle one went");
        assert!(open.contains(&busy) && open.contains(&recent));
        assert!(registry.evict_longest_idle());
        assert!(!registry.evict_longest_idle(), "the busy one stays");
        assert_eq!(registry.len(), 1);
    }
}
