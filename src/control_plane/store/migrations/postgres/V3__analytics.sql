-- Request analytics uploaded by gateways, so a restart keeps them and replicas share them.
-- One row per minute (unix seconds of its start) × gateway × API × operation × product ×
-- subscription × status; telemetry batches add to it (upsert-add).
CREATE TABLE analytics (
    minute BIGINT NOT NULL, gateway TEXT NOT NULL, api TEXT NOT NULL, operation TEXT NOT NULL,
    product TEXT NOT NULL, subscription TEXT NOT NULL, status INTEGER NOT NULL,
    requests BIGINT NOT NULL, errors BIGINT NOT NULL, cache_hits BIGINT NOT NULL,
    request_bytes BIGINT NOT NULL, response_bytes BIGINT NOT NULL,
    total_duration_us BIGINT NOT NULL, max_duration_us BIGINT NOT NULL,
    backend_duration_us BIGINT NOT NULL,
    PRIMARY KEY (minute, gateway, api, operation, product, subscription, status));
-- The latency histogram of each analytics row: requests per bucket (the bounds are fixed in
-- the wire format, `LATENCY_BOUNDS_US`), zero buckets left out.
CREATE TABLE analytics_latency (
    minute BIGINT NOT NULL, gateway TEXT NOT NULL, api TEXT NOT NULL, operation TEXT NOT NULL,
    product TEXT NOT NULL, subscription TEXT NOT NULL, status INTEGER NOT NULL,
    bucket INTEGER NOT NULL, requests BIGINT NOT NULL,
    PRIMARY KEY (minute, gateway, api, operation, product, subscription, status, bucket));
-- Telemetry batches already added (gateway, instance, sequence), written in the transaction
-- that adds the batch, so a batch retried against any replica is counted once.
CREATE TABLE analytics_batches (
    gateway TEXT NOT NULL, instance_id TEXT NOT NULL, sequence BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (gateway, instance_id, sequence));
CREATE INDEX analytics_batches_received_at ON analytics_batches (received_at);
