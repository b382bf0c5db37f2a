-- Secrets at rest (store/sealing.py): server keys and client keys are sealed
-- under a key kept outside the store, in the key file. This row names the key
-- that seals new values and holds a value sealed under it, so that a wrong key
-- file is recognised at start. The start-up migration fills it (and seals the
-- keys of a store made before sealing).
CREATE TABLE sealing (
    id         integer PRIMARY KEY CHECK (id = 1),
    key_id     text NOT NULL,
    probe      text NOT NULL,
    sealed_at  double precision NOT NULL
);
