//! `upkeep-bench`: a fleet simulator for measuring `upkeep-server`, not a test.
//!
//! - `enroll`: enrolls N simulated workstations through the device API, many at a time, and keeps
//!   their device tokens in a file.
//! - `checkin`: drives check-ins from many concurrent connections, each request as one of the
//!   enrolled workstations with a realistic inventory (several products), and reports throughput
//!   and latency percentiles (HdrHistogram).
//! - `get`: the same load loop as plain GETs of one URL, so a static file on nginx is measured by
//!   the very same client.
//! - `download`: fetches one URL repeatedly and reports the throughput.
//! - `delta-build` / `delta-apply`: builds or applies one binary patch with `upkeep-delta`, timed
//!   (used by `bench/delta`, which runs each in its own process to read its peak memory).
//!
//! Each command prints one JSON object on stdout.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use upkeep_protocol as proto;

#[derive(Parser)]
#[command(
    name = "upkeep-bench",
    version,
    about = "Fleet simulator for upkeep-server benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll simulated workstations; writes `workstation_id token` lines to --out.
    Enroll {
        #[arg(long)]
        server: String,
        /// An enrollment token (`upkeep enroll-token create`).
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Share of workstations (0–100) put in the group `canary`, which a rollout can target.
        #[arg(long, default_value_t = 0)]
        canary_percent: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Drive check-ins as the enrolled workstations.
    Checkin {
        #[arg(long)]
        server: String,
        /// The file `enroll --out` wrote.
        #[arg(long)]
        tokens: PathBuf,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Seconds of measurement, after one second of warm-up.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// `product=version` pairs every workstation reports installed.
        #[arg(long = "installed", value_name = "PRODUCT=VERSION")]
        installed: Vec<String>,
        /// Each workstation checks in exactly once (its first check-in after enrollment, which
        /// stores its inventory), instead of a timed run.
        #[arg(long)]
        once: bool,
    },
    /// GET one URL in the same load loop (for a static-file reference).
    Get {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Download one URL again and again; reports bytes per second.
    Download {
        #[arg(long)]
        url: String,
        /// A device token, for the server's artifact endpoint.
        #[arg(long)]
        token: Option<String>,
        #[arg(long, default_value_t = 2)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Build a patch from OLD to NEW with one method.
    DeltaBuild {
        #[arg(long)]
        method: String,
        #[arg(long)]
        old: PathBuf,
        #[arg(long)]
        new: PathBuf,
        #[arg(long)]
        patch: PathBuf,
    },
    /// Apply PATCH to OLD, writing OUT (bounded by --limit bytes).
    DeltaApply {
        #[arg(long)]
        method: String,
        #[arg(long)]
        old: PathBuf,
        #[arg(long)]
        patch: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        limit: u64,
    },
}

fn client(connections: usize) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Enroll {
            server,
            token,
            count,
            concurrency,
            canary_percent,
            out,
        } => enroll(&server, &token, count, concurrency, canary_percent, &out).await,
        Command::Checkin {
            server,
            tokens,
            connections,
            seconds,
            installed,
            once,
        } => checkin(&server, &tokens, connections, seconds, &installed, once).await,
        Command::Get {
            url,
            connections,
            seconds,
        } => {
            let http = client(connections)?;
            let report = load(connections, seconds, move |_| {
                let request = http.get(&url);
                async move { finish(request.send().await).await }
            })
            .await;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Download {
            url,
            token,
            connections,
            seconds,
        } => download(&url, token.as_deref(), connections, seconds).await,
        Command::DeltaBuild {
            method,
            old,
            new,
            patch,
        } => {
            let method = upkeep_delta::Method::parse(&method)?;
            let (old, new) = (std::fs::read(&old)?, std::fs::read(&new)?);
            let started = Instant::now();
            let bytes = upkeep_delta::build(method, &old, &new)?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            std::fs::write(&patch, &bytes)?;
            // `chosen`: what the server would build these two with.
            let chosen = upkeep_delta::Method::for_sizes(old.len() as u64, new.len() as u64);
            println!(
                "{}",
                serde_json::json!({ "method": method.as_str(), "chosen": chosen.as_str(), "patch_bytes": bytes.len(), "ms": ms })
            );
            Ok(())
        }
        Command::DeltaApply {
            method,
            old,
            patch,
            out,
            limit,
        } => {
            let method = upkeep_delta::Method::parse(&method)?;
            let (old, patch) = (std::fs::read(&old)?, std::fs::read(&patch)?);
            let started = Instant::now();
            let file = std::io::BufWriter::new(std::fs::File::create(&out)?);
            let written = upkeep_delta::apply(method, &old, &patch, file, limit)?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            println!(
                "{}",
                serde_json::json!({ "method": method.as_str(), "out_bytes": written, "ms": ms })
            );
            Ok(())
        }
    }
}

async fn enroll(
    server: &str,
    token: &str,
    count: usize,
    concurrency: usize,
    canary_percent: usize,
    out: &PathBuf,
) -> anyhow::Result<()> {
    let http = client(concurrency)?;
    let url = format!("{}/api/v1/device/enroll", server.trim_end_matches('/'));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, token, next) = (http.clone(), url.clone(), token.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lines = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(lines);
                }
                let groups = if i % 100 < canary_percent {
                    vec!["canary".to_owned()]
                } else {
                    Vec::new()
                };
                let request = proto::EnrollRequest {
                    token: token.clone(),
                    hostname: format!("ws-{i:07}"),
                    os: "linux".into(),
                    arch: "x86_64".into(),
                    agent_version: "0.1.0".into(),
                    groups,
                };
                let response = http.post(&url).json(&request).send().await?;
                if !response.status().is_success() {
                    bail!(
                        "enroll {i}: {} {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    );
                }
                let enrolled: proto::EnrollResponse = response.json().await?;
                lines.push(format!("{} {}", enrolled.workstation_id, enrolled.device_token));
            }
        }));
    }
    let mut all = Vec::with_capacity(count);
    for task in tasks {
        all.extend(task.await??);
    }
    std::fs::write(out, all.join("\n") + "\n").with_context(|| format!("writing {}", out.display()))?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({ "enrolled": all.len(), "seconds": secs, "per_second": all.len() as f64 / secs })
    );
    Ok(())
}

