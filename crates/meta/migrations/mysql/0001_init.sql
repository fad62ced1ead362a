-- qmq-rs meta schema, MySQL/MariaDB dialect. Times are milliseconds since the Unix epoch.
-- Key columns are VARCHAR(200) so composite utf8mb4 keys stay within InnoDB's 3072-byte limit.
CREATE TABLE broker_group (
    group_name     VARCHAR(200) NOT NULL PRIMARY KEY,
    kind           BIGINT       NOT NULL,
    master_address VARCHAR(255) NOT NULL,
    state          BIGINT       NOT NULL,
    tag            VARCHAR(200) NOT NULL DEFAULT '',
    heartbeat_ms   BIGINT       NOT NULL,
    created_ms     BIGINT       NOT NULL,
    updated_ms     BIGINT       NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE broker (
    id         BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    group_name VARCHAR(200) NOT NULL,
    role       BIGINT       NOT NULL,
    hostname   VARCHAR(200) NOT NULL,
    ip         VARCHAR(64)  NOT NULL,
    serve_port BIGINT       NOT NULL,
    sync_port  BIGINT       NOT NULL,
    created_ms BIGINT       NOT NULL,
    updated_ms BIGINT       NOT NULL,
    UNIQUE KEY uniq_broker (hostname, serve_port),
    UNIQUE KEY uniq_group_role (group_name, role)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE subject_route (
    subject       VARCHAR(200)  NOT NULL PRIMARY KEY,
    broker_groups VARCHAR(8000) NOT NULL,
    version       BIGINT        NOT NULL,
    created_ms    BIGINT        NOT NULL,
    updated_ms    BIGINT        NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE client_meta_info (
    subject        VARCHAR(200) NOT NULL,
    client_type    BIGINT       NOT NULL,
    consumer_group VARCHAR(200) NOT NULL,
    client_id      VARCHAR(200) NOT NULL,
    app_code       VARCHAR(200) NOT NULL,
    room           VARCHAR(64)  NOT NULL,
    created_ms     BIGINT       NOT NULL,
    last_seen_ms   BIGINT       NOT NULL,
    PRIMARY KEY (subject, client_type, consumer_group, client_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE client_offline_state (
    client_id      VARCHAR(200) NOT NULL,
    subject        VARCHAR(200) NOT NULL,
    consumer_group VARCHAR(200) NOT NULL,
    state          BIGINT       NOT NULL,
    updated_ms     BIGINT       NOT NULL,
    PRIMARY KEY (client_id, subject, consumer_group)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE readonly_broker_group (
    subject      VARCHAR(200) NOT NULL,
    broker_group VARCHAR(200) NOT NULL,
    created_ms   BIGINT       NOT NULL,
    PRIMARY KEY (subject, broker_group)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE client_db (
    url        VARCHAR(255) NOT NULL PRIMARY KEY,
    user_name  VARCHAR(200) NOT NULL,
    password   VARCHAR(200) NOT NULL,
    room       VARCHAR(64)  NOT NULL,
    created_ms BIGINT       NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE reset_offset_request (
    id             BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    subject        VARCHAR(200) NOT NULL,
    consumer_group VARCHAR(200) NOT NULL,
    action         BIGINT       NOT NULL,
    created_ms     BIGINT       NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
