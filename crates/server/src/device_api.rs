//! The device API under `/api/v1/device`, spoken by `upkeep-agent`: enroll, check in, download
//! artifacts (with HTTP Range, so interrupted downloads resume) and report each step.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::Method;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use object_store::GetRange;
use semver::Version;
use upkeep_domain::{self as domain, Approval, WorkstationView, parse_version, validate_name};
use upkeep_protocol::{self as proto, codes};

use crate::AppState;
use crate::admin_api::ApiJson;
use crate::auth::{self, Device};
use crate::blobs::{BlobError, is_sha256_hex};
use crate::db::{self, NewWorkstation};
use crate::error::{ApiError, ApiResult};
use crate::rollouts;
use crate::routes::{Access, Table};

/// Bounds on what a device may send.
const MAX_TEXT: usize = 255;
const MAX_INSTALLED: usize = 1000;
const MAX_GROUPS: usize = 64;
const MAX_REPORT_TEXT: usize = 64 * 1024;

pub(crate) fn routes(t: &mut Table) {
    use Access::{Device, Public};
    t.route(Method::POST, "/enroll", Public, enroll)
        .route(Method::POST, "/checkin", Device, checkin)
        .route(Method::POST, "/reports", Device, report)
        .route(Method::GET, "/artifacts/{sha256}", Device, download)
        .route(Method::GET, "/deltas/{sha256}", Device, crate::delta::download)
        .route(Method::GET, "/wait", Device, wait);
}

fn check_text(field: &'static str, value: &str) -> ApiResult<()> {
    if value.is_empty() || value.len() > MAX_TEXT || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            field,
            format!("{field} must be 1–{MAX_TEXT} printable characters"),
        ));
    }
    Ok(())
}

async fn enroll(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<proto::EnrollRequest>,
) -> ApiResult<(StatusCode, Json<proto::EnrollResponse>)> {
    check_text("hostname", &request.hostname)?;
    check_text("os", &request.os)?;
    check_text("arch", &request.arch)?;
    check_text("agent_version", &request.agent_version)?;
    if request.groups.len() > MAX_GROUPS {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "groups",
            format!("at most {MAX_GROUPS} groups"),
        ));
    }
    for group in &request.groups {
        validate_name(group).map_err(|e| ApiError::bad_request(codes::INVALID_NAME, "groups", e.to_string()))?;
    }
    let (secret, fingerprint) = proto::split_enroll_token(&request.token);
    if !secret.starts_with(auth::ENROLL_TOKEN_PREFIX) {
        return Err(invalid_enroll_token());
    }
    let workstation_id = format!("ws-{}", &auth::new_token("")[..20]);
    let device_token = auth::new_token(auth::DEVICE_TOKEN_PREFIX);
    let enrolled = state
        .db
        .enroll(
            &auth::token_hash(secret),
            &NewWorkstation {
                id: &workstation_id,
                device_token_hash: &auth::token_hash(&device_token),
                hostname: &request.hostname,
                os: &request.os,
                arch: &request.arch,
                agent_version: &request.agent_version,
                groups: &request.groups,
            },
        )
        .await?;
    let Some((organization_id, organization)) = enrolled else {
        return Err(invalid_enroll_token());
    };
    // The root the token was made under (the agent checks it against the token's fingerprint and
    // follows rotations from there); without a fingerprint, the current one.
    let tuf_root = match fingerprint {
        Some(fingerprint) => crate::tuf::root_by_fingerprint(&state, organization_id, fingerprint)
            .await
            .map_err(|e| ApiError::Internal(format!("reading the TUF root: {e}")))?,
        None => None,
    };
    let tuf_root = match tuf_root {
        Some(root) => root,
        None => current_tuf_root(&state, organization_id).await?,
    };
    tracing::info!(%workstation_id, hostname = %request.hostname, "workstation enrolled");
    Ok((
        StatusCode::CREATED,
        Json(proto::EnrollResponse {
            workstation_id,
            device_token,
            signing_public_key: state.signer.public_key_base64(),
            organization,
            tuf_root: Some(tuf_root),
        }),
    ))
}

