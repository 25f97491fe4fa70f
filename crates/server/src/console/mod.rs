//! The web console at `/` and the public download page at `/downloads`: server-rendered HTML
//! (maud, auto-escaped), a stylesheet and a small script embedded in the binary, no front-end
//! build. Every page reads without JavaScript; the script only adds upload progress.
//!
//! Forms post to console routes that call the same handlers as the REST API, so a rule is
//! written once. Sessions are cookies (HttpOnly, SameSite=Strict, Secure behind TLS) whose secret
//! is stored hashed; every state-changing form carries the session's CSRF token, checked by the
//! route table's guard before the handler runs.

mod account;
mod charts;
mod downloads;
mod fleet;
mod markdown;
mod releases;
mod rollouts;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};

use crate::auth::{Admin, Role};
use crate::error::ApiError;
use crate::routes::{Access, BodyLimit, Table};

pub(crate) fn routes(t: &mut Table) {
    use Access::{Public, Role as R, SelfService};
    use Method as M;
    use Role::{Admin as A, ReleaseManager as RM, Viewer as V};
    t.route(M::GET, "/assets/console.css", Public, assets_css)
        .route(M::GET, "/assets/console.js", Public, assets_js)
        .route(M::GET, "/login", Public, account::login_page)
        .route(M::POST, "/login", Public, account::login)
        .route(M::POST, "/logout", SelfService, account::logout)
        .route(M::GET, "/account", R(V), account::account_page)
        .route(M::POST, "/account/password", SelfService, account::change_password)
        .route(M::GET, "/users", R(A), account::users_page)
        .route(M::POST, "/users", R(A), account::create_user)
        .route(M::GET, "/", R(V), fleet::dashboard)
        .route(M::GET, "/products", R(V), releases::products_page)
        .route(M::POST, "/products", R(RM), releases::create_product)
        .route(M::GET, "/products/{product}", R(V), releases::product_page)
        .route(M::POST, "/products/{product}/public", R(RM), releases::set_public)
        .route_with(
            M::POST,
            "/products/{product}/releases",
            R(RM),
            BodyLimit::Upload,
            releases::upload,
        )
        .route(
            M::GET,
            "/products/{product}/releases/{version}",
            R(V),
            releases::release_page,
        )
        .route(
            M::POST,
            "/products/{product}/releases/{version}/{decision}",
            R(RM),
            releases::decide,
        )
        .route(M::GET, "/components", R(V), releases::components_page)
        .route(
            M::POST,
            "/components/{product}/install",
            R(RM),
            releases::install_component,
        )
        .route(M::GET, "/rollouts", R(V), rollouts::rollouts_page)
        .route(M::GET, "/rollouts/new", R(V), rollouts::new_rollout_page)
        .route(M::POST, "/rollouts", R(RM), rollouts::create_rollout)
        .route(M::GET, "/rollouts/{id}", R(V), rollouts::report_page)
        .route(M::POST, "/rollouts/{id}/{action}", R(RM), rollouts::rollout_action)
        .route(M::GET, "/workstations", R(V), fleet::workstations_page)
        .route(M::GET, "/workstations/{id}", R(V), fleet::workstation_page)
        .route(M::GET, "/events", R(V), fleet::events_page)
        .route(M::GET, "/events.csv", R(V), fleet::events_csv)
        .route(M::GET, "/notification-groups", R(V), fleet::groups_page)
        .route(M::POST, "/notification-groups", R(A), fleet::create_group)
        .route(M::GET, "/downloads", Public, downloads::downloads_page)
        .route(M::GET, "/downloads/{sha256}/{filename}", Public, downloads::download);
}

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

async fn assets_css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn assets_js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// A console handler's failure, shown as a page (the API shows the same error as JSON).
pub(crate) struct ConsoleError(ApiError);

impl<E: Into<ApiError>> From<E> for ConsoleError {
    fn from(err: E) -> Self {
        ConsoleError(err.into())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        error_page(self.0)
    }
}

pub(crate) type PageResult = Result<Response, ConsoleError>;

/// A URL-encoded form whose rejections come out as a page naming the problem.
pub(crate) struct ConsoleForm<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for ConsoleForm<T> {
    type Rejection = ConsoleError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(value)) => Ok(ConsoleForm(value)),
            Err(rejection) => Err(ApiError::client(
                rejection.status(),
                upkeep_protocol::codes::INVALID_FIELD,
                None,
                rejection.body_text(),
            )
            .into()),
        }
    }
}

