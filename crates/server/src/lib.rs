//! The upkeep server as a library: [`router`] builds the whole HTTP surface over an [`AppState`],
//! [`serve`] runs it on a listener until shutdown, and [`command`] is the `upkeep-server` program.
//!
//! Invariant: no state that another server process needs lives only in this process's memory; the
//! database and the blob store are the shared truth.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

pub mod admin_api;
pub mod auth;
pub mod blobs;
pub mod checkin_cache;
pub mod command;
pub mod console;
pub mod db;
pub mod delta;
pub mod device_api;
pub mod error;
pub mod manifest;
pub mod notify;
pub mod rollouts;
pub mod routes;
mod serve;
pub mod signing;
mod telemetry;
pub mod tuf;

use blobs::BlobStore;
use db::Database;
use signing::ManifestSigner;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub blobs: BlobStore,
    pub signer: Arc<ManifestSigner>,
    pub settings: Arc<Settings>,
    pub director_keys: Arc<tuf::DirectorKeys>,
    /// What check-ins read, kept in memory and invalidated through the database.
    pub checkin_cache: Arc<checkin_cache::CheckinCache>,
}

/// Server behaviour that handlers need to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest artifact accepted by an upload.
    pub max_upload_bytes: u64,
    /// Where uploads are staged before they are verified and stored.
    pub staging_dir: PathBuf,
    /// How often rollouts are checked for waves to open and scheduled starts.
    pub rollout_tick: std::time::Duration,
    /// Hosted TUF keys, one folder per organization.
    pub tuf_keys_dir: PathBuf,
    /// How long a signed TUF timestamp is valid; it is re-signed when half of it is left.
    pub tuf_timestamp_lifetime: std::time::Duration,
    /// Base URLs of mirrors of the TUF targets tree, offered to agents in this order.
    pub mirrors: Vec<String>,
    /// Patches to each new `tar.gz` release are built from this many earlier releases (0: none).
    pub delta_from_releases: usize,
    /// How long a client may take from a request's first byte to the end of its head, and how
    /// long an upload may go silent midway.
    pub request_read_timeout: std::time::Duration,
}

impl Settings {
    /// A new temporary file in the staging folder, removed when the path is dropped.
    pub(crate) async fn staged(&self, prefix: &str) -> std::io::Result<tempfile::TempPath> {
        tokio::fs::create_dir_all(&self.staging_dir).await?;
        Ok(tempfile::Builder::new()
            .prefix(prefix)
            .tempfile_in(&self.staging_dir)?
            .into_temp_path())
    }
}

pub fn router(state: AppState) -> Router {
    telemetry::install();
    routes::router(state.clone())
        .fallback(not_found)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

pub(crate) async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<&'static str, error::ApiError> {
    state.db.ping().await?;
    Ok("ok\n")
}

async fn not_found(
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let err = error::ApiError::not_found(
        upkeep_protocol::codes::NOT_FOUND,
        None,
        format!("no such route: {}", uri.path()),
    );
    // People following a link get a page; scripts get the API's error shape.
    let wants_page = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_page {
        console::refused(err, &method, &uri)
    } else {
        axum::response::IntoResponse::into_response(err)
    }
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let read_timeout = state.settings.request_read_timeout;
    serve::run(listener, router(state), read_timeout, shutdown).await
}
