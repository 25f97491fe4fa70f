//! The administrator's REST API under `/api/v1`. Every handler takes an [`Admin`] and scopes what
//! it reads and writes to that administrator's organization.

use std::path::Path;

use axum::Json;
use axum::extract::{FromRequest, Multipart, Path as UrlPath, Query, Request, State};
use axum::http::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use upkeep_domain::{parse_version, validate_name, validate_platform, validate_relative_path};
use upkeep_protocol::{self as proto, codes};

use crate::AppState;
use crate::auth::{self, Admin, Role};
use crate::db::{self, EventFilter, NewEvent, NewRelease, NewRollout};
use crate::error::{ApiError, ApiResult};
use crate::manifest::{self, InstallSpec};
use crate::rollouts::{self, RolloutSpec};
use crate::routes::{Access, BodyLimit, Table};
use upkeep_archive::{ArchiveError, Format};

/// Release notes larger than this are refused; they are Markdown, not attachments.
pub const MAX_NOTES_BYTES: usize = 1024 * 1024;
const MAX_METADATA_BYTES: usize = MAX_NOTES_BYTES + 64 * 1024;
/// After refusing an upload, read at least this much of the rest so the client gets the answer.
const DISCARD_AT_LEAST: u64 = 64 * 1024 * 1024;

pub(crate) fn routes(t: &mut Table) {
    use Access::{Public, Role as R, SelfService};
    use Method as M;
    use Role::{Admin as A, ReleaseManager as RM, Viewer as V};
    t.route(M::POST, "/auth/login", Public, login)
        .route(M::POST, "/auth/password", SelfService, change_password)
        .route(M::GET, "/products", R(V), list_products)
        .route(M::POST, "/products", R(RM), create_product)
        .route(M::PATCH, "/products/{product}", R(RM), update_product)
        .route(M::GET, "/products/{product}/releases", R(V), list_releases)
        .route_with(
            M::POST,
            "/products/{product}/releases",
            R(RM),
            BodyLimit::Upload,
            upload_release,
        )
        .route(
            M::POST,
            "/products/{product}/releases/{version}/approve",
            R(RM),
            approve,
        )
        .route(
            M::POST,
            "/products/{product}/releases/{version}/disapprove",
            R(RM),
            disapprove,
        )
        .route(M::POST, "/enroll-tokens", R(A), create_enroll_token)
        .route(M::GET, "/rollouts", R(V), list_rollouts)
        .route(M::POST, "/rollouts", R(RM), create_rollout)
        .route(M::POST, "/rollouts/preview", R(RM), preview_rollout)
        .route(M::GET, "/rollouts/{id}", R(V), rollout_report)
        .route(M::POST, "/rollouts/{id}/{action}", R(RM), rollout_action)
        .route(M::GET, "/workstations", R(V), list_workstations)
        .route(M::GET, "/workstations/{id}", R(V), show_workstation)
        .route(M::GET, "/events", R(V), list_events)
        .route(M::GET, "/notification-groups", R(V), list_notification_groups)
        .route(M::POST, "/notification-groups", R(A), create_notification_group)
        .route(M::GET, "/users", R(A), list_users)
        .route(M::POST, "/users", R(A), create_user)
        .route(M::GET, "/tuf", R(V), tuf_status)
        .route(M::POST, "/tuf/root", R(A), upload_root)
        .route(M::POST, "/tuf/rotate-root", R(A), rotate_root);
}

/// `Json` whose rejections come out in the API's error shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

async fn login(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<proto::LoginRequest>,
) -> ApiResult<Json<proto::LoginResponse>> {
    let user = check_credentials(&state, &request.user, &request.password).await?;
    let token = auth::new_token(auth::ADMIN_TOKEN_PREFIX);
    state
        .db
        .insert_api_token(
            &auth::token_hash(&token),
            user.id,
            user.organization_id,
            db::now_ms() + auth::ADMIN_TOKEN_TTL_MS,
        )
        .await?;
    record_login(&state, &user, "api").await?;
    Ok(Json(proto::LoginResponse {
        token,
        user: user.name,
        organization: user.organization,
        role: user.role,
    }))
}

/// The audit trail of a sign-in; `via` is `api` or `console`.
pub(crate) async fn record_login(state: &AppState, user: &db::UserRecord, via: &str) -> ApiResult<()> {
    state
        .db
        .record_event(
            user.organization_id,
            &NewEvent {
                kind: "user.login",
                actor: &user.name,
                details: Some(serde_json::json!({ "via": via })),
                ..NewEvent::default()
            },
        )
        .await?;
    Ok(())
}

/// The user with this name and password, or `401 unauthorized` (the same for an unknown user and
/// a wrong password).
pub(crate) async fn check_credentials(state: &AppState, name: &str, password: &str) -> ApiResult<db::UserRecord> {
    let user = state.db.find_user(name).await?;
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let password = password.to_owned();
    // Argon2 is deliberately slow: keep it off the async workers. Unknown users are checked
    // against nothing, but still pay for one hash so timing does not reveal who exists.
    let ok = tokio::task::spawn_blocking(move || match stored {
        Some(hash) => auth::verify_password(&password, &hash),
        None => {
            let _ = auth::hash_password(&password);
            false
        }
    })
    .await
    .map_err(|e| ApiError::Internal(format!("password check: {e}")))?;
    user.filter(|_| ok)
        .ok_or_else(|| ApiError::unauthorized("wrong user name or password"))
}

async fn list_products(State(state): State<AppState>, admin: Admin) -> ApiResult<Json<Vec<proto::Product>>> {
    Ok(Json(state.db.list_products(admin.organization_id).await?))
}