/// What the route guard answers a person: to sign in (for a page they may read once signed in),
/// or why not.
pub fn refused(err: ApiError, method: &Method, uri: &Uri) -> Response {
    let unauthorized = matches!(&err, ApiError::Client { status, .. } if *status == StatusCode::UNAUTHORIZED);
    if unauthorized && method == Method::GET {
        let next = uri.path_and_query().map_or("/", |p| p.as_str());
        let target = format!(
            "/login?next={}",
            url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
        );
        return Redirect::to(&target).into_response();
    }
    error_page(err)
}

fn error_page(err: ApiError) -> Response {
    let (status, body) = err.into_parts();
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head { (head_tags(&format!("{} — upkeep", status.canonical_reason().unwrap_or("Error")))) }
            body {
                main.narrow {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    div.error role="alert" {
                        p { (body.message) }
                        @if let Some(field) = &body.field { p { "Field: " code { (field) } } }
                        @if let Some(hint) = &body.hint { p { (hint) } }
                        p.muted { "Error code: " code.code { (body.code) } }
                    }
                    p { a href="/" { "Back to the console" } " · use your browser's Back button to correct the form" }
                }
            }
        }
    };
    with_headers(status, markup)
}

fn head_tags(title: &str) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) }
        link rel="stylesheet" href="/assets/console.css";
        script src="/assets/console.js" defer {}
    }
}

/// A page with the security headers every console answer carries.
fn with_headers(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Navigation entries: (path, label, who sees it).
const NAV: &[(&str, &str, Role)] = &[
    ("/", "Dashboard", Role::Viewer),
    ("/products", "Products", Role::Viewer),
    ("/rollouts", "Rollouts", Role::Viewer),
    ("/workstations", "Workstations", Role::Viewer),
    ("/events", "Events", Role::Viewer),
    ("/notification-groups", "Notifications", Role::Viewer),
    ("/components", "Server components", Role::Viewer),
    ("/users", "Users", Role::Admin),
];

/// A signed-in page: header with navigation and the user's menu, then `content`.
pub(crate) fn page(admin: &Admin, active: &str, title: &str, content: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head { (head_tags(&format!("{title} — upkeep"))) }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "upkeep" }
                    nav aria-label="Main" {
                        ul {
                            @for (path, label, role) in NAV {
                                @if admin.can(*role) {
                                    li {
                                        @if *path == active {
                                            a href=(path) aria-current="page" { (label) }
                                        } @else {
                                            a href=(path) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    div.user {
                        a href="/account" { (admin.user) } " "
                        span.role { (admin.role.as_str()) }
                        form.inline method="post" action="/logout" {
                            (csrf_field(admin))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (content)
                }
            }
        }
    };
    with_headers(StatusCode::OK, markup)
}

/// A page without the signed-in frame (sign-in, public downloads).
fn bare_page(title: &str, content: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head { (head_tags(title)) }
            body {
                a.skip href="#main" { "Skip to content" }
                main id="main" .narrow { (content) }
            }
        }
    };
    with_headers(StatusCode::OK, markup)
}

/// The hidden CSRF field every state-changing form carries.
pub(crate) fn csrf_field(admin: &Admin) -> Markup {
    html! {
        @if let Some(session) = &admin.session {
            input type="hidden" name="csrf" value=(session.csrf);
        }
    }
}

pub(crate) fn csrf_value(admin: &Admin) -> &str {
    admin.session.as_ref().map_or("", |s| s.csrf.as_str())
}

/// After a form: show the page the change is visible on (303, so a reload does not resend).
pub(crate) fn see_other(path: &str) -> Response {
    Redirect::to(path).into_response()
}

/// Whether the request reached us over TLS (directly or through a proxy that says so).
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// Percent-encodes one path segment.
pub(crate) fn seg(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `1.5 MB`-style sizes.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Stored times are RFC 3339 UTC with milliseconds; people read `2026-11-23 14:05 UTC`.
pub(crate) fn when(rfc3339: &str) -> String {
    rfc3339
        .parse::<jiff::Timestamp>()
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| rfc3339.to_owned())
}

pub(crate) fn when_ms(ms: i64) -> String {
    when(&crate::db::format_time(ms))
}

/// A status word as a badge: the word itself carries the meaning; colour only repeats it.
pub(crate) fn badge(status: &str) -> Markup {
    let tone = match status {
        "approved" | "installed" | "completed" | "active" | "up to date" => "ok",
        "disapproved" | "failed" | "rolled_back" | "cancelled" | "blocked" => "bad",
        "paused" | "pending" | "scheduled" | "update available" => "warn",
        _ => "info",
    };
    html! { span class={ "badge " (tone) } { (status.replace('_', " ")) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_size(512), "512 bytes");
        assert_eq!(human_size(1_500_000), "1.5 MB");
        assert_eq!(human_size(200_000_000), "200.0 MB");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        assert_eq!(seg("1.0.0+build"), "1.0.0%2Bbuild");
    }
}
