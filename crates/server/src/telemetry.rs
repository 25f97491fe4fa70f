//! Prometheus metrics at `/metrics`: counters, gauges and a histogram kept with the `metrics`
//! crate and rendered by its Prometheus exporter. They count what this process did since it
//! started; with several server processes, each is scraped on its own.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Bytes of stored files (artifacts, patches, TUF targets) sent in answers, by how they reached
/// the socket.
pub(crate) const FILE_BYTES_SENT: &str = "upkeep_file_bytes_sent_total";
/// Check-ins from authenticated workstations, by whether they were answered or refused.
const CHECKINS: &str = "upkeep_checkins_total";
/// How long answering a check-in took, from its parsed body to its answer.
const CHECKIN_SECONDS: &str = "upkeep_checkin_duration_seconds";
/// Update offers made in check-in answers (one per product offered).
const OFFERS: &str = "upkeep_update_offers_total";
/// Workstations whose token and last report this process holds in memory.
const CACHED_WORKSTATIONS: &str = "upkeep_cached_workstations";
/// Check-in times collected and not yet written to the database.
const PENDING_CHECKIN_TIMES: &str = "upkeep_checkin_times_pending";

/// Histogram buckets for check-in durations, in seconds: most answers take well under 1 ms.
const CHECKIN_BUCKETS: [f64; 12] = [
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Histogram samples wait in memory until folded into their buckets; this bounds how many.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

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
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(CHECKIN_SECONDS.to_owned()), &CHECKIN_BUCKETS)
            .ok()?
            .install_recorder()
            .ok()?;
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            })
            .ok()?;
        metrics::describe_counter!(
            FILE_BYTES_SENT,
            metrics::Unit::Bytes,
            "Bytes of stored files sent in answers, by how they reached the socket"
        );
        metrics::describe_counter!(CHECKINS, "Check-ins from enrolled workstations, by outcome");
        metrics::describe_histogram!(
            CHECKIN_SECONDS,
            metrics::Unit::Seconds,
            "Time to answer a check-in, from its parsed body to its answer"
        );
        metrics::describe_counter!(OFFERS, "Update offers made in check-in answers, one per product");
        metrics::describe_gauge!(
            CACHED_WORKSTATIONS,
            "Workstations whose token and last report this process holds in memory"
        );
        metrics::describe_gauge!(
            PENDING_CHECKIN_TIMES,
            "Check-in times collected and not yet written to the database"
        );
        Some(handle)
    });
}

/// The check-in handles, looked up once: a lookup by name on each check-in costs more than the
/// count itself.
struct CheckinMetrics {
    answered: metrics::Counter,
    refused: metrics::Counter,
    seconds: metrics::Histogram,
    offers: metrics::Counter,
}

fn checkin_metrics() -> &'static CheckinMetrics {
    static METRICS: OnceLock<CheckinMetrics> = OnceLock::new();
    METRICS.get_or_init(|| CheckinMetrics {
        answered: metrics::counter!(CHECKINS, "outcome" => "answered"),
        refused: metrics::counter!(CHECKINS, "outcome" => "refused"),
        seconds: metrics::histogram!(CHECKIN_SECONDS),
        offers: metrics::counter!(OFFERS),
    })
}

/// Counts a check-in answered with `offers` update offers, or refused (`None`), and its time.
pub(crate) fn checkin(took: Duration, offers: Option<usize>) {
    let m = checkin_metrics();
    match offers {
        Some(offers) => {
            m.answered.increment(1);
            m.offers.increment(offers as u64);
        }
        None => m.refused.increment(1),
    }
    m.seconds.record(took.as_secs_f64());
}

/// The sizes of the check-in cache, as of its last refresh.
pub(crate) fn checkin_cache(workstations: usize, pending_times: usize) {
    metrics::gauge!(CACHED_WORKSTATIONS).set(workstations as f64);
    metrics::gauge!(PENDING_CHECKIN_TIMES).set(pending_times as f64);
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
