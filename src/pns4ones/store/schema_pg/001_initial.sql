-- The whole store on PostgreSQL (the SQLite schema/001 and 002 in one step):
-- applications, access tokens (digests only), the admin account, group
-- membership, kept messages with who received them, and the change counter
-- the nodes poll when notifications cannot reach them.
CREATE TABLE applications (
    id          text PRIMARY KEY,
    title       text NOT NULL,
    server_key  text NOT NULL UNIQUE,
    client_key  text NOT NULL,
    created_at  double precision NOT NULL,
    updated_at  double precision NOT NULL
);

CREATE TABLE tokens (
    digest      bytea PRIMARY KEY,
    app_id      text NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    token_id    bytea NOT NULL,
    issued_at   double precision NOT NULL,
    expires_at  double precision NOT NULL
);
CREATE INDEX tokens_app ON tokens(app_id, expires_at);

CREATE TABLE admin_account (
    id             integer PRIMARY KEY CHECK (id = 1),
    login          text NOT NULL,
    password_hash  text NOT NULL,
    updated_at     double precision NOT NULL
);

CREATE TABLE group_members (
    app_id      text NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    ib_id       text NOT NULL,
    group_name  text NOT NULL,
    user_id     text NOT NULL,
    added_at    double precision NOT NULL,
    PRIMARY KEY (app_id, ib_id, group_name, user_id)
);

CREATE TABLE kept_messages (
    id          bigserial PRIMARY KEY,
    app_id      text NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    ib_id       text NOT NULL,
    type        text NOT NULL CHECK (type IN ('user', 'group', 'all')),
    target      text NOT NULL,
    payload     bytea NOT NULL,
    created_at  double precision NOT NULL,
    expires_at  double precision NOT NULL
);
CREATE INDEX kept_target ON kept_messages(app_id, ib_id, type, target);
CREATE INDEX kept_expiry ON kept_messages(expires_at);

CREATE TABLE kept_received (
    message_id  bigint NOT NULL REFERENCES kept_messages(id) ON DELETE CASCADE,
    user_id     text NOT NULL,
    PRIMARY KEY (message_id, user_id)
);

CREATE TABLE kept_stats (
    app_id      text PRIMARY KEY REFERENCES applications(id) ON DELETE CASCADE,
    dropped     bigint NOT NULL DEFAULT 0,
    expired     bigint NOT NULL DEFAULT 0
);

-- Advanced by every write (a sequence: no row lock between nodes); polled as
-- the fallback of NOTIFY pns4ones_changes.
CREATE SEQUENCE pns4ones_change_seq;
