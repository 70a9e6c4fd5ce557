//! Connections: accepted with `TCP_NODELAY`, served by hyper (HTTP/1.1 and HTTP/2) with a
//! time limit on request headers and on every write, and shut down gracefully.
//!
//! - Nagle's algorithm off: an answer written in several pieces (a query's batches) would
//!   otherwise hold each later piece until the client's delayed ACK, 40 ms on Linux.
//! - A client that sends a request's headers too slowly (or keeps an idle connection past
//!   the same time) is disconnected, so idle or trickling sockets cannot pile up.
//! - A client that stops reading an answer is disconnected once a write has waited
//!   [`ConnectionLimits::write_idle`]: the answer's stream is dropped with the connection,
//!   which ends its query and frees its memory and its query slot.

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// Time limits of a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A request's headers must arrive within this (counted from when the connection is
    /// ready for the next request, so it also closes idle keep-alive connections).
    pub header_timeout: Duration,
    /// A write of an answer may wait this long for the client to take bytes.
    pub write_idle: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits { header_timeout: Duration::from_secs(30), write_idle: Duration::from_secs(30) }
    }
}

/// Makes an accepted socket what a connection needs: no Nagle delay, writes under a time
/// limit.
pub fn prepare(
    stream: TcpStream,
    limits: &ConnectionLimits,
) -> std::io::Result<std::pin::Pin<Box<tokio_io_timeout::TimeoutStream<TcpStream>>>> {
    stream.set_nodelay(true)?;
    let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
    stream.set_write_timeout(Some(limits.write_idle));
    Ok(Box::pin(stream))
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.header_timeout))
        .keep_alive_timeout(limits.write_idle);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let io = match prepare(stream, &limits) {
            Ok(io) => TokioIo::new(io),
            Err(e) => {
                tracing::debug!(error = %e, "a connection closed as it was accepted");
                continue;
            }
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = graceful.watch(builder.serve_connection_with_upgrades(io, service).into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(!accepted.nodelay().unwrap(), "off by default");
        let prepared = prepare(accepted, &ConnectionLimits::default()).unwrap();
        assert!(prepared.get_ref().nodelay().unwrap());
        drop(client);
    }
}
