-- Broker groups an operator took out of a subject's route (remove-subject-broker-group): the
-- route is never topped up to min.group.num with them. Adding the group back to the route
-- (add-subject-broker-group, extend-subject-route) deletes the row.
CREATE TABLE subject_route_exclusion (
    subject      VARCHAR(200) NOT NULL,
    broker_group VARCHAR(200) NOT NULL,
    created_ms   BIGINT       NOT NULL,
    PRIMARY KEY (subject, broker_group)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
