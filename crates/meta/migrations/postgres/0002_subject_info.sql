-- Subjects added by the admin action AddNewSubject, with their placement tag: a new route of
-- the subject takes groups with that tag (QMQ's subject_info).
CREATE TABLE subject_info (
    subject    TEXT   NOT NULL PRIMARY KEY,
    tag        TEXT   NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