pub(crate) async fn create_product(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(request): ApiJson<proto::ProductCreate>,
) -> ApiResult<(StatusCode, Json<proto::Product>)> {
    validate_name(&request.name)?;
    match state
        .db
        .create_product(admin.organization_id, &request.name, request.kind, request.public)
        .await
    {
        Ok(product) => {
            state
                .db
                .record_event(
                    admin.organization_id,
                    &NewEvent {
                        kind: "product.created",
                        actor: &admin.user,
                        product: Some(&product.name),
                        details: Some(serde_json::json!({ "kind": product.kind, "public": product.public })),
                        ..NewEvent::default()
                    },
                )
                .await?;
            Ok((StatusCode::CREATED, Json(product)))
        }
        Err(db::DbError::Conflict) => Err(ApiError::conflict(
            codes::PRODUCT_EXISTS,
            Some("name"),
            format!("product `{}` already exists", request.name),
        )),
        Err(e) => Err(e.into()),
    }
}

/// `PATCH /products/{product}`: today only whether it is offered on `/downloads`.
pub(crate) async fn update_product(
    State(state): State<AppState>,
    admin: Admin,
    UrlPath(product): UrlPath<String>,
    ApiJson(request): ApiJson<proto::ProductUpdate>,
) -> ApiResult<Json<proto::Product>> {
    product_id(&state, &admin, &product).await?;
    if let Some(public) = request.public {
        state
            .db
            .set_product_public(admin.organization_id, &product, public)
            .await?;
        state
            .db
            .record_event(
                admin.organization_id,
                &NewEvent {
                    kind: "product.updated",
                    actor: &admin.user,
                    product: Some(&product),
                    details: Some(serde_json::json!({ "public": public })),
                    ..NewEvent::default()
                },
            )
            .await?;
    }
    let products = state.db.list_products(admin.organization_id).await?;
    products
        .into_iter()
        .find(|p| p.name == product)
        .map(Json)
        .ok_or_else(|| ApiError::Internal(format!("product `{product}` vanished")))
}

/// Passwords shorter than this are refused.
pub const MIN_PASSWORD_CHARS: usize = 10;

fn check_new_password(password: &str, field: &'static str) -> ApiResult<()> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS || password.len() > 1024 {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            field,
            format!("a password has {MIN_PASSWORD_CHARS} to 1024 characters"),
        ));
    }
    Ok(())
}

/// Argon2 off the async workers.
async fn hash_password(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(format!("password hashing: {e}")))?
}

