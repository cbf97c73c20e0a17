-- Sessions, blocks, message requests and per-member settings (API.md, "Additions
-- of the second release"). When adding a column to sessions, update
-- storage/sessions.py; to user_conversations, storage/conversations.py (_LIST,
-- _SETTINGS) and the fan-out function below.

-- ---- per user -----------------------------------------------------------------

-- Bearer tokens, on shard_of(user_id): the token is "<user_id>.<secret>", so a
-- worker finds the right shard without the directory. Only the SHA-256 of the
-- token is stored; a leaked table grants nothing.
CREATE TABLE sessions (
    -- Random (storage/sessions.py), not a per-shard counter: ids of two users'
    -- sessions never look alike, and they say nothing about how many there are.
    session_id   bigint PRIMARY KEY,
    token_hash   bytea NOT NULL UNIQUE,
    user_id      bigint NOT NULL,
    user_agent   text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Written at most every SESSION_TOUCH_SECS (storage/sessions.py): a session
    -- list may lag by a minute; idle expiry is counted from here.
    last_used_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user ON sessions (user_id, created_at DESC);

-- A block is stored on the shard of each of the two users (one row when they
-- share a shard), so each side checks locally: the blocker's shard answers
-- "whom did I block" (pushes, typing, presence announcements), the blocked
-- user's shard "who blocked me" (sending, opening, adding, presence, search).
CREATE TABLE blocks (
    blocker_id bigint NOT NULL,
    blocked_id bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker_id, blocked_id)
);
CREATE INDEX blocks_blocked ON blocks (blocked_id, blocker_id);

-- The member's own view of a conversation, on the member's shard:
-- request: another user opened it (or added the member) and the member has
--   neither sent in it nor accepted it; while true the member's presence is
--   not shown to the others through it.
-- muted_until: no pushes before then ('infinity': muted for good).
-- archived: left out of the list until another member sends a message.
ALTER TABLE user_conversations
    ADD COLUMN request     boolean NOT NULL DEFAULT false,
    ADD COLUMN muted_until timestamptz,
    ADD COLUMN archived    boolean NOT NULL DEFAULT false;

-- The fan-out of a message (0004) also clears the sender's request (sending
-- accepts) and un-archives the conversation for everyone but the sender.
CREATE OR REPLACE FUNCTION fanout_message(
    p_users bigint[], p_conversation bigint, p_seq bigint, p_sender bigint,
    p_client_msg_id text, p_body text, p_at timestamptz, p_origin text
) RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    delivered integer;
BEGIN
    PERFORM 1 FROM user_state WHERE user_id = ANY (p_users)
        ORDER BY user_id FOR UPDATE;
    WITH mb AS (
        INSERT INTO mailbox
            (user_id, conversation_id, seq, sender_id, client_msg_id, body, created_at)
        SELECT u, p_conversation, p_seq, p_sender, p_client_msg_id, p_body, p_at
        FROM unnest(p_users) AS u
        WHERE EXISTS (SELECT 1 FROM user_conversations uc
                      WHERE uc.user_id = u AND uc.conversation_id = p_conversation)
        ON CONFLICT DO NOTHING
        RETURNING user_id
    ), st AS (
        UPDATE user_state s SET last_event_id = s.last_event_id + 1
        FROM mb WHERE s.user_id = mb.user_id
        RETURNING s.user_id, s.last_event_id
    ), ev AS (
        INSERT INTO events (user_id, event_id, type, conversation_id, seq, origin)
        SELECT st.user_id, st.last_event_id, 'message', p_conversation, p_seq, p_origin
        FROM st
        RETURNING 1
    ), moved AS (
        UPDATE user_conversations uc
        SET last_seq = GREATEST(uc.last_seq, p_seq),
            last_activity_at = GREATEST(uc.last_activity_at, p_at),
            request = uc.request AND uc.user_id <> p_sender,
            archived = uc.archived AND uc.user_id = p_sender
        FROM mb WHERE uc.user_id = mb.user_id AND uc.conversation_id = p_conversation
    )
    SELECT count(*) INTO delivered FROM ev;
    RETURN delivered;
END
$$;
