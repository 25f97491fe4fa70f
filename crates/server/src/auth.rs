//! Authentication: Argon2 password hashes, random bearer tokens stored only as SHA-256 digests,
//! and the extractors that admit an administrator or an enrolled workstation.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use rand::RngCore;
use sha2::{Digest, Sha256};
use upkeep_protocol::codes;

use crate::AppState;
use crate::error::ApiError;

pub const ADMIN_TOKEN_PREFIX: &str = "upk_";
pub const DEVICE_TOKEN_PREFIX: &str = "upd_";
pub const ENROLL_TOKEN_PREFIX: &str = "upe_";

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

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// A signed-in administrator; every admin route takes one and scopes its queries to
/// `organization_id`.
#[derive(Debug, Clone)]
pub struct Admin {
    pub user: String,
    pub organization_id: i64,
    pub role: String,
}

impl Admin {
    /// Routes that change anything require the `admin` role.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.role == "admin" {
            Ok(())
        } else {
            Err(ApiError::client(
                StatusCode::FORBIDDEN,
                codes::FORBIDDEN,
                None,
                format!("user `{}` has role `{}`; this needs `admin`", self.user, self.role),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)
            .ok_or_else(|| ApiError::unauthorized("missing bearer token").with_hint("sign in with `upkeep login`"))?;
        if !token.starts_with(ADMIN_TOKEN_PREFIX) {
            return Err(ApiError::unauthorized("this is not an admin token").with_hint("sign in with `upkeep login`"));
        }
        let user = state.db.user_for_token(&token_hash(token)).await?;
        let user = user.ok_or_else(|| {
            ApiError::unauthorized("invalid or expired token").with_hint("sign in again with `upkeep login`")
        })?;
        Ok(Admin {
            user: user.name,
            organization_id: user.organization_id,
            role: user.role,
        })
    }
}

/// An enrolled workstation, identified by its device token.
#[derive(Debug, Clone)]
pub struct Device {
    pub workstation_id: String,
    pub organization_id: i64,
}

impl FromRequestParts<AppState> for Device {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(|| ApiError::unauthorized("missing device token"))?;
        let found = if token.starts_with(DEVICE_TOKEN_PREFIX) {
            state.db.workstation_for_token(&token_hash(token)).await?
        } else {
            None
        };
        let (workstation_id, organization_id) = found.ok_or_else(|| {
            ApiError::unauthorized("unknown device token")
                .with_hint("enroll this workstation again with `upkeep-agent enroll`")
        })?;
        Ok(Device {
            workstation_id,
            organization_id,
        })
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
