-- Gateway instance status (heartbeats), so a restart keeps it and replicas share it. One row
-- per instance: its record as JSON, and when it was last heard from (RFC 3339, UTC, fixed
-- width, so text order is time order).
CREATE TABLE instances (
    gateway TEXT NOT NULL, instance_id TEXT NOT NULL, last_seen TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (gateway, instance_id));
