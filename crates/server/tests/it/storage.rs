//! The storage story: what the server relies on from any database.

use upkeep_protocol as proto;
use upkeep_server::db::{
    DEFAULT_ORGANIZATION_ID as ORG, Database, DbError, DeltaClaim, EventFilter, NewDelta, NewEvent, NewRelease,
    NewRollout, NewWorkstation, now_ms,
};
use upkeep_test_support::{Backend, TestDatabase};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn url_for(backend: Backend, dir: &tempfile::TempDir) -> Option<(String, TestDatabase)> {
    let database = TestDatabase::create(backend)?;
    let url = database
        .url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.path().join("upkeep.db").display()));
    Some((url, database))
}

fn artifact(sha: char) -> proto::Artifact {
    proto::Artifact {
        platform: "linux-x86_64".into(),
        filename: "demo.tar.gz".into(),
        sha256: sha.to_string().repeat(64),
        size: 10,
        format: "tar.gz".into(),
        content_sha256: Some(sha.to_string().repeat(64)),
        content_size: Some(20),
    }
}

static NO_REQUIREMENTS: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();

fn new_release<'a>(
    product_id: i64,
    version: &'a str,
    manifest: &'a proto::SignedManifest,
    artifact: &'a proto::Artifact,
) -> NewRelease<'a> {
    NewRelease {
        organization_id: ORG,
        product_id,
        product: "demo",
        version,
        notes: "notes",
        launch: Some("bin/demo"),
        recipe: "archive",
        requires: &NO_REQUIREMENTS,
        manifest,
        artifact,
        actor: "admin",
    }
}

