-- The same tables as SQLite's V1, so `outpost store copy` moves rows as they are. Revisions are
-- BIGINT; `meta` holds `revision` and `log_floor` as text, like SQLite.
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE resources (
    kind TEXT NOT NULL, name TEXT NOT NULL, revision BIGINT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, name));
CREATE TABLE changes (
    revision BIGINT NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    before TEXT, before_revision BIGINT, after TEXT,
    PRIMARY KEY (revision, seq));
CREATE TABLE gateway_keys (
    gateway TEXT PRIMARY KEY, primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL);
-- Ids are given by the writer (max + 1 under the store's write lock), so a copy keeps them.
CREATE TABLE signing_keys (
    id BIGINT PRIMARY KEY, public_key TEXT NOT NULL, private_key TEXT,
    created_at TEXT NOT NULL, endorsed_by TEXT, endorsement TEXT);
