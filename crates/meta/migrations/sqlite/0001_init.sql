-- qmq-rs meta schema, SQLite dialect. Times are milliseconds since the Unix epoch.
CREATE TABLE broker_group (
    group_name     TEXT    NOT NULL PRIMARY KEY,
    kind           INTEGER NOT NULL,
    master_address TEXT    NOT NULL,
    state          INTEGER NOT NULL,
    tag            TEXT    NOT NULL DEFAULT '',
    heartbeat_ms   INTEGER NOT NULL,
    created_ms     INTEGER NOT NULL,
    updated_ms     INTEGER NOT NULL
);

CREATE TABLE broker (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    group_name TEXT    NOT NULL,
    role       INTEGER NOT NULL,
    hostname   TEXT    NOT NULL,
    ip         TEXT    NOT NULL,
    serve_port INTEGER NOT NULL,
    sync_port  INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE (hostname, serve_port),
    UNIQUE (group_name, role)
);

CREATE TABLE subject_route (
    subject       TEXT    NOT NULL PRIMARY KEY,
    broker_groups TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL
);

CREATE TABLE client_meta_info (
    subject        TEXT    NOT NULL,
    client_type    INTEGER NOT NULL,
    consumer_group TEXT    NOT NULL,
    client_id      TEXT    NOT NULL,
    app_code       TEXT    NOT NULL,
    room           TEXT    NOT NULL,
    created_ms     INTEGER NOT NULL,
    last_seen_ms   INTEGER NOT NULL,
    PRIMARY KEY (subject, client_type, consumer_group, client_id)
);

CREATE TABLE client_offline_state (
    client_id      TEXT    NOT NULL,
    subject        TEXT    NOT NULL,
    consumer_group TEXT    NOT NULL,
    state          INTEGER NOT NULL,
    updated_ms     INTEGER NOT NULL,
    PRIMARY KEY (client_id, subject, consumer_group)
);

CREATE TABLE readonly_broker_group (
    subject      TEXT    NOT NULL,
    broker_group TEXT    NOT NULL,
    created_ms   INTEGER NOT NULL,
    PRIMARY KEY (subject, broker_group)
);

CREATE TABLE client_db (
    url        TEXT    NOT NULL PRIMARY KEY,
    user_name  TEXT    NOT NULL,
    password   TEXT    NOT NULL,
    room       TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE reset_offset_request (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    subject        TEXT    NOT NULL,
    consumer_group TEXT    NOT NULL,
    action         INTEGER NOT NULL,
    created_ms     INTEGER NOT NULL
);