async fn story(url: &str) {
    let db = Database::connect(url).await.expect("connect and migrate");
    // Migrating again is a no-op; bootstrap creates the admin once.
    let db2 = Database::connect(url).await.expect("second connect");
    assert!(db.bootstrap("hash").await.expect("bootstrap"));
    assert!(!db2.bootstrap("other").await.expect("bootstrap again"));
    assert_eq!(
        db.find_user("admin").await.expect("user").expect("admin").password_hash,
        "hash"
    );

    // Products: unique per organization.
    db.create_product(ORG, "demo", proto::ProductKind::Client, false)
        .await
        .expect("product");
    assert!(matches!(
        db.create_product(ORG, "demo", proto::ProductKind::Server, false).await,
        Err(DbError::Conflict)
    ));
    let product_id = db.product_id(ORG, "demo").await.expect("lookup").expect("id");
    assert_eq!(
        db.product_id(ORG + 1, "demo").await.expect("lookup"),
        None,
        "scoped by organization"
    );

    // Releases: all or nothing, and a duplicate version leaves no second artifact or event.
    let manifest = proto::SignedManifest {
        payload: "{}".into(),
        signature: "sig".into(),
    };
    let (a, b) = (&artifact('a'), &artifact('b'));
    let release = |version, art| new_release(product_id, version, &manifest, art);
    db.insert_release(&release("1.0.0", a)).await.expect("release");
    let events_before = db
        .list_events(
            ORG,
            &EventFilter {
                limit: 100,
                ..EventFilter::default()
            },
        )
        .await
        .expect("events")
        .len();
    assert!(matches!(
        db.insert_release(&release("1.0.0", b)).await,
        Err(DbError::Conflict)
    ));
    assert!(
        !db.blob_referenced(&b.sha256).await.expect("ref"),
        "the failed insert left an artifact row"
    );
    assert_eq!(
        db.list_events(
            ORG,
            &EventFilter {
                limit: 100,
                ..EventFilter::default()
            }
        )
        .await
        .expect("events")
        .len(),
        events_before
    );
    db.insert_release(&release("1.10.0", b)).await.expect("release");
    db.insert_release(&release("1.2.0", b))
        .await
        .expect("release sharing a blob");
    let versions: Vec<String> = db
        .list_releases(ORG, product_id, "demo")
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(versions, ["1.0.0", "1.2.0", "1.10.0"], "sorted by semantic version");

    // Approvals start pending and are per organization.
    let release_id = db.release_id(product_id, "1.0.0").await.expect("id").expect("release");
    assert_eq!(
        db.approval(ORG, release_id).await.expect("approval"),
        proto::ApprovalState::Pending
    );
    assert_eq!(
        db.artifact_downloadable(ORG, &a.sha256).await.expect("dl"),
        None,
        "pending is not downloadable"
    );
    let event = NewEvent {
        kind: "release.approved",
        actor: "admin",
        product: Some("demo"),
        version: Some("1.0.0"),
        ..NewEvent::default()
    };
    db.set_approval(ORG, release_id, proto::ApprovalState::Approved, None, &event)
        .await
        .expect("approve");
    assert_eq!(
        db.approval(ORG, release_id).await.expect("approval"),
        proto::ApprovalState::Approved
    );
    assert_eq!(db.artifact_downloadable(ORG, &a.sha256).await.expect("dl"), Some(10));

    // Enrollment tokens are spent atomically.
    db.insert_enroll_token(ORG, "tokenhash", Some("lab"), Some(1), "admin")
        .await
        .expect("token");
    let ws = |id: &'static str, token: &'static str| NewWorkstation {
        id,
        device_token_hash: token,
        hostname: "host",
        os: "linux",
        arch: "x86_64",
        agent_version: "0.1.0",
        groups: &[],
    };
    let enrolled = db.enroll("tokenhash", &ws("ws-1", "dev1")).await.expect("enroll");
    assert_eq!(enrolled, Some((ORG, "default".to_owned())));
    assert_eq!(
        db.enroll("tokenhash", &ws("ws-2", "dev2")).await.expect("enroll"),
        None,
        "the only use is spent"
    );
    assert_eq!(db.enroll("nosuch", &ws("ws-3", "dev3")).await.expect("enroll"), None);
    let device = db.device_by_token("dev1").await.expect("auth").expect("known token");
    assert_eq!((device.id.as_str(), device.organization_id), ("ws-1", ORG));
    assert_eq!(device.groups, ["lab"], "groups come from the enrollment token");
    assert_eq!(device.facts.hostname, "host");
    assert_eq!(device.last_checkin_at, None);
    assert_eq!(db.device_by_token("dev2").await.expect("auth"), None);

    // A check-in's facts are stored when they change; times alone are stored in batches and
    // never move back.
    let checkin = proto::CheckinRequest {
        hostname: "host-renamed".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.1".into(),
        installed: vec![proto::InstalledProduct {
            product: "demo".into(),
            version: "1.0.0".into(),
        }],
        utc_offset_minutes: 0,
        director_counter: 0,
    };
    let facts = upkeep_server::db::DeviceFacts::of(&checkin);
    assert!(facts.same_as(&checkin) && !device.facts.same_as(&checkin));
    db.record_facts(ORG, "ws-1", &facts, 1_000).await.expect("facts");
    let stored = db.device_by_token("dev1").await.expect("auth").expect("known");
    assert_eq!(stored.facts, facts);
    assert_eq!(stored.last_checkin_at, Some(1_000));
    db.record_last_checkins(&[("ws-1".to_owned(), 5_000), ("ws-nosuch".to_owned(), 5_000)])
        .await
        .expect("batch");
    db.record_last_checkins(&[("ws-1".to_owned(), 4_000)])
        .await
        .expect("batch");
    let stored = db.device_by_token("dev1").await.expect("auth").expect("known");
    assert_eq!(stored.last_checkin_at, Some(5_000), "a check-in time never moves back");
    let many: Vec<(String, i64)> = (0..1200)
        .map(|i| (format!("ws-x{i}"), 1))
        .chain([("ws-1".to_owned(), 9_000)])
        .collect();
    db.record_last_checkins(&many)
        .await
        .expect("a batch of several statements");
    let listed = db.list_workstations(ORG, None).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].hostname, "host-renamed");
    assert_eq!(listed[0].installed.get("demo").map(String::as_str), Some("1.0.0"));
    assert_eq!(listed[0].last_checkin_at, Some(upkeep_server::db::format_time(9_000)));
    let approvals = db.approval_map(ORG).await.expect("approvals");
    assert_eq!(
        approvals.get(&("demo".to_owned(), "1.0.0".to_owned())),
        Some(&proto::ApprovalState::Approved)
    );

    // The check-in cache generation only grows.
    let before = db.checkin_generation().await.expect("generation");
    let bumped = db.bump_checkin_generation().await.expect("bump");
    assert!(bumped > before);
    assert_eq!(db.checkin_generation().await.expect("generation"), bumped);
    assert_eq!(db.bump_checkin_generation().await.expect("bump"), bumped + 1);

    // The console's reads and the public download page.
    assert_eq!(db.workstation_count(ORG).await.expect("count"), 1);
    let distribution = db.version_distribution(ORG).await.expect("distribution");
    assert_eq!(distribution.get("demo").and_then(|v| v.get("1.0.0")), Some(&1));
    assert_eq!(
        db.component_hosts(ORG, "demo").await.expect("hosts")[0]
            .installed
            .as_deref(),
        Some("1.0.0")
    );
    assert!(
        db.public_downloads().await.expect("public").is_empty(),
        "not public yet"
    );
    assert_eq!(db.public_artifact(&a.sha256).await.expect("public"), None);
    assert!(db.set_product_public(ORG, "demo", true).await.expect("public"));
    assert!(!db.set_product_public(ORG, "nosuch", true).await.expect("public"));
    let public = db.public_downloads().await.expect("public");
    assert_eq!(public.len(), 1, "only the approved release is offered");
    assert_eq!(
        (public[0].version.as_str(), public[0].artifact.sha256.as_str()),
        ("1.0.0", a.sha256.as_str())
    );
    assert_eq!(
        db.public_artifact(&a.sha256).await.expect("public"),
        Some((10, "demo.tar.gz".to_owned()))
    );
    assert_eq!(
        db.public_artifact(&b.sha256).await.expect("public"),
        None,
        "pending is not public"
    );

    // Users and console sessions: sessions end on expiry, sign-out and password change.
    let user = db
        .create_user(ORG, "vera", "h1", proto::Role::Viewer)
        .await
        .expect("user");
    assert_eq!(user.role, proto::Role::Viewer);
    assert!(matches!(
        db.create_user(ORG, "vera", "h2", proto::Role::Admin).await,
        Err(DbError::Conflict)
    ));
    let vera = db.find_user("vera").await.expect("find").expect("vera");
    let now = upkeep_server::db::now_ms();
    db.create_session("s1", vera.id, ORG, "csrf1", now + 60_000)
        .await
        .expect("session");
    db.create_session("s2", vera.id, ORG, "csrf2", now + 60_000)
        .await
        .expect("session");
    db.create_session("old", vera.id, ORG, "csrf0", now - 1)
        .await
        .expect("session");
    let (found, csrf) = db.session_user("s1").await.expect("lookup").expect("live session");
    assert_eq!((found.name.as_str(), csrf.as_str()), ("vera", "csrf1"));
    assert!(db.session_user("old").await.expect("lookup").is_none(), "expired");
    db.set_password(vera.id, "h3", Some("s1")).await.expect("password");
    assert!(
        db.session_user("s1").await.expect("lookup").is_some(),
        "the changing session stays"
    );
    assert!(
        db.session_user("s2").await.expect("lookup").is_none(),
        "other sessions end"
    );
    db.delete_session("s1").await.expect("sign out");
    assert!(db.session_user("s1").await.expect("lookup").is_none());
    let users = db.list_users(ORG).await.expect("users");
    assert_eq!(
        users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        ["admin", "vera"]
    );

    // Rollouts materialize their targets, with waves, and follow reports.
    let targets = proto::RolloutTargets {
        groups: vec!["lab".into()],
        ..proto::RolloutTargets::default()
    };
    let new = NewRollout {
        release_id,
        product: "demo",
        version: "1.0.0",
        mandatory: true,
        targets: &targets,
        state: "active",
        starts_at: 1,
        deadline: Some(("after", "604800000".into())),
        waves: Some(("50,100".into(), 60_000, 100_000, 3)),
        allow_downgrade: false,
        maintenance_window: Some("Mon-Fri 22:00-06:00"),
        actor: "admin",
        request: serde_json::json!({}),
    };
    let rollout_id = db
        .create_rollout(ORG, &new, &[("ws-1".into(), Some("0.9.0".into()))])
        .await
        .expect("rollout");
    let rows = db.rollout_workstations(ORG, rollout_id).await.expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, proto::WorkstationStatus::Pending);
    // Half of a one-machine fleet rounds up to that machine: the first wave is never empty.
    assert_eq!(rows[0].wave, 1);
    let live = db.rollouts(ORG, None, true).await.expect("rollouts");
    assert_eq!(live.len(), 1);
    let row = &live[0];
    assert!(row.mandatory);
    assert_eq!(row.targets.groups, ["lab"]);
    assert_eq!(row.percents(), Some(vec![50, 100]));
    assert_eq!(
        row.wave_cuts,
        [u64::MAX],
        "the cut keeps the one machine in the first wave"
    );
    assert_eq!(
        (row.soak_ms, row.max_failure_ppm, row.min_sample, row.opened_waves),
        (Some(60_000), Some(100_000), Some(3), 1)
    );
    assert_eq!(row.deadline_kind.as_deref(), Some("after"));
    assert_eq!(row.maintenance_window.as_deref(), Some("Mon-Fri 22:00-06:00"));
    assert_eq!(row.approval, proto::ApprovalState::Approved);

    // The first offer is remembered; a second one does not move it.
    db.mark_notified(ORG, rollout_id, "ws-1", Some("0.9.0"), 0, upkeep_server::db::now_ms())
        .await
        .expect("notified");
    let first = db.first_offers("ws-1").await.expect("first offers");
    let at = *first.get(&rollout_id).expect("first offer recorded");
    db.mark_notified(ORG, rollout_id, "ws-1", Some("0.9.0"), 0, upkeep_server::db::now_ms())
        .await
        .expect("notified again");
    assert_eq!(
        db.first_offers("ws-1").await.expect("first offers").get(&rollout_id),
        Some(&at)
    );
    assert_eq!(
        db.rollout_workstations(ORG, rollout_id).await.expect("rows")[0].status,
        proto::WorkstationStatus::Notified
    );

    // Waves open once, whoever asks first; state changes are conditional too.
    let event = NewEvent {
        kind: "rollout.wave_opened",
        actor: "upkeep",
        rollout_id: Some(rollout_id),
        ..NewEvent::default()
    };
    assert!(db.open_wave(ORG, rollout_id, 1, &event).await.expect("open"));
    assert!(
        !db.open_wave(ORG, rollout_id, 1, &event).await.expect("open again"),
        "opened twice"
    );
    let event = NewEvent {
        kind: "rollout.paused",
        actor: "admin",
        rollout_id: Some(rollout_id),
        ..NewEvent::default()
    };
    assert!(
        db.transition_rollout(ORG, rollout_id, &["active"], "paused", Some("why"), &event)
            .await
            .expect("pause")
    );
    assert!(
        !db.transition_rollout(ORG, rollout_id, &["active"], "paused", None, &event)
            .await
            .expect("pause again")
    );
    assert!(
        !db.transition_rollout(ORG + 1, rollout_id, &["paused"], "active", None, &event)
            .await
            .expect("other org")
    );
    let event = NewEvent {
        kind: "rollout.resumed",
        actor: "admin",
        rollout_id: Some(rollout_id),
        ..NewEvent::default()
    };
    assert!(
        db.transition_rollout(ORG, rollout_id, &["paused"], "active", None, &event)
            .await
            .expect("resume")
    );
    let report = proto::DeviceReport {
        product: "demo".into(),
        version: "1.0.0".into(),
        status: proto::WorkstationStatus::Installed,
        rollout_id: Some(rollout_id),
        from_version: Some("0.9.0".into()),
        error_code: None,
        message: None,
        details: Some(serde_json::json!({ "previous_version": "0.9.0" })),
        at: None,
    };
    db.record_report(ORG, "ws-1", &report, 1_700_000_000_000)
        .await
        .expect("report");
    let rows = db.rollout_workstations(ORG, rollout_id).await.expect("rows");
    assert_eq!(rows[0].status, proto::WorkstationStatus::Installed);
    assert_eq!(rows[0].from_version.as_deref(), Some("0.9.0"));
    assert!(
        db.rollout_workstations(ORG + 1, rollout_id)
            .await
            .expect("rows")
            .is_empty(),
        "scoped by organization"
    );

    // Events filter by product and workstation, oldest first, and paginate after an id.
    let by_ws = db
        .list_events(
            ORG,
            &EventFilter {
                workstation: Some("ws-1".into()),
                limit: 100,
                ..EventFilter::default()
            },
        )
        .await
        .expect("events");
    let kinds: Vec<&str> = by_ws.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["workstation.enrolled", "workstation.installed"]);
    assert_eq!(by_ws[1].at, "2023-11-14T22:13:20Z");
    assert_eq!(
        by_ws[1].details.as_ref().and_then(|d| d["from_version"].as_str()),
        Some("0.9.0")
    );
    let after = db
        .list_events(
            ORG,
            &EventFilter {
                after_id: Some(by_ws[0].id),
                workstation: Some("ws-1".into()),
                limit: 100,
                ..EventFilter::default()
            },
        )
        .await
        .expect("events");
    assert_eq!(after.len(), 1);
    // Paging walks forward from `after`, a page at a time.
    let all = db
        .list_events(
            ORG,
            &EventFilter {
                limit: 1000,
                ..EventFilter::default()
            },
        )
        .await
        .expect("events");
    let page = db
        .list_events(
            ORG,
            &EventFilter {
                after_id: Some(all[0].id),
                limit: 2,
                ..EventFilter::default()
            },
        )
        .await
        .expect("page");
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), [all[1].id, all[2].id]);

    deltas(&db, product_id).await;
    db.close().await;
    db2.close().await;
}

