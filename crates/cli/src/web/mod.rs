//! The status page: server-rendered HTML on the service's HTTP listener, without
//! JavaScript. `/` shows the last runs, what is parked and why, what waits for the next
//! run and the open conflicts with buttons to settle them; `/links?id=` finds the links
//! of a contact or account id; `/log?contact=` is a contact's interaction log (R11).
//!
//! [`routes`] gives a router to merge into the listener's. The page reads the state
//! through a read-only connection of its own ([`Access::read`]), so it never waits for
//! a run; a decision goes through [`Access::settle`] to whoever holds the state.
//!
//! Access ([`guard`]): without a token only loopback host names are answered (a page
//! served to `evil.example` resolving to 127.0.0.1 could otherwise read it and post
//! with its CSRF token: DNS rebinding); with a token every request must carry it, as a
//! bearer header, or the cookie set when it was given once as `?token=` (or typed into
//! the form a request without it gets). Every POST carries the process's CSRF token
//! in a hidden field.

mod guard;
pub(crate) mod render;
mod service;

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use secrecy::SecretString;
use serde::Deserialize;
use tandem_engine::Take;
use tandem_state::StateStore;

use guard::Guard;
use render::{Kinds, Notice, Overview};
pub(crate) use service::service_routes;

/// At most this many interaction log entries on a page, the newest.
const LOG_LIMIT: usize = 200;

/// What the page needs from the process that serves it.
#[async_trait]
pub(crate) trait Access: Send + Sync + 'static {
    /// Opens the state to read it; must not wait for a run.
    fn read(&self) -> anyhow::Result<Box<dyn StateStore>>;

    /// Records the decision for the open conflict `id`, as `tandem conflicts resolve`
    /// does; the next run writes it to both sides.
    async fn settle(&self, id: i64, take: Take) -> Result<Settled, SettleError>;

    /// Why the service is not ready (`/readyz`); empty when it is.
    fn not_ready(&self) -> Vec<String>;
}

/// How a decision was taken in.
#[derive(Debug)]
pub(crate) enum Settled {
    /// Recorded in the state.
    Recorded,
    /// Handed to the run loop, which records it when the run in flight ends.
    Queued,
}

/// Why a decision was not taken in.
#[derive(Debug)]
pub(crate) enum SettleError {
    /// No open conflict has that id.
    Unknown(i64),
    /// The state could not record it; the message says why and what to do.
    Failed(String),
}

impl std::fmt::Display for SettleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettleError::Unknown(id) => write!(
                f,
                "there is no open conflict with id {id}; it may have been settled already"
            ),
            SettleError::Failed(message) => f.write_str(message),
        }
    }
}

/// Everything the handlers share.
pub(crate) struct Web {
    access: Arc<dyn Access>,
    kinds: Kinds,
    guard: Guard,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web")
            .field("kinds", &self.kinds)
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl Web {
    /// # Errors
    /// When the operating system gives no random bytes for the CSRF token.
    pub(crate) fn new(
        access: Arc<dyn Access>,
        kinds: Kinds,
        token: Option<SecretString>,
    ) -> anyhow::Result<Web> {
        let guard = Guard::new(token)
            .map_err(|e| anyhow::anyhow!("cannot make the status page's CSRF token: {e}"))?;
        Ok(Web {
            access,
            kinds,
            guard,
        })
    }
}

/// The page's routes (`/`, `/links`, `/log`, `/conflicts/{id}/settle`), behind the
/// guard, for any router state.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(web: Arc<Web>) -> Router<S> {
    Router::new()
        .route("/", get(overview))
        .route("/links", get(links))
        .route("/log", get(log))
        .route("/conflicts/{id}/settle", post(settle))
        .route_layer(axum::middleware::from_fn_with_state(
            web.clone(),
            guard::check,
        ))
        .with_state(web)
}

/// An HTML page with its status.
fn page(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

fn failed(status: StatusCode, title: &str, message: &str) -> Response {
    page(status, render::error(title, message))
}

/// Runs a read of the state on the blocking pool.
async fn read<T: Send + 'static>(
    web: &Arc<Web>,
    f: impl FnOnce(&dyn StateStore) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Response> {
    let web = web.clone();
    let result = tokio::task::spawn_blocking(move || {
        let state = web.access.read()?;
        f(state.as_ref())
    })
    .await;
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(failed(
            StatusCode::SERVICE_UNAVAILABLE,
            "Cannot read the state",
            &format!("{e:#}"),
        )),
        Err(e) => Err(failed(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot read the state",
            &e.to_string(),
        )),
    }
}

fn load_overview(state: &dyn StateStore) -> anyhow::Result<Overview> {
    let pending = tandem_engine::Pending::load(state)?;
    let (parked_creates, pending_creates) = pending.creates.into_iter().partition(|p| p.parked);
    let (parked_refused, refused) = pending.refused.into_iter().partition(|p| p.parked);
    let (parked_pending_links, pending_links) = pending.links.into_iter().partition(|p| p.parked);
    Ok(Overview {
        state_path: state.location(),
        state_exists: state.exists(),
        runs: state.runs(10)?,
        parked_links: state.parked_links()?,
        parked_creates,
        parked_refused,
        parked_pending_links,
        refused,
        pending_links,
        pending_creates,
        conflicts: state.conflicts(true)?,
        not_ready: Vec::new(),
    })
}

