//! Storage of each organization's TUF image repository: the metadata files clients fetch and the
//! role versions, which only ever increase (changed with compare-and-set, so two server processes
//! publishing at once cannot both win).

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Database, DbError, Result, now_ms};

/// An approved artifact, as it goes into targets metadata.
#[derive(Debug, Clone)]
pub struct ApprovedArtifact {
    pub release_id: i64,
    pub product: String,
    pub version: String,
    pub artifact: upkeep_protocol::Artifact,
}

impl ApprovedArtifact {
    /// Its flat TUF target name, `<product>_<version>_<platform>.<ext>`.
    pub fn target_name(&self) -> String {
        self.artifact.target_name(&self.product, &self.version)
    }
}

const ARTIFACT_SELECT: &str = "SELECT r.id AS release_id, p.name AS product, r.version, x.platform, x.filename, x.format, \
     x.sha256, x.size, x.content_sha256, x.content_size FROM artifacts x JOIN releases r ON r.id = x.release_id \
     JOIN products p ON p.id = r.product_id";

impl Database {
    pub async fn organization_id(&self, name: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT id FROM organizations WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    pub async fn organization_name(&self, organization_id: i64) -> Result<String> {
        let row = sqlx::query("SELECT name FROM organizations WHERE id = $1")
            .bind(organization_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("name")?)
    }

    pub async fn organization_ids(&self) -> Result<Vec<i64>> {
        let rows = sqlx::query("SELECT id FROM organizations ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    /// Artifacts of every release approved in the organization.
    pub async fn approved_artifacts(&self, organization_id: i64) -> Result<Vec<ApprovedArtifact>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ARTIFACT_SELECT} JOIN approvals a ON a.release_id = r.id AND a.organization_id = $1 AND a.state = 'approved' \
             ORDER BY p.name, r.id, x.platform"
        )))
        .bind(organization_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(artifact_row).collect()
    }

    /// The artifacts of one release, as they would go into targets metadata.
    pub async fn release_artifacts(&self, release_id: i64) -> Result<Vec<ApprovedArtifact>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ARTIFACT_SELECT} WHERE r.id = $1 ORDER BY x.platform"
        )))
        .bind(release_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(artifact_row).collect()
    }

    /// Role → (version, expires at in Unix ms).
    pub async fn tuf_versions(&self, organization_id: i64) -> Result<BTreeMap<String, (i64, i64)>> {
        let rows = sqlx::query("SELECT role, version, expires_at FROM tuf_versions WHERE organization_id = $1")
            .bind(organization_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("role")?, (r.try_get("version")?, r.try_get("expires_at")?))))
            .collect()
    }

    pub async fn tuf_file(&self, organization_id: i64, filename: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT body FROM tuf_files WHERE organization_id = $1 AND filename = $2")
            .bind(organization_id)
            .bind(filename)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("body")).transpose()?)
    }

    /// Stores a newly signed repository if the role versions are still `expected` (what the
    /// signer started from); returns false when another process published first.
    pub async fn store_tuf(
        &self,
        organization_id: i64,
        expected: &BTreeMap<String, (i64, i64)>,
        versions: &BTreeMap<String, (i64, i64)>,
        files: &[(String, String)],
    ) -> Result<bool> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for (role, (version, expires)) in versions {
            let changed = match expected.get(role) {
                Some((old, _)) => sqlx::query(
                    "UPDATE tuf_versions SET version = $1, expires_at = $2 WHERE organization_id = $3 AND role = $4 AND version = $5",
                )
                .bind(version)
                .bind(expires)
                .bind(organization_id)
                .bind(role)
                .bind(old)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                None => match sqlx::query("INSERT INTO tuf_versions (organization_id, role, version, expires_at) VALUES ($1, $2, $3, $4)")
                    .bind(organization_id)
                    .bind(role)
                    .bind(version)
                    .bind(expires)
                    .execute(&mut *tx)
                    .await
                {
                    Ok(done) => done.rows_affected(),
                    Err(e) => match DbError::from_insert(e) {
                        DbError::Conflict => 0,
                        other => return Err(other),
                    },
                },
            };
            if changed != 1 {
                return Ok(false);
            }
        }
        // Only root files are kept forever (clients walk the chain). Of targets and snapshot, the
        // new file and the one it replaces stay, so a client that read the previous timestamp a
        // moment ago can still fetch what it names.
        for (role, suffix) in [("targets", ".targets.json"), ("snapshot", ".snapshot.json")] {
            if files.iter().any(|(name, _)| name.ends_with(suffix)) {
                let keep: Vec<String> = files
                    .iter()
                    .map(|(name, _)| name.clone())
                    .filter(|name| name.ends_with(suffix))
                    .chain(expected.get(role).map(|(v, _)| format!("{v}{suffix}")))
                    .collect();
                let current: Vec<String> =
                    sqlx::query("SELECT filename FROM tuf_files WHERE organization_id = $1 AND filename LIKE $2")
                        .bind(organization_id)
                        .bind(format!("%{suffix}"))
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map(|r| r.try_get("filename"))
                        .collect::<std::result::Result<_, _>>()?;
                for old in current.iter().filter(|name| !keep.contains(name)) {
                    sqlx::query("DELETE FROM tuf_files WHERE organization_id = $1 AND filename = $2")
                        .bind(organization_id)
                        .bind(old)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        for (filename, body) in files {
            sqlx::query(
                "INSERT INTO tuf_files (organization_id, filename, body, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (organization_id, filename) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            )
            .bind(organization_id)
            .bind(filename)
            .bind(body)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

fn artifact_row(r: &sqlx::any::AnyRow) -> Result<ApprovedArtifact> {
    Ok(ApprovedArtifact {
        release_id: r.try_get("release_id")?,
        product: r.try_get("product")?,
        version: r.try_get("version")?,
        artifact: super::artifact_from_row(r)?,
    })
}
