-- The administrators' audit log: who did what to which application, when and
-- from where (the panel's login and peer address, or the OS user of the CLI).
-- Bounded: every insert trims the oldest rows beyond a cap (see _sql.py).
-- app_id has no foreign key: the record of a deletion outlives the application.
CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       REAL NOT NULL,
    actor    TEXT NOT NULL,
    source   TEXT NOT NULL,
    address  TEXT NOT NULL,
    action   TEXT NOT NULL,
    app_id   TEXT NOT NULL DEFAULT '',
    detail   TEXT NOT NULL DEFAULT ''
);
