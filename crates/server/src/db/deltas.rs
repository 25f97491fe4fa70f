//! Storage of delta patches: which release pairs have one, claimed by one server process at a
//! time through the unique key (an `INSERT … ON CONFLICT DO NOTHING` that either lands or not).

use sqlx::Row;
use upkeep_protocol as proto;

use super::{Database, DbError, NewEvent, Result, artifact_from_row, insert_event, now_ms};

/// A release of a product with its artifact for one platform, as a patch starts or ends there.
#[derive(Debug, Clone)]
pub struct DeltaSource {
    pub release_id: i64,
    pub organization_id: i64,
    pub product_id: i64,
    pub product: String,
    pub version: String,
    pub artifact: proto::Artifact,
}

/// A finished patch.
#[derive(Debug, Clone)]
pub struct NewDelta<'a> {
    pub method: &'a str,
    pub sha256: &'a str,
    pub size: u64,
    /// For the event: how long it took to build, and the pair.
    pub build_ms: u64,
    pub from: &'a DeltaSource,
    pub to: &'a DeltaSource,
}

/// What a claim on a pair came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaClaim {
    /// This process builds it; the row's id.
    Claimed(i64),
    /// Another process built it, skipped it, or is building it.
    Taken,
}

/// The start of every query that reads [`DeltaSource`]s (a macro so `concat!` keeps it static).
macro_rules! source_select {
    () => {
        "SELECT r.id AS release_id, r.organization_id, r.product_id, p.name AS product, r.version, \
         x.platform, x.filename, x.sha256, x.size, x.format, x.content_sha256, x.content_size \
         FROM releases r JOIN products p ON p.id = r.product_id JOIN artifacts x ON x.release_id = r.id "
    };
}

fn source_row(r: &sqlx::any::AnyRow) -> Result<DeltaSource> {
    Ok(DeltaSource {
        release_id: r.try_get("release_id")?,
        organization_id: r.try_get("organization_id")?,
        product_id: r.try_get("product_id")?,
        product: r.try_get("product")?,
        version: r.try_get("version")?,
        artifact: artifact_from_row(r)?,
    })
}

fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| DbError::Corrupt(format!("{what} out of range")))
}

