//! Storage: one `Database` over sqlx's `Any` driver, so SQLite (the embedded default) and
//! PostgreSQL (scale-out) run the very same queries and the same DDL (`migrations/`), but for
//! auto-increment keys.
//!
//! Conventions that keep the queries portable: `$1`-style parameters, times as BIGINT Unix
//! milliseconds, flags as BIGINT 0/1, `RETURNING` instead of last-insert-id.
//! Invariant: every query on tenant data is scoped by `organization_id`.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use upkeep_protocol as proto;

mod checkin;
mod console;
mod deltas;
mod notify;
mod rollouts;
mod tuf;
pub use checkin::{DeviceFacts, StoredDevice};
pub use console::{ComponentHost, PublicDownload};
pub use deltas::{DeltaClaim, DeltaSource, NewDelta};
pub use notify::{Notice, Outgoing};
pub use rollouts::{NewRollout, RolloutRow};
pub use tuf::ApprovedArtifact;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL `{0}`: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("the database schema is at version {found}, newer than this server knows ({known}); upgrade upkeep-server")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("a record with this key already exists")]
    Conflict,
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

impl DbError {
    fn from_insert(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => DbError::Conflict,
            _ => DbError::Sqlx(err),
        }
    }
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

struct Migration {
    version: i64,
    /// Written for PostgreSQL; see [`for_backend`] for SQLite.
    sql: &'static str,
}

/// Append only: never edit a migration that has shipped.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("../migrations/0002_console.sql"),
    },
    Migration {
        version: 3,
        sql: include_str!("../migrations/0003_deltas.sql"),
    },
];

/// The one dialect difference the schema has: auto-increment keys.
fn for_backend(sql: &str, backend: Backend) -> std::borrow::Cow<'_, str> {
    match backend {
        Backend::Postgres => sql.into(),
        Backend::Sqlite => sql
            .replace("BIGSERIAL PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT")
            .into(),
    }
}

/// The one organization of a single-company install.
pub const DEFAULT_ORGANIZATION_ID: i64 = 1;
pub const DEFAULT_ORGANIZATION: &str = "default";

#[derive(Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
}

pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// RFC 3339 in UTC, as on the wire.
pub fn format_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn opt_time(ms: Option<i64>) -> Option<String> {
    ms.map(format_time)
}

