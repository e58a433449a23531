//! The small HTTP server both binaries run for health, readiness and Prometheus metrics.
//!
//! Liveness (`/health`, `/healthz`, `/livez`) and readiness (`/ready`, `/readyz`) are flags the
//! binary flips ([`Health`]); `/metrics` encodes the shared prometheus-client registry in the
//! OpenMetrics text format. Servers take a bound listener and a shutdown signal (mini-redis
//! style), so tests bind port 0 and binaries bind their flags' addresses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Errors of the health server.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The server failed while accepting or serving connections.
    #[error("health server on {addr}: {source}")]
    Serve {
        addr: String,
        source: std::io::Error,
    },
}

/// Liveness and readiness flags plus the metrics registry.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    live: AtomicBool,
    ready: AtomicBool,
    registry: Mutex<Registry>,
}

impl Health {
    /// Live, not ready, with `registry` behind `/metrics`.
    pub fn new(registry: Registry) -> Self {
        Health {
            inner: Arc::new(Inner {
                live: AtomicBool::new(true),
                ready: AtomicBool::new(false),
                registry: Mutex::new(registry),
            }),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    pub fn set_live(&self, live: bool) {
        self.inner.live.store(live, Ordering::Release);
    }

    /// Runs `f` with the registry (to register more metrics after construction).
    pub fn with_registry<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        let mut registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f(&mut registry)
    }

    /// The routes: liveness, readiness and metrics.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/health", get(live))
            .route("/healthz", get(live))
            .route("/livez", get(live))
            .route("/ready", get(ready))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }

    /// Binds `addr` and serves on it in the background until `shutdown`; returns the bound
    /// address (port 0 picks one).
    pub async fn bind(
        &self,
        addr: std::net::SocketAddr,
        shutdown: &CancellationToken,
    ) -> std::io::Result<std::net::SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let (health, shutdown) = (self.clone(), shutdown.clone());
        tokio::spawn(async move { health.serve(listener, shutdown).await });
        Ok(bound)
    }

    /// Serves [`Health::router`] on `listener` until `shutdown` is cancelled.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), HealthError> {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(|source| HealthError::Serve { addr, source })
    }
}

fn flag(ok: bool) -> (StatusCode, &'static str) {
    if ok {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn live(State(h): State<Health>) -> impl IntoResponse {
    flag(h.inner.live.load(Ordering::Acquire))
}

async fn ready(State(h): State<Health>) -> impl IntoResponse {
    flag(h.is_ready())
}

async fn metrics(State(h): State<Health>) -> Response {
    let mut body = String::new();
    let encoded = h.with_registry(|r| prometheus_client::encoding::text::encode(&mut body, r));
    match encoded {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