async fn current_tuf_root(state: &AppState, organization_id: i64) -> ApiResult<String> {
    crate::tuf::current_root(state, organization_id)
        .await
        .map_err(|e| ApiError::Internal(format!("reading the TUF root: {e}")))
}

fn invalid_enroll_token() -> ApiError {
    ApiError::client(
        StatusCode::UNAUTHORIZED,
        codes::INVALID_TOKEN,
        Some("token"),
        "the enrollment token is unknown or used up",
    )
    .with_hint("ask an administrator for a new one: upkeep enroll-token create")
}

async fn checkin(
    State(state): State<AppState>,
    device: Device,
    ApiJson(request): ApiJson<proto::CheckinRequest>,
) -> ApiResult<Json<proto::CheckinResponse>> {
    let started = std::time::Instant::now();
    let answer = answer_checkin(&state, &device, request).await;
    let offers = answer.as_ref().ok().map(|a| {
        a.instructions
            .iter()
            .filter(|i| i.update.is_some() && i.action != proto::Action::Blocked)
            .count()
    });
    crate::telemetry::checkin(started.elapsed(), offers);
    answer.map(Json)
}

async fn answer_checkin(
    state: &AppState,
    device: &Device,
    request: proto::CheckinRequest,
) -> ApiResult<proto::CheckinResponse> {
    check_text("hostname", &request.hostname)?;
    check_text("os", &request.os)?;
    check_text("arch", &request.arch)?;
    check_text("agent_version", &request.agent_version)?;
    if request.utc_offset_minutes.abs() > 14 * 60 {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "utc_offset_minutes",
            "a UTC offset is at most 14 hours",
        ));
    }
    if request.installed.len() > MAX_INSTALLED {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "installed",
            format!("at most {MAX_INSTALLED} products"),
        ));
    }
    let mut installed: BTreeMap<String, Version> = BTreeMap::new();
    for item in &request.installed {
        validate_name(&item.product)
            .map_err(|e| ApiError::bad_request(codes::INVALID_NAME, "installed.product", e.to_string()))?;
        let version = parse_version(&item.version)
            .map_err(|e| ApiError::bad_request(codes::INVALID_VERSION, "installed.version", e.to_string()))?;
        if installed.insert(item.product.clone(), version).is_some() {
            return Err(ApiError::bad_request(
                codes::INVALID_FIELD,
                "installed",
                format!("product `{}` is listed twice", item.product),
            ));
        }
    }

    let now = db::now_ms();
    let cache = &state.checkin_cache;
    cache.record_checkin(&state.db, device, &request, now).await?;
    let snapshot = cache.snapshot(&state.db, device.organization_id).await?;
    let approvals: BTreeMap<String, Approval> = request
        .installed
        .iter()
        .filter_map(|i| Some((i.product.clone(), snapshot.approval(&i.product, &i.version)?)))
        .collect();

    // A rollout offering its update for the first time does so now (it is recorded below), so a
    // deadline counted from the first offer starts now. If another server process recorded an
    // earlier first offer meanwhile, the decision is taken again with the stored time.
    let mut stored_first_offers = device.first_offered();
    let decisions = loop {
        let mut first_offered = stored_first_offers.clone();
        for r in &snapshot.rollouts {
            first_offered.entry(r.id).or_insert(now);
        }
        let view = WorkstationView {
            id: &device.workstation_id,
            groups: &device.groups,
            installed: &installed,
            installed_approvals: &approvals,
            first_offered: &first_offered,
            utc_offset_minutes: request.utc_offset_minutes,
            now,
        };
        let decisions = domain::decide(&view, &snapshot.rollouts);
        // (rollout, wave, installed version) of each rollout that offers its update for the first time.
        let first_offers: Vec<(i64, u32, Option<String>)> = decisions
            .iter()
            .filter_map(|d| {
                let u = d.update.as_ref()?;
                (!stored_first_offers.contains_key(&u.rollout_id))
                    .then(|| (u.rollout_id, u.wave, d.installed.as_ref().map(Version::to_string)))
            })
            .collect();
        if first_offers.is_empty() {
            break decisions;
        }
        for (rollout_id, wave, from_version) in &first_offers {
            state
                .db
                .mark_notified(
                    device.organization_id,
                    *rollout_id,
                    &device.workstation_id,
                    from_version.as_deref(),
                    *wave,
                    now,
                )
                .await?;
        }
        let recorded = state.db.first_offers(&device.workstation_id).await?;
        device.set_first_offered(recorded.clone());
        let same = recorded
            .iter()
            .all(|(id, at)| stored_first_offers.get(id).is_some_and(|t| t == at) || *at == now);
        if same {
            break decisions;
        }
        stored_first_offers = recorded;
    };

    let mut instructions = Vec::with_capacity(decisions.len());
    let mut director_targets = BTreeMap::new();
    for decision in decisions {
        let installed_version = decision.installed.as_ref().map(Version::to_string);
        let block = decision.block.map(|domain::BlockReason::Disapproved| proto::Block {
            code: codes::INSTALLED_VERSION_DISAPPROVED,
            message: format!(
                "{} {} has been disapproved by your administrator and must not be used",
                decision.product,
                installed_version.as_deref().unwrap_or("?")
            ),
        });
        let update = match &decision.update {
            Some(update) => {
                let version = update.version.to_string();
                let offer = snapshot
                    .offer(&decision.product, &version)
                    .ok_or_else(|| ApiError::Internal(format!("rollout {} has no manifest", update.rollout_id)))?;
                director_targets.extend(offer.director_targets.iter().map(|(k, v)| (k.clone(), v.clone())));
                Some(proto::UpdateOffer {
                    rollout_id: update.rollout_id,
                    version,
                    mandatory: update.mandatory,
                    required_reason: update.required.map(|r| r.as_str().to_owned()),
                    deadline: update.deadline.map(db::format_time),
                    install_window: update.window.as_ref().map(|w| proto::InstallWindow {
                        window: w.window.clone(),
                        open: w.open,
                        next_open: db::format_time(w.next_open),
                    }),
                    manifest: offer.manifest.clone(),
                    mirrors: state.settings.mirrors.clone(),
                    deltas: offer.deltas.clone(),
                })
            }
            None => None,
        };
        let action = match (&block, &update) {
            (Some(_), _) => proto::Action::Blocked,
            (None, Some(u)) if u.required_reason.is_some() => proto::Action::Required,
            (None, Some(_)) => proto::Action::Offered,
            (None, None) => proto::Action::None,
        };
        instructions.push(proto::ProductInstruction {
            held_back: decision.held_back,
            product: decision.product,
            installed_version,
            action,
            block,
            update,
        });
    }
    let counter = request.director_counter.saturating_add(1);
    let director = if director_targets.is_empty() {
        None
    } else if let Some(kept) = device.signed_director(counter, &director_targets, now) {
        Some(kept.to_string())
    } else {
        let signed: Arc<str> = director_metadata(
            state,
            device.organization_id,
            &device.workstation_id,
            counter,
            director_targets.clone(),
        )
        .await
        .map_err(|e| ApiError::Internal(format!("signing director metadata: {e}")))?
        .into();
        device.keep_director(counter, director_targets, now, signed.clone());
        Some(signed.to_string())
    };
    Ok(proto::CheckinResponse {
        server_time: db::format_time(now),
        instructions,
        director,
    })
}

