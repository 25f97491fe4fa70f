-- The web console: browser sessions (cookie secret stored hashed, with the session's CSRF token)
-- and products whose latest approved releases are offered on the public /downloads page.
CREATE TABLE console_sessions (
    token_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id),
    organization_id BIGINT NOT NULL REFERENCES organizations(id),
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

ALTER TABLE products ADD COLUMN public BIGINT NOT NULL DEFAULT 0;
