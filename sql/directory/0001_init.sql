-- The directory: global ids and what must be unique across all shards.

-- Users and conversations draw their ids from one sequence, so an id alone names
-- its shard (id % N) and never collides across kinds.
CREATE SEQUENCE global_ids;

CREATE TABLE users (
    user_id       bigint PRIMARY KEY,
    handle        text NOT NULL UNIQUE,
    display_name  text NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Bearer tokens are stored as SHA-256 digests: a leaked table grants nothing.
-- Logout deletes the row, so revocation is immediate.
CREATE TABLE sessions (
    token_hash bytea PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (user_id),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user_id ON sessions (user_id);

-- One direct conversation per pair (user_lo < user_hi): the primary key makes two
-- concurrent "get or create" calls agree on one conversation id.
CREATE TABLE direct_pairs (
    user_lo         bigint NOT NULL,
    user_hi         bigint NOT NULL,
    conversation_id bigint NOT NULL,
    PRIMARY KEY (user_lo, user_hi),
    CHECK (user_lo < user_hi)
);