async fn checkin(
    server: &str,
    tokens: &PathBuf,
    connections: usize,
    seconds: u64,
    installed: &[String],
    once: bool,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(tokens).with_context(|| format!("reading {}", tokens.display()))?;
    let installed = installed
        .iter()
        .map(|pair| {
            let (product, version) = pair.split_once('=').context("--installed takes PRODUCT=VERSION")?;
            Ok(proto::InstalledProduct {
                product: product.to_owned(),
                version: version.to_owned(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // One request per workstation, built up front: its token and a body naming it as the host.
    let mut requests = Vec::new();
    for line in text.lines() {
        let Some((id, token)) = line.split_once(' ') else {
            continue;
        };
        let body = serde_json::to_vec(&proto::CheckinRequest {
            hostname: id.to_owned(),
            os: "linux".into(),
            arch: "x86_64".into(),
            agent_version: "0.1.0".into(),
            installed: installed.clone(),
            utc_offset_minutes: 0,
            director_counter: 0,
        })?;
        requests.push((format!("Bearer {token}"), bytes::Bytes::from(body)));
    }
    if requests.is_empty() {
        bail!("no tokens in the file");
    }
    let requests = Arc::new(requests);
    let http = client(connections)?;
    let url = format!("{}/api/v1/device/checkin", server.trim_end_matches('/'));
    let send = move |i: u64| {
        let (token, body) = &requests[(i as usize) % requests.len()];
        let request = http
            .post(&url)
            .header("authorization", token)
            .header("content-type", "application/json")
            .body(body.clone());
        async move { finish(request.send().await).await }
    };
    let report = if once {
        let count = text.lines().filter(|l| l.contains(' ')).count() as u64;
        load_count(connections, count, send).await
    } else {
        load(connections, seconds, send).await
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Reads the whole answer; true when it was a success.
async fn finish(response: reqwest::Result<reqwest::Response>) -> bool {
    match response {
        Ok(r) => {
            let ok = r.status().is_success();
            ok && r.bytes().await.is_ok()
        }
        Err(_) => false,
    }
}

#[derive(serde::Serialize)]
struct LoadReport {
    requests: u64,
    errors: u64,
    seconds: f64,
    per_second: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Runs `connections` loops of `request(n)` for one second of warm-up and then `seconds`
/// measured; latencies go into one histogram (microseconds).
async fn load<F, Fut>(connections: usize, seconds: u64, request: F) -> LoadReport
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let warmup = Instant::now() + Duration::from_secs(1);
    let end = warmup + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (request, counter, errors) = (request.clone(), counter.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let start = Instant::now();
                let ok = request(n).await;
                let now = Instant::now();
                if now >= end {
                    return histogram;
                }
                if start >= warmup {
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(h) = histogram.as_mut() {
                        let _ = h.record((now - start).as_micros().max(1) as u64);
                    }
                }
            }
        }));
    }
    let mut histograms = Vec::with_capacity(tasks.len());
    for task in tasks {
        histograms.push(task.await.ok().flatten());
    }
    summarize(histograms, errors, seconds as f64)
}

/// Merges the loops' histograms into one report over `seconds`.
fn summarize(histograms: Vec<Option<Histogram<u64>>>, errors: Arc<AtomicU64>, seconds: f64) -> LoadReport {
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
    for h in histograms.iter().flatten() {
        if let Some(t) = total.as_mut() {
            let _ = t.add(h);
        }
    }
    let ms = |q: f64| total.as_ref().map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0);
    let requests = total.as_ref().map_or(0, Histogram::len);
    LoadReport {
        requests,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        per_second: requests as f64 / seconds.max(1e-9),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: total.as_ref().map_or(0.0, |h| h.max() as f64 / 1000.0),
    }
}

/// Runs `count` requests in all from `connections` loops, with no warm-up (each is measured).
async fn load_count<F, Fut>(connections: usize, count: u64, request: F) -> LoadReport
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (request, next, errors) = (request.clone(), next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return histogram;
                }
                let start = Instant::now();
                if !request(n).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(h) = histogram.as_mut() {
                    let _ = h.record(start.elapsed().as_micros().max(1) as u64);
                }
            }
        }));
    }
    let mut histograms = Vec::with_capacity(tasks.len());
    for task in tasks {
        histograms.push(task.await.ok().flatten());
    }
    summarize(histograms, errors, started.elapsed().as_secs_f64())
}

async fn download(url: &str, token: Option<&str>, connections: usize, seconds: u64) -> anyhow::Result<()> {
    let http = client(connections)?;
    let bytes = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (http, url, token, bytes) = (http.clone(), url.to_owned(), token.map(str::to_owned), bytes.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let mut request = http.get(&url);
                if let Some(t) = &token {
                    request = request.bearer_auth(t);
                }
                let mut response = request.send().await?.error_for_status()?;
                while let Some(chunk) = response.chunk().await? {
                    bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let total = bytes.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({ "bytes": total, "seconds": secs, "bytes_per_second": total as f64 / secs })
    );
    Ok(())
}
