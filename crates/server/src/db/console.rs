//! Storage for the web console and the public download page: browser sessions, users, the
//! dashboard's aggregates and the public products' latest approved releases.

use std::collections::BTreeMap;

use sqlx::Row;
use upkeep_protocol as proto;

use super::{Database, DbError, Result, UserRecord, format_time, now_ms};

/// One artifact offered on `/downloads`.
#[derive(Debug, Clone)]
pub struct PublicDownload {
    pub organization: String,
    pub product: String,
    pub version: String,
    pub notes: String,
    pub artifact: proto::Artifact,
}

/// A server-side component as the "Server components" page shows it.
#[derive(Debug, Clone)]
pub struct ComponentHost {
    pub workstation_id: String,
    pub hostname: String,
    pub installed: Option<String>,
    pub last_checkin_at: Option<i64>,
}

impl Database {
    pub async fn create_session(
        &self,
        token_hash: &str,
        user_id: i64,
        organization_id: i64,
        csrf_token: &str,
        expires_at: i64,
    ) -> Result<()> {
        let now = now_ms();
        // Sessions are short-lived: sweep the expired ones as new ones arrive.
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (token_hash, user_id, organization_id, csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(organization_id)
        .bind(csrf_token)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The user behind a live session, and the session's CSRF token.
    pub async fn session_user(&self, token_hash: &str) -> Result<Option<(UserRecord, String)>> {
        let row = sqlx::query(
            "SELECT u.id, s.organization_id, u.name, u.password_hash, u.role, o.name AS organization, s.csrf_token FROM console_sessions s JOIN users u ON u.id = s.user_id JOIN organizations o ON o.id = s.organization_id WHERE s.token_hash = $1 AND s.expires_at > $2",
        )
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((UserRecord::from_row(&r)?, r.try_get("csrf_token")?)))
            .transpose()
    }

    pub async fn delete_session(&self, token_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets a new password and signs the user out everywhere except `keep_session`.
    pub async fn set_password(&self, user_id: i64, password_hash: &str, keep_session: Option<&str>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(password_hash)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM api_tokens WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM console_sessions WHERE user_id = $1 AND token_hash <> $2")
            .bind(user_id)
            .bind(keep_session.unwrap_or(""))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn create_user(
        &self,
        organization_id: i64,
        name: &str,
        password_hash: &str,
        role: proto::Role,
    ) -> Result<proto::User> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO users (organization_id, name, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(organization_id)
        .bind(name)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(DbError::from_insert)?;
        Ok(proto::User {
            name: name.to_owned(),
            role,
            created_at: format_time(now),
        })
    }

    pub async fn list_users(&self, organization_id: i64) -> Result<Vec<proto::User>> {
        let rows = sqlx::query("SELECT name, role, created_at FROM users WHERE organization_id = $1 ORDER BY name")
            .bind(organization_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let role: String = r.try_get("role")?;
                Ok(proto::User {
                    name: r.try_get("name")?,
                    role: proto::Role::parse(&role).ok_or_else(|| DbError::Corrupt(format!("user role {role}")))?,
                    created_at: format_time(r.try_get("created_at")?),
                })
            })
            .collect()
    }

    /// Returns false when there is no such product.
    pub async fn set_product_public(&self, organization_id: i64, name: &str, public: bool) -> Result<bool> {
        let done = sqlx::query("UPDATE products SET public = $1 WHERE organization_id = $2 AND name = $3")
            .bind(i64::from(public))
            .bind(organization_id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every approved artifact of every public client product, newest release first within a
    /// product; the caller keeps the latest per platform.
    pub async fn public_downloads(&self) -> Result<Vec<PublicDownload>> {
        let rows = sqlx::query(
            "SELECT o.name AS organization, p.name AS product, r.version, r.notes, x.platform, x.filename, x.sha256, x.size, x.format, x.content_sha256, x.content_size \
             FROM products p JOIN organizations o ON o.id = p.organization_id JOIN releases r ON r.product_id = p.id \
             JOIN approvals a ON a.release_id = r.id AND a.organization_id = p.organization_id AND a.state = 'approved' \
             JOIN artifacts x ON x.release_id = r.id \
             WHERE p.public = 1 AND p.kind = 'client' ORDER BY o.name, p.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PublicDownload {
                    organization: r.try_get("organization")?,
                    product: r.try_get("product")?,
                    version: r.try_get("version")?,
                    notes: r.try_get("notes")?,
                    artifact: super::artifact_from_row(r)?,
                })
            })
            .collect()
    }

    /// The size and file name of an artifact anyone may download: one of an approved release
    /// of a public client product.
    pub async fn public_artifact(&self, sha256: &str) -> Result<Option<(u64, String)>> {
        let row = sqlx::query(
            "SELECT x.size, x.filename FROM artifacts x JOIN releases r ON r.id = x.release_id JOIN products p ON p.id = r.product_id \
             JOIN approvals a ON a.release_id = r.id AND a.organization_id = p.organization_id AND a.state = 'approved' \
             WHERE x.sha256 = $1 AND p.public = 1 AND p.kind = 'client' LIMIT 1",
        )
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let size: i64 = r.try_get("size")?;
            let size = u64::try_from(size).map_err(|_| DbError::Corrupt("negative artifact size".into()))?;
            Ok((size, r.try_get("filename")?))
        })
        .transpose()
    }

    pub async fn workstation_count(&self, organization_id: i64) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) AS n FROM workstations WHERE organization_id = $1")
                .bind(organization_id)
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?,
        )
    }

    /// Product → version → how many workstations have it installed.
    pub async fn version_distribution(&self, organization_id: i64) -> Result<BTreeMap<String, BTreeMap<String, i64>>> {
        let rows = sqlx::query(
            "SELECT product, version, COUNT(*) AS n FROM installed_versions WHERE organization_id = $1 GROUP BY product, version",
        )
        .bind(organization_id)
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for r in &rows {
            out.entry(r.try_get("product")?)
                .or_default()
                .insert(r.try_get("version")?, r.try_get("n")?);
        }
        Ok(out)
    }

    /// The hosts that run (or are meant to run) a server component: every workstation that has
    /// it installed.
    pub async fn component_hosts(&self, organization_id: i64, product: &str) -> Result<Vec<ComponentHost>> {
        let rows = sqlx::query(
            "SELECT w.id, w.hostname, w.last_checkin_at, i.version FROM installed_versions i JOIN workstations w ON w.id = i.workstation_id \
             WHERE i.organization_id = $1 AND i.product = $2 ORDER BY w.hostname, w.id",
        )
        .bind(organization_id)
        .bind(product)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ComponentHost {
                    workstation_id: r.try_get("id")?,
                    hostname: r.try_get("hostname")?,
                    installed: r.try_get("version")?,
                    last_checkin_at: r.try_get("last_checkin_at")?,
                })
            })
            .collect()
    }
}
