//! Rollout storage: the rollouts, their targets, and one row per targeted workstation with its
//! wave and status (the "update process report").

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::any::AnyRow;
use upkeep_domain::{placement, wave_by_cuts, wave_cuts};
use upkeep_protocol as proto;

use super::{Database, DbError, NewEvent, Result, format_time, insert_event, now_ms};

/// A rollout as stored, with its targets and its release's approval in the organization.
#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub id: i64,
    pub release_id: i64,
    pub product: String,
    pub version: String,
    pub mandatory: bool,
    pub state: String,
    pub state_reason: Option<String>,
    pub targets: proto::RolloutTargets,
    pub starts_at: i64,
    pub deadline_kind: Option<String>,
    pub deadline_value: Option<String>,
    /// Cumulative percents, `5,25,100`.
    pub waves: Option<String>,
    /// Placement boundaries between the waves, fixed at creation.
    pub wave_cuts: Vec<u64>,
    pub soak_ms: Option<i64>,
    pub max_failure_ppm: Option<i64>,
    pub min_sample: Option<i64>,
    pub opened_waves: i64,
    pub wave_opened_at: i64,
    /// The release's requirements on other products.
    pub requires: BTreeMap<String, String>,
    pub allow_downgrade: bool,
    pub maintenance_window: Option<String>,
    pub approval: proto::ApprovalState,
    pub created_by: String,
    pub created_at: i64,
}

impl RolloutRow {
    pub fn percents(&self) -> Option<Vec<u32>> {
        self.waves.as_deref().map(parse_percents)
    }

    fn from_row(r: &AnyRow) -> Result<Self> {
        let approval: String = r.try_get("approval")?;
        Ok(RolloutRow {
            id: r.try_get("id")?,
            release_id: r.try_get("release_id")?,
            product: r.try_get("product")?,
            version: r.try_get("version")?,
            mandatory: r.try_get::<i64, _>("mandatory")? != 0,
            state: r.try_get("state")?,
            state_reason: r.try_get("state_reason")?,
            targets: proto::RolloutTargets {
                all: r.try_get::<i64, _>("target_all")? != 0,
                ..Default::default()
            },
            starts_at: r.try_get("starts_at")?,
            deadline_kind: r.try_get("deadline_kind")?,
            deadline_value: r.try_get("deadline_value")?,
            waves: r.try_get("waves")?,
            wave_cuts: parse_cuts(r.try_get::<Option<String>, _>("wave_cuts")?.as_deref()),
            soak_ms: r.try_get("soak_ms")?,
            max_failure_ppm: r.try_get("max_failure_ppm")?,
            min_sample: r.try_get("min_sample")?,
            opened_waves: r.try_get("opened_waves")?,
            wave_opened_at: r.try_get("wave_opened_at")?,
            requires: serde_json::from_str(&r.try_get::<String, _>("requires")?).unwrap_or_default(),
            allow_downgrade: r.try_get::<i64, _>("allow_downgrade")? != 0,
            maintenance_window: r.try_get("maintenance_window")?,
            approval: proto::ApprovalState::parse(&approval)
                .ok_or_else(|| DbError::Corrupt(format!("approval state {approval}")))?,
            created_by: r.try_get("created_by")?,
            created_at: r.try_get("created_at")?,
        })
    }
}

