//! Signing in and out, the user's own password, and the users page.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use cookie::{Cookie, SameSite};
use maud::html;
use serde::Deserialize;
use upkeep_protocol as proto;

use super::{ConsoleError, ConsoleForm, PageResult, bare_page, csrf_field, over_tls, page, see_other, when};
use crate::AppState;
use crate::admin_api::{self, ApiJson};
use crate::auth::{self, Admin, Role};
use crate::db;
use crate::error::ApiError;

/// Double-submit cookie for the sign-in form, which has no session yet to hold a token.
const LOGIN_COOKIE: &str = "upkeep_login";

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
}

/// Only paths on this server: never `//host` or `https://…`, so sign-in cannot bounce elsewhere.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/".to_owned(),
    }
}

fn set_cookie(response: &mut Response, cookie: Cookie<'_>) {
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn cookie<'a>(name: &'a str, value: String, secure: bool, max_age_s: i64) -> Cookie<'a> {
    Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(max_age_s))
        .build()
}

pub(crate) async fn login_page(headers: HeaderMap, Query(query): Query<LoginQuery>) -> Response {
    login_form(&headers, query.next.as_deref(), None)
}

fn login_form(headers: &HeaderMap, next: Option<&str>, problem: Option<&str>) -> Response {
    let token = auth::new_token("");
    let mut response = bare_page(
        "Sign in — upkeep",
        html! {
            h1 { "Sign in to upkeep" }
            @if let Some(problem) = problem { div.error role="alert" { p { (problem) } } }
            form.stack method="post" action="/login" {
                input type="hidden" name="csrf" value=(token);
                input type="hidden" name="next" value=(safe_next(next));
                label for="user" { "User name" }
                input id="user" name="user" autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input id="password" name="password" type="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
            p.muted { "Looking for installers? See the " a href="/downloads" { "download page" } "." }
        },
    );
    set_cookie(&mut response, cookie(LOGIN_COOKIE, token, over_tls(headers), 3600));
    response
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    user: String,
    password: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

pub(crate) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    ConsoleForm(form): ConsoleForm<LoginForm>,
) -> PageResult {
    let expected = auth::cookie_value(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !auth::same_secret(&expected, &form.csrf) {
        return Err(ApiError::client(
            axum::http::StatusCode::FORBIDDEN,
            upkeep_protocol::codes::CSRF_FAILED,
            Some("csrf"),
            "the sign-in form's security token is missing or stale",
        )
        .with_hint("open the sign-in page again")
        .into());
    }
    let user = match admin_api::check_credentials(&state, &form.user, &form.password).await {
        Ok(user) => user,
        Err(ApiError::Client { message, .. }) => {
            let mut response = login_form(&headers, form.next.as_deref(), Some(&message));
            *response.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
            return Ok(response);
        }
        Err(other) => return Err(other.into()),
    };
    let token = auth::new_token(auth::SESSION_PREFIX);
    let csrf = auth::new_token("");
    state
        .db
        .create_session(
            &auth::token_hash(&token),
            user.id,
            user.organization_id,
            &csrf,
            db::now_ms() + auth::SESSION_TTL_MS,
        )
        .await?;
    admin_api::record_login(&state, &user, "console").await?;
    let mut response = see_other(&safe_next(form.next.as_deref()));
    let secure = over_tls(&headers);
    set_cookie(
        &mut response,
        cookie(auth::SESSION_COOKIE, token, secure, auth::SESSION_TTL_MS / 1000),
    );
    set_cookie(&mut response, cookie(LOGIN_COOKIE, String::new(), secure, 0));
    Ok(response)
}

pub(crate) async fn logout(State(state): State<AppState>, headers: HeaderMap, admin: Admin) -> PageResult {
    if let Some(session) = &admin.session {
        state.db.delete_session(&session.token_hash).await?;
    }
    let mut response = see_other("/login");
    set_cookie(
        &mut response,
        cookie(auth::SESSION_COOKIE, String::new(), over_tls(&headers), 0),
    );
    Ok(response)
}

#[derive(Deserialize)]
pub(crate) struct AccountQuery {
    changed: Option<String>,
}

pub(crate) async fn account_page(admin: Admin, Query(query): Query<AccountQuery>) -> Response {
    page(
        &admin,
        "/account",
        "Your account",
        html! {
            p { "Signed in as " strong { (admin.user) } " with role " strong { (admin.role.as_str()) } "." }
            @if query.changed.is_some() {
                p.notice role="status" { "Your password was changed. Other sessions and API tokens were signed out." }
            }
            h2 { "Change password" }
            form.stack method="post" action="/account/password" {
                (csrf_field(&admin))
                label for="current" { "Current password" }
                input id="current" name="current" type="password" autocomplete="current-password" required;
                label for="new" { "New password (at least " (admin_api::MIN_PASSWORD_CHARS) " characters)" }
                input id="new" name="new" type="password" autocomplete="new-password" required minlength=(admin_api::MIN_PASSWORD_CHARS);
                label for="confirm" { "New password again" }
                input id="confirm" name="confirm" type="password" autocomplete="new-password" required;
                button type="submit" { "Change password" }
            }
        },
    )
}

#[derive(Deserialize)]
pub(crate) struct PasswordForm {
    current: String,
    new: String,
    confirm: String,
}

pub(crate) async fn change_password(
    State(state): State<AppState>,
    admin: Admin,
    ConsoleForm(form): ConsoleForm<PasswordForm>,
) -> PageResult {
    if form.new != form.confirm {
        return Err(ApiError::bad_request(
            upkeep_protocol::codes::INVALID_FIELD,
            "confirm",
            "the two new passwords differ",
        )
        .into());
    }
    admin_api::change_password(
        State(state),
        admin,
        ApiJson(proto::PasswordChange {
            current: form.current,
            new: form.new,
        }),
    )
    .await?;
    Ok(see_other("/account?changed=1"))
}

pub(crate) async fn users_page(State(state): State<AppState>, admin: Admin) -> PageResult {
    let users = state.db.list_users(admin.organization_id).await?;
    Ok(page(
        &admin,
        "/users",
        "Users",
        html! {
            table {
                caption { "Users of this organization" }
                thead { tr { th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Created" } } }
                tbody {
                    @for user in &users {
                        tr { td { (user.name) } td { (user.role.as_str()) } td { (when(&user.created_at)) } }
                    }
                }
            }
            h2 { "Add a user" }
            p.muted { "admin: everything, users included · release_manager: products, releases, rollouts · viewer: read only" }
            form.stack method="post" action="/users" {
                (csrf_field(&admin))
                label for="name" { "Name" }
                input id="name" name="name" required autocomplete="off";
                label for="role" { "Role" }
                select id="role" name="role" {
                    @for role in Role::ALL { option value=(role.as_str()) selected[role == Role::Viewer] { (role.as_str()) } }
                }
                label for="password" { "Password (at least " (admin_api::MIN_PASSWORD_CHARS) " characters)" }
                input id="password" name="password" type="password" autocomplete="new-password" required;
                button type="submit" { "Add user" }
            }
        },
    ))
}

#[derive(Deserialize)]
pub(crate) struct UserForm {
    name: String,
    role: String,
    password: String,
}

pub(crate) async fn create_user(
    State(state): State<AppState>,
    admin: Admin,
    ConsoleForm(form): ConsoleForm<UserForm>,
) -> PageResult {
    let role = Role::parse(&form.role).ok_or_else(|| {
        ConsoleError::from(ApiError::bad_request(
            upkeep_protocol::codes::INVALID_FIELD,
            "role",
            "role is admin, release_manager or viewer",
        ))
    })?;
    let _ = admin_api::create_user(
        State(state),
        admin,
        ApiJson(proto::UserCreate {
            name: form.name.trim().to_owned(),
            role,
            password: form.password,
        }),
    )
    .await?;
    Ok(see_other("/users"))
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn sign_in_only_returns_to_this_server() {
        assert_eq!(safe_next(Some("/rollouts/3")), "/rollouts/3");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
