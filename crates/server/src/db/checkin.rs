//! What the check-in path reads and writes: a workstation by its device token, its reported facts
//! (written only when they change), batched check-in times, and the generation counter that tells
//! every server process when its check-in cache is stale.

use std::collections::BTreeMap;

use sqlx::Row;
use upkeep_protocol as proto;

use super::{Database, DbError, Result};

/// The `server_settings` row holding the check-in cache generation.
const GENERATION: &str = "checkin_generation";

/// Most rows one batched statement touches (two parameters each; far below every backend's limit).
const BATCH_ROWS: usize = 500;

/// A workstation as the check-in path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDevice {
    pub id: String,
    pub organization_id: i64,
    pub facts: DeviceFacts,
    pub groups: Vec<String>,
    /// When each rollout first offered this workstation its update (rollout id → Unix ms).
    pub first_offered: BTreeMap<i64, i64>,
    pub last_checkin_at: Option<i64>,
}

/// What a workstation reports about itself on each check-in; stored only when it changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceFacts {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    /// (product, version), sorted by product.
    pub installed: Vec<(String, String)>,
}

impl DeviceFacts {
    pub fn of(request: &proto::CheckinRequest) -> Self {
        let mut installed: Vec<(String, String)> = request
            .installed
            .iter()
            .map(|i| (i.product.clone(), i.version.clone()))
            .collect();
        installed.sort();
        DeviceFacts {
            hostname: request.hostname.clone(),
            os: request.os.clone(),
            arch: request.arch.clone(),
            agent_version: request.agent_version.clone(),
            installed,
        }
    }

    /// Whether `request` reports exactly these facts (no allocation on the common path).
    pub fn same_as(&self, request: &proto::CheckinRequest) -> bool {
        self.hostname == request.hostname
            && self.os == request.os
            && self.arch == request.arch
            && self.agent_version == request.agent_version
            && self.installed.len() == request.installed.len()
            && request
                .installed
                .iter()
                .all(|i| self.installed.iter().any(|(p, v)| *p == i.product && *v == i.version))
    }
}

impl Database {
    /// The workstation a device token (its SHA-256) belongs to, with what check-ins need of it.
    pub async fn device_by_token(&self, token_hash: &str) -> Result<Option<StoredDevice>> {
        let Some(row) = sqlx::query(
            "SELECT id, organization_id, hostname, os, arch, agent_version, last_checkin_at FROM workstations WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let id: String = row.try_get("id")?;
        let installed =
            sqlx::query("SELECT product, version FROM installed_versions WHERE workstation_id = $1 ORDER BY product")
                .bind(&id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("product")?, r.try_get("version")?)))
                .collect::<Result<Vec<(String, String)>>>()?;
        Ok(Some(StoredDevice {
            organization_id: row.try_get("organization_id")?,
            facts: DeviceFacts {
                hostname: row.try_get("hostname")?,
                os: row.try_get("os")?,
                arch: row.try_get("arch")?,
                agent_version: row.try_get("agent_version")?,
                installed,
            },
            groups: self.workstation_groups(&id).await?,
            first_offered: self.first_offers(&id).await?,
            last_checkin_at: row.try_get("last_checkin_at")?,
            id,
        }))
    }

    /// Stores what a check-in reported that differs from what was stored, with its time.
    pub async fn record_facts(
        &self,
        organization_id: i64,
        workstation_id: &str,
        facts: &DeviceFacts,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE workstations SET hostname = $1, os = $2, arch = $3, agent_version = $4, last_checkin_at = $5 \
             WHERE id = $6 AND organization_id = $7",
        )
        .bind(&facts.hostname)
        .bind(&facts.os)
        .bind(&facts.arch)
        .bind(&facts.agent_version)
        .bind(now)
        .bind(workstation_id)
        .bind(organization_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM installed_versions WHERE workstation_id = $1")
            .bind(workstation_id)
            .execute(&mut *tx)
            .await?;
        for (product, version) in &facts.installed {
            sqlx::query(
                "INSERT INTO installed_versions (workstation_id, product, version, updated_at, organization_id) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(workstation_id)
            .bind(product)
            .bind(version)
            .bind(now)
            .bind(organization_id)
            .execute(&mut *tx)
            .await
            .map_err(DbError::from_insert)?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores check-in times collected from many check-ins, a few hundred rows per statement.
    /// A time never moves back (another process may have stored a later one).
    pub async fn record_last_checkins(&self, seen: &[(String, i64)]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for chunk in seen.chunks(BATCH_ROWS) {
            let values = (0..chunk.len())
                .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            // Only placeholders are spliced in; the values are bound. VALUES columns are named
            // column1, column2 on both SQLite and PostgreSQL.
            let sql = format!(
                "UPDATE workstations SET last_checkin_at = v.column2 FROM (VALUES {values}) AS v \
                 WHERE workstations.id = v.column1 AND (workstations.last_checkin_at IS NULL OR workstations.last_checkin_at < v.column2)"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, at) in chunk {
                query = query.bind(id).bind(*at);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The check-in cache generation: it grows whenever something a check-in decision reads
    /// (approvals, rollouts, releases, the fleet) may have changed.
    pub async fn checkin_generation(&self) -> Result<i64> {
        let row = sqlx::query("SELECT value FROM server_settings WHERE name = $1")
            .bind(GENERATION)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => {
                let value: String = r.try_get("value")?;
                value
                    .parse()
                    .map_err(|_| DbError::Corrupt(format!("{GENERATION} is `{value}`")))
            }
            None => Ok(0),
        }
    }

    /// Tells every server process that cached check-in data may be stale.
    pub async fn bump_checkin_generation(&self) -> Result<i64> {
        // The value is text in a generic settings table; the increment happens in the database
        // so concurrent bumps from several processes never collide.
        let next: String = sqlx::query(
            "INSERT INTO server_settings (name, value) VALUES ($1, '1') ON CONFLICT (name) DO UPDATE \
             SET value = CAST(CAST(server_settings.value AS BIGINT) + 1 AS TEXT) RETURNING value",
        )
        .bind(GENERATION)
        .fetch_one(&self.pool)
        .await?
        .try_get("value")?;
        next.parse()
            .map_err(|_| DbError::Corrupt(format!("{GENERATION} is `{next}`")))
    }
}
