//! Prometheus metrics at `/metrics`: counters kept with the `metrics` crate and rendered by its
//! Prometheus exporter. They count what this process did since it started; with several server
//! processes, each is scraped on its own.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Bytes of stored files (artifacts, patches, TUF targets) sent in answers, by how they reached
/// the socket.
pub(crate) const FILE_BYTES_SENT: &str = "upkeep_file_bytes_sent_total";

/// How the bytes of a file answer reached the socket.
#[derive(Clone, Copy)]
pub(crate) enum Sent {
    /// From the page cache with `sendfile(2)`, no user-space copy.
    Sendfile,
    /// Read into memory and written (HTTP/2, object stores, other platforms).
    Copied,
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder once; later calls (a second router in one process) reuse it.
pub(crate) fn install() {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new().install_recorder().ok()?;
        metrics::describe_counter!(
            FILE_BYTES_SENT,
            metrics::Unit::Bytes,
            "Bytes of stored files sent in answers, by how they reached the socket"
        );
        Some(handle)
    });
}

pub(crate) fn file_bytes_sent(how: Sent, bytes: u64) {
    let how = match how {
        Sent::Sendfile => "sendfile",
        Sent::Copied => "copied",
    };
    metrics::counter!(FILE_BYTES_SENT, "how" => how).increment(bytes);
}

/// `GET /metrics`: the Prometheus text format.
pub(crate) async fn metrics() -> axum::response::Response {
    let text = HANDLE
        .get()
        .and_then(Option::as_ref)
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    axum::response::IntoResponse::into_response((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}