/// How long an agent may act on one check-in's director metadata.
const DIRECTOR_LIFETIME_H: i64 = 24;

/// The director's signed list of the target files this workstation is offered now. The counter
/// is above the highest the agent says it has accepted, so a replayed older answer is refused by
/// the agent while the server keeps no counter of its own.
async fn director_metadata(
    state: &AppState,
    organization_id: i64,
    workstation_id: &str,
    counter: u64,
    targets: BTreeMap<String, upkeep_tuf::DirectorTarget>,
) -> Result<String, crate::tuf::TufError> {
    let key = crate::tuf::director_key(state, organization_id)?;
    let body = upkeep_tuf::DirectorTargets {
        kind: String::new(),
        workstation_id: workstation_id.to_owned(),
        counter,
        expires: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(DIRECTOR_LIFETIME_H),
        targets,
    };
    upkeep_tuf::sign_director(body, &key).await
}

async fn report(
    State(state): State<AppState>,
    device: Device,
    ApiJson(report): ApiJson<proto::DeviceReport>,
) -> ApiResult<StatusCode> {
    validate_name(&report.product).map_err(|e| ApiError::bad_request(codes::INVALID_NAME, "product", e.to_string()))?;
    parse_version(&report.version)?;
    if let Some(from) = &report.from_version {
        parse_version(from)
            .map_err(|e| ApiError::bad_request(codes::INVALID_VERSION, "from_version", e.to_string()))?;
    }
    if report.error_code.as_ref().is_some_and(|c| c.len() > MAX_TEXT) {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "error_code",
            "error_code is too long",
        ));
    }
    if report.message.as_ref().is_some_and(|m| m.len() > MAX_REPORT_TEXT)
        || report
            .details
            .as_ref()
            .is_some_and(|d| d.to_string().len() > MAX_REPORT_TEXT)
    {
        return Err(ApiError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::INVALID_FIELD,
            Some("message"),
            "message or details larger than 64 KiB",
        ));
    }
    // A late report keeps the time the agent saw it happen, but never one in the future.
    let now = db::now_ms();
    let at = report
        .at
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond().min(now))
        .unwrap_or(now);
    state
        .db
        .record_report(device.organization_id, &device.workstation_id, &report, at)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A single byte range from a `Range` header; `None` means "send it all".
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    All,
    Part(GetRange),
    Unsatisfiable,
}

