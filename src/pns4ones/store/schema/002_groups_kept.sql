-- Group membership per application and information base, and messages kept
-- for users who are offline (store and forward) with who received them.
CREATE TABLE group_members (
    app_id      TEXT NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    ib_id       TEXT NOT NULL,
    group_name  TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    added_at    REAL NOT NULL,
    PRIMARY KEY (app_id, ib_id, group_name, user_id)
) WITHOUT ROWID;

CREATE TABLE kept_messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id      TEXT NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    ib_id       TEXT NOT NULL,
    type        TEXT NOT NULL CHECK (type IN ('user', 'group', 'all')),
    target      TEXT NOT NULL,
    payload     BLOB NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL
);
CREATE INDEX kept_target ON kept_messages(app_id, ib_id, type, target);
CREATE INDEX kept_expiry ON kept_messages(expires_at);

CREATE TABLE kept_received (
    message_id  INTEGER NOT NULL REFERENCES kept_messages(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL,
    PRIMARY KEY (message_id, user_id)
) WITHOUT ROWID;

CREATE TABLE kept_stats (
    app_id      TEXT PRIMARY KEY REFERENCES applications(id) ON DELETE CASCADE,
    dropped     INTEGER NOT NULL DEFAULT 0,
    expired     INTEGER NOT NULL DEFAULT 0
);
