//! The `upkeep-server` program: flags (each also an `UPKEEP_*` environment variable), first-start
//! bootstrap, and the serve loop.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::blobs::BlobStore;
use crate::checkin_cache::{CacheSettings, CheckinCache};
use crate::db::{self, Database};
use crate::signing::ManifestSigner;
use crate::{AppState, Settings, auth};

#[derive(Debug, Parser)]
#[command(
    name = "upkeep-server",
    version,
    about = "The upkeep update server: publish, approve and roll out software to workstations"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "UPKEEP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Data folder: SQLite database, blobs, signing key.
    #[arg(long, env = "UPKEEP_DATA", default_value = "./upkeep-data")]
    pub data: PathBuf,
    /// Database URL; default: the SQLite file DATA/upkeep.db. Use postgres://… to scale out.
    #[arg(long, env = "UPKEEP_DATABASE")]
    pub database: Option<String>,
    /// Largest artifact an upload may carry, in bytes.
    #[arg(long, env = "UPKEEP_MAX_UPLOAD_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// How often rollouts are checked: scheduled starts, waves to open, failure thresholds.
    #[arg(long, env = "UPKEEP_ROLLOUT_TICK", default_value = "5s", value_parser = parse_tick)]
    pub rollout_tick: std::time::Duration,
    /// How long a signed TUF timestamp is valid (re-signed when half is left). Short lifetimes
    /// make a frozen or replayed repository noticed sooner.
    #[arg(long, env = "UPKEEP_TUF_TIMESTAMP_LIFETIME", default_value = "1d", value_parser = parse_tick)]
    pub tuf_timestamp_lifetime: std::time::Duration,
    /// SMTP server for notification e-mails: smtp://host:25, smtp://user:pass@host:587?tls=required,
    /// smtps://host:465. Without it, e-mails wait in the outbox.
    #[arg(long, env = "UPKEEP_SMTP_URL")]
    pub smtp_url: Option<String>,
    /// Sender of notification e-mails.
    #[arg(long, env = "UPKEEP_SMTP_FROM", default_value = "upkeep <upkeep@localhost>")]
    pub smtp_from: String,
    /// How often the notification outbox is delivered.
    #[arg(long, env = "UPKEEP_NOTIFY_INTERVAL", default_value = "2s", value_parser = parse_tick)]
    pub notify_interval: std::time::Duration,
    /// Ed25519 manifest-signing key (base64 of 32 bytes); created on first start when missing.
    /// Default: DATA/keys/manifest-signing.key.
    #[arg(long, env = "UPKEEP_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// A mirror of the TUF targets tree (repeatable; the variable takes a comma-separated list):
    /// agents fetch an artifact from MIRROR/<organization>/targets/<sha256>.<target name> first,
    /// in the order given, and fall back to this server. Mirrors are not trusted: the bytes are
    /// checked against the signed size and SHA-256.
    #[arg(
        long = "mirror",
        value_name = "URL",
        env = "UPKEEP_MIRRORS",
        value_delimiter = ',',
        value_parser = parse_mirror
    )]
    pub mirrors: Vec<String>,
    /// How often this process looks for changes other server processes made to approvals and
    /// rollouts (check-ins are answered from memory in between).
    #[arg(long, env = "UPKEEP_CACHE_REFRESH", default_value = "250ms", value_parser = parse_tick)]
    pub cache_refresh: std::time::Duration,
    /// A workstation's last check-in time is stored at most this often; a check-in that changes
    /// nothing else writes nothing at once. The console shows check-in times to the minute, so a
    /// minute loses nothing there and bounds the writes to one per workstation per minute.
    #[arg(long, env = "UPKEEP_LAST_CHECKIN_PRECISION", default_value = "60s", value_parser = parse_tick)]
    pub last_checkin_precision: std::time::Duration,
    /// After each release upload, build binary patches to it from this many earlier releases of
    /// the same product and platform (tar.gz artifacts only), so agents download only what
    /// changed. 0 turns delta updates off.
    #[arg(long, env = "UPKEEP_DELTA_FROM_RELEASES", default_value_t = 3)]
    pub delta_from_releases: usize,
    /// How long a client may take to send a request's head (and a small body that comes with
    /// it) before the connection is closed, so slow or stalled clients cannot hold connections.
    #[arg(long, env = "UPKEEP_REQUEST_READ_TIMEOUT", default_value = "30s", value_parser = parse_tick)]
    pub request_read_timeout: std::time::Duration,
}

