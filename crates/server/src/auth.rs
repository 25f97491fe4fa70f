//! Authentication: Argon2 password hashes, random bearer tokens stored only as SHA-256 digests,
//! and the extractors that admit an administrator or an enrolled workstation.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use rand::RngCore;
use sha2::{Digest, Sha256};
pub use upkeep_protocol::Role;

use crate::AppState;
use crate::db::UserRecord;
use crate::error::ApiError;

pub const ADMIN_TOKEN_PREFIX: &str = "upk_";
pub const DEVICE_TOKEN_PREFIX: &str = "upd_";
pub const ENROLL_TOKEN_PREFIX: &str = "upe_";
pub const SESSION_PREFIX: &str = "ups_";

/// The console's session cookie: HttpOnly, SameSite=Strict, Secure behind TLS.
pub const SESSION_COOKIE: &str = "upkeep_session";
/// Where scripts send the session's CSRF token; forms send it as the `csrf` field.
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const CSRF_FIELD: &str = "csrf";
/// How long a console session lives.
pub const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

/// How long an admin session token lives.
pub const ADMIN_TOKEN_TTL_MS: i64 = 30 * 24 * 3600 * 1000;

pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("hashing password: {e}")))
}

pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

/// A new random secret with a prefix that tells what it is for (and makes leaked tokens greppable).
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// Tokens are 256-bit random values, so a plain SHA-256 is a safe at-rest form (unlike passwords).
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn random_password() -> String {
    let mut bytes = [0u8; 18];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// A signed-in administrator; every admin route takes one and scopes its queries to
/// `organization_id`. The route table's guard has already checked the role the route needs.
#[derive(Debug, Clone)]
pub struct Admin {
    pub user: String,
    pub user_id: i64,
    pub organization_id: i64,
    pub role: Role,
    /// Set when the request came with the console's session cookie rather than a bearer token.
    pub session: Option<Session>,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub token_hash: String,
    pub csrf: String,
}

impl Admin {
    fn from_record(user: UserRecord, session: Option<Session>) -> Result<Self, ApiError> {
        let role = Role::parse(&user.role).ok_or_else(|| ApiError::Internal(format!("user role `{}`", user.role)))?;
        Ok(Admin {
            user: user.name,
            user_id: user.id,
            organization_id: user.organization_id,
            role,
            session,
        })
    }

    /// At least `role`: `admin` may do what a `release_manager` may, who may do what a `viewer` may.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "user `{}` has role `{}`; this needs `{}`",
                self.user,
                self.role.as_str(),
                role.as_str()
            )))
        }
    }

    pub fn can(&self, role: Role) -> bool {
        self.role >= role
    }
}

/// The value of the console's session cookie, if the request has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, SESSION_COOKIE)
}

pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// Who is asking: a bearer token (CLI, scripts) or the console's session cookie. `None` when the
/// request carries neither; an invalid credential is an error, never a fallback to the other.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Option<Admin>, ApiError> {
    if let Some(token) = bearer(headers) {
        if !token.starts_with(ADMIN_TOKEN_PREFIX) {
            return Err(ApiError::unauthorized("this is not an admin token").with_hint("sign in with `upkeep login`"));
        }
        let user = state.db.user_for_token(&token_hash(token)).await?.ok_or_else(|| {
            ApiError::unauthorized("invalid or expired token").with_hint("sign in again with `upkeep login`")
        })?;
        return Admin::from_record(user, None).map(Some);
    }
    let Some(cookie) = session_cookie(headers) else {
        return Ok(None);
    };
    let hash = token_hash(&cookie);
    let (user, csrf) = state
        .db
        .session_user(&hash)
        .await?
        .ok_or_else(|| ApiError::unauthorized("your session has ended; sign in again"))?;
    Admin::from_record(user, Some(Session { token_hash: hash, csrf })).map(Some)
}

/// Compares secrets without an early exit, so timing tells nothing about how much matched.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(admin) = parts.extensions.get::<Admin>() {
            return Ok(admin.clone());
        }
        authenticate(state, &parts.headers)
            .await?
            .ok_or_else(|| ApiError::unauthorized("missing bearer token").with_hint("sign in with `upkeep login`"))
    }
}

/// An enrolled workstation, identified by its device token.
/// Derefs to the check-in cache's entry (`workstation_id`, `organization_id`, `groups`, …).
#[derive(Clone)]
pub struct Device(pub std::sync::Arc<crate::checkin_cache::CachedDevice>);

impl std::ops::Deref for Device {
    type Target = crate::checkin_cache::CachedDevice;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl FromRequestParts<AppState> for Device {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(|| ApiError::unauthorized("missing device token"))?;
        let found = if token.starts_with(DEVICE_TOKEN_PREFIX) {
            state.checkin_cache.device(&state.db, token).await?
        } else {
            None
        };
        let cached = found.ok_or_else(|| {
            ApiError::unauthorized("unknown device token")
                .with_hint("enroll this workstation again with `upkeep-agent enroll`")
        })?;
        Ok(Device(cached))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &hash));
        assert!(!verify_password("S3cret", &hash));
        assert!(!verify_password("s3cret", "not a hash"));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = new_token(ADMIN_TOKEN_PREFIX);
        let b = new_token(ADMIN_TOKEN_PREFIX);
        assert_ne!(a, b);
        assert!(a.starts_with("upk_") && a.len() == 4 + 64);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
    }
}
