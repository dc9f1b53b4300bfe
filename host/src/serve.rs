//! Serving a router on a listener, with the limits a server facing a network needs:
//! a bounded number of connections per address, a connection that starts no request
//! (or sits idle between requests) is closed, request headers and bodies must arrive
//! within a time, and on shutdown open connections get a grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use axum::http::header;
use axum::Router;
use futures_util::StreamExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Connections still open at shutdown get this long to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// File descriptors kept for everything but client connections (the database, plugin
/// libraries, outgoing calls of the plugins).
const RESERVED_DESCRIPTORS: u64 = 256;
/// At most one "connection limit reached" warning per address this often.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(60);

/// What one address allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more wait in the kernel's queue until one closes.
    pub max_connections: usize,
    /// Time to send a request's headers, counted from the connection's start or from
    /// the end of the previous answer: an idle or silent connection is closed then.
    pub header_timeout: Duration,
    /// Time to send a request's whole body (answered 408 past it).
    pub body_timeout: Duration,
}

/// Serves until `shutdown` resolves, over TLS when `tls` is given (HTTPS only: a
/// plain request gets no answer); handlers can read the peer's address through
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let local = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let mut builder = http1::Builder::new();
    // hyper starts the header timer when it waits for a request head: at the start of
    // a connection and after each answer on a kept-alive one. (hyper-util's "auto"
    // builder first waits for the protocol preface with no timer at all, which let
    // silent sockets pile up until the descriptors ran out.)
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut warned_at: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        if slots.available_permits() == 0
            && warned_at.is_none_or(|at| at.elapsed() >= FULL_WARNING_EVERY)
        {
            warned_at = Some(Instant::now());
            tracing::warn!(
                address = %local,
                limit = limits.max_connections,
                "connection limit reached; new connections wait until one closes"
            );
        }
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // the semaphore is never closed
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, go on.
                    tracing::warn!(address = %local, "cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                router.clone().oneshot(request.map(Body::new))
            },
        );
        match &tls {
            None => {
                let connection =
                    graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                    drop(slot);
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task, under the header timer: a
                // client that never finishes it is closed like a silent one.
                let handshake = acceptor.accept(stream);
                let (builder, watcher) = (builder.clone(), graceful.watcher());
                let timeout = limits.header_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            let connection =
                                builder.serve_connection(TokioIo::new(stream), service);
                            if let Err(e) = watcher.watch(connection).await {
                                tracing::debug!(%peer, "connection ended: {e}");
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake not finished in time"),
                    }
                    drop(slot);
                });
            }
        }
    }
    if tokio::time::timeout(CLOSE_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at shutdown were closed");
    }
}

/// Why a request body was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive within {} s", .0.as_secs())]
    TimedOut(Duration),
    #[error("the request body could not be read: {0}")]
    Broken(String),
}

/// Reads the whole body of `request` within `timeout` and at most `limit` bytes, so
/// that no handler waits on a slow sender and no sender makes the engine hold more
/// than `limit` bytes for it. A body announced larger than `limit` is refused before
/// any of it is read.
pub async fn read_body(
    request: Request,
    limit: usize,
    timeout: Duration,
) -> Result<Request, BodyError> {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let (parts, body) = request.into_parts();
    let collect = async {
        let mut stream = body.into_data_stream();
        let mut buffer =
            Vec::with_capacity(announced.map_or(0, |n| usize::try_from(n).unwrap_or(0).min(limit)));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
            if buffer.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge(limit));
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(buffer)
    };
    let bytes = tokio::time::timeout(timeout, collect)
        .await
        .map_err(|_| BodyError::TimedOut(timeout))??;
    Ok(Request::from_parts(parts, Body::from(Bytes::from(bytes))))
}

/// Marks an answer given before the body was read whole: what is left of the body
/// is not read, so the connection cannot be reused.
pub fn closing(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// Raises the soft limit of open files to the hard limit (systemd and many shells
/// start services with 1,024), and returns the limit now in force.
#[cfg(unix)]
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(
                from = limit.rlim_cur,
                to = limit.rlim_max,
                "raised the open files limit"
            );
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Some(limit.rlim_cur)
}

#[cfg(not(unix))]
pub fn raise_open_files_limit() -> Option<u64> {
    None
}

/// Fits the two addresses' connection limits into `open_files` descriptors, keeping
/// [`RESERVED_DESCRIPTORS`] for the rest, in proportion to what was asked.
pub fn fit_connections(events: usize, admin: usize, open_files: Option<u64>) -> (usize, usize) {
    let Some(open_files) = open_files else {
        return (events, admin);
    };
    let room = open_files.saturating_sub(RESERVED_DESCRIPTORS);
    let asked = (events + admin) as u64;
    if asked <= room {
        return (events, admin);
    }
    let share = |n: usize| {
        usize::try_from(room * n as u64 / asked.max(1))
            .unwrap_or(1)
            .max(1)
    };
    (share(events), share(admin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_fit_in_the_descriptors_left() {
        assert_eq!(fit_connections(1024, 128, Some(1_048_576)), (1024, 128));
        assert_eq!(fit_connections(1024, 128, None), (1024, 128));
        let (events, admin) = fit_connections(1024, 128, Some(1024));
        assert!(events + admin <= 1024 - 256, "{events} + {admin}");
        assert!(events > admin && admin >= 1);
        assert_eq!(fit_connections(1024, 128, Some(10)), (1, 1));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_or_too_slow_is_refused() {
        let request = |body: Body| Request::builder().body(body).expect("request");
        let read = read_body(
            request(Body::from("0123456789")),
            10,
            Duration::from_secs(5),
        )
        .await
        .expect("fits");
        let bytes = axum::body::to_bytes(read.into_body(), 100)
            .await
            .expect("bytes");
        assert_eq!(&bytes[..], b"0123456789");
        assert_eq!(
            read_body(
                request(Body::from("0123456789x")),
                10,
                Duration::from_secs(5)
            )
            .await
            .err(),
            Some(BodyError::TooLarge(10))
        );
        let announced = Request::builder()
            .header(header::CONTENT_LENGTH, "1000000")
            .body(Body::empty())
            .expect("request");
        assert_eq!(
            read_body(announced, 10, Duration::from_secs(5)).await.err(),
            Some(BodyError::TooLarge(10)),
            "refused on its announced length"
        );
        // A body that never ends.
        let (_sender, body) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let endless = Body::from_stream(tokio_stream_of(body));
        assert_eq!(
            read_body(request(endless), 10, Duration::from_millis(50))
                .await
                .err(),
            Some(BodyError::TimedOut(Duration::from_millis(50)))
        );
    }

    fn tokio_stream_of(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