/// Runs the program; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UPKEEP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("upkeep-server: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upkeep-server: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.request_read_timeout.is_zero() {
        anyhow::bail!("--request-read-timeout must be longer than 0s: every request would time out");
    }
    std::fs::create_dir_all(&args.data).with_context(|| format!("creating data folder {}", args.data.display()))?;
    let url = match &args.database {
        Some(url) => url.clone(),
        None => format!("sqlite://{}?mode=rwc", args.data.join("upkeep.db").display()),
    };
    let db = Database::connect(&url)
        .await
        .with_context(|| format!("opening database {}", db::redact_url(&url)))?;

    let (password, generated) = match std::env::var("UPKEEP_ADMIN_PASSWORD") {
        Ok(p) if !p.is_empty() => (p, false),
        _ => (auth::random_password(), true),
    };
    let created = if db.user_count().await? == 0 {
        let hash = auth::hash_password(&password).map_err(|e| anyhow::anyhow!("{e}"))?;
        db.bootstrap(&hash).await?
    } else {
        db.bootstrap("").await?;
        false
    };

    let key_path = args
        .signing_key
        .clone()
        .unwrap_or_else(|| args.data.join("keys").join("manifest-signing.key"));
    let signer = ManifestSigner::load_or_create(&key_path)?;
    // Agents pin this key: every server process over one database must sign with the same one.
    let agreed = db
        .agree_on("manifest_signing_public_key", &signer.public_key_base64())
        .await?;
    if agreed != signer.public_key_base64() {
        anyhow::bail!(
            "the signing key {} is not the one this database's agents trust; copy the first server's key file here or pass --signing-key",
            key_path.display()
        );
    }
    let blobs = BlobStore::local(&args.data.join("blobs")).context("opening blob folder")?;
    let state = AppState {
        db: db.clone(),
        blobs,
        signer: Arc::new(signer),
        settings: Arc::new(Settings {
            max_upload_bytes: args.max_upload_bytes,
            staging_dir: args.data.join("tmp"),
            rollout_tick: args.rollout_tick,
            tuf_keys_dir: args.data.join("keys").join("tuf"),
            tuf_timestamp_lifetime: args.tuf_timestamp_lifetime,
            mirrors: args.mirrors.clone(),
            delta_from_releases: args.delta_from_releases,
            request_read_timeout: args.request_read_timeout,
        }),
        director_keys: Arc::default(),
        checkin_cache: Arc::new(CheckinCache::new(CacheSettings {
            refresh: args.cache_refresh,
            last_checkin_precision: args.last_checkin_precision,
            offer_deltas: args.delta_from_releases > 0,
            ..CacheSettings::default()
        })),
    };
    let ticker = crate::rollouts::spawn_ticker(state.clone(), args.rollout_tick);
    let refresher = crate::checkin_cache::spawn_refresher(state.clone());
    crate::delta::spawn_resume(state.clone());
    let mailer = match &args.smtp_url {
        Some(url) => {
            Some(crate::notify::Mailer::new(url, &args.smtp_from).map_err(|e| anyhow::anyhow!("--smtp-url: {e}"))?)
        }
        None => None,
    };
    let notifier = crate::notify::spawn_worker(db.clone(), mailer, args.notify_interval);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let address = listener.local_addr()?;
    let base = format!("http://{address}");
    {
        // Printed on stdout (not the log) so people and scripts can read it.
        let mut out = std::io::stdout().lock();
        if created {
            if generated {
                writeln!(
                    out,
                    "Created the administrator account `admin` with password: {password}"
                )?;
                writeln!(out, "It is shown only this once. Sign in with:")?;
            } else {
                writeln!(
                    out,
                    "Created the administrator account `admin` with the password from UPKEEP_ADMIN_PASSWORD. Sign in with:"
                )?;
            }
            writeln!(out, "  upkeep login --server {base} --user admin --password-stdin")?;
        }
        writeln!(out, "upkeep-server listening on {base}")?;
        out.flush()?;
    }
    tracing::info!(%address, database = %db::redact_url(&url), mirrors = ?args.mirrors, "serving");
    crate::serve(listener, state.clone(), shutdown_signal()).await?;
    ticker.abort();
    notifier.abort();
    refresher.abort();
    // Check-in times still waiting for their batch.
    if let Err(e) = state.checkin_cache.flush(&db).await {
        tracing::warn!(error = %e, "storing the last check-in times");
    }
    db.close().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

fn parse_tick(text: &str) -> Result<std::time::Duration, String> {
    upkeep_domain::parse_duration(text)
        .map(|ms| std::time::Duration::from_millis(ms.unsigned_abs()))
        .or_else(|_| {
            text.strip_suffix("ms")
                .and_then(|n| n.parse().ok())
                .map(std::time::Duration::from_millis)
                .ok_or(())
        })
        .map_err(|()| format!("`{text}` is not a duration such as 5s or 200ms"))
}

/// A `--mirror`: an absolute http(s) URL, returned without its trailing `/` because artifact paths
/// are appended to it (so it cannot carry a query or a fragment either).
fn parse_mirror(text: &str) -> Result<String, String> {
    let parsed = url::Url::parse(text.trim())
        .map_err(|e| format!("`{text}` is not an absolute URL ({e}); expected http(s)://HOST[:PORT][/PATH]"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{text}` is not an http or https URL"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "`{text}` has a query or a fragment; artifact paths are appended to a mirror's URL"
        ));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_are_absolute_http_urls() {
        assert_eq!(
            parse_mirror("https://cdn.example.com/upkeep/").as_deref(),
            Ok("https://cdn.example.com/upkeep")
        );
        assert_eq!(
            parse_mirror("http://10.0.0.5:8081").as_deref(),
            Ok("http://10.0.0.5:8081")
        );
        for bad in [
            "cdn.example.com/upkeep",
            "/srv/mirror",
            "ftp://cdn.example.com/upkeep",
            "file:///srv/mirror",
            "https://cdn.example.com/upkeep?x=1",
            "https://cdn.example.com/upkeep#top",
            "",
        ] {
            assert!(parse_mirror(bad).is_err(), "{bad} was accepted");
        }
    }
}
