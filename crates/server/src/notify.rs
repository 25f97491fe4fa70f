//! Notifications: what is said when an update starts, completes, fails or rolls back, or a rollout
//! pauses itself, and the worker that delivers the outbox — e-mail over SMTP (`lettre`) and
//! webhooks signed with HMAC-SHA256 — retrying with backoff.

use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::Sha256;
use upkeep_protocol as proto;

use crate::db::{self, Database, Notice, Outgoing};

/// Attempts before a message is given up on.
pub const MAX_ATTEMPTS: i64 = 8;
/// How long one process holds a claimed message.
const LEASE_MS: i64 = 60_000;

/// Outgoing e-mail settings.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// `smtp://host:25`, `smtp://user:pass@host:587?tls=required`, `smtps://host:465`.
    pub fn new(url: &str, from: &str) -> Result<Self, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| format!("the SMTP URL is not usable: {e}"))?
            .timeout(Some(Duration::from_secs(30)))
            .build();
        let from = from
            .parse()
            .map_err(|e| format!("`{from}` is not an e-mail address: {e}"))?;
        Ok(Mailer { transport, from })
    }
}

/// The notice for a workstation's report, when its status is one people are told about.
pub fn workstation_notice<'a>(
    report: &'a proto::DeviceReport,
    workstation: &str,
    hostname: &str,
) -> Option<Notice<'a>> {
    let (event, what) = match report.status {
        proto::WorkstationStatus::Installing => ("started", "update started"),
        proto::WorkstationStatus::Installed => ("completed", "update completed"),
        proto::WorkstationStatus::Failed => ("failed", "update FAILED"),
        proto::WorkstationStatus::RolledBack => ("rolled_back", "update ROLLED BACK"),
        _ => return None,
    };
    let from = report.from_version.as_deref().unwrap_or("nothing");
    let subject = format!("[upkeep] {} {} on {hostname}: {what}", report.product, report.version);
    let mut text = format!(
        "{what}: {} {} on {hostname} ({workstation}), replacing {from}.\n",
        report.product, report.version
    );
    if let Some(code) = &report.error_code {
        text.push_str(&format!("\nError code: {code}\n"));
    }
    if let Some(message) = &report.message {
        // The whole error, so it can be forwarded to support as it is.
        text.push_str(&format!("Error: {message}\n"));
    }
    if let Some(rollout) = report.rollout_id {
        text.push_str(&format!("\nRollout {rollout}: upkeep rollout status {rollout}\n"));
    }
    let payload = serde_json::json!({
        "event": event,
        "product": report.product,
        "version": report.version,
        "from_version": report.from_version,
        "workstation_id": workstation,
        "hostname": hostname,
        "rollout_id": report.rollout_id,
        "error_code": report.error_code,
        "message": report.message,
        "at": report.at,
    });
    Some(Notice {
        product: &report.product,
        rollout_id: report.rollout_id,
        event,
        subject,
        text,
        payload,
    })
}

/// The notice for a rollout that paused itself.
pub fn paused_notice<'a>(product: &'a str, version: &str, rollout_id: i64, reason: &str) -> Notice<'a> {
    Notice {
        product,
        rollout_id: Some(rollout_id),
        event: "rollout_paused",
        subject: format!("[upkeep] rollout {rollout_id} of {product} {version} paused itself"),
        text: format!(
            "Rollout {rollout_id} ({product} {version}) {reason}.\n\nResume it with: upkeep rollout resume {rollout_id}\n"
        ),
        payload: serde_json::json!({ "event": "rollout_paused", "product": product, "version": version, "rollout_id": rollout_id, "message": reason }),
    }
}

/// `sha256=HEX` of the body under the group's secret, as sent in `X-Upkeep-Signature`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers due messages every `interval` until the process ends.
pub fn spawn_worker(db: Database, mailer: Option<Mailer>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = match reqwest::Client::builder().timeout(Duration::from_secs(20)).build() {
            Ok(http) => http,
            Err(e) => {
                tracing::error!(error = %e, "notifications: no HTTP client; webhooks will not be sent");
                return;
            }
        };
        let mut timer = tokio::time::interval(interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            timer.tick().await;
            loop {
                match db.claim_notification(LEASE_MS).await {
                    Ok(Some(message)) => deliver(&db, &http, mailer.as_ref(), message).await,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "notifications: cannot read the outbox");
                        break;
                    }
                }
            }
        }
    })
}

async fn deliver(db: &Database, http: &reqwest::Client, mailer: Option<&Mailer>, message: Outgoing) {
    // Finish well inside the claim, so no other process picks the message up meanwhile.
    let send = async {
        match message.channel.as_str() {
            "email" => send_email(mailer, &message).await,
            _ => send_webhook(http, &message).await,
        }
    };
    let result = tokio::time::timeout(
        Duration::from_millis(u64::try_from(LEASE_MS / 2).unwrap_or(30_000)),
        send,
    )
    .await
    .unwrap_or_else(|_| Err("timed out".to_owned()));
    let outcome = match result {
        Ok(()) => db.notification_delivered(message.id, message.lease).await,
        Err(error) => {
            let attempts = message.attempts + 1;
            let retry_at = (attempts < MAX_ATTEMPTS).then(|| db::now_ms() + backoff_ms(attempts));
            tracing::warn!(id = message.id, channel = %message.channel, target = %message.target, attempts, %error, "notification not delivered");
            db.notification_failed(message.id, message.lease, &error, retry_at)
                .await
        }
    };
    if let Err(e) = outcome {
        tracing::error!(error = %e, "notifications: cannot record a delivery");
    }
}

/// 2 s, 4 s, 8 s, … up to an hour.
fn backoff_ms(attempts: i64) -> i64 {
    (2_000i64.saturating_mul(1 << attempts.clamp(0, 20))).min(3_600_000)
}

async fn send_email(mailer: Option<&Mailer>, message: &Outgoing) -> Result<(), String> {
    let mailer = mailer.ok_or("no SMTP server is configured (upkeep-server serve --smtp-url …)")?;
    let to: Mailbox = message
        .target
        .parse()
        .map_err(|e| format!("`{}` is not an e-mail address: {e}", message.target))?;
    let email = Message::builder()
        .from(mailer.from.clone())
        .to(to)
        .subject(&message.subject)
        .header(lettre::message::header::ContentType::TEXT_PLAIN)
        .body(message.body.clone())
        .map_err(|e| format!("building the e-mail: {e}"))?;
    mailer
        .transport
        .send(email)
        .await
        .map(|_| ())
        .map_err(|e| format!("SMTP: {e}"))
}

async fn send_webhook(http: &reqwest::Client, message: &Outgoing) -> Result<(), String> {
    let response = http
        .post(&message.target)
        .header("content-type", "application/json")
        .header("x-upkeep-event", &message.event)
        .header("x-upkeep-delivery", message.id.to_string())
        .header(
            "x-upkeep-signature",
            signature(&message.webhook_secret, message.body.as_bytes()),
        )
        .body(message.body.clone())
        .send()
        .await
        .map_err(|e| format!("webhook: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("webhook answered HTTP {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(1), 4_000);
        assert_eq!(backoff_ms(2), 8_000);
        assert_eq!(backoff_ms(30), 3_600_000);
    }
}
