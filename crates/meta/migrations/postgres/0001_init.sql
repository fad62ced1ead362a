-- qmq-rs meta schema, PostgreSQL dialect. Times are milliseconds since the Unix epoch.
CREATE TABLE broker_group (
    group_name     TEXT    NOT NULL PRIMARY KEY,
    kind           BIGINT NOT NULL,
    master_address TEXT    NOT NULL,
    state          BIGINT NOT NULL,
    tag            TEXT    NOT NULL DEFAULT '',
    heartbeat_ms   BIGINT NOT NULL,
    created_ms     BIGINT NOT NULL,
    updated_ms     BIGINT NOT NULL
);

CREATE TABLE broker (
    id         BIGSERIAL PRIMARY KEY,
    group_name TEXT    NOT NULL,
    role       BIGINT NOT NULL,
    hostname   TEXT    NOT NULL,
    ip         TEXT    NOT NULL,
    serve_port BIGINT NOT NULL,
    sync_port  BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    UNIQUE (hostname, serve_port),
    UNIQUE (group_name, role)
);

CREATE TABLE subject_route (
    subject       TEXT    NOT NULL PRIMARY KEY,
    broker_groups TEXT    NOT NULL,
    version       BIGINT NOT NULL,
    created_ms    BIGINT NOT NULL,
    updated_ms    BIGINT NOT NULL
);

CREATE TABLE client_meta_info (
    subject        TEXT    NOT NULL,
    client_type    BIGINT NOT NULL,
    consumer_group TEXT    NOT NULL,
    client_id      TEXT    NOT NULL,
    app_code       TEXT    NOT NULL,
    room           TEXT    NOT NULL,
    created_ms     BIGINT NOT NULL,
    last_seen_ms   BIGINT NOT NULL,
    PRIMARY KEY (subject, client_type, consumer_group, client_id)
);

CREATE TABLE client_offline_state (
    client_id      TEXT    NOT NULL,
    subject        TEXT    NOT NULL,
    consumer_group TEXT    NOT NULL,
    state          BIGINT NOT NULL,
    updated_ms     BIGINT NOT NULL,
    PRIMARY KEY (client_id, subject, consumer_group)
);

CREATE TABLE readonly_broker_group (
    subject      TEXT    NOT NULL,
    broker_group TEXT    NOT NULL,
    created_ms   BIGINT NOT NULL,
    PRIMARY KEY (subject, broker_group)
);

CREATE TABLE client_db (
    url        TEXT    NOT NULL PRIMARY KEY,
    user_name  TEXT    NOT NULL,
    password   TEXT    NOT NULL,
    room       TEXT    NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE reset_offset_request (
    id             BIGSERIAL PRIMARY KEY,
    subject        TEXT    NOT NULL,
    consumer_group TEXT    NOT NULL,
    action         BIGINT NOT NULL,
    created_ms     BIGINT NOT NULL
);