#[derive(Debug, Deserialize)]
struct OverviewQuery {
    /// The conflict just settled, to say so.
    settled: Option<i64>,
    /// The conflict handed to the run loop, to say so.
    queued: Option<i64>,
}

async fn overview(State(web): State<Arc<Web>>, Query(q): Query<OverviewQuery>) -> Response {
    let mut overview = match read(&web, load_overview).await {
        Ok(o) => o,
        Err(response) => return response,
    };
    overview.not_ready = web.access.not_ready();
    let notice = match (q.settled, q.queued) {
        (Some(id), _) => Some(settled_notice(&overview, &web.kinds, id)),
        (None, Some(id)) => Some(Notice::Done(format!(
            "Conflict {id}: the decision is recorded when the run in flight ends; the next \
             run writes it to both sides."
        ))),
        (None, None) => None,
    };
    page(
        StatusCode::OK,
        render::overview(&overview, &web.kinds, web.guard.csrf(), notice.as_ref()),
    )
}

fn settled_notice(overview: &Overview, kinds: &Kinds, id: i64) -> Notice {
    match overview.conflicts.iter().find(|c| c.id == id) {
        Some(c) => {
            let value = c.resolution.as_ref().map_or_else(
                || "(empty)".to_owned(),
                |v| {
                    if v.is_empty() {
                        "(empty)".to_owned()
                    } else {
                        format!("\"{}\"", v.to_cell())
                    }
                },
            );
            let kind = kinds.of(&c.code);
            Notice::Done(format!(
                "Conflict {id} settled: the next sync writes {value} to {} of contact {} and \
                 {kind} {}, and closes the conflict.",
                c.field, c.contact_id, c.account_id
            ))
        }
        None => Notice::Done(format!(
            "Conflict {id} settled; a sync has written it already."
        )),
    }
}

#[derive(Debug, Deserialize)]
struct LinksQuery {
    #[serde(default)]
    id: String,
}

async fn links(State(web): State<Arc<Web>>, Query(q): Query<LinksQuery>) -> Response {
    let id = q.id.trim().to_owned();
    if id.is_empty() {
        return Redirect::to("/#links").into_response();
    }
    let codes: Vec<String> = web.kinds.codes().map(str::to_owned).collect();
    let wanted = id.clone();
    let found = read(&web, move |state| {
        let mut found = state.links_of_contacts(&[&wanted])?;
        for code in &codes {
            found.extend(state.links_of_accounts(code, &[&wanted])?);
        }
        found.sort_by(|a, b| (&a.code, &a.contact_id).cmp(&(&b.code, &b.contact_id)));
        found.dedup_by(|a, b| a.code == b.code && a.contact_id == b.contact_id);
        Ok(found)
    })
    .await;
    match found {
        Ok(found) => page(StatusCode::OK, render::links(&id, &found, &web.kinds)),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    #[serde(default)]
    contact: String,
}

async fn log(State(web): State<Arc<Web>>, Query(q): Query<LogQuery>) -> Response {
    let contact = q.contact.trim().to_owned();
    if contact.is_empty() {
        return Redirect::to("/#log").into_response();
    }
    let wanted = contact.clone();
    match read(&web, move |state| {
        Ok(state.interactions(&wanted, LOG_LIMIT)?)
    })
    .await
    {
        Ok(entries) => page(StatusCode::OK, render::log(&contact, &entries)),
        Err(response) => response,
    }
}

/// Which value a settle form asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Choice {
    Contact,
    Account,
    Value,
}

#[derive(Debug, Deserialize)]
struct SettleForm {
    csrf: String,
    take: Choice,
    #[serde(default)]
    value: String,
}

async fn settle(
    State(web): State<Arc<Web>>,
    Path(id): Path<i64>,
    Form(form): Form<SettleForm>,
) -> Response {
    if !web.guard.csrf_matches(&form.csrf) {
        return failed(
            StatusCode::FORBIDDEN,
            "Not settled",
            "The form's CSRF token is not this process's: reload the status page (the \
             service may have restarted) and settle again.",
        );
    }
    let take = match form.take {
        Choice::Contact => Take::Contact,
        Choice::Account => Take::Account,
        Choice::Value => Take::Value(form.value),
    };
    match web.access.settle(id, take).await {
        // 303: the browser GETs the overview, so a reload does not post again.
        Ok(Settled::Recorded) => Redirect::to(&format!("/?settled={id}")).into_response(),
        Ok(Settled::Queued) => Redirect::to(&format!("/?queued={id}")).into_response(),
        Err(e @ SettleError::Unknown(_)) => {
            failed(StatusCode::NOT_FOUND, "Not settled", &e.to_string())
        }
        Err(e @ SettleError::Failed(_)) => {
            failed(StatusCode::CONFLICT, "Not settled", &e.to_string())
        }
    }
}
