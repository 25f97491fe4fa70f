-- upkeep schema v1, written for PostgreSQL; SQLite gets `BIGSERIAL PRIMARY KEY` replaced by
-- `INTEGER PRIMARY KEY AUTOINCREMENT` (see db.rs), the only difference the two need. Times are Unix milliseconds (BIGINT); flags are BIGINT 0/1 so the
-- same queries decode on SQLite and PostgreSQL.
CREATE TABLE organizations (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id),
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE products (
    id BIGSERIAL PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (organization_id, name)
);

CREATE TABLE releases (
    id BIGSERIAL PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    product_id BIGINT NOT NULL REFERENCES products(id),
    version TEXT NOT NULL,
    notes TEXT NOT NULL,
    launch TEXT,
    recipe TEXT NOT NULL,
    manifest TEXT NOT NULL,
    manifest_signature TEXT NOT NULL,
    -- JSON object: product → semantic-version requirement, from the release's upkeep.toml.
    requires TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (product_id, version)
);

CREATE TABLE artifacts (
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    release_id BIGINT NOT NULL REFERENCES releases(id),
    platform TEXT NOT NULL,
    filename TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    format TEXT NOT NULL,
    PRIMARY KEY (release_id, platform)
);
CREATE INDEX artifacts_by_sha256 ON artifacts (sha256);

CREATE TABLE approvals (
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    release_id BIGINT NOT NULL REFERENCES releases(id),
    state TEXT NOT NULL,
    reason TEXT,
    decided_by TEXT NOT NULL,
    decided_at BIGINT NOT NULL,
    PRIMARY KEY (organization_id, release_id)
);

CREATE TABLE enroll_tokens (
    token_hash TEXT PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    group_name TEXT,
    uses_left BIGINT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE workstations (
    id TEXT PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    token_hash TEXT NOT NULL UNIQUE,
    hostname TEXT NOT NULL,
    os TEXT NOT NULL,
    arch TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    last_checkin_at BIGINT,
    -- Grows with every check-in; signed into director metadata so answers cannot be replayed.
    director_counter BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX workstations_by_org ON workstations (organization_id);

CREATE TABLE workstation_groups (
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    workstation_id TEXT NOT NULL REFERENCES workstations(id),
    group_name TEXT NOT NULL,
    PRIMARY KEY (workstation_id, group_name)
);

CREATE TABLE installed_versions (
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    workstation_id TEXT NOT NULL REFERENCES workstations(id),
    product TEXT NOT NULL,
    version TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (workstation_id, product)
);

CREATE TABLE rollouts (
    id BIGSERIAL PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    release_id BIGINT NOT NULL REFERENCES releases(id),
    mandatory BIGINT NOT NULL,
    target_all BIGINT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT,
    starts_at BIGINT NOT NULL,
    -- Deadline: kind `at` (value: Unix ms), `local` (value: YYYY-MM-DDTHH:MM:SS), `after` (value: ms).
    deadline_kind TEXT,
    deadline_value TEXT,
    -- Waves: cumulative percents `5,25,100`; NULL means one wave of 100%.
    waves TEXT,
    -- Placement boundaries between waves, fixed at creation (see upkeep_domain::wave_cuts).
    wave_cuts TEXT,
    soak_ms BIGINT,
    max_failure_ppm BIGINT,
    min_sample BIGINT,
    opened_waves BIGINT NOT NULL,
    wave_opened_at BIGINT NOT NULL,
    allow_downgrade BIGINT NOT NULL,
    maintenance_window TEXT,
    updated_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX rollouts_by_org_state ON rollouts (organization_id, state);

CREATE TABLE rollout_targets (
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    rollout_id BIGINT NOT NULL REFERENCES rollouts(id),
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (rollout_id, kind, value)
);

CREATE TABLE rollout_workstations (
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    rollout_id BIGINT NOT NULL REFERENCES rollouts(id),
    workstation_id TEXT NOT NULL REFERENCES workstations(id),
    wave BIGINT NOT NULL,
    status TEXT NOT NULL,
    -- 1 for a failure an administrator acknowledged by resuming; it no longer counts against
    -- the failure threshold. A new report clears it.
    acknowledged BIGINT NOT NULL DEFAULT 0,
    from_version TEXT,
    first_offered_at BIGINT,
    error_code TEXT,
    message TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, workstation_id)
);

CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    product TEXT,
    version TEXT,
    workstation_id TEXT,
    rollout_id BIGINT,
    error_code TEXT,
    message TEXT,
    details TEXT
);
CREATE INDEX events_by_org_id ON events (organization_id, id);

-- People and webhooks told about updates of a product or a rollout.
CREATE TABLE notification_groups (
    id BIGSERIAL PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL,
    -- JSON arrays of strings.
    emails TEXT NOT NULL,
    webhooks TEXT NOT NULL,
    product TEXT,
    rollout_id BIGINT,
    -- Signs webhook bodies (HMAC-SHA256); shown once at creation, kept to sign.
    webhook_secret TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (organization_id, name)
);

-- The outbox: one row per message to deliver, claimed by one server process at a time.
CREATE TABLE notifications (
    id BIGSERIAL PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    group_id BIGINT NOT NULL REFERENCES notification_groups(id),
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    event TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    claimed_until BIGINT NOT NULL,
    delivered_at BIGINT,
    gave_up_at BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX notifications_due ON notifications (delivered_at, gave_up_at, next_attempt_at);

-- The TUF image repository of each organization: every metadata file clients may fetch
-- (`N.root.json`, `V.targets.json`, `V.snapshot.json`, `timestamp.json`), and each role's version,
-- which only ever increases.
CREATE TABLE tuf_files (
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    filename TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (organization_id, filename)
);

CREATE TABLE tuf_versions (
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    role TEXT NOT NULL,
    version BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (organization_id, role)
);

-- Facts every server process must agree on (e.g. the manifest-signing public key).
CREATE TABLE server_settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