/// `POST /auth/password`: changes the caller's own password and signs them out everywhere else.
pub(crate) async fn change_password(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(request): ApiJson<proto::PasswordChange>,
) -> ApiResult<StatusCode> {
    check_new_password(&request.new, "new")?;
    let user = state
        .db
        .find_user(&admin.user)
        .await?
        .ok_or_else(|| ApiError::unauthorized("your account no longer exists"))?;
    let (current, stored) = (request.current.clone(), user.password_hash.clone());
    let ok = tokio::task::spawn_blocking(move || auth::verify_password(&current, &stored))
        .await
        .map_err(|e| ApiError::Internal(format!("password check: {e}")))?;
    if !ok {
        return Err(ApiError::client(
            StatusCode::FORBIDDEN,
            codes::FORBIDDEN,
            Some("current"),
            "the current password is wrong",
        ));
    }
    let hash = hash_password(request.new).await?;
    let keep = admin.session.as_ref().map(|s| s.token_hash.as_str());
    state.db.set_password(admin.user_id, &hash, keep).await?;
    state
        .db
        .record_event(
            admin.organization_id,
            &NewEvent {
                kind: "user.password_changed",
                actor: &admin.user,
                ..NewEvent::default()
            },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn list_users(State(state): State<AppState>, admin: Admin) -> ApiResult<Json<Vec<proto::User>>> {
    Ok(Json(state.db.list_users(admin.organization_id).await?))
}

/// `POST /users`: a new user in the caller's organization.
pub(crate) async fn create_user(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(request): ApiJson<proto::UserCreate>,
) -> ApiResult<(StatusCode, Json<proto::User>)> {
    validate_name(&request.name)?;
    check_new_password(&request.password, "password")?;
    let hash = hash_password(request.password).await?;
    let user = match state
        .db
        .create_user(admin.organization_id, &request.name, &hash, request.role)
        .await
    {
        Ok(user) => user,
        Err(db::DbError::Conflict) => {
            return Err(ApiError::conflict(
                codes::USER_EXISTS,
                Some("name"),
                format!("user `{}` already exists", request.name),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    state
        .db
        .record_event(
            admin.organization_id,
            &NewEvent {
                kind: "user.created",
                actor: &admin.user,
                details: Some(serde_json::json!({ "user": user.name, "role": user.role })),
                ..NewEvent::default()
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

async fn product_id(state: &AppState, admin: &Admin, product: &str) -> ApiResult<i64> {
    state
        .db
        .product_id(admin.organization_id, product)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                codes::UNKNOWN_PRODUCT,
                Some("product"),
                format!("unknown product `{product}`"),
            )
            .with_hint("create it with `upkeep product create NAME`")
        })
}

async fn list_releases(
    State(state): State<AppState>,
    admin: Admin,
    UrlPath(product): UrlPath<String>,
) -> ApiResult<Json<Vec<proto::Release>>> {
    let id = product_id(&state, &admin, &product).await?;
    Ok(Json(state.db.list_releases(admin.organization_id, id, &product).await?))
}

fn upload_error(err: axum::extract::multipart::MultipartError) -> ApiError {
    let stalled = std::iter::successors(Some(&err as &(dyn std::error::Error + 'static)), |e| e.source())
        .any(|e| e.is::<tower_http::timeout::TimeoutError>());
    if stalled {
        return ApiError::client(
            StatusCode::REQUEST_TIMEOUT,
            codes::INVALID_UPLOAD,
            None,
            "the upload stopped sending before its end",
        )
        .with_hint("check the network and upload again");
    }
    // Anything else that breaks the body stream (a client cut off midway) is the request's fault.
    let status = match err.status() {
        StatusCode::INTERNAL_SERVER_ERROR => StatusCode::BAD_REQUEST,
        status => status,
    };
    ApiError::client(
        status,
        codes::INVALID_UPLOAD,
        None,
        format!("reading the upload: {}", err.body_text()),
    )
}

/// `POST /products/{product}/releases`, multipart: a `metadata` part (JSON, first) and an
/// `artifact` part (the file, streamed to disk while hashed). Nothing is recorded unless every
/// check passes; the staged file is removed in every case.
async fn upload_release(
    State(state): State<AppState>,
    admin: Admin,
    UrlPath(product): UrlPath<String>,
    multipart: Multipart,
) -> ApiResult<(StatusCode, Json<proto::Release>)> {
    let release = upload(&state, &admin, product, multipart, UploadShape::Api).await?;
    Ok((StatusCode::CREATED, Json(release)))
}

/// How an upload's fields arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UploadShape {
    /// A `metadata` part (JSON) then the `artifact` part.
    Api,
    /// The console's form: one text part per field (`version`, `platform`, `notes`, `launch`,
    /// `manifest`, in any order) then the `artifact` part.
    Form,
}

pub(crate) async fn upload(
    state: &AppState,
    admin: &Admin,
    product: String,
    mut multipart: Multipart,
    shape: UploadShape,
) -> ApiResult<proto::Release> {
    let result = receive_release(state, admin, product, &mut multipart, shape).await;
    if result.is_err() {
        // Read the rest of the request before answering: a client still sending its artifact
        // would otherwise see a broken connection instead of the reason.
        discard_rest(&mut multipart, state.settings.max_upload_bytes.max(DISCARD_AT_LEAST)).await;
    }
    result
}

/// Reads and drops what is left of a multipart body, up to `budget` bytes.
async fn discard_rest(multipart: &mut Multipart, budget: u64) {
    let mut left = budget;
    while let Ok(Some(mut field)) = multipart.next_field().await {
        while let Ok(Some(chunk)) = field.chunk().await {
            match left.checked_sub(chunk.len() as u64) {
                Some(rest) => left = rest,
                None => return,
            }
        }
    }
}

async fn receive_release(
    state: &AppState,
    admin: &Admin,
    product: String,
    multipart: &mut Multipart,
    shape: UploadShape,
) -> ApiResult<proto::Release> {
    let product_id = product_id(state, admin, &product).await?;
    if shape == UploadShape::Form {
        let mut meta = proto::ReleaseUploadMetadata {
            version: String::new(),
            platform: String::new(),
            notes: None,
            launch: None,
            manifest: None,
        };
        loop {
            let mut field =
                multipart.next_field().await.map_err(upload_error)?.ok_or_else(|| {
                    ApiError::bad_request(codes::EMPTY_ARTIFACT, "artifact", "choose a file to upload")
                })?;
            let name = field.name().unwrap_or_default().to_owned();
            if name == "artifact" {
                let plan = plan_release(state, &product, product_id, meta).await?;
                return store_release(state, admin, product, product_id, plan, field).await;
            }
            let mut raw = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(upload_error)? {
                raw.extend_from_slice(&chunk);
                if raw.len() > MAX_METADATA_BYTES {
                    return Err(ApiError::client(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        codes::INVALID_FIELD,
                        Some("notes"),
                        "a form field is larger than 1 MiB",
                    ));
                }
            }
            let text = String::from_utf8(raw).map_err(|_| {
                ApiError::bad_request(
                    codes::INVALID_UPLOAD,
                    "metadata",
                    format!("the `{name}` field is not UTF-8"),
                )
            })?;
            let optional = |t: String| Some(t).filter(|t| !t.trim().is_empty());
            match name.as_str() {
                "version" => meta.version = text.trim().to_owned(),
                "platform" => meta.platform = text.trim().to_owned(),
                "notes" => meta.notes = optional(text),
                "launch" => meta.launch = optional(text.trim().to_owned()),
                "manifest" => meta.manifest = optional(text),
                // The CSRF token was checked by the route's guard.
                _ => {}
            }
        }
    }
    let meta = read_metadata_part(multipart).await?;
    let plan = plan_release(state, &product, product_id, meta).await?;
    let field =
        multipart.next_field().await.map_err(upload_error)?.ok_or_else(|| {
            ApiError::bad_request(codes::EMPTY_ARTIFACT, "artifact", "the upload has no artifact part")
        })?;
    if field.name() != Some("artifact") {
        return Err(ApiError::bad_request(
            codes::INVALID_UPLOAD,
            "artifact",
            "the second part must be `artifact`",
        ));
    }
    store_release(state, admin, product, product_id, plan, field).await
}

/// What the upload's fields say, checked before the artifact is read.
struct ReleasePlan {
    meta: proto::ReleaseUploadMetadata,
    spec: InstallSpec,
    notes: String,
}

async fn read_metadata_part(multipart: &mut Multipart) -> ApiResult<proto::ReleaseUploadMetadata> {
    // Part 1: metadata.
    let mut field = multipart
        .next_field()
        .await
        .map_err(upload_error)?
        .ok_or_else(|| ApiError::bad_request(codes::INVALID_UPLOAD, "metadata", "the upload is empty"))?;
    if field.name() != Some("metadata") {
        return Err(ApiError::bad_request(
            codes::INVALID_UPLOAD,
            "metadata",
            "the first part must be `metadata` (JSON)",
        ));
    }
    let mut raw = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(upload_error)? {
        raw.extend_from_slice(&chunk);
        if raw.len() > MAX_METADATA_BYTES {
            return Err(ApiError::client(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::INVALID_FIELD,
                Some("notes"),
                "release notes are larger than 1 MiB",
            ));
        }
    }
    // A part borrows the multipart stream: let go of it before asking for the next one.
    drop(field);
    let meta: proto::ReleaseUploadMetadata = serde_json::from_slice(&raw).map_err(|e| {
        ApiError::bad_request(
            codes::INVALID_JSON,
            "metadata",
            format!("metadata is not valid JSON: {e}"),
        )
    })?;
    Ok(meta)
}

async fn plan_release(
    state: &AppState,
    product: &str,
    product_id: i64,
    meta: proto::ReleaseUploadMetadata,
) -> ApiResult<ReleasePlan> {
    parse_version(&meta.version)?;
    validate_platform(&meta.platform)?;
    if let Some(launch) = &meta.launch {
        validate_relative_path(launch)
            .map_err(|e| ApiError::bad_request(codes::INVALID_PATH, "launch", e.to_string()))?;
    }
    let notes = meta.notes.clone().unwrap_or_default();
    if notes.len() > MAX_NOTES_BYTES {
        return Err(ApiError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::INVALID_FIELD,
            Some("notes"),
            "release notes are larger than 1 MiB",
        ));
    }
    let spec = match &meta.manifest {
        None => InstallSpec::archive(meta.launch.clone()),
        Some(text) => {
            let mut spec = manifest::parse(text)
                .map_err(|e| ApiError::bad_request(codes::INVALID_MANIFEST, "manifest", format!("upkeep.toml: {e}")))?;
            match (&meta.launch, &spec.launch) {
                (Some(_), Some(_)) => {
                    return Err(ApiError::bad_request(
                        codes::INVALID_FIELD,
                        "launch",
                        "the launch path is given twice: on the command line and in the manifest",
                    ));
                }
                (Some(launch), None) => spec.launch = Some(launch.clone()),
                _ => {}
            }
            spec
        }
    };
    if state.db.release_exists(product_id, &meta.version).await? {
        return Err(version_exists(product, &meta.version));
    }
    Ok(ReleasePlan { meta, spec, notes })
}

async fn store_release(
    state: &AppState,
    admin: &Admin,
    product: String,
    product_id: i64,
    plan: ReleasePlan,
    mut field: axum::extract::multipart::Field<'_>,
) -> ApiResult<proto::Release> {
    let ReleasePlan { meta, spec, notes } = plan;

    // The artifact.
    let filename = field.file_name().unwrap_or_default().to_owned();
    validate_filename(&filename)?;
    // The archive recipe unpacks the artifact; the command recipe hands it to the installer.
    let format = match spec.recipe.as_str() {
        "archive" => Some(Format::from_filename(&filename).ok_or_else(|| {
            ApiError::bad_request(
                codes::INVALID_ARCHIVE,
                "artifact",
                format!("`{filename}` is not a .tar.gz, .tgz or .zip archive"),
            )
        })?),
        _ => None,
    };

    let staged = state.settings.staged("upload-").await?;
    let mut file = tokio::fs::File::create(&staged).await?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let max = state.settings.max_upload_bytes;
    while let Some(chunk) = field.chunk().await.map_err(upload_error)? {
        size += chunk.len() as u64;
        if size > max {
            return Err(ApiError::client(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::ARTIFACT_TOO_LARGE,
                Some("artifact"),
                format!("the artifact is larger than the server's limit of {max} bytes"),
            )
            .with_hint("raise it with `upkeep-server serve --max-upload-bytes N`"));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    drop(file);
    if size == 0 {
        return Err(ApiError::bad_request(
            codes::EMPTY_ARTIFACT,
            "artifact",
            "the artifact is empty",
        ));
    }
    let sha256 = hex::encode(hasher.finalize());

    let staged_path = staged.to_path_buf();
    let inspected = match format {
        Some(format) => Some(inspect(staged_path, format).await?),
        None => None,
    };
    if let (Some(inspected), Some(launch)) = (&inspected, &spec.launch)
        && !inspected.files.contains(launch)
    {
        return Err(ApiError::bad_request(
            codes::INVALID_PATH,
            "launch",
            format!("the launch path `{launch}` is not a file in the archive"),
        ));
    }

    let content = inspected.as_ref().and_then(|i| i.content.clone());
    let artifact = proto::Artifact {
        platform: meta.platform.clone(),
        filename,
        sha256: sha256.clone(),
        size,
        format: format.map_or("file", Format::as_str).to_owned(),
        content_size: content.as_ref().map(|c| c.size),
        content_sha256: content.map(|c| c.sha256),
    };
    let manifest = proto::ReleaseManifest {
        product: product.clone(),
        version: meta.version.clone(),
        recipe: spec.recipe.clone(),
        launch: spec.launch.clone(),
        artifacts: vec![artifact.clone()],
        requires: spec.requires.clone(),
        session_probe: spec.session_probe.clone(),
        hooks: spec.hooks.clone(),
        health_check: spec.health_check.clone(),
        installer: spec.installer.clone(),
    };
    let signed = state
        .signer
        .sign(&manifest)
        .map_err(|e| ApiError::Internal(e.to_string()))?;

    let blob_was_there = state.blobs.exists(&sha256).await?;
    if !blob_was_there {
        state.blobs.put_file(&sha256, &staged).await?;
    }
    let inserted = state
        .db
        .insert_release(&NewRelease {
            organization_id: admin.organization_id,
            product_id,
            product: &product,
            version: &meta.version,
            notes: &notes,
            launch: spec.launch.as_deref(),
            recipe: &spec.recipe,
            requires: &spec.requires,
            manifest: &signed,
            artifact: &artifact,
            actor: &admin.user,
        })
        .await;
    let release_id = match inserted {
        Ok(id) => id,
        Err(err) => {
            // Leave no blob behind that no release refers to.
            if !blob_was_there && !state.db.blob_referenced(&sha256).await.unwrap_or(true) {
                let _ = state.blobs.delete(&sha256).await;
            }
            return Err(match err {
                db::DbError::Conflict => version_exists(&product, &meta.version),
                other => other.into(),
            });
        }
    };
    tracing::info!(%product, version = %meta.version, %sha256, size, "release uploaded");
    crate::delta::spawn_build(state.clone(), release_id);
    let release = proto::Release {
        product,
        version: meta.version,
        notes,
        launch: spec.launch,
        recipe: spec.recipe,
        approval: proto::ApprovalState::Pending,
        approval_reason: None,
        artifacts: vec![artifact],
        created_at: db::format_time(db::now_ms()),
    };
    Ok(release)
}

/// Checks an uploaded archive off the async workers; returns what it holds.
async fn inspect(path: std::path::PathBuf, format: Format) -> ApiResult<upkeep_archive::Inspection> {
    tokio::task::spawn_blocking(move || upkeep_archive::inspect(&path, format))
        .await
        .map_err(|e| ApiError::Internal(format!("archive inspection: {e}")))?
        .map_err(|e| match e {
            ArchiveError::Unsafe { .. } => ApiError::client(
                StatusCode::UNPROCESSABLE_ENTITY,
                codes::UNSAFE_ARCHIVE,
                Some("artifact"),
                e.to_string(),
            ),
            ArchiveError::Io { .. } => ApiError::Internal(e.to_string()),
            _ => ApiError::client(
                StatusCode::UNPROCESSABLE_ENTITY,
                codes::INVALID_ARCHIVE,
                Some("artifact"),
                e.to_string(),
            ),
        })
}

fn version_exists(product: &str, version: &str) -> ApiError {
    ApiError::conflict(
        codes::VERSION_EXISTS,
        Some("version"),
        format!("{product} {version} already exists"),
    )
    .with_hint("versions are immutable; publish a new version")
}

fn validate_filename(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.contains(['/', '\\', ':', '"'])
        && !name.chars().any(char::is_control)
        && name != "."
        && name != ".."
        && Path::new(name).file_name().is_some();
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "artifact",
            "the artifact needs a plain file name (no folders, quotes or control characters), at most 255 bytes",
        ))
    }
}

pub(crate) async fn set_approval(
    state: &AppState,
    admin: &Admin,
    product: &str,
    version: &str,
    approval: proto::ApprovalState,
    request: &proto::ApprovalRequest,
) -> ApiResult<Json<proto::Release>> {
    let reason = request.reason.as_deref();
    parse_version(version)?;
    if reason.is_some_and(|r| r.len() > 4096) {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "reason",
            "the reason is longer than 4096 bytes",
        ));
    }
    let pid = product_id(state, admin, product).await?;
    let release_id = state.db.release_id(pid, version).await?.ok_or_else(|| {
        ApiError::not_found(
            codes::UNKNOWN_RELEASE,
            Some("version"),
            format!("{product} has no version {version}"),
        )
    })?;
    // Offline mode: the decision carries the targets metadata the administrator signed, and is
    // refused unless it is signed by the targets key the root names and lists exactly the
    // approved releases after this decision.
    let (keys, repository) = crate::tuf::open(state, admin.organization_id)
        .await
        .map_err(|e| ApiError::Internal(format!("reading the TUF repository: {e}")))?;
    match (repository.hosted(&keys), request.targets.as_deref()) {
        (true, None) => {}
        (true, Some(_)) => {
            return Err(ApiError::client(
                StatusCode::UNPROCESSABLE_ENTITY,
                codes::TUF_MISMATCH,
                Some("targets"),
                "this organization's targets are signed by the server (hosted mode); approve without signed targets",
            ));
        }
        (false, None) => {
            return Err(ApiError::client(
                StatusCode::CONFLICT,
                codes::SIGNATURE_REQUIRED,
                Some("targets"),
                "this organization signs approvals offline: the decision must carry targets metadata signed with its targets key",
            )
            .with_hint("run `upkeep release approve|disapprove ... --keys DIR` where the keys from `upkeep keys init` are kept"));
        }
        (false, Some(json)) => {
            let approve = approval == proto::ApprovalState::Approved;
            let expected = crate::tuf::expected_entries(state, admin.organization_id, release_id, approve)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            crate::tuf::accept_targets(&repository, json, &expected).map_err(|e| tuf_upload_error("targets", e))?;
        }
    }
    let kind = match approval {
        proto::ApprovalState::Approved => "release.approved",
        proto::ApprovalState::Disapproved => "release.disapproved",
        proto::ApprovalState::Pending => "release.reset",
    };
    state
        .db
        .set_approval(
            admin.organization_id,
            release_id,
            approval,
            reason,
            &NewEvent {
                kind,
                actor: &admin.user,
                product: Some(product),
                version: Some(version),
                message: reason,
                ..NewEvent::default()
            },
        )
        .await?;
    // Approving is signing: the organization's TUF targets metadata follows every decision.
    crate::tuf::publish(state, admin.organization_id, request.targets.as_deref())
        .await
        .map_err(|e| ApiError::Internal(format!("publishing TUF metadata: {e}")))?;
    let releases = state.db.list_releases(admin.organization_id, pid, product).await?;
    releases
        .into_iter()
        .find(|r| r.version == version)
        .map(Json)
        .ok_or_else(|| ApiError::Internal("release vanished after approval".into()))
}

/// A JSON body that may be left out entirely.
fn optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::client(
            StatusCode::BAD_REQUEST,
            codes::INVALID_JSON,
            None,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

async fn approve(
    State(state): State<AppState>,
    admin: Admin,
    UrlPath((product, version)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<proto::Release>> {
    let request: proto::ApprovalRequest = optional_json(&body)?;
    set_approval(
        &state,
        &admin,
        &product,
        &version,
        proto::ApprovalState::Approved,
        &request,
    )
    .await
}

async fn disapprove(
    State(state): State<AppState>,
    admin: Admin,
    UrlPath((product, version)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<proto::Release>> {
    let request: proto::ApprovalRequest = optional_json(&body)?;
    set_approval(
        &state,
        &admin,
        &product,
        &version,
        proto::ApprovalState::Disapproved,
        &request,
    )
    .await
}

pub(crate) async fn create_enroll_token(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(request): ApiJson<proto::EnrollTokenCreate>,
) -> ApiResult<(StatusCode, Json<proto::EnrollTokenCreated>)> {
    if let Some(group) = &request.group {
        validate_name(group).map_err(|e| ApiError::bad_request(codes::INVALID_NAME, "group", e.to_string()))?;
    }
    if request.uses == Some(0) {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "uses",
            "uses must be at least 1",
        ));
    }
    let secret = auth::new_token(auth::ENROLL_TOKEN_PREFIX);
    // The token pins the organization's current root, so an agent can check what it is given.
    let root = crate::tuf::current_root(&state, admin.organization_id)
        .await
        .map_err(|e| ApiError::Internal(format!("reading the TUF root: {e}")))?;
    let fingerprint = upkeep_tuf::fingerprint(&root);
    let token = format!("{secret}.{}", &fingerprint[..proto::ROOT_FINGERPRINT_HEX]);
    state
        .db
        .insert_enroll_token(
            admin.organization_id,
            &auth::token_hash(&secret),
            request.group.as_deref(),
            request.uses,
            &admin.user,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(proto::EnrollTokenCreated {
            token,
            group: request.group,
            uses: request.uses,
        }),
    ))
}

/// Checks a rollout request and finds its release; shared by create and preview.
async fn rollout_release(
    state: &AppState,
    admin: &Admin,
    request: &proto::RolloutCreate,
) -> ApiResult<(i64, proto::ApprovalState, RolloutSpec)> {
    parse_version(&request.version)?;
    let targets = &request.targets;
    if !targets.all && targets.workstations.is_empty() && targets.groups.is_empty() {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "targets",
            "choose the workstations: all, a list of ids, or groups",
        ));
    }
    for group in &targets.groups {
        validate_name(group).map_err(|e| ApiError::bad_request(codes::INVALID_NAME, "groups", e.to_string()))?;
    }
    let spec = rollouts::check_create(request, db::now_ms())?;
    let pid = product_id(state, admin, &request.product).await?;
    let release_id = state.db.release_id(pid, &request.version).await?.ok_or_else(|| {
        ApiError::not_found(
            codes::UNKNOWN_RELEASE,
            Some("version"),
            format!("{} has no version {}", request.product, request.version),
        )
    })?;
    let approval = state.db.approval(admin.organization_id, release_id).await?;
    let unknown = state
        .db
        .unknown_workstations(admin.organization_id, &targets.workstations)
        .await?;
    if !unknown.is_empty() {
        return Err(ApiError::not_found(
            codes::UNKNOWN_WORKSTATION,
            Some("workstations"),
            format!("unknown workstation(s): {}", unknown.join(", ")),
        ));
    }
    Ok((release_id, approval, spec))
}

pub(crate) async fn create_rollout(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(request): ApiJson<proto::RolloutCreate>,
) -> ApiResult<(StatusCode, Json<proto::RolloutReport>)> {
    let (release_id, approval, spec) = rollout_release(&state, &admin, &request).await?;
    if approval != proto::ApprovalState::Approved {
        return Err(ApiError::conflict(
            codes::RELEASE_NOT_APPROVED,
            Some("version"),
            format!(
                "{} {} is {}; only approved releases can be rolled out",
                request.product,
                request.version,
                approval.as_str()
            ),
        )
        .with_hint(format!(
            "approve it first: upkeep release approve {} {}",
            request.product, request.version
        )));
    }
    let targeted: Vec<(String, Option<String>)> = state
        .db
        .list_workstations(admin.organization_id, None)
        .await?
        .into_iter()
        .filter(|w| rollouts::domain_targets(&request.targets).includes(&w.id, &w.groups))
        .map(|w| {
            let installed = w.installed.get(&request.product).cloned();
            (w.id, installed)
        })
        .collect();
    let new = NewRollout {
        release_id,
        product: &request.product,
        version: &request.version,
        mandatory: request.mandatory || request.now,
        targets: &request.targets,
        state: spec.state,
        starts_at: spec.starts_at,
        deadline: spec.deadline.clone(),
        waves: spec.waves.clone(),
        allow_downgrade: request.allow_downgrade,
        maintenance_window: spec.window.as_deref(),
        actor: &admin.user,
        request: serde_json::to_value(&request).unwrap_or_default(),
    };
    let id = state.db.create_rollout(admin.organization_id, &new, &targeted).await?;
    Ok((
        StatusCode::CREATED,
        Json(rollouts::report(&state, admin.organization_id, id).await?),
    ))
}

/// `POST /rollouts/preview`: the dry run; changes nothing.
pub(crate) async fn preview_rollout(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(request): ApiJson<proto::RolloutCreate>,
) -> ApiResult<Json<proto::RolloutPreview>> {
    let (_, approval, spec) = rollout_release(&state, &admin, &request).await?;
    Ok(Json(
        rollouts::preview(&state, admin.organization_id, &request, &spec, approval).await?,
    ))
}

async fn list_rollouts(State(state): State<AppState>, admin: Admin) -> ApiResult<Json<Vec<proto::Rollout>>> {
    let rows = state.db.rollouts(admin.organization_id, None, false).await?;
    Ok(Json(rows.iter().map(rollouts::to_proto).collect()))
}

pub(crate) fn rollout_id(id: &str) -> ApiResult<i64> {
    id.parse().map_err(|_| {
        ApiError::bad_request(
            codes::INVALID_FIELD,
            "id",
            format!("`{id}` is not a rollout id (a number)"),
        )
    })
}

async fn rollout_report(
    State(state): State<AppState>,
    admin: Admin,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<proto::RolloutReport>> {
    Ok(Json(
        rollouts::report(&state, admin.organization_id, rollout_id(&id)?).await?,
    ))
}

pub(crate) async fn rollout_action(
    State(state): State<AppState>,
    admin: Admin,
    UrlPath((id, action)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<proto::Rollout>> {
    if !matches!(action.as_str(), "pause" | "resume" | "cancel") {
        return Err(ApiError::not_found(
            codes::NOT_FOUND,
            None,
            format!("no rollout action `{action}`; use pause, resume or cancel"),
        ));
    }
    let request: proto::RolloutAction = optional_json(&body)?;
    if request.reason.as_ref().is_some_and(|r| r.len() > 4096) {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "reason",
            "the reason is longer than 4096 bytes",
        ));
    }
    let rollout = rollouts::change_state(
        &state,
        admin.organization_id,
        &admin.user,
        rollout_id(&id)?,
        &action,
        request.reason.as_deref(),
    )
    .await?;
    Ok(Json(rollout))
}

async fn list_workstations(State(state): State<AppState>, admin: Admin) -> ApiResult<Json<Vec<proto::Workstation>>> {
    Ok(Json(state.db.list_workstations(admin.organization_id, None).await?))
}

async fn show_workstation(
    State(state): State<AppState>,
    admin: Admin,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<proto::Workstation>> {
    state
        .db
        .list_workstations(admin.organization_id, Some(&id))
        .await?
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(
                codes::UNKNOWN_WORKSTATION,
                Some("id"),
                format!("unknown workstation `{id}`"),
            )
        })
}

#[derive(Debug, Deserialize)]
pub(crate) struct EventQuery {
    pub product: Option<String>,
    pub workstation: Option<String>,
    /// A rollout id; text so that an empty form field means "any".
    pub rollout: Option<String>,
    /// RFC 3339.
    pub since: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub after: Option<i64>,
    pub limit: Option<i64>,
}

async fn list_events(
    State(state): State<AppState>,
    admin: Admin,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<proto::Event>>> {
    let Query(query) = query?;
    let filter = query.filter()?;
    Ok(Json(state.db.list_events(admin.organization_id, &filter).await?))
}

impl EventQuery {
    /// The filter it asks for; at most 10,000 events, 1,000 unless it says.
    pub(crate) fn filter(self) -> ApiResult<EventFilter> {
        let limit = self.limit.unwrap_or(1000);
        if !(1..=10_000).contains(&limit) {
            return Err(ApiError::bad_request(
                codes::INVALID_FIELD,
                "limit",
                "limit must be between 1 and 10000",
            ));
        }
        let since = match self.since.as_deref().filter(|t| !t.is_empty()) {
            Some(text) => Some(parse_time_filter(text)?),
            None => None,
        };
        let nonempty = |v: Option<String>| v.filter(|t| !t.trim().is_empty());
        let rollout = match nonempty(self.rollout) {
            Some(id) => Some(rollout_id(id.trim()).map_err(|_| {
                ApiError::bad_request(codes::INVALID_FIELD, "rollout", format!("`{id}` is not a rollout id"))
            })?),
            None => None,
        };
        Ok(EventFilter {
            product: nonempty(self.product),
            workstation: nonempty(self.workstation),
            rollout,
            since,
            kind: nonempty(self.kind),
            after_id: self.after,
            limit,
            errors_only: false,
        })
    }
}

/// RFC 3339, or a plain date (`2026-11-23`, from a date picker) read as midnight UTC.
fn parse_time_filter(text: &str) -> ApiResult<i64> {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    text.parse::<jiff::civil::Date>()
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp().as_millisecond())
        .ok_or_else(|| {
            ApiError::bad_request(
                codes::INVALID_FIELD,
                "since",
                format!("`{text}` is not an RFC 3339 time or a YYYY-MM-DD date"),
            )
        })
}

async fn list_notification_groups(
    State(state): State<AppState>,
    admin: Admin,
) -> ApiResult<Json<Vec<proto::NotificationGroup>>> {
    Ok(Json(state.db.notification_groups(admin.organization_id).await?))
}

pub(crate) async fn create_notification_group(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(request): ApiJson<proto::NotificationGroupCreate>,
) -> ApiResult<(StatusCode, Json<proto::NotificationGroup>)> {
    validate_name(&request.name)?;
    if request.emails.is_empty() && request.webhooks.is_empty() {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "emails",
            "give at least one e-mail address or webhook",
        ));
    }
    if request.emails.len() > 50 || request.webhooks.len() > 20 {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "emails",
            "at most 50 e-mail addresses and 20 webhooks",
        ));
    }
    for email in &request.emails {
        email.parse::<lettre::message::Mailbox>().map_err(|e| {
            ApiError::bad_request(
                codes::INVALID_FIELD,
                "emails",
                format!("`{email}` is not an e-mail address: {e}"),
            )
        })?;
    }
    for url in &request.webhooks {
        let ok = (url.starts_with("http://") || url.starts_with("https://"))
            && url.len() <= 2048
            && reqwest::Url::parse(url).is_ok();
        if !ok {
            return Err(ApiError::bad_request(
                codes::INVALID_FIELD,
                "webhooks",
                format!("`{url}` is not an http(s) URL"),
            ));
        }
    }
    match (&request.product, request.rollout_id) {
        (Some(product), None) => {
            product_id(&state, &admin, product).await?;
        }
        (None, Some(id)) => {
            if state
                .db
                .rollouts(admin.organization_id, Some(id), false)
                .await?
                .is_empty()
            {
                return Err(ApiError::not_found(
                    codes::UNKNOWN_ROLLOUT,
                    Some("rollout_id"),
                    format!("no rollout {id}"),
                ));
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                codes::INVALID_FIELD,
                "product",
                "attach the group to a product or to a rollout (one of them)",
            ));
        }
    }
    let secret = auth::new_token("whsec_");
    match state
        .db
        .create_notification_group(admin.organization_id, &request, &secret, &admin.user)
        .await
    {
        Ok(()) => {}
        Err(db::DbError::Conflict) => {
            return Err(ApiError::conflict(
                codes::INVALID_NAME,
                Some("name"),
                format!("a notification group `{}` exists", request.name),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    state
        .db
        .record_event(
            admin.organization_id,
            &NewEvent {
                kind: "notification_group.created",
                actor: &admin.user,
                product: request.product.as_deref(),
                rollout_id: request.rollout_id,
                details: Some(
                    serde_json::json!({ "name": request.name, "emails": request.emails, "webhooks": request.webhooks }),
                ),
                ..NewEvent::default()
            },
        )
        .await?;
    let group = proto::NotificationGroup {
        name: request.name,
        emails: request.emails,
        webhooks: request.webhooks,
        product: request.product,
        rollout_id: request.rollout_id,
        created_at: db::format_time(db::now_ms()),
        webhook_secret: Some(secret),
        delivered: 0,
        pending: 0,
        given_up: 0,
    };
    Ok((StatusCode::CREATED, Json(group)))
}

/// Uploaded TUF metadata that is refused is the client's fault, with the field named.
fn tuf_upload_error(field: &'static str, e: crate::tuf::TufError) -> ApiError {
    use crate::tuf::TufError;
    let (status, code) = match &e {
        TufError::Verify(_) => (StatusCode::UNPROCESSABLE_ENTITY, codes::BAD_SIGNATURE),
        TufError::Mismatch(_) => (StatusCode::UNPROCESSABLE_ENTITY, codes::TUF_MISMATCH),
        TufError::Metadata(_) => (StatusCode::BAD_REQUEST, codes::INVALID_FIELD),
        TufError::Key(_) => return ApiError::Internal(e.to_string()),
    };
    ApiError::client(status, code, Some(field), e.to_string())
}

/// `GET /tuf`: the organization's repository mode, current root and targets, and online keys.
async fn tuf_status(State(state): State<AppState>, admin: Admin) -> ApiResult<Json<proto::TufStatus>> {
    let organization = state.db.organization_name(admin.organization_id).await?;
    crate::tuf::status(&state, admin.organization_id, &organization)
        .await
        .map(Json)
        .map_err(|e| ApiError::Internal(format!("reading the TUF repository: {e}")))
}

/// `POST /tuf/root`: the next root (and the targets re-signed under it), signed offline.
async fn upload_root(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(upload): ApiJson<proto::TufRootUpload>,
) -> ApiResult<Json<serde_json::Value>> {
    let version = crate::tuf::replace_root(&state, admin.organization_id, &upload.root, upload.targets.as_deref())
        .await
        .map_err(|e| tuf_upload_error("root", e))?;
    state
        .db
        .record_event(
            admin.organization_id,
            &NewEvent {
                kind: "tuf.root_replaced",
                actor: &admin.user,
                details: Some(serde_json::json!({ "root_version": version })),
                ..NewEvent::default()
            },
        )
        .await?;
    Ok(Json(serde_json::json!({ "root_version": version })))
}

/// `POST /tuf/rotate-root` (hosted mode): a new root key, announced in a root signed by the old and
/// the new key.
async fn rotate_root(State(state): State<AppState>, admin: Admin) -> ApiResult<Json<serde_json::Value>> {
    let version = crate::tuf::rotate_root(&state, admin.organization_id)
        .await
        .map_err(|e| match e {
            crate::tuf::TufError::Key(message) => ApiError::conflict(codes::SIGNATURE_REQUIRED, None, message),
            other => ApiError::Internal(format!("rotating the TUF root: {other}")),
        })?;
    state
        .db
        .record_event(
            admin.organization_id,
            &NewEvent {
                kind: "tuf.root_rotated",
                actor: &admin.user,
                details: Some(serde_json::json!({ "root_version": version })),
                ..NewEvent::default()
            },
        )
        .await?;
    Ok(Json(serde_json::json!({ "root_version": version })))
}
