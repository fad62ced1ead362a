-- Replication and automatic failover (qmq-rs): a per-group epoch decided by conditional
-- updates, the master's lease, the fence a promoted master waits out, every epoch's start and
-- the last report of every server.
ALTER TABLE broker_group
    ADD COLUMN epoch          BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN lease_until_ms BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN fence_until_ms BIGINT NOT NULL DEFAULT 0;

CREATE TABLE broker_group_epoch (
    group_name    TEXT   NOT NULL,
    epoch         BIGINT NOT NULL,
    hostname      TEXT   NOT NULL,
    serve_port    BIGINT NOT NULL,
    message_start BIGINT NOT NULL DEFAULT -1,
    action_start  BIGINT NOT NULL DEFAULT -1,
    created_ms    BIGINT NOT NULL,
    PRIMARY KEY (group_name, epoch)
);

CREATE TABLE broker_replica (
    hostname       TEXT   NOT NULL,
    serve_port     BIGINT NOT NULL,
    group_name     TEXT   NOT NULL,
    role           BIGINT NOT NULL,
    epoch          BIGINT NOT NULL,
    message_offset BIGINT NOT NULL,
    action_offset  BIGINT NOT NULL,
    updated_ms     BIGINT NOT NULL,
    PRIMARY KEY (hostname, serve_port)
);