impl Database {
    /// Opens (creating a SQLite file if needed) and migrates.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(DbError::UnsupportedUrl(redact_url(url)));
        };
        let mut options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        if backend == Backend::Sqlite {
            options = options.max_connections(8).after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets check-ins read while a write is in progress; busy_timeout makes
                    // concurrent writers wait instead of failing.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            });
        } else {
            options = options.max_connections(16);
        }
        let pool = options.connect(url).await?;
        let db = Database { pool, backend };
        db.migrate().await?;
        Ok(db)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            // Several servers may start at once over one database: one migrates, the rest wait.
            conn.execute("SELECT pg_advisory_lock(727387)").await?;
        }
        let result = async {
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .await?;
            let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
                .fetch_one(&mut *conn)
                .await?
                .try_get("v")?;
            let known = MIGRATIONS.last().map_or(0, |m| m.version);
            if current > known {
                return Err(DbError::SchemaTooNew { found: current, known });
            }
            for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
                let sql = for_backend(migration.sql, self.backend).into_owned();
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                // Our own DDL, embedded in the binary.
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                    .bind(migration.version)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                tracing::info!(version = migration.version, "applied database migration");
            }
            Ok(())
        }
        .await;
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_unlock(727387)").await?;
        }
        result
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Organizations, users, tokens
    // -----------------------------------------------------------------------------------------

    /// Creates the default organization and, when there is no user yet, the `admin` user.
    /// Returns true when the admin user was created by this call.
    pub async fn bootstrap(&self, admin_password_hash: &str) -> Result<bool> {
        let now = now_ms();
        sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
            .bind(DEFAULT_ORGANIZATION_ID)
            .bind(DEFAULT_ORGANIZATION)
            .bind(now)
            .execute(&self.pool)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO users (organization_id, name, password_hash, role, created_at) VALUES ($1, 'admin', $2, 'admin', $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(DEFAULT_ORGANIZATION_ID)
        .bind(admin_password_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Records `value` under `name` the first time; returns what is recorded (the first value).
    pub async fn agree_on(&self, name: &str, value: &str) -> Result<String> {
        sqlx::query("INSERT INTO server_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query("SELECT value FROM server_settings WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?
            .try_get("value")?)
    }

    pub async fn user_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    pub async fn find_user(&self, name: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query(
            "SELECT u.id, u.organization_id, u.name, u.password_hash, u.role, o.name AS organization FROM users u JOIN organizations o ON o.id = u.organization_id WHERE u.name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| UserRecord::from_row(&r)).transpose()
    }

    pub async fn insert_api_token(
        &self,
        token_hash: &str,
        user_id: i64,
        organization_id: i64,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO api_tokens (token_hash, user_id, organization_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(token_hash)
            .bind(user_id)
            .bind(organization_id)
            .bind(now_ms())
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn user_for_token(&self, token_hash: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query(
            "SELECT u.id, t.organization_id, u.name, u.password_hash, u.role, o.name AS organization FROM api_tokens t JOIN users u ON u.id = t.user_id JOIN organizations o ON o.id = t.organization_id WHERE t.token_hash = $1 AND t.expires_at > $2",
        )
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| UserRecord::from_row(&r)).transpose()
    }

    // -----------------------------------------------------------------------------------------
    // Products and releases
    // -----------------------------------------------------------------------------------------

    pub async fn create_product(
        &self,
        organization_id: i64,
        name: &str,
        kind: proto::ProductKind,
        public: bool,
    ) -> Result<proto::Product> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO products (organization_id, name, kind, public, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(organization_id)
        .bind(name)
        .bind(kind.as_str())
        .bind(i64::from(public))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(DbError::from_insert)?;
        Ok(proto::Product {
            name: name.to_owned(),
            kind,
            public,
            created_at: format_time(now),
        })
    }

    pub async fn list_products(&self, organization_id: i64) -> Result<Vec<proto::Product>> {
        let rows =
            sqlx::query("SELECT name, kind, public, created_at FROM products WHERE organization_id = $1 ORDER BY name")
                .bind(organization_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get("kind")?;
                Ok(proto::Product {
                    name: r.try_get("name")?,
                    kind: proto::ProductKind::parse(&kind)
                        .ok_or_else(|| DbError::Corrupt(format!("product kind {kind}")))?,
                    public: r.try_get::<i64, _>("public")? != 0,
                    created_at: format_time(r.try_get("created_at")?),
                })
            })
            .collect()
    }

    pub async fn product_id(&self, organization_id: i64, name: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT id FROM products WHERE organization_id = $1 AND name = $2")
            .bind(organization_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    pub async fn release_exists(&self, product_id: i64, version: &str) -> Result<bool> {
        let row = sqlx::query("SELECT id FROM releases WHERE product_id = $1 AND version = $2")
            .bind(product_id)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Inserts a release with its artifact, its pending approval and the upload event, all or
    /// nothing.
    /// Records a release with its artifact and pending approval; returns the release's id.
    pub async fn insert_release(&self, new: &NewRelease<'_>) -> Result<i64> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let release_id: i64 = sqlx::query(
            "INSERT INTO releases (organization_id, product_id, version, notes, launch, recipe, manifest, manifest_signature, created_by, created_at, requires) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(new.organization_id)
        .bind(new.product_id)
        .bind(new.version)
        .bind(new.notes)
        .bind(new.launch)
        .bind(new.recipe)
        .bind(&new.manifest.payload)
        .bind(&new.manifest.signature)
        .bind(new.actor)
        .bind(now)
        .bind(serde_json::to_string(new.requires).unwrap_or_else(|_| "{}".into()))
        .fetch_one(&mut *tx)
        .await
        .map_err(DbError::from_insert)?
        .try_get("id")?;
        let artifact = new.artifact;
        let content_size = artifact
            .content_size
            .map(i64::try_from)
            .transpose()
            .map_err(|_| DbError::Corrupt("content size".into()))?;
        sqlx::query("INSERT INTO artifacts (release_id, platform, filename, sha256, size, format, organization_id, content_sha256, content_size) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(release_id)
            .bind(&artifact.platform)
            .bind(&artifact.filename)
            .bind(&artifact.sha256)
            .bind(i64::try_from(artifact.size).map_err(|_| DbError::Corrupt("artifact size".into()))?)
            .bind(&artifact.format)
            .bind(new.organization_id)
            .bind(&artifact.content_sha256)
            .bind(content_size)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO approvals (organization_id, release_id, state, reason, decided_by, decided_at) VALUES ($1, $2, 'pending', NULL, $3, $4)")
            .bind(new.organization_id)
            .bind(release_id)
            .bind(new.actor)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut tx,
            new.organization_id,
            &NewEvent {
                kind: "release.uploaded",
                actor: new.actor,
                product: Some(new.product),
                version: Some(new.version),
                details: Some(serde_json::json!({
                    "platform": artifact.platform,
                    "filename": artifact.filename,
                    "sha256": artifact.sha256,
                    "size": artifact.size,
                })),
                ..NewEvent::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(release_id)
    }

    /// True when some release still refers to the blob.
    pub async fn blob_referenced(&self, sha256: &str) -> Result<bool> {
        // Patches live in the same store, keyed the same way.
        Ok(sqlx::query(
            "SELECT 1 AS one FROM artifacts WHERE sha256 = $1 UNION ALL SELECT 1 AS one FROM deltas WHERE sha256 = $1 LIMIT 1",
        )
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    pub async fn list_releases(
        &self,
        organization_id: i64,
        product_id: i64,
        product: &str,
    ) -> Result<Vec<proto::Release>> {
        let rows = sqlx::query(
            "SELECT r.id, r.version, r.notes, r.launch, r.recipe, r.created_at, COALESCE(a.state, 'pending') AS approval, a.reason \
             FROM releases r LEFT JOIN approvals a ON a.release_id = r.id AND a.organization_id = $1 \
             WHERE r.product_id = $2 ORDER BY r.id",
        )
        .bind(organization_id)
        .bind(product_id)
        .fetch_all(&self.pool)
        .await?;
        let artifact_rows = sqlx::query(
            "SELECT x.release_id, x.platform, x.filename, x.sha256, x.size, x.format, x.content_sha256, x.content_size FROM artifacts x JOIN releases r ON r.id = x.release_id WHERE r.product_id = $1 ORDER BY x.platform",
        )
        .bind(product_id)
        .fetch_all(&self.pool)
        .await?;
        let mut artifacts: BTreeMap<i64, Vec<proto::Artifact>> = BTreeMap::new();
        for r in &artifact_rows {
            artifacts
                .entry(r.try_get("release_id")?)
                .or_default()
                .push(artifact_from_row(r)?);
        }
        let mut releases = rows
            .iter()
            .map(|r| {
                let id: i64 = r.try_get("id")?;
                let approval: String = r.try_get("approval")?;
                Ok(proto::Release {
                    product: product.to_owned(),
                    version: r.try_get("version")?,
                    notes: r.try_get("notes")?,
                    launch: r.try_get("launch")?,
                    recipe: r.try_get("recipe")?,
                    approval: proto::ApprovalState::parse(&approval)
                        .ok_or_else(|| DbError::Corrupt(format!("approval state {approval}")))?,
                    approval_reason: r.try_get("reason")?,
                    artifacts: artifacts.remove(&id).unwrap_or_default(),
                    created_at: format_time(r.try_get("created_at")?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Newest version last, by semantic version rather than upload order.
        releases.sort_by(
            |a, b| match (semver::Version::parse(&a.version), semver::Version::parse(&b.version)) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                _ => a.version.cmp(&b.version),
            },
        );
        Ok(releases)
    }

    pub async fn release_id(&self, product_id: i64, version: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT id FROM releases WHERE product_id = $1 AND version = $2")
            .bind(product_id)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    pub async fn approval(&self, organization_id: i64, release_id: i64) -> Result<proto::ApprovalState> {
        let row = sqlx::query("SELECT state FROM approvals WHERE organization_id = $1 AND release_id = $2")
            .bind(organization_id)
            .bind(release_id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(proto::ApprovalState::Pending),
            Some(r) => {
                let state: String = r.try_get("state")?;
                proto::ApprovalState::parse(&state).ok_or_else(|| DbError::Corrupt(format!("approval state {state}")))
            }
        }
    }

    pub async fn set_approval(
        &self,
        organization_id: i64,
        release_id: i64,
        state: proto::ApprovalState,
        reason: Option<&str>,
        event: &NewEvent<'_>,
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO approvals (organization_id, release_id, state, reason, decided_by, decided_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (organization_id, release_id) DO UPDATE SET state = excluded.state, reason = excluded.reason, decided_by = excluded.decided_by, decided_at = excluded.decided_at",
        )
        .bind(organization_id)
        .bind(release_id)
        .bind(state.as_str())
        .bind(reason)
        .bind(event.actor)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, organization_id, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The organization may download this blob: it belongs to a release approved there.
    pub async fn artifact_downloadable(&self, organization_id: i64, sha256: &str) -> Result<Option<u64>> {
        self.downloadable_size(
            "SELECT x.size FROM artifacts x JOIN approvals a ON a.release_id = x.release_id AND a.organization_id = $1 AND a.state = 'approved' WHERE x.sha256 = $2 LIMIT 1",
            organization_id,
            sha256,
        )
        .await
    }

    /// Runs `query` (parameters: organization, digest; answers `size`) for a blob a device may
    /// download.
    pub(crate) async fn downloadable_size(
        &self,
        query: &'static str,
        organization_id: i64,
        sha256: &str,
    ) -> Result<Option<u64>> {
        let row = sqlx::query(query)
            .bind(organization_id)
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let size: i64 = r.try_get("size")?;
            u64::try_from(size).map_err(|_| DbError::Corrupt("negative blob size".into()))
        })
        .transpose()
    }

    // -----------------------------------------------------------------------------------------
    // Enrollment and workstations
    // -----------------------------------------------------------------------------------------

    pub async fn insert_enroll_token(
        &self,
        organization_id: i64,
        token_hash: &str,
        group: Option<&str>,
        uses: Option<u32>,
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO enroll_tokens (token_hash, organization_id, group_name, uses_left, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(token_hash)
            .bind(organization_id)
            .bind(group)
            .bind(uses.map(i64::from))
            .bind(actor)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut tx,
            organization_id,
            &NewEvent {
                kind: "enroll_token.created",
                actor,
                details: Some(serde_json::json!({ "group": group, "uses": uses })),
                ..NewEvent::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Spends one use of the enrollment token and creates the workstation, atomically.
    /// Returns `None` when the token is unknown or used up.
    pub async fn enroll(&self, enroll_token_hash: &str, new: &NewWorkstation<'_>) -> Result<Option<(i64, String)>> {
        let mut tx = self.pool.begin().await?;
        // Decrement first so two concurrent enrollments cannot both spend the last use.
        let spent = sqlx::query(
            "UPDATE enroll_tokens SET uses_left = uses_left - 1 WHERE token_hash = $1 AND (uses_left IS NULL OR uses_left > 0) RETURNING organization_id, group_name",
        )
        .bind(enroll_token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(spent) = spent else {
            return Ok(None);
        };
        let organization_id: i64 = spent.try_get("organization_id")?;
        let token_group: Option<String> = spent.try_get("group_name")?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO workstations (id, organization_id, token_hash, hostname, os, arch, agent_version, enrolled_at, last_checkin_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)",
        )
        .bind(new.id)
        .bind(organization_id)
        .bind(new.device_token_hash)
        .bind(new.hostname)
        .bind(new.os)
        .bind(new.arch)
        .bind(new.agent_version)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(DbError::from_insert)?;
        let mut groups: Vec<&str> = new.groups.iter().map(String::as_str).collect();
        groups.extend(token_group.as_deref());
        groups.sort_unstable();
        groups.dedup();
        for group in &groups {
            sqlx::query(
                "INSERT INTO workstation_groups (workstation_id, group_name, organization_id) VALUES ($1, $2, $3)",
            )
            .bind(new.id)
            .bind(*group)
            .bind(organization_id)
            .execute(&mut *tx)
            .await?;
        }
        let organization: String = sqlx::query("SELECT name FROM organizations WHERE id = $1")
            .bind(organization_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("name")?;
        insert_event(
            &mut tx,
            organization_id,
            &NewEvent {
                kind: "workstation.enrolled",
                actor: new.id,
                workstation_id: Some(new.id),
                details: Some(
                    serde_json::json!({ "hostname": new.hostname, "os": new.os, "arch": new.arch, "groups": groups }),
                ),
                ..NewEvent::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Some((organization_id, organization)))
    }

    /// Approval of every release of the organization, by (product, version).
    pub async fn approval_map(&self, organization_id: i64) -> Result<BTreeMap<(String, String), proto::ApprovalState>> {
        let rows = sqlx::query(
            "SELECT p.name, r.version, COALESCE(a.state, 'pending') AS state FROM releases r JOIN products p ON p.id = r.product_id \
             LEFT JOIN approvals a ON a.release_id = r.id AND a.organization_id = $1 WHERE p.organization_id = $1",
        )
        .bind(organization_id)
        .fetch_all(&self.pool)
        .await?;
        let mut out = BTreeMap::new();
        for r in &rows {
            let state: String = r.try_get("state")?;
            if let Some(state) = proto::ApprovalState::parse(&state) {
                out.insert((r.try_get("name")?, r.try_get("version")?), state);
            }
        }
        Ok(out)
    }

    pub async fn list_workstations(&self, organization_id: i64, id: Option<&str>) -> Result<Vec<proto::Workstation>> {
        let rows = sqlx::query(
            "SELECT id, hostname, os, arch, agent_version, enrolled_at, last_checkin_at FROM workstations WHERE organization_id = $1 AND ($2 = '' OR id = $2) ORDER BY hostname, id",
        )
        .bind(organization_id)
        .bind(id.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        let group_rows = sqlx::query(
            "SELECT g.workstation_id, g.group_name FROM workstation_groups g JOIN workstations w ON w.id = g.workstation_id WHERE w.organization_id = $1 ORDER BY g.group_name",
        )
        .bind(organization_id)
        .fetch_all(&self.pool)
        .await?;
        let installed_rows = sqlx::query(
            "SELECT i.workstation_id, i.product, i.version FROM installed_versions i JOIN workstations w ON w.id = i.workstation_id WHERE w.organization_id = $1",
        )
        .bind(organization_id)
        .fetch_all(&self.pool)
        .await?;
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &group_rows {
            groups
                .entry(r.try_get("workstation_id")?)
                .or_default()
                .push(r.try_get("group_name")?);
        }
        let mut installed: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for r in &installed_rows {
            installed
                .entry(r.try_get("workstation_id")?)
                .or_default()
                .insert(r.try_get("product")?, r.try_get("version")?);
        }
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                Ok(proto::Workstation {
                    hostname: r.try_get("hostname")?,
                    os: r.try_get("os")?,
                    arch: r.try_get("arch")?,
                    agent_version: r.try_get("agent_version")?,
                    groups: groups.remove(&id).unwrap_or_default(),
                    installed: installed.remove(&id).unwrap_or_default(),
                    enrolled_at: format_time(r.try_get("enrolled_at")?),
                    last_checkin_at: opt_time(r.try_get("last_checkin_at")?),
                    id,
                })
            })
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // Manifests and reports
    // -----------------------------------------------------------------------------------------

    pub async fn signed_manifest(
        &self,
        organization_id: i64,
        product: &str,
        version: &str,
    ) -> Result<Option<proto::SignedManifest>> {
        let row = sqlx::query(
            "SELECT r.manifest, r.manifest_signature FROM releases r JOIN products p ON p.id = r.product_id WHERE p.organization_id = $1 AND p.name = $2 AND r.version = $3",
        )
        .bind(organization_id)
        .bind(product)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(proto::SignedManifest {
                payload: r.try_get("manifest")?,
                signature: r.try_get("manifest_signature")?,
            })
        })
        .transpose()
    }

    /// Stores a device report as an event and, when it names a rollout of the workstation's
    /// organization, as the workstation's status there.
    pub async fn record_report(
        &self,
        organization_id: i64,
        workstation_id: &str,
        report: &proto::DeviceReport,
        reported_at: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let kind = format!("workstation.{}", report.status.as_str());
        // A report counts for a rollout only when it is about that rollout's product and the
        // rollout targets this workstation; otherwise it is just an event.
        let rollout_id = match report.rollout_id {
            Some(id) => {
                let row = self
                    .rollouts(organization_id, Some(id), false)
                    .await?
                    .into_iter()
                    .next();
                match row {
                    Some(r) if r.product == report.product => {
                        let groups = self.workstation_groups(workstation_id).await?;
                        let targets = crate::rollouts::domain_targets(&r.targets);
                        targets.includes(workstation_id, &groups).then_some(id)
                    }
                    _ => None,
                }
            }
            None => None,
        };
        if let Some(rollout_id) = rollout_id {
            let updated = sqlx::query(
                "UPDATE rollout_workstations SET status = $1, from_version = COALESCE(from_version, $2), error_code = $3, message = $4, updated_at = $5, acknowledged = 0 \
                 WHERE rollout_id = $6 AND workstation_id = $7",
            )
            .bind(report.status.as_str())
            .bind(report.from_version.as_deref())
            .bind(report.error_code.as_deref())
            .bind(report.message.as_deref())
            .bind(reported_at)
            .bind(rollout_id)
            .bind(workstation_id)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 0 {
                // A report for a rollout this workstation was never offered through a check-in.
                let wave = self.wave_in(&mut tx, rollout_id, workstation_id).await?;
                sqlx::query(
                    "INSERT INTO rollout_workstations (rollout_id, workstation_id, wave, status, from_version, error_code, message, updated_at, organization_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(rollout_id)
                .bind(workstation_id)
                .bind(i64::from(wave))
                .bind(report.status.as_str())
                .bind(report.from_version.as_deref())
                .bind(report.error_code.as_deref())
                .bind(report.message.as_deref())
                .bind(reported_at)
                .bind(organization_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        if report.status == proto::WorkstationStatus::Installed {
            // The inventory follows at once, not only at the next check-in.
            sqlx::query(
                "INSERT INTO installed_versions (workstation_id, product, version, updated_at, organization_id) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (workstation_id, product) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
            )
            .bind(workstation_id)
            .bind(&report.product)
            .bind(&report.version)
            .bind(reported_at)
            .bind(organization_id)
            .execute(&mut *tx)
            .await?;
        }
        let hostname: String = sqlx::query("SELECT hostname FROM workstations WHERE id = $1")
            .bind(workstation_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get("hostname"))
            .transpose()?
            .unwrap_or_default();
        if let Some(notice) = crate::notify::workstation_notice(report, workstation_id, &hostname) {
            self.enqueue_notice(&mut tx, organization_id, &notice).await?;
        }
        let details = report.details.as_ref().map(|d| {
            let mut d = d.clone();
            if let (Some(obj), Some(from)) = (d.as_object_mut(), report.from_version.as_ref()) {
                obj.insert("from_version".into(), serde_json::Value::String(from.clone()));
            }
            d
        });
        insert_event_at(
            &mut tx,
            organization_id,
            reported_at,
            &NewEvent {
                kind: &kind,
                actor: workstation_id,
                product: Some(&report.product),
                version: Some(&report.version),
                workstation_id: Some(workstation_id),
                rollout_id,
                error_code: report.error_code.as_deref(),
                message: report.message.as_deref(),
                details,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Events
    // -----------------------------------------------------------------------------------------

    pub async fn record_event(&self, organization_id: i64, event: &NewEvent<'_>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        insert_event(&mut tx, organization_id, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Events oldest first. With `after_id`, the next `limit` events after it (for paging and
    /// following); without, the newest `limit`.
    pub async fn list_events(&self, organization_id: i64, filter: &EventFilter) -> Result<Vec<proto::Event>> {
        let order = if filter.after_id.is_some() { "ASC" } else { "DESC" };
        let sql = format!(
            "SELECT id, at, kind, actor, product, version, workstation_id, rollout_id, error_code, message, details FROM events \
             WHERE organization_id = $1 AND ($2 = '' OR product = $2) AND ($3 = '' OR workstation_id = $3) AND id > $4 \
             AND ($6 = 0 OR rollout_id = $6) AND at >= $7 AND ($8 = '' OR kind = $8 OR kind LIKE $9 ESCAPE '!') AND ($10 = 0 OR error_code IS NOT NULL) \
             ORDER BY id {order} LIMIT $5"
        );
        // Only the constant `order` is spliced in; every value is a bound parameter.
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(organization_id)
            .bind(filter.product.as_deref().unwrap_or(""))
            .bind(filter.workstation.as_deref().unwrap_or(""))
            .bind(filter.after_id.unwrap_or(0))
            .bind(filter.limit)
            .bind(filter.rollout.unwrap_or(0))
            .bind(filter.since.unwrap_or(0))
            .bind(filter.kind.as_deref().unwrap_or(""))
            .bind(format!("{}.%", like_escape(filter.kind.as_deref().unwrap_or(""))))
            .bind(i64::from(filter.errors_only))
            .fetch_all(&self.pool)
            .await?;
        let mut events = rows
            .iter()
            .map(|r| {
                let details: Option<String> = r.try_get("details")?;
                Ok(proto::Event {
                    id: r.try_get("id")?,
                    at: format_time(r.try_get("at")?),
                    kind: r.try_get("kind")?,
                    actor: r.try_get("actor")?,
                    product: r.try_get("product")?,
                    version: r.try_get("version")?,
                    workstation_id: r.try_get("workstation_id")?,
                    rollout_id: r.try_get("rollout_id")?,
                    error_code: r.try_get("error_code")?,
                    message: r.try_get("message")?,
                    details: details.and_then(|d| serde_json::from_str(&d).ok()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if filter.after_id.is_none() {
            // Oldest first reads like a log; the query took the newest `limit`.
            events.reverse();
        }
        Ok(events)
    }
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub product: Option<String>,
    pub workstation: Option<String>,
    pub rollout: Option<i64>,
    /// Unix ms.
    pub since: Option<i64>,
    /// An event type (`workstation.failed`) or a family of them (`workstation`).
    pub kind: Option<String>,
    pub after_id: Option<i64>,
    pub limit: i64,
    /// Only events that carry an error code (failures, roll-backs).
    pub errors_only: bool,
}

#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: i64,
    pub organization_id: i64,
    pub organization: String,
    pub name: String,
    pub password_hash: String,
    pub role: String,
}

impl UserRecord {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(UserRecord {
            id: r.try_get("id")?,
            organization_id: r.try_get("organization_id")?,
            organization: r.try_get("organization")?,
            name: r.try_get("name")?,
            password_hash: r.try_get("password_hash")?,
            role: r.try_get("role")?,
        })
    }
}

pub struct NewRelease<'a> {
    pub organization_id: i64,
    pub product_id: i64,
    pub product: &'a str,
    pub version: &'a str,
    pub notes: &'a str,
    pub launch: Option<&'a str>,
    pub recipe: &'a str,
    /// Required products and version requirements, also used by the check-in decision.
    pub requires: &'a BTreeMap<String, String>,
    pub manifest: &'a proto::SignedManifest,
    pub artifact: &'a proto::Artifact,
    pub actor: &'a str,
}

pub struct NewWorkstation<'a> {
    pub id: &'a str,
    pub device_token_hash: &'a str,
    pub hostname: &'a str,
    pub os: &'a str,
    pub arch: &'a str,
    pub agent_version: &'a str,
    pub groups: &'a [String],
}

#[derive(Debug, Default)]
pub struct NewEvent<'a> {
    pub kind: &'a str,
    pub actor: &'a str,
    pub product: Option<&'a str>,
    pub version: Option<&'a str>,
    pub workstation_id: Option<&'a str>,
    pub rollout_id: Option<i64>,
    pub error_code: Option<&'a str>,
    pub message: Option<&'a str>,
    pub details: Option<serde_json::Value>,
}

pub(crate) async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    organization_id: i64,
    event: &NewEvent<'_>,
) -> Result<()> {
    insert_event_at(tx, organization_id, now_ms(), event).await
}

async fn insert_event_at(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    organization_id: i64,
    at: i64,
    event: &NewEvent<'_>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (organization_id, at, kind, actor, product, version, workstation_id, rollout_id, error_code, message, details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(organization_id)
    .bind(at)
    .bind(event.kind)
    .bind(event.actor)
    .bind(event.product)
    .bind(event.version)
    .bind(event.workstation_id)
    .bind(event.rollout_id)
    .bind(event.error_code)
    .bind(event.message)
    .bind(event.details.as_ref().map(|d| d.to_string()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) fn artifact_from_row(r: &AnyRow) -> Result<proto::Artifact> {
    let size: i64 = r.try_get("size")?;
    let content_size: Option<i64> = r.try_get("content_size")?;
    Ok(proto::Artifact {
        platform: r.try_get("platform")?,
        filename: r.try_get("filename")?,
        sha256: r.try_get("sha256")?,
        size: u64::try_from(size).map_err(|_| DbError::Corrupt("negative artifact size".into()))?,
        format: r.try_get("format")?,
        content_sha256: r.try_get("content_sha256")?,
        content_size: content_size
            .map(u64::try_from)
            .transpose()
            .map_err(|_| DbError::Corrupt("negative content size".into()))?,
    })
}

/// `text` as a literal inside a LIKE pattern that uses `!` as its escape character.
fn like_escape(text: &str) -> String {
    text.replace('!', "!!").replace('%', "!%").replace('_', "!_")
}

/// A database URL fit for logs: the password is replaced.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{}:***{}", &url[..scheme_end], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}
