//! The HTTP endpoints of live mode: `/metrics` (Prometheus text), `/healthz`
//! (200 while the process runs), `/readyz` (200 once partitions are
//! assigned and the state is open, else 503), and, when `http.query_token`
//! is set, the queries of contract section 9 (`query`).

mod forward;
pub mod placement;
pub mod query;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// What the endpoints report on, shared with the pipeline.
#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    pub state_open: Arc<AtomicBool>,
    pub assigned: Arc<AtomicBool>,
    /// The query routes' settings and, once the pipeline opened it, the
    /// committed state they read.
    pub queries: query::QueryState,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        self.state_open.load(Ordering::Acquire) && self.assigned.load(Ordering::Acquire)
    }
}

pub fn router(health: Health) -> Router {
    let queries = query::routes(&health.queries);
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health)
        .merge(queries)
        .fallback(query::not_found)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(health))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    h.metrics.ready.set(i64::from(h.is_ready()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        h.metrics.render(),
    )
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
