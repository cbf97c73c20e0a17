-- What `messenger move-shard` needs in each shard schema (storage/moves.py).

-- A row written through the fence by the mover once the source is fenced: when
-- the target has it, logical replication (which applies in commit order) has
-- applied everything committed before it.
CREATE TABLE move_markers (
    marker_id bigint PRIMARY KEY,
    marked_at timestamptz NOT NULL DEFAULT now()
);

-- The write fence of a shard being cut over: a trigger on each table of the
-- source schema calls this, so a process still routing by the old map fails
-- (SQLSTATE 55000, a 503 for a request) instead of writing to the old copy.
-- Only the mover's own session (messenger.move_fence_bypass) passes.
CREATE FUNCTION move_fence() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF current_setting('messenger.move_fence_bypass', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'shard %: moved or moving; writes are fenced', TG_TABLE_SCHEMA
        USING ERRCODE = '55000';
END
$$;
