-- The administrators' audit log (the SQLite schema/004): who did what to which
-- application, when and from where.  Bounded: every insert trims the oldest rows
-- beyond a cap; app_id has no foreign key (a deletion's record outlives it).
CREATE TABLE audit_log (
    id       bigserial PRIMARY KEY,
    at       double precision NOT NULL,
    actor    text NOT NULL,
    source   text NOT NULL,
    address  text NOT NULL,
    action   text NOT NULL,
    app_id   text NOT NULL DEFAULT '',
    detail   text NOT NULL DEFAULT ''
);
