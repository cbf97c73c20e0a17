-- fanout_message (0004) with the message fields of the second release: a copy
-- written late (a queued fan-out) carries the message as it is by then.
DROP FUNCTION fanout_message(bigint[], bigint, bigint, bigint, text, text,
                             timestamptz, text);

CREATE FUNCTION fanout_message(
    p_users bigint[], p_conversation bigint, p_seq bigint, p_sender bigint,
    p_client_msg_id text, p_body text, p_at timestamptz, p_origin text,
    p_reply_to bigint, p_edited_at timestamptz, p_deleted boolean,
    p_reactions jsonb, p_attachments jsonb
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
            (user_id, conversation_id, seq, sender_id, client_msg_id, body, created_at,
             reply_to, edited_at, deleted, reactions, attachments)
        SELECT u, p_conversation, p_seq, p_sender, p_client_msg_id, p_body, p_at,
               p_reply_to, p_edited_at, p_deleted, p_reactions, p_attachments
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
            last_activity_at = GREATEST(uc.last_activity_at, p_at)
        FROM mb WHERE uc.user_id = mb.user_id AND uc.conversation_id = p_conversation
    )
    SELECT count(*) INTO delivered FROM ev;
    RETURN delivered;
END
$$;
