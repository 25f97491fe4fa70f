//! The route table: every HTTP route of the server is registered here with who may call it, and
//! the table's guard enforces that before the handler runs. The same table is readable as data
//! ([`table`]) so a test can walk every route and check that the roles hold.
//!
//! Invariant: no route is added to the router except through [`Table::route`].

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::handler::Handler;
use axum::http::{Method, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, patch, post};
use axum::{Router, body::Body};
use upkeep_protocol::codes;

use crate::AppState;
use crate::auth::{self, Role};
use crate::error::ApiError;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health, sign-in, TUF metadata, the public download page.
    Public,
    /// An enrolled workstation (its device token, checked by the handler's extractor).
    Device,
    /// Any signed-in user acting on their own session or account (sign-out, password change).
    SelfService,
    /// A signed-in user with at least this role.
    Role(Role),
}

/// Where a route's answers go: scripts get JSON errors, people get pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Api,
    Console,
}

/// How large a request body a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLimit {
    /// axum's default (2 MiB) for whatever the handler extracts.
    Default,
    /// Uploads: streamed by the handler up to the server's `max_upload_bytes`.
    Upload,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: Method,
    /// With `{name}` placeholders, as axum writes them.
    pub path: String,
    pub access: Access,
    pub surface: Surface,
}

impl RouteInfo {
    /// GET (and HEAD) only read; everything else may change something.
    pub fn changes_state(&self) -> bool {
        self.method != Method::GET
    }
}

/// Builds the router and the list of routes together, so the list is the router.
pub struct Table {
    state: Option<AppState>,
    router: Router<AppState>,
    routes: Vec<RouteInfo>,
    prefix: &'static str,
    surface: Surface,
}

impl Table {
    fn new(state: Option<AppState>) -> Self {
        Table {
            state,
            router: Router::new(),
            routes: Vec::new(),
            prefix: "",
            surface: Surface::Api,
        }
    }

    /// Routes added from here on are under `prefix` and answer as `surface`.
    pub fn section(&mut self, prefix: &'static str, surface: Surface) -> &mut Self {
        self.prefix = prefix;
        self.surface = surface;
        self
    }

    pub fn route<H, T>(&mut self, method: Method, path: &str, access: Access, handler: H) -> &mut Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.route_with(method, path, access, BodyLimit::Default, handler)
    }

    pub fn route_with<H, T>(
        &mut self,
        method: Method,
        path: &str,
        access: Access,
        limit: BodyLimit,
        handler: H,
    ) -> &mut Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let full = format!("{}{}", self.prefix, path);
        self.routes.push(RouteInfo {
            method: method.clone(),
            path: full.clone(),
            access,
            surface: self.surface,
        });
        let Some(state) = &self.state else {
            return self;
        };
        let mut method_router: MethodRouter<AppState> = if method == Method::GET {
            get(handler)
        } else if method == Method::PATCH {
            patch(handler)
        } else {
            post(handler)
        };
        if limit == BodyLimit::Upload {
            // The handler streams the body and enforces `max_upload_bytes`; this bound only stops
            // a body that never reaches a multipart boundary from being buffered without end.
            let bound =
                usize::try_from(state.settings.max_upload_bytes.saturating_add(4 * 1024 * 1024)).unwrap_or(usize::MAX);
            // An upload takes as long as the network needs, but one that stops sending midway
            // is given up after the read timeout of silence (the handler answers 408).
            let idle = tower_http::timeout::RequestBodyTimeoutLayer::new(state.settings.request_read_timeout);
            method_router = method_router
                .layer::<_, std::convert::Infallible>(tower_http::limit::RequestBodyLimitLayer::new(bound))
                .layer::<_, std::convert::Infallible>(idle)
                .layer(DefaultBodyLimit::disable());
        }
        if matches!(access, Access::SelfService | Access::Role(_)) {
            let guard = Guard {
                app: state.clone(),
                access,
                surface: self.surface,
            };
            method_router = method_router.route_layer(from_fn_with_state(guard, guard_request));
        }
        self.router = std::mem::take(&mut self.router).route(&full, method_router);
        self
    }
}

/// Every route the server answers, in registration order.
pub fn table() -> Vec<RouteInfo> {
    let mut table = Table::new(None);
    register(&mut table);
    table.routes
}

pub(crate) fn router(state: AppState) -> Router<AppState> {
    let mut table = Table::new(Some(state));
    register(&mut table);
    table.router
}

fn register(table: &mut Table) {
    table
        .section("", Surface::Api)
        .route(Method::GET, "/healthz", Access::Public, crate::healthz)
        .route(Method::GET, "/metrics", Access::Public, crate::telemetry::metrics);
    table.section("/api/v1/device", Surface::Api);
    crate::device_api::routes(table);
    table.section("/tuf", Surface::Api);
    crate::tuf::routes(table);
    table.section("/api/v1", Surface::Api);
    crate::admin_api::routes(table);
    table.section("", Surface::Console);
    crate::console::routes(table);
}

