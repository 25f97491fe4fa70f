//! Notification groups and the notification outbox. Messages are queued in the same transaction
//! as the event that causes them, and delivered by [`crate::notify`], which claims one row at a
//! time so several server processes never send the same message twice.

use sqlx::Row;
use upkeep_protocol as proto;

use super::{Database, DbError, Result, format_time, now_ms};

/// A queued message, with what is needed to send it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: i64,
    pub channel: String,
    pub target: String,
    pub event: String,
    pub subject: String,
    pub body: String,
    pub attempts: i64,
    pub webhook_secret: String,
    /// The claim this process holds; recording the outcome requires it still holds it.
    pub lease: i64,
}

/// A message to queue for every group attached to a product or a rollout.
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    pub product: &'a str,
    pub rollout_id: Option<i64>,
    /// `started`, `completed`, `failed`, `rolled_back`, `rollout_paused`.
    pub event: &'a str,
    pub subject: String,
    /// Plain text for e-mail.
    pub text: String,
    /// JSON for webhooks.
    pub payload: serde_json::Value,
}

impl Database {
    pub async fn create_notification_group(
        &self,
        organization_id: i64,
        create: &proto::NotificationGroupCreate,
        webhook_secret: &str,
        actor: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO notification_groups (organization_id, name, emails, webhooks, product, rollout_id, webhook_secret, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(organization_id)
        .bind(&create.name)
        .bind(serde_json::to_string(&create.emails).unwrap_or_else(|_| "[]".into()))
        .bind(serde_json::to_string(&create.webhooks).unwrap_or_else(|_| "[]".into()))
        .bind(create.product.as_deref())
        .bind(create.rollout_id)
        .bind(webhook_secret)
        .bind(actor)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(DbError::from_insert)?;
        Ok(())
    }

    pub async fn notification_groups(&self, organization_id: i64) -> Result<Vec<proto::NotificationGroup>> {
        let rows = sqlx::query(
            "SELECT g.id, g.name, g.emails, g.webhooks, g.product, g.rollout_id, g.created_at, \
             (SELECT COUNT(*) FROM notifications n WHERE n.group_id = g.id AND n.delivered_at IS NOT NULL) AS delivered, \
             (SELECT COUNT(*) FROM notifications n WHERE n.group_id = g.id AND n.delivered_at IS NULL AND n.gave_up_at IS NULL) AS pending, \
             (SELECT COUNT(*) FROM notifications n WHERE n.group_id = g.id AND n.gave_up_at IS NOT NULL) AS given_up \
             FROM notification_groups g WHERE g.organization_id = $1 ORDER BY g.name",
        )
        .bind(organization_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let emails: String = r.try_get("emails")?;
                let webhooks: String = r.try_get("webhooks")?;
                let count = |name: &str| -> Result<u64> { Ok(u64::try_from(r.try_get::<i64, _>(name)?).unwrap_or(0)) };
                Ok(proto::NotificationGroup {
                    name: r.try_get("name")?,
                    emails: serde_json::from_str(&emails).unwrap_or_default(),
                    webhooks: serde_json::from_str(&webhooks).unwrap_or_default(),
                    product: r.try_get("product")?,
                    rollout_id: r.try_get("rollout_id")?,
                    created_at: format_time(r.try_get("created_at")?),
                    webhook_secret: None,
                    delivered: count("delivered")?,
                    pending: count("pending")?,
                    given_up: count("given_up")?,
                })
            })
            .collect()
    }

    /// Queues `notice` for every group of the organization attached to its product or rollout.
    pub(crate) async fn enqueue_notice(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        organization_id: i64,
        notice: &Notice<'_>,
    ) -> Result<()> {
        let groups = sqlx::query(
            "SELECT id, emails, webhooks FROM notification_groups WHERE organization_id = $1 AND (product = $2 OR rollout_id = $3)",
        )
        .bind(organization_id)
        .bind(notice.product)
        .bind(notice.rollout_id.unwrap_or(-1))
        .fetch_all(&mut **tx)
        .await?;
        let now = now_ms();
        for group in &groups {
            let id: i64 = group.try_get("id")?;
            let emails: Vec<String> = serde_json::from_str(&group.try_get::<String, _>("emails")?).unwrap_or_default();
            let webhooks: Vec<String> =
                serde_json::from_str(&group.try_get::<String, _>("webhooks")?).unwrap_or_default();
            let payload = notice.payload.to_string();
            let messages = emails
                .iter()
                .map(|e| ("email", e, notice.text.as_str()))
                .chain(webhooks.iter().map(|w| ("webhook", w, payload.as_str())));
            for (channel, target, body) in messages {
                sqlx::query(
                    "INSERT INTO notifications (organization_id, group_id, channel, target, event, subject, body, attempts, next_attempt_at, claimed_until, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, 0, $8)",
                )
                .bind(organization_id)
                .bind(id)
                .bind(channel)
                .bind(target)
                .bind(notice.event)
                .bind(&notice.subject)
                .bind(body)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(())
    }

    pub async fn notify(&self, organization_id: i64, notice: &Notice<'_>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        self.enqueue_notice(&mut tx, organization_id, notice).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims the oldest message due for delivery, for `lease_ms`.
    pub async fn claim_notification(&self, lease_ms: i64) -> Result<Option<Outgoing>> {
        let now = now_ms();
        let row = sqlx::query(
            "UPDATE notifications SET claimed_until = $1 WHERE id = (SELECT id FROM notifications \
             WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= $2 AND claimed_until < $2 ORDER BY id LIMIT 1) \
             AND claimed_until < $2 \
             RETURNING id, group_id, channel, target, event, subject, body, attempts",
        )
        .bind(now + lease_ms)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let group_id: i64 = row.try_get("group_id")?;
        let secret: String = sqlx::query("SELECT webhook_secret FROM notification_groups WHERE id = $1")
            .bind(group_id)
            .fetch_one(&self.pool)
            .await?
            .try_get("webhook_secret")?;
        Ok(Some(Outgoing {
            id: row.try_get("id")?,
            channel: row.try_get("channel")?,
            target: row.try_get("target")?,
            event: row.try_get("event")?,
            subject: row.try_get("subject")?,
            body: row.try_get("body")?,
            attempts: row.try_get("attempts")?,
            webhook_secret: secret,
            lease: now + lease_ms,
        }))
    }

    pub async fn notification_delivered(&self, id: i64, lease: i64) -> Result<()> {
        sqlx::query(
            "UPDATE notifications SET delivered_at = $1, attempts = attempts + 1, last_error = NULL WHERE id = $2 AND claimed_until = $3",
        )
        .bind(now_ms())
        .bind(id)
        .bind(lease)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a failed attempt; `retry_at` `None` gives up.
    pub async fn notification_failed(&self, id: i64, lease: i64, error: &str, retry_at: Option<i64>) -> Result<()> {
        sqlx::query(
            "UPDATE notifications SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2, claimed_until = 0, gave_up_at = $3 \
             WHERE id = $4 AND claimed_until = $5",
        )
        .bind(error)
        .bind(retry_at.unwrap_or(0))
        .bind(if retry_at.is_none() { Some(now_ms()) } else { None })
        .bind(id)
        .bind(lease)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