/// Patches between releases: a pair is claimed once (a stale claim is taken over), a ready patch
/// is offered for its target version and served only where that release is approved.
async fn deltas(db: &Database, product_id: i64) {
    let target = db.release_id(product_id, "1.10.0").await.expect("id").expect("1.10.0");
    let targets = db.delta_targets(target).await.expect("targets");
    assert_eq!(targets.len(), 1, "one tar.gz artifact that knows its content");
    let to = &targets[0];
    let mut sources = db
        .delta_sources(product_id, target, "linux-x86_64")
        .await
        .expect("sources");
    sources.sort_by(|a, b| a.version.cmp(&b.version));
    assert_eq!(
        sources.iter().map(|s| s.version.as_str()).collect::<Vec<_>>(),
        ["1.0.0", "1.2.0"]
    );
    assert!(
        db.delta_sources(product_id, target, "windows-x86_64")
            .await
            .expect("other platform")
            .is_empty()
    );
    let from = &sources[1];

    let DeltaClaim::Claimed(id) = db.claim_delta(from, to, 0).await.expect("claim") else {
        panic!("the first claim must land");
    };
    assert_eq!(
        db.claim_delta(from, to, 0).await.expect("claim again"),
        DeltaClaim::Taken
    );
    // A claim still building from before the cut-off belongs to a process that died.
    assert_eq!(
        db.claim_delta(from, to, now_ms() + 1_000).await.expect("take over"),
        DeltaClaim::Claimed(id)
    );
    assert!(
        db.delta_offers(ORG, "demo", "1.10.0").await.expect("offers").is_empty(),
        "not ready yet"
    );
    assert_eq!(
        db.stale_delta_targets(now_ms() + 1_000).await.expect("stale"),
        [target],
        "a server that starts later finds the interrupted build"
    );
    assert!(db.stale_delta_targets(0).await.expect("stale").is_empty());

    let patch = "c".repeat(64);
    let delta = NewDelta {
        method: "bsdiff",
        sha256: &patch,
        size: 5,
        build_ms: 1,
        from,
        to,
    };
    db.finish_delta(id, &delta).await.expect("finish");
    assert!(
        db.stale_delta_targets(now_ms() + 1_000)
            .await
            .expect("stale")
            .is_empty()
    );
    assert_eq!(
        db.claim_delta(from, to, now_ms() + 1_000)
            .await
            .expect("claim a ready pair"),
        DeltaClaim::Taken,
        "a ready patch is never rebuilt"
    );
    assert_eq!(
        db.delta_offers(ORG, "demo", "1.10.0").await.expect("offers"),
        [proto::DeltaOffer {
            from_version: "1.2.0".into(),
            platform: "linux-x86_64".into(),
            sha256: patch.clone(),
            size: 5,
            method: "bsdiff".into(),
        }]
    );
    assert!(
        db.delta_offers(ORG + 1, "demo", "1.10.0")
            .await
            .expect("offers")
            .is_empty()
    );
    assert!(
        db.blob_referenced(&patch).await.expect("ref"),
        "patch blobs are referenced"
    );

    assert_eq!(
        db.delta_downloadable(ORG, &patch).await.expect("dl"),
        None,
        "1.10.0 is pending"
    );
    let event = NewEvent {
        kind: "release.approved",
        actor: "admin",
        product: Some("demo"),
        version: Some("1.10.0"),
        ..NewEvent::default()
    };
    db.set_approval(ORG, target, proto::ApprovalState::Approved, None, &event)
        .await
        .expect("approve");
    assert_eq!(db.delta_downloadable(ORG, &patch).await.expect("dl"), Some(5));
    assert_eq!(db.delta_downloadable(ORG + 1, &patch).await.expect("dl"), None);

    // A skipped pair is not offered, and not claimed again either.
    let other = &sources[0];
    let DeltaClaim::Claimed(skipped) = db.claim_delta(other, to, 0).await.expect("claim") else {
        panic!("the first claim must land");
    };
    db.skip_delta(skipped, "skipped", "too large").await.expect("skip");
    assert_eq!(
        db.claim_delta(other, to, now_ms() + 1_000).await.expect("claim"),
        DeltaClaim::Taken
    );
    assert_eq!(db.delta_offers(ORG, "demo", "1.10.0").await.expect("offers").len(), 1);
}

fn run(backend: Backend) {
    let dir = tempfile::tempdir().expect("tmp");
    let Some((url, _database)) = url_for(backend, &dir) else {
        eprintln!(
            "PostgreSQL variant not run: set {}",
            upkeep_test_support::DATABASE_URL_ENV
        );
        return;
    };
    runtime().block_on(story(&url));
}

#[test]
fn story_sqlite() {
    run(Backend::Sqlite);
}

#[test]
fn story_postgres() {
    run(Backend::Postgres);
}

#[test]
fn refuses_unknown_urls_and_newer_schemas() {
    let rt = runtime();
    let err = rt.block_on(Database::connect("mysql://x")).err().expect("refused");
    assert!(err.to_string().contains("unsupported database URL"), "{err}");

    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("u.db").display());
    rt.block_on(async {
        let db = Database::connect(&url).await.expect("connect");
        db.close().await;
        // A newer server migrated this file; this one must not touch it.
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&url).await.expect("raw");
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)")
            .execute(&mut conn)
            .await
            .expect("insert");
        conn.close().await.expect("close");
        let err = Database::connect(&url).await.err().expect("refused");
        assert!(matches!(err, DbError::SchemaTooNew { found: 999, .. }), "{err}");
    });
}
