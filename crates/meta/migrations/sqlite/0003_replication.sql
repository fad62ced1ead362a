-- Replication and automatic failover (qmq-rs): a per-group epoch decided by conditional
-- updates, the master's lease, the fence a promoted master waits out, every epoch's start and
-- the last report of every server.
ALTER TABLE broker_group ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE broker_group ADD COLUMN lease_until_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE broker_group ADD COLUMN fence_until_ms INTEGER NOT NULL DEFAULT 0;

CREATE TABLE broker_group_epoch (
    group_name    TEXT    NOT NULL,
    epoch         INTEGER NOT NULL,
    hostname      TEXT    NOT NULL,
    serve_port    INTEGER NOT NULL,
    message_start INTEGER NOT NULL DEFAULT -1,
    action_start  INTEGER NOT NULL DEFAULT -1,
    created_ms    INTEGER NOT NULL,
    PRIMARY KEY (group_name, epoch)
);

CREATE TABLE broker_replica (
    hostname       TEXT    NOT NULL,
    serve_port     INTEGER NOT NULL,
    group_name     TEXT    NOT NULL,
    role           INTEGER NOT NULL,
    epoch          INTEGER NOT NULL,
    message_offset INTEGER NOT NULL,
    action_offset  INTEGER NOT NULL,
    updated_ms     INTEGER NOT NULL,
    PRIMARY KEY (hostname, serve_port)
);
