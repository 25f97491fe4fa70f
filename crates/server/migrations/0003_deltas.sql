-- Delta updates. A tar.gz artifact records its uncompressed tar stream (SHA-256 and length),
-- which is what patches are built on and what a patched result is checked against.
ALTER TABLE artifacts ADD COLUMN content_sha256 TEXT;
ALTER TABLE artifacts ADD COLUMN content_size BIGINT;

-- One row per (from release, to release, platform): a claim while it is built (state
-- 'building'), then 'ready' with the patch blob, or 'skipped' with the reason. The unique key is
-- the claim: of several server processes, the one whose insert lands builds the patch.
CREATE TABLE deltas (
    id BIGSERIAL PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    product_id BIGINT NOT NULL REFERENCES products(id),
    from_release_id BIGINT NOT NULL REFERENCES releases(id),
    to_release_id BIGINT NOT NULL REFERENCES releases(id),
    platform TEXT NOT NULL,
    state TEXT NOT NULL,
    method TEXT,
    sha256 TEXT,
    size BIGINT,
    reason TEXT,
    claimed_at BIGINT NOT NULL,
    created_at BIGINT,
    UNIQUE (from_release_id, to_release_id, platform)
);
CREATE INDEX deltas_by_target ON deltas (to_release_id, state);
CREATE INDEX deltas_by_sha256 ON deltas (sha256);
