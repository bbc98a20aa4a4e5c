//! The API's accept loop. `axum::serve` accepts every connection and waits for headers for
//! ever, so idle connections from anyone on the network could use up the daemon's file
//! descriptors (a scheduled run then failed to start). Here at most [`MAX_CONNECTIONS`] are
//! open at once (more wait in the listen backlog, costing no descriptor of ours), a client
//! has [`HEADER_READ_TIMEOUT`] to start sending its request and as long again to finish its
//! headers, each connection carries one request (no idle keep-alive connections), and an
//! accept error (out of descriptors) backs off instead of spinning. The API speaks HTTP/1.1.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 128;

/// How long a connection may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight requests get to finish once `shutdown` resolves.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests end.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(
        listener,
        app,
        shutdown,
        MAX_CONNECTIONS,
        HEADER_READ_TIMEOUT,
    )
    .await
}

async fn serve_with(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
    max_connections: usize,
    header_read_timeout: Duration,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(false)
        .header_read_timeout(header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: the connections being served free descriptors.
                    tracing::warn!("the API cannot accept a connection: {e}; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            // Nothing sent within the timeout: closed. (hyper's header timeout does not cover
            // a connection that never sends a byte.)
            let mut first = [0u8; 1];
            if tokio::time::timeout(header_read_timeout, stream.peek(&mut first))
                .await
                .is_ok_and(|r| r.is_ok_and(|n| n > 0))
            {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let _ = watcher.watch(conn).await;
            }
            drop(permit);
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN) => {
            tracing::warn!("some API requests were still running after {DRAIN:?}; stopping anyway");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A connection that sends nothing is closed after the header timeout, and connections
    /// beyond the limit wait without being served until one closes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_closed_and_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            listener,
            app,
            async {
                let _ = stopped.await;
            },
            2,
            Duration::from_millis(500),
        ));
        let answered = tokio::task::spawn_blocking(move || {
            let idle: Vec<std::net::TcpStream> = (0..3)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect();
            // The two served idle connections are closed by the server.
            for s in &idle[..2] {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut b = [0u8; 1];
                assert_eq!((&*s).read(&mut b).unwrap(), 0, "closed by the server");
            }
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        })
        .await
        .unwrap();
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
        assert!(answered.ends_with("ok"), "{answered}");
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
