-- The delivery fast path (services/fanout.py, realtime/hub.py): after a message's
-- fan-out on this shard, report each recipient's new event id to the sending
-- connection as one NOTICE ("event_ids <origin> <user>:<event>,..."; a replay
-- reports the ids the first run gave). Notices ride in the
-- same round trip as the statements and their COMMIT, so the send learns the ids
-- without another round trip, and the wake can carry them: a poll whose cursor is
-- exactly the previous id answers without reading this database.
-- A function of its own (not inside fanout_message), so either can change alone.
CREATE FUNCTION fanout_event_ids(p_users bigint[], p_origin text) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    found text;
BEGIN
    SELECT string_agg(user_id || ':' || event_id, ',') INTO found
    FROM events WHERE user_id = ANY (p_users) AND origin = p_origin;
    IF found IS NOT NULL THEN
        RAISE NOTICE 'event_ids % %', p_origin, found;
    END IF;
END
$$;