#[derive(Clone)]
struct Guard {
    app: AppState,
    access: Access,
    surface: Surface,
}

/// Form bodies are read whole to find the CSRF field; they are small, uploads are multipart.
const MAX_FORM_BYTES: usize = 2 * 1024 * 1024;

async fn guard_request(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    match admit(&guard, request).await {
        Ok(request) => {
            let response = next.run(request).await;
            // Whatever an administrator changes may change a check-in's answer: every server
            // process drops its cached decisions (see `checkin_cache`).
            if method != Method::GET
                && matches!(guard.access, Access::Role(_))
                && let Err(e) = guard.app.checkin_cache.changed(&guard.app.db).await
            {
                tracing::error!(error = %e, "marking cached check-in decisions stale");
            }
            response
        }
        Err((err, body)) => {
            // Read what is left of the refused body first (up to a bound): a client still sending
            // an upload when the connection closes gets a reset instead of this answer.
            let _ = axum::body::to_bytes(body, MAX_FORM_BYTES).await;
            match guard.surface {
                Surface::Api => err.into_response(),
                Surface::Console => crate::console::refused(err, &method, &uri),
            }
        }
    }
}

/// Authenticates, checks the role, and for a console session checks the CSRF token of anything
/// that may change state (cookies ride along on cross-site requests; the token does not).
/// A refusal comes back with the body, not yet read to its end.
async fn admit(guard: &Guard, request: Request) -> Result<Request, (ApiError, Body)> {
    let (mut parts, body) = request.into_parts();
    let admin = match caller(guard, &parts).await {
        Ok(admin) => admin,
        Err(err) => return Err((err, body)),
    };
    let mut body = body;
    if let Some(session) = &admin.session
        && parts.method != Method::GET
    {
        let (token, rebuilt) = csrf_token(&parts, body).await.map_err(|err| (err, Body::empty()))?;
        body = rebuilt;
        if !token.is_some_and(|t| auth::same_secret(&t, &session.csrf)) {
            let err = ApiError::client(
                StatusCode::FORBIDDEN,
                codes::CSRF_FAILED,
                Some(auth::CSRF_FIELD),
                "the form's security token is missing or stale",
            )
            .with_hint("reload the page and try again");
            return Err((err, body));
        }
    }
    parts.extensions.insert(admin);
    Ok(Request::from_parts(parts, body))
}

/// Who is calling, if they may call this route at all.
async fn caller(guard: &Guard, parts: &axum::http::request::Parts) -> Result<auth::Admin, ApiError> {
    let admin = auth::authenticate(&guard.app, &parts.headers)
        .await?
        .ok_or_else(|| match guard.surface {
            Surface::Api => ApiError::unauthorized("missing bearer token").with_hint("sign in with `upkeep login`"),
            Surface::Console => ApiError::unauthorized("sign in to continue"),
        })?;
    if let Access::Role(role) = guard.access {
        admin.require(role)?;
    }
    Ok(admin)
}

/// The CSRF token of a request: the `X-CSRF-Token` header (scripts), the `csrf` field of a
/// URL-encoded form, or the `csrf` query parameter of a multipart upload form (its body is
/// streamed to disk, so it is not read here). Returns the body, put back together.
async fn csrf_token(parts: &axum::http::request::Parts, body: Body) -> Result<(Option<String>, Body), ApiError> {
    if let Some(value) = parts.headers.get(auth::CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        return Ok((Some(value.to_owned()), body));
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("multipart/form-data") {
        let token = parts
            .uri
            .query()
            .and_then(|q| form_field(q.as_bytes(), auth::CSRF_FIELD));
        return Ok((token, body));
    }
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES).await.map_err(|_| {
            ApiError::client(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::INVALID_FIELD,
                None,
                "the form is larger than 2 MiB",
            )
        })?;
        let token = form_field(&bytes, auth::CSRF_FIELD);
        return Ok((token, Body::from(bytes)));
    }
    Ok((None, body))
}

fn form_field(encoded: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(encoded)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_listed_once() {
        let routes = table();
        let mut seen = std::collections::BTreeSet::new();
        for r in &routes {
            assert!(
                seen.insert((r.method.clone(), r.path.clone())),
                "{} {} twice",
                r.method,
                r.path
            );
        }
        assert!(
            routes
                .iter()
                .any(|r| r.path == "/api/v1/products" && r.method == Method::POST)
        );
        assert!(
            routes
                .iter()
                .any(|r| r.path == "/downloads" && r.access == Access::Public)
        );
    }

    #[test]
    fn nothing_that_changes_state_is_open_to_viewers() {
        for r in table() {
            if r.changes_state() {
                assert_ne!(r.access, Access::Role(Role::Viewer), "{} {}", r.method, r.path);
            }
        }
    }

    #[test]
    fn csrf_field_is_read_from_forms() {
        assert_eq!(form_field(b"a=1&csrf=x%2By&b=2", "csrf").as_deref(), Some("x+y"));
        assert_eq!(form_field(b"a=1", "csrf"), None);
    }
}
