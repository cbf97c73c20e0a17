-- One logical shard. Applied once per shard schema (search_path is set to it).
-- Per-user rows live on shard_of(user_id); per-conversation rows on
-- shard_of(conversation_id). When adding a column to a stored event or message
-- copy, update storage/events.py (reads) and storage/fanout.py (writes).

-- ---- per conversation ---------------------------------------------------------

CREATE TABLE conversations (
    conversation_id bigint PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('direct', 'group')),
    title           text,
    owner_id        bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Bumped under the row lock by every send: the order every member sees.
    last_seq        bigint NOT NULL DEFAULT 0
);

CREATE TABLE members (
    conversation_id bigint NOT NULL REFERENCES conversations ON DELETE CASCADE,
    user_id         bigint NOT NULL,
    role            text NOT NULL CHECK (role IN ('owner', 'member')),
    joined_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    read_seq        bigint NOT NULL DEFAULT 0,
    delivered_seq   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);

CREATE TABLE messages (
    conversation_id bigint NOT NULL,
    seq             bigint NOT NULL,
    sender_id       bigint NOT NULL,
    client_msg_id   text NOT NULL,
    body            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, seq),
    -- A retried send finds the stored message here instead of writing a second.
    UNIQUE (conversation_id, sender_id, client_msg_id)
);

-- Transactional outbox: written in the same transaction as the change it
-- announces, deleted once every recipient's event stream has it. Rows of one
-- conversation are fanned out in outbox_id order.
CREATE TABLE outbox (
    outbox_id       bigserial PRIMARY KEY,
    conversation_id bigint NOT NULL,
    kind            text NOT NULL,
    seq             bigint,
    recipients      bigint[] NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_conversation ON outbox (conversation_id, outbox_id);

-- ---- per user -----------------------------------------------------------------

-- The per-user event counter: bumped under this row's lock in the transaction that
-- inserts the event, so for each user commit order equals event id order and a
-- cursor can never skip an event that commits late.
CREATE TABLE user_state (
    user_id         bigint PRIMARY KEY,
    last_event_id   bigint NOT NULL DEFAULT 0,
    -- Events with ids <= trimmed_through were deleted by retention.
    trimmed_through bigint NOT NULL DEFAULT 0
);

CREATE TABLE events (
    user_id         bigint NOT NULL,
    event_id        bigint NOT NULL,
    type            text NOT NULL,
    conversation_id bigint NOT NULL,
    seq             bigint,
    -- Idempotency key of the fan-out that wrote the event.
    origin          text NOT NULL,
    -- The event's fields for non-message events; messages join the mailbox.
    payload         jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, event_id),
    UNIQUE (user_id, origin)
);
CREATE INDEX events_created_at ON events (created_at);

-- The mailbox: each member's copy of each message, so a long poll and a search
-- read only the caller's shard. Kept beyond event retention (full history).
CREATE TABLE mailbox (
    user_id         bigint NOT NULL,
    conversation_id bigint NOT NULL,
    seq             bigint NOT NULL,
    sender_id       bigint NOT NULL,
    client_msg_id   text NOT NULL,
    body            text NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (user_id, conversation_id, seq)
);

-- The user's conversation list, ordered by latest activity.
CREATE TABLE user_conversations (
    user_id          bigint NOT NULL,
    conversation_id  bigint NOT NULL,
    joined_at        timestamptz NOT NULL DEFAULT now(),
    last_activity_at timestamptz NOT NULL DEFAULT now(),
    last_seq         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, conversation_id)
);
CREATE INDEX user_conversations_activity
    ON user_conversations (user_id, last_activity_at DESC, conversation_id DESC);
