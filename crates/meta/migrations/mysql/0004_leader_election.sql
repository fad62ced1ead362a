-- Leases of leader-elected services (the transactional-message watchdog): one row per lease.
-- `node` is the holder ('' = free); `last_seen_active` its last renewal, in the database's
-- milliseconds since the epoch; `term` grows with every take-over or renewal.
CREATE TABLE leader_election (
    name             VARCHAR(128) NOT NULL PRIMARY KEY,
    node             VARCHAR(128) NOT NULL,
    last_seen_active BIGINT       NOT NULL,
    term             BIGINT       NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
