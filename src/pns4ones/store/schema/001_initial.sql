-- Applications, access tokens (digests only) and the admin account.
CREATE TABLE applications (
    id          TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    server_key  TEXT NOT NULL UNIQUE,
    client_key  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);

CREATE TABLE tokens (
    digest      BLOB PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    token_id    BLOB NOT NULL,
    issued_at   REAL NOT NULL,
    expires_at  REAL NOT NULL
);
CREATE INDEX tokens_app ON tokens(app_id, expires_at);

CREATE TABLE admin_account (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    login          TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    updated_at     REAL NOT NULL
);
