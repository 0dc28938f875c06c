-- The schema of the first release. `IF NOT EXISTS`: data directories made before migrations
-- were versioned already have these tables, and adopt them as version 1.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, name TEXT NOT NULL, revision INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    before TEXT, before_revision INTEGER, after TEXT,
    PRIMARY KEY (revision, seq));
CREATE TABLE IF NOT EXISTS gateway_keys (
    gateway TEXT PRIMARY KEY, primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signing_keys (
    id INTEGER PRIMARY KEY, public_key TEXT NOT NULL, private_key TEXT,
    created_at TEXT NOT NULL, endorsed_by TEXT, endorsement TEXT);