impl Database {
    /// The `tar.gz` artifacts of a release that know their content, one per platform.
    pub async fn delta_targets(&self, release_id: i64) -> Result<Vec<DeltaSource>> {
        let rows = sqlx::query(concat!(
            source_select!(),
            "WHERE r.id = $1 AND x.format = 'tar.gz' AND x.content_sha256 IS NOT NULL"
        ))
        .bind(release_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(source_row).collect()
    }

    /// Every other release of the product with a `tar.gz` artifact for `platform` that knows its
    /// content; the caller picks the versions it diffs from.
    pub async fn delta_sources(&self, product_id: i64, release_id: i64, platform: &str) -> Result<Vec<DeltaSource>> {
        let rows = sqlx::query(concat!(
            source_select!(),
            "WHERE r.product_id = $1 AND r.id <> $2 AND x.platform = $3 AND x.format = 'tar.gz' \
             AND x.content_sha256 IS NOT NULL"
        ))
        .bind(product_id)
        .bind(release_id)
        .bind(platform)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(source_row).collect()
    }

    /// Claims the pair for building: the first insert wins; a claim left `building` since before
    /// `stale_before` (its process died) is taken over.
    pub async fn claim_delta(&self, from: &DeltaSource, to: &DeltaSource, stale_before: i64) -> Result<DeltaClaim> {
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO deltas (organization_id, product_id, from_release_id, to_release_id, platform, state, claimed_at) \
             VALUES ($1, $2, $3, $4, $5, 'building', $6) \
             ON CONFLICT (from_release_id, to_release_id, platform) DO NOTHING RETURNING id",
        )
        .bind(to.organization_id)
        .bind(to.product_id)
        .bind(from.release_id)
        .bind(to.release_id)
        .bind(&to.artifact.platform)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = inserted {
            return Ok(DeltaClaim::Claimed(row.try_get("id")?));
        }
        let taken_over = sqlx::query(
            "UPDATE deltas SET claimed_at = $1 WHERE from_release_id = $2 AND to_release_id = $3 AND platform = $4 \
             AND state = 'building' AND claimed_at < $5 RETURNING id",
        )
        .bind(now)
        .bind(from.release_id)
        .bind(to.release_id)
        .bind(&to.artifact.platform)
        .bind(stale_before)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match taken_over {
            Some(row) => DeltaClaim::Claimed(row.try_get("id")?),
            None => DeltaClaim::Taken,
        })
    }

    /// Releases with a pair still `building` since before `stale_before`: their builder died.
    pub async fn stale_delta_targets(&self, stale_before: i64) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT DISTINCT to_release_id FROM deltas WHERE state = 'building' AND claimed_at < $1 ORDER BY to_release_id",
        )
        .bind(stale_before)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("to_release_id"))
            .collect::<Result<_, _>>()?)
    }

    /// Marks a claimed pair ready with its patch, and records the event.
    pub async fn finish_delta(&self, id: i64, delta: &NewDelta<'_>) -> Result<()> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE deltas SET state = 'ready', method = $1, sha256 = $2, size = $3, created_at = $4, reason = NULL \
             WHERE id = $5",
        )
        .bind(delta.method)
        .bind(delta.sha256)
        .bind(to_i64(delta.size, "patch size")?)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            delta.to.organization_id,
            &NewEvent {
                kind: "delta.built",
                actor: "server",
                product: Some(&delta.to.product),
                version: Some(&delta.to.version),
                details: Some(serde_json::json!({
                    "from_version": delta.from.version,
                    "platform": delta.to.artifact.platform,
                    "method": delta.method,
                    "sha256": delta.sha256,
                    "size": delta.size,
                    "artifact_size": delta.to.artifact.size,
                    "build_ms": delta.build_ms,
                })),
                ..NewEvent::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks a claimed pair as not worth a patch (or failed), with the reason.
    pub async fn skip_delta(&self, id: i64, state: &str, reason: &str) -> Result<()> {
        sqlx::query("UPDATE deltas SET state = $1, reason = $2, created_at = $3 WHERE id = $4")
            .bind(state)
            .bind(reason)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The ready patches to `version` of the organization's `product`.
    pub async fn delta_offers(
        &self,
        organization_id: i64,
        product: &str,
        version: &str,
    ) -> Result<Vec<proto::DeltaOffer>> {
        let rows = sqlx::query(
            "SELECT f.version AS from_version, d.platform, d.sha256, d.size, d.method FROM deltas d \
             JOIN releases t ON t.id = d.to_release_id JOIN releases f ON f.id = d.from_release_id \
             JOIN products p ON p.id = t.product_id \
             WHERE d.organization_id = $1 AND p.name = $2 AND t.version = $3 AND d.state = 'ready' \
             ORDER BY f.version, d.platform",
        )
        .bind(organization_id)
        .bind(product)
        .bind(version)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let size: i64 = r.try_get("size")?;
                Ok(proto::DeltaOffer {
                    from_version: r.try_get("from_version")?,
                    platform: r.try_get("platform")?,
                    sha256: r.try_get("sha256")?,
                    size: u64::try_from(size).map_err(|_| DbError::Corrupt("negative patch size".into()))?,
                    method: r.try_get("method")?,
                })
            })
            .collect()
    }

    /// The organization may download this patch: it leads to a release approved there. Returns
    /// its size.
    pub async fn delta_downloadable(&self, organization_id: i64, sha256: &str) -> Result<Option<u64>> {
        self.downloadable_size(
            "SELECT d.size FROM deltas d JOIN approvals a ON a.release_id = d.to_release_id AND a.organization_id = $1 \
             AND a.state = 'approved' WHERE d.sha256 = $2 AND d.state = 'ready' LIMIT 1",
            organization_id,
            sha256,
        )
        .await
    }
}