fn parse_range(headers: &HeaderMap, size: u64) -> RangeRequest {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeRequest::All;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::All;
    };
    if spec.contains(',') {
        // Several ranges are allowed to be answered with the whole body.
        return RangeRequest::All;
    }
    let Some((start, end)) = spec.split_once('-') else {
        return RangeRequest::All;
    };
    let (start, end) = (start.trim(), end.trim());
    match (start.parse::<u64>().ok(), end.parse::<u64>().ok()) {
        (Some(s), _) if s >= size => RangeRequest::Unsatisfiable,
        (Some(s), None) if end.is_empty() => RangeRequest::Part(GetRange::Offset(s)),
        (Some(s), Some(e)) if e >= s => RangeRequest::Part(GetRange::Bounded(s..e.saturating_add(1).min(size))),
        (None, Some(n)) if start.is_empty() && n > 0 => RangeRequest::Part(GetRange::Suffix(n.min(size))),
        _ => RangeRequest::Unsatisfiable,
    }
}

async fn download(
    State(state): State<AppState>,
    device: Device,
    UrlPath(sha256): UrlPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_digest(&sha256)?;
    let not_found = || {
        ApiError::not_found(
            codes::NOT_FOUND,
            Some("sha256"),
            "no approved artifact with this digest",
        )
    };
    let size = state
        .db
        .artifact_downloadable(device.organization_id, &sha256)
        .await?
        .ok_or_else(not_found)?;
    send_artifact(&state, &sha256, size, &headers, None).await
}

/// A digest in a download path must be lowercase hex SHA-256 (it becomes a blob key).
pub(crate) fn check_digest(sha256: &str) -> ApiResult<()> {
    if !is_sha256_hex(sha256) {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "sha256",
            "not a lowercase hex SHA-256 digest",
        ));
    }
    Ok(())
}

