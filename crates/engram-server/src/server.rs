//! The server's life: bind every listener first (so health answers during
//! recovery), recover the engine, become ready, serve, and on the shutdown
//! signal: become unready, stop accepting, finish in-flight requests within
//! the grace period, then shut the engine down (commit, snapshot, sync).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use engram_core::Engine;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::auth::Auth;
use crate::config::ServerConfig;
use crate::grpc;
use crate::http::{self, AppState, Phase};
use crate::tls::{self, CertStore};

/// TCP keepalive on accepted gRPC sockets: a peer that vanished without a
/// FIN (power loss, a cut network) is noticed and its streams end.
const GRPC_TCP_KEEPALIVE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding the {listener} listener on {addr}: {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("recovery failed: {0}")]
    Recovery(#[from] engram_core::Error),
    #[error("the {0} listener failed: {1}")]
    Listener(&'static str, std::io::Error),
    /// The engine failed and stopped (e.g. its commit thread died); the
    /// process exits non-zero so a supervisor restarts it.
    #[error("fatal: {0}")]
    Fatal(String),
    /// The security settings are unusable or unsafe (a keys file or
    /// certificate that cannot be read; a non-loopback address without
    /// keys).
    #[error("{0}")]
    Security(String),
    /// Cluster mode could not join (NATS unreachable, JetStream refusing
    /// a stream or bucket).
    #[error("cluster: {0}")]
    Cluster(String),
}

/// Runs the server until `shutdown` resolves, then shuts down in order.
///
/// # Errors
/// A listener that cannot bind, or a recovery that fails.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // SIGHUP reloads keys and certificates. Listen for it first thing: a
    // SIGHUP that arrives before (e.g. `systemctl reload` right after the
    // start) would otherwise end the process, as a clean exit.
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::error!(error = %e, "cannot listen for SIGHUP: keys and certificates will not reload"))
        .ok();
    let auth = Auth::load(config.security.api_keys.clone(), config.limits.clone())
        .map_err(ServeError::Security)?;
    check_exposure(&config, &auth)?;
    let tls = match (&config.security.tls_cert, &config.security.tls_key) {
        (Some(cert), Some(key)) => Some(CertStore::load(cert, key).map_err(ServeError::Security)?),
        _ => None,
    };
    let state = AppState::new(auth.clone());
    let listener = TcpListener::bind(config.http.addr)
        .await
        .map_err(|source| ServeError::Bind {
            listener: "http",
            addr: config.http.addr,
            source,
        })?;
    let http_addr = listener
        .local_addr()
        .map_err(|e| ServeError::Listener("http", e))?;
    tracing::info!(listener = "http", addr = %http_addr, tls = tls.is_some(), "listening");

    let grpc_listener = TcpListener::bind(config.grpc.addr)
        .await
        .map_err(|source| ServeError::Bind {
            listener: "grpc",
            addr: config.grpc.addr,
            source,
        })?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|e| ServeError::Listener("grpc", e))?;
    tracing::info!(listener = "grpc", addr = %grpc_addr, tls = tls.is_some(), "listening");
    if auth.enabled() {
        tracing::info!(keys = auth.key_count(), "API keys required on every call");
    } else {
        tracing::warn!(
            "no API keys file (security.api_keys): every call is allowed, unauthenticated"
        );
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (grpc_router, health) = grpc::router(
        state.clone(),
        config.grpc.max_message_bytes,
        stop_rx.clone(),
    )
    .await;
    let mut stop_grpc = stop_rx.clone();
    let grpc_stopped = async move {
        let _ = stop_grpc.wait_for(|s| *s).await;
    };
    let grpc_task = match &tls {
        None => {
            // TCP_NODELAY on every accepted socket: without it a small
            // response written in pieces (headers, data, trailers) waits for
            // the client's delayed ACK, a ~40 ms floor on every unary call
            // and recall batch.
            let grpc_incoming =
                TcpIncoming::from_listener(grpc_listener, true, Some(GRPC_TCP_KEEPALIVE))
                    .map_err(|e| ServeError::Listener("grpc", std::io::Error::other(e)))?;
            tokio::spawn(async move {
                grpc_router
                    .serve_with_incoming_shutdown(grpc_incoming, grpc_stopped)
                    .await
            })
        }
        Some(certs) => {
            // The same socket options, set by the TLS accept loop.
            let incoming = tokio_stream::wrappers::ReceiverStream::new(tls::accept_loop(
                grpc_listener,
                certs.server_config(&[b"h2"]),
                Some(GRPC_TCP_KEEPALIVE),
                stop_rx.clone(),
                "grpc",
            ));
            tokio::spawn(async move {
                grpc_router
                    .serve_with_incoming_shutdown(incoming, grpc_stopped)
                    .await
            })
        }
    };
    let (open_sockets, mut sockets_gone) = tokio::sync::mpsc::channel::<()>(1);
    let app = http::router(
        state.clone(),
        config.http.max_body_bytes,
        http::ws::WsSettings {
            max_message_bytes: config.http.max_ws_message_bytes,
            ping_interval: Duration::from_secs(config.http.ws_ping_interval_secs),
            auth_timeout: Duration::from_secs(config.http.ws_auth_timeout_secs),
            shutdown: stop_rx.clone(),
            open_sockets,
        },
    );
    let mut stop_http = stop_rx.clone();
    let http_task = match &tls {
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .tcp_nodelay(true)
                .with_graceful_shutdown(async move {
                    let _ = stop_http.wait_for(|s| *s).await;
                })
                .await
        }),
        Some(certs) => {
            // HTTP/1.1 only: the WebSocket stream upgrades an HTTP/1.1
            // request, and REST needs nothing more.
            let incoming = tls::accept_loop(
                listener,
                certs.server_config(&[b"http/1.1"]),
                None,
                stop_rx.clone(),
                "http",
            );
            tokio::spawn(serve_https(incoming, app, stop_http))
        }
    };
    #[cfg(unix)]
    if let Some(hangups) = hangups {
        tokio::spawn(reload_on_sighup(hangups, auth.clone(), tls.clone()));
    }
    // Set when the engine turns fatal: the server stops as on a signal,
    // then exits with the cause.
    let fatal_stop = Arc::new(tokio::sync::Notify::new());
    let signal_task = tokio::spawn({
        let state = state.clone();
        let health = health.clone();
        let fatal_stop = fatal_stop.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = fatal_stop.notified() => {}
            }
            tracing::info!("shutdown requested: no longer ready, finishing in-flight requests");
            state.set_phase(Phase::ShuttingDown);
            grpc::set_serving(&health, false).await;
            let _ = stop_tx.send(true);
        }
    });

    let engine_config = config.engine.clone();
    tracing::info!(data_dir = %engine_config.data_dir.display(), "recovering");
    let engine = match tokio::task::spawn_blocking(move || Engine::open(engine_config)).await {
        Ok(Ok(engine)) => engine,
        Ok(Err(e)) => {
            signal_task.abort();
            return Err(ServeError::Recovery(e));
        }
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    };
    let r = engine.recovery_report();
    tracing::info!(
        spaces = r.spaces,
        snapshot = ?r.snapshot,
        snapshot_episodes = r.snapshot_episodes,
        wal_records = r.wal_records,
        to_index = r.to_index,
        took_ms = r.took.as_millis() as u64,
        "recovery finished"
    );
    // Cluster mode: joined before the engine is published to the
    // handlers, so that no call is ever answered by the node's own
    // engine (a write acked there would not be in the cluster's log).
    let cluster = match &config.cluster {
        None => None,
        Some(c) => {
            tracing::info!(node = %c.node_id, nats = %c.nats.join(","), "joining the cluster");
            match crate::cluster::Cluster::join(
                c.clone(),
                config.engine.clone(),
                grpc_addr,
                http_addr,
                stop_rx.clone(),
            )
            .await
            {
                Ok(cluster) => {
                    state.set_cluster(cluster.clone());
                    Some(cluster)
                }
                Err(e) => {
                    signal_task.abort();
                    let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
                    if matches!(e, crate::cluster::JoinError::Stopped) {
                        tracing::info!("stopped while joining the cluster");
                        return Ok(());
                    }
                    return Err(ServeError::Cluster(e.to_string()));
                }
            }
        }
    };
    state.set_engine(engine.clone());
    tokio::spawn({
        let mut fatal = engine.fatal_watch();
        let fatal_stop = fatal_stop.clone();
        async move {
            if fatal.wait_for(Option::is_some).await.is_ok() {
                fatal_stop.notify_one();
            }
        }
    });
    if state.phase() == Phase::Recovering {
        state.set_phase(Phase::Ready);
        grpc::set_serving(&health, true).await;
        tracing::info!("ready");
    }

    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let mut wait_stop = stop_rx;
    let _ = wait_stop.wait_for(|s| *s).await;
    let listeners = async {
        let (http, grpc) = tokio::join!(http_task, grpc_task);
        match http {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "http listener ended with an error"),
            Err(e) => tracing::error!(error = %e, "http task panicked"),
        }
        match grpc {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "grpc listener ended with an error"),
            Err(e) => tracing::error!(error = %e, "grpc task panicked"),
        }
        // WebSocket streams have been told to close; wait until their
        // sockets are gone (each lingers briefly for its client).
        while sockets_gone.recv().await.is_some() {}
    };
    if tokio::time::timeout(grace, listeners).await.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "in-flight requests outlived the grace period"
        );
    }
    if let Some(cluster) = cluster {
        // Hand every owned partition on (last snapshot, lease deleted) so
        // the others take over now rather than after a lease TTL.
        if tokio::time::timeout(grace, cluster.leave()).await.is_err() {
            tracing::warn!(
                "handing partitions on outlived the grace period; their leases will expire"
            );
        }
    }
    let fatal = engine.fatal();
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .ok();
    if let Some(cause) = fatal {
        tracing::error!(%cause, "stopped after a fatal engine failure");
        return Err(ServeError::Fatal(cause));
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Refuses to listen beyond loopback without API keys, unless the operator
/// said so (`security.allow_unauthenticated`): a memory server holds
/// private data, and an open port on a network is how it leaks.
fn check_exposure(config: &ServerConfig, auth: &Auth) -> Result<(), ServeError> {
    if auth.enabled() {
        return Ok(());
    }
    let exposed: Vec<String> = [("grpc", config.grpc.addr), ("http", config.http.addr)]
        .iter()
        .filter(|(_, a)| !a.ip().is_loopback())
        .map(|(name, a)| format!("{name} on {a}"))
        .collect();
    if exposed.is_empty() {
        return Ok(());
    }
    if config.security.allow_unauthenticated {
        tracing::warn!(
            listeners = %exposed.join(", "),
            "listening beyond loopback WITHOUT authentication (--allow-unauthenticated): anyone who reaches these ports can read, write and delete every space"
        );
        return Ok(());
    }
    Err(ServeError::Security(format!(
        "refusing to start: {} is not a loopback address and no API keys are configured, so anyone who reaches it could read, write and delete every space. Give an API keys file (--api-keys FILE, see docs/operations/security.md), listen on 127.0.0.1, or pass --allow-unauthenticated if a network boundary you trust protects the port",
        exposed.join(" and ")
    )))
}

/// Serves the HTTP routes over TLS connections from `incoming` (HTTP/1.1
/// with upgrades, for the WebSocket stream) until `stop`, then lets the
/// open connections finish as `axum::serve` does.
async fn serve_https(
    mut incoming: tokio::sync::mpsc::Receiver<
        Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
    >,
    app: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            s = incoming.recv() => match s {
                Some(Ok(s)) => s,
                Some(Err(_)) => continue,
                None => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "https connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// SIGHUP: read the API keys file and the TLS certificate again. Open
/// streams stay; a file that does not load leaves what is in use and is
/// logged as an error.
#[cfg(unix)]
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    auth: Auth,
    tls: Option<std::sync::Arc<CertStore>>,
) {
    while hup.recv().await.is_some() {
        if auth.enabled() {
            match auth.reload() {
                Ok(n) => tracing::info!(keys = n, "SIGHUP: API keys reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: API keys NOT reloaded; the previous keys stay in use")
                }
            }
        }
        if let Some(certs) = &tls {
            match certs.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS certificate NOT reloaded; the previous one stays in use")
                }
            }
        }
    }
}