fn parse_cuts(text: Option<&str>) -> Vec<u64> {
    text.map(|t| t.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn parse_percents(text: &str) -> Vec<u32> {
    text.split(',').filter_map(|p| p.trim().parse().ok()).collect()
}

/// A rollout to create; validated by the caller.
#[derive(Debug, Clone)]
pub struct NewRollout<'a> {
    pub release_id: i64,
    pub product: &'a str,
    pub version: &'a str,
    pub mandatory: bool,
    pub targets: &'a proto::RolloutTargets,
    pub state: &'static str,
    pub starts_at: i64,
    pub deadline: Option<(&'static str, String)>,
    /// Percents `5,25,100`, soak, max failure ratio in parts per million, minimum sample.
    pub waves: Option<(String, i64, i64, i64)>,
    pub allow_downgrade: bool,
    pub maintenance_window: Option<&'a str>,
    pub actor: &'a str,
    /// The request as given, for the event.
    pub request: serde_json::Value,
}

const ROLLOUT_COLUMNS: &str = "o.id, o.release_id, p.name AS product, r.version, o.mandatory, o.target_all, o.state, o.state_reason, \
     o.starts_at, o.deadline_kind, o.deadline_value, o.waves, o.wave_cuts, o.soak_ms, o.max_failure_ppm, o.min_sample, o.opened_waves, \
     o.wave_opened_at, r.requires, o.allow_downgrade, o.maintenance_window, o.created_by, o.created_at, COALESCE(a.state, 'pending') AS approval";

impl Database {
    /// Creates the rollout and a `pending` row, with its wave, for each workstation it targets now
    /// (`targeted`: id and installed version of the product). Returns the id.
    pub async fn create_rollout(
        &self,
        organization_id: i64,
        new: &NewRollout<'_>,
        targeted: &[(String, Option<String>)],
    ) -> Result<i64> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let (waves, soak, ppm, min_sample) = match &new.waves {
            Some((w, s, p, m)) => (Some(w.as_str()), Some(*s), Some(*p), Some(*m)),
            None => (None, None, None, None),
        };
        let id: i64 = sqlx::query(
            "INSERT INTO rollouts (organization_id, release_id, mandatory, target_all, state, starts_at, deadline_kind, deadline_value, \
             waves, soak_ms, max_failure_ppm, min_sample, opened_waves, wave_opened_at, allow_downgrade, maintenance_window, \
             updated_at, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $14, $15, $16, $17, $16) RETURNING id",
        )
        .bind(organization_id)
        .bind(new.release_id)
        .bind(i64::from(new.mandatory))
        .bind(i64::from(new.targets.all))
        .bind(new.state)
        .bind(new.starts_at)
        .bind(new.deadline.as_ref().map(|d| d.0))
        .bind(new.deadline.as_ref().map(|d| d.1.as_str()))
        .bind(waves)
        .bind(soak)
        .bind(ppm)
        .bind(min_sample)
        .bind(new.starts_at.max(now))
        .bind(i64::from(new.allow_downgrade))
        .bind(new.maintenance_window)
        .bind(now)
        .bind(new.actor)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        for (kind, values) in [
            ("workstation", &new.targets.workstations),
            ("group", &new.targets.groups),
        ] {
            for value in values {
                sqlx::query(
                    "INSERT INTO rollout_targets (rollout_id, kind, value, organization_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(kind)
                .bind(value)
                .bind(organization_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        // Cut the waves over the fleet targeted now, so each gets exactly its share.
        let cuts = match waves.map(parse_percents) {
            Some(percents) => {
                let cuts = wave_cuts(&percents, targeted.iter().map(|(ws, _)| placement(id, ws)).collect());
                let text = cuts.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
                sqlx::query("UPDATE rollouts SET wave_cuts = $1 WHERE id = $2")
                    .bind(text)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                Some(cuts)
            }
            None => None,
        };
        for (workstation, from_version) in targeted {
            let wave = cuts
                .as_deref()
                .map_or(0, |c| wave_by_cuts(c, placement(id, workstation)));
            // A workstation that already has the version is done from the start.
            let status = if from_version.as_deref() == Some(new.version) {
                "installed"
            } else {
                "pending"
            };
            sqlx::query(
                "INSERT INTO rollout_workstations (rollout_id, workstation_id, wave, status, from_version, updated_at, organization_id) \
                 VALUES ($1, $2, $3, $7, $4, $5, $6)",
            )
            .bind(id)
            .bind(workstation)
            .bind(i64::from(wave))
            .bind(from_version.as_deref())
            .bind(now)
            .bind(organization_id)
            .bind(status)
            .execute(&mut *tx)
            .await?;
        }
        insert_event(
            &mut tx,
            organization_id,
            &NewEvent {
                kind: "rollout.created",
                actor: new.actor,
                product: Some(new.product),
                version: Some(new.version),
                rollout_id: Some(id),
                details: Some(new.request.clone()),
                ..NewEvent::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn unknown_workstations(&self, organization_id: i64, ids: &[String]) -> Result<Vec<String>> {
        let mut unknown = Vec::new();
        for id in ids {
            let found = sqlx::query("SELECT 1 AS one FROM workstations WHERE organization_id = $1 AND id = $2")
                .bind(organization_id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            if found.is_none() {
                unknown.push(id.clone());
            }
        }
        Ok(unknown)
    }

    /// Rollouts of the organization (one, with `id`), oldest first; `live` keeps only those that
    /// may still deliver (not cancelled).
    pub async fn rollouts(&self, organization_id: i64, id: Option<i64>, live: bool) -> Result<Vec<RolloutRow>> {
        let sql = format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts o JOIN releases r ON r.id = o.release_id JOIN products p ON p.id = r.product_id \
             LEFT JOIN approvals a ON a.release_id = o.release_id AND a.organization_id = o.organization_id \
             WHERE o.organization_id = $1 AND ($2 = 0 OR o.id = $2) AND ($3 = 0 OR o.state <> 'cancelled') ORDER BY o.id"
        );
        // Only the constant column list is spliced in; values are bound.
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(organization_id)
            .bind(id.unwrap_or(0))
            .bind(i64::from(live))
            .fetch_all(&self.pool)
            .await?;
        let target_rows = sqlx::query(
            "SELECT rollout_id, kind, value FROM rollout_targets WHERE organization_id = $1 AND ($2 = 0 OR rollout_id = $2) ORDER BY value",
        )
        .bind(organization_id)
        .bind(id.unwrap_or(0))
        .fetch_all(&self.pool)
        .await?;
        let mut targets: BTreeMap<i64, (Vec<String>, Vec<String>)> = BTreeMap::new();
        for r in &target_rows {
            let entry = targets.entry(r.try_get("rollout_id")?).or_default();
            let kind: String = r.try_get("kind")?;
            let value: String = r.try_get("value")?;
            if kind == "group" {
                entry.1.push(value)
            } else {
                entry.0.push(value)
            }
        }
        rows.iter()
            .map(|r| {
                let mut row = RolloutRow::from_row(r)?;
                if let Some((workstations, groups)) = targets.remove(&row.id) {
                    row.targets.workstations = workstations;
                    row.targets.groups = groups;
                }
                Ok(row)
            })
            .collect()
    }

    /// Rollouts of the organization created or changed (state, waves) since `since` (Unix ms).
    pub async fn rollouts_changed_since(&self, organization_id: i64, since: i64) -> Result<Vec<RolloutRow>> {
        let changed =
            sqlx::query("SELECT id FROM rollouts WHERE organization_id = $1 AND updated_at >= $2 ORDER BY id")
                .bind(organization_id)
                .bind(since)
                .fetch_all(&self.pool)
                .await?;
        let mut rows = Vec::new();
        for r in &changed {
            let id: i64 = r.try_get("id")?;
            rows.extend(self.rollouts(organization_id, Some(id), true).await?);
        }
        Ok(rows)
    }

    pub async fn workstation_groups(&self, workstation_id: &str) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT group_name FROM workstation_groups WHERE workstation_id = $1 ORDER BY group_name")
                .bind(workstation_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("group_name"))
            .collect::<Result<Vec<String>, _>>()?)
    }

    /// When each rollout first offered this workstation its update.
    pub async fn first_offers(&self, workstation_id: &str) -> Result<BTreeMap<i64, i64>> {
        let rows = sqlx::query(
            "SELECT rollout_id, first_offered_at FROM rollout_workstations WHERE workstation_id = $1 AND first_offered_at IS NOT NULL",
        )
        .bind(workstation_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("rollout_id")?, r.try_get("first_offered_at")?)))
            .collect()
    }

    /// Records that the workstation was offered the rollout's update (the first time counts for
    /// `--deadline-after`), and moves it to `notified` unless it already went further.
    pub async fn mark_notified(
        &self,
        organization_id: i64,
        rollout_id: i64,
        workstation_id: &str,
        from_version: Option<&str>,
        wave: u32,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO rollout_workstations (rollout_id, workstation_id, wave, status, from_version, first_offered_at, updated_at, organization_id) \
             VALUES ($1, $2, $3, 'notified', $4, $5, $5, $6) \
             ON CONFLICT (rollout_id, workstation_id) DO UPDATE SET \
               status = CASE WHEN rollout_workstations.status = 'pending' THEN 'notified' ELSE rollout_workstations.status END, \
               from_version = COALESCE(rollout_workstations.from_version, excluded.from_version), \
               first_offered_at = COALESCE(rollout_workstations.first_offered_at, excluded.first_offered_at), \
               updated_at = CASE WHEN rollout_workstations.status = 'pending' THEN excluded.updated_at ELSE rollout_workstations.updated_at END \
             WHERE rollout_workstations.status = 'pending' OR rollout_workstations.first_offered_at IS NULL",
        )
        .bind(rollout_id)
        .bind(workstation_id)
        .bind(i64::from(wave))
        .bind(from_version)
        .bind(now)
        .bind(organization_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn rollout_workstations(
        &self,
        organization_id: i64,
        rollout_id: i64,
    ) -> Result<Vec<proto::RolloutWorkstation>> {
        let rows = sqlx::query(
            "SELECT rw.workstation_id, w.hostname, rw.wave, rw.status, rw.from_version, r.version AS to_version, rw.error_code, rw.message, rw.updated_at \
             FROM rollout_workstations rw JOIN workstations w ON w.id = rw.workstation_id JOIN rollouts o ON o.id = rw.rollout_id \
             JOIN releases r ON r.id = o.release_id \
             WHERE o.organization_id = $1 AND rw.rollout_id = $2 ORDER BY rw.wave, w.hostname, w.id",
        )
        .bind(organization_id)
        .bind(rollout_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                let wave: i64 = r.try_get("wave")?;
                Ok(proto::RolloutWorkstation {
                    workstation_id: r.try_get("workstation_id")?,
                    hostname: r.try_get("hostname")?,
                    wave: u32::try_from(wave + 1).unwrap_or(0),
                    status: proto::WorkstationStatus::parse(&status)
                        .ok_or_else(|| DbError::Corrupt(format!("workstation status {status}")))?,
                    from_version: r.try_get("from_version")?,
                    to_version: r.try_get("to_version")?,
                    error_code: r.try_get("error_code")?,
                    message: r.try_get("message")?,
                    updated_at: format_time(r.try_get("updated_at")?),
                })
            })
            .collect()
    }

    /// Moves a rollout from one of `from` to `to`, with an event; false when it was in none of
    /// `from` (another server process, or an admin, got there first).
    pub async fn transition_rollout(
        &self,
        organization_id: i64,
        rollout_id: i64,
        from: &[&str],
        to: &str,
        reason: Option<&str>,
        event: &NewEvent<'_>,
    ) -> Result<bool> {
        self.transition_rollout_with(organization_id, rollout_id, from, to, reason, event, false)
            .await
    }

    /// [`Database::transition_rollout`]; with `acknowledge`, the failures so far stop counting
    /// against the threshold, in the same transaction (a resume).
    #[allow(clippy::too_many_arguments)]
    pub async fn transition_rollout_with(
        &self,
        organization_id: i64,
        rollout_id: i64,
        from: &[&str],
        to: &str,
        reason: Option<&str>,
        event: &NewEvent<'_>,
        acknowledge: bool,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let mut moved = false;
        for state in from {
            let result = sqlx::query(
                "UPDATE rollouts SET state = $1, state_reason = $2, updated_at = $3 WHERE id = $4 AND organization_id = $5 AND state = $6",
            )
            .bind(to)
            .bind(reason)
            .bind(now_ms())
            .bind(rollout_id)
            .bind(organization_id)
            .bind(*state)
            .execute(&mut *tx)
            .await?;
            if result.rows_affected() == 1 {
                moved = true;
                break;
            }
        }
        if moved {
            if acknowledge {
                sqlx::query(
                    "UPDATE rollout_workstations SET acknowledged = 1 WHERE rollout_id = $1 AND status IN ('failed', 'rolled_back')",
                )
                .bind(rollout_id)
                .execute(&mut *tx)
                .await?;
            }
            insert_event(&mut tx, organization_id, event).await?;
            tx.commit().await?;
        }
        Ok(moved)
    }

    /// Opens wave `opened` (0-based count of open waves before) if nobody else did.
    pub async fn open_wave(
        &self,
        organization_id: i64,
        rollout_id: i64,
        opened: i64,
        event: &NewEvent<'_>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let result = sqlx::query(
            "UPDATE rollouts SET opened_waves = $1, wave_opened_at = $2, updated_at = $2 WHERE id = $3 AND organization_id = $4 AND opened_waves = $5 AND state = 'active'",
        )
        .bind(opened + 1)
        .bind(now)
        .bind(rollout_id)
        .bind(organization_id)
        .bind(opened)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() != 1 {
            return Ok(false);
        }
        insert_event(&mut tx, organization_id, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Workstation count per status among the first `opened` waves.
    /// Acknowledged failures are left out when `skip_acknowledged`.
    pub async fn wave_counts(
        &self,
        rollout_id: i64,
        opened: i64,
        skip_acknowledged: bool,
    ) -> Result<BTreeMap<String, u64>> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM rollout_workstations WHERE rollout_id = $1 AND wave < $2 AND ($3 = 0 OR acknowledged = 0) GROUP BY status",
        )
        .bind(rollout_id)
        .bind(opened)
        .bind(i64::from(skip_acknowledged))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("status")?,
                    u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
                ))
            })
            .collect()
    }

    /// The live rollouts of every organization that may need a wave opened or a state change.
    pub async fn rollouts_to_tick(&self) -> Result<Vec<(i64, i64)>> {
        let rows =
            sqlx::query("SELECT id, organization_id FROM rollouts WHERE state IN ('scheduled', 'active') ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("organization_id")?)))
            .collect()
    }

    /// The wave a workstation has in a rollout (computed the same way as at creation).
    pub(crate) async fn wave_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        rollout_id: i64,
        workstation_id: &str,
    ) -> Result<u32> {
        let cuts: Option<String> = sqlx::query("SELECT wave_cuts FROM rollouts WHERE id = $1")
            .bind(rollout_id)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.try_get("wave_cuts"))
            .transpose()?
            .flatten();
        Ok(wave_by_cuts(
            &parse_cuts(cuts.as_deref()),
            placement(rollout_id, workstation_id),
        ))
    }
}