/// Answers a download of a stored artifact of `size` bytes, whole or the requested range (so an
/// interrupted download resumes). With `filename`, browsers save it under that name.
pub(crate) async fn send_artifact(
    state: &AppState,
    sha256: &str,
    size: u64,
    headers: &HeaderMap,
    filename: Option<&str>,
) -> ApiResult<Response> {
    let not_found = || {
        ApiError::not_found(
            codes::NOT_FOUND,
            Some("sha256"),
            "no approved artifact with this digest",
        )
    };
    let range = match parse_range(headers, size) {
        RangeRequest::All => None,
        RangeRequest::Part(r) => Some(r),
        RangeRequest::Unsatisfiable => {
            let mut response = ApiError::client(
                StatusCode::RANGE_NOT_SATISFIABLE,
                codes::RANGE_NOT_SATISFIABLE,
                Some("range"),
                format!("the artifact has {size} bytes"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(response);
        }
    };
    let partial = range.is_some();
    let read = match state.blobs.read(sha256, range).await {
        Ok(read) => read,
        Err(BlobError::NotFound(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    let length = read.range.end - read.range.start;
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{sha256}\""));
    if let Some(name) = filename {
        // Names are checked at upload; keep the header plain ASCII whatever is stored.
        let plain: String = name
            .chars()
            .map(|c| {
                if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        builder = builder.header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{plain}\""));
    }
    if partial {
        builder = builder.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!(
                "bytes {}-{}/{}",
                read.range.start,
                read.range.end.saturating_sub(1),
                read.total
            ),
        );
    }
    read.into_response(builder)
        .map_err(|e| ApiError::Internal(format!("building response: {e}")))
}

#[derive(Debug, serde::Deserialize)]
struct WaitQuery {
    /// Seconds, 1–60.
    timeout: Option<u64>,
}

/// `GET /wait?timeout=S`: a long poll that answers as soon as a rollout targeting this
/// workstation is created or changes state, so a daemon acts at once (e.g. on `--now`), or with
/// 204 after `timeout`. It watches the database, so it works behind any server process.
async fn wait(
    State(state): State<AppState>,
    device: Device,
    query: Result<axum::extract::Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let axum::extract::Query(query) = query?;
    let timeout = query.timeout.unwrap_or(30);
    if !(1..=60).contains(&timeout) {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "timeout",
            "timeout is 1 to 60 seconds",
        ));
    }
    let since = db::now_ms();
    let until = since + i64::try_from(timeout * 1000).unwrap_or(30_000);
    let groups = state.db.workstation_groups(&device.workstation_id).await?;
    loop {
        let changed = state.db.rollouts_changed_since(device.organization_id, since).await?;
        if let Some(row) = changed
            .iter()
            .find(|r| rollouts::to_view(r).is_some_and(|v| v.targets.includes(&device.workstation_id, &groups)))
        {
            return Ok(Json(serde_json::json!({ "wake": true, "rollout_id": row.id })).into_response());
        }
        if db::now_ms() >= until {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, size: u64) -> RangeRequest {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        parse_range(&headers, size)
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(&HeaderMap::new(), 10), RangeRequest::All);
        assert_eq!(range("bytes=4-", 10), RangeRequest::Part(GetRange::Offset(4)));
        assert_eq!(range("bytes=2-5", 10), RangeRequest::Part(GetRange::Bounded(2..6)));
        assert_eq!(range("bytes=2-50", 10), RangeRequest::Part(GetRange::Bounded(2..10)));
        assert_eq!(range("bytes=-3", 10), RangeRequest::Part(GetRange::Suffix(3)));
        assert_eq!(range("bytes=10-", 10), RangeRequest::Unsatisfiable);
        assert_eq!(range("bytes=5-2", 10), RangeRequest::Unsatisfiable);
        assert_eq!(range("bytes=0-1,4-5", 10), RangeRequest::All);
        assert_eq!(range("items=0-1", 10), RangeRequest::All);
    }
}
