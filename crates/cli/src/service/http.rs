//! The listener of `tandem run`: `/healthz`, `/readyz`, `/metrics` and
//! `POST /conflicts/{id}/resolve`. Routes only read [`Shared`] or send a
//! [`ServiceCommand`] to the run loop, which holds the state; a status page adds its
//! routes to [`router`] the same way.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use tandem_engine::Take;
use tokio::sync::oneshot;

use super::{ServiceCommand, Shared};

/// Every route of the listener. With a token configured, every route but `/healthz`
/// and `/readyz` (probes carry no secret, and they tell nothing but readiness) asks for
/// `Authorization: Bearer <token>`.
pub fn router(shared: Arc<Shared>) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/conflicts/{id}/resolve", post(resolve_conflict))
        .route_layer(middleware::from_fn_with_state(shared.clone(), bearer));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .with_state(shared)
}

async fn bearer(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some(token) = &shared.token else {
        return next.run(request).await;
    };
    let given = (request.headers().get(header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if same(given.trim().as_bytes(), token.expose_secret().as_bytes()) => {
            next.run(request).await
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "send the [service] token as `Authorization: Bearer <token>`\n",
        )
            .into_response(),
    }
}

/// Compares in time independent of where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let not_ready = shared.not_ready();
    if not_ready.is_empty() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let text = format!("not ready: {}\n", not_ready.join("; "));
    (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

/// The body of `POST /conflicts/{id}/resolve`: `{"take": "contact"}`,
/// `{"take": "account"}` or `{"take": "value", "value": "..."}` (`""` clears).
#[derive(Debug, Deserialize)]
#[serde(tag = "take", rename_all = "snake_case", deny_unknown_fields)]
enum ResolveBody {
    Contact,
    Account,
    Value { value: String },
}

async fn resolve_conflict(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<i64>,
    Json(body): Json<ResolveBody>,
) -> Response {
    let take = match body {
        ResolveBody::Contact => Take::Contact,
        ResolveBody::Account => Take::Account,
        ResolveBody::Value { value } => Take::Value(value),
    };
    let (reply, answer) = oneshot::channel();
    let command = ServiceCommand::ResolveConflict { id, take, reply };
    if shared.commands.send(command).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response();
    }
    match answer.await {
        Ok(Ok(resolved)) => (StatusCode::OK, Json(resolved)).into_response(),
        Ok(Err(super::CommandError::UnknownConflict(message))) => {
            (StatusCode::NOT_FOUND, Json(json!({ "error": message }))).into_response()
        }
        Ok(Err(super::CommandError::Failed(message))) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": message })),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret-token", b"secret-token"));
        assert!(!same(b"secret-token", b"secret-tokex"));
        assert!(!same(b"secret", b"secret-token"));
    }
}
