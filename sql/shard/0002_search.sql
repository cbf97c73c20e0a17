-- Full-text search over the mailbox: each user's own copies of the messages of
-- its conversations, so a search reads one shard, the caller's.
--
-- An expression index (no stored column): adding it rewrites nothing, and the
-- search query repeats the exact expression `to_tsvector('english', body)`
-- (storage/search.py) so the planner can use it. With btree_gin the index leads
-- with user_id, so a search reads only the caller's postings; without the
-- extension (a server without contrib) it falls back to the text alone and the
-- planner combines it with the mailbox primary key.
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS btree_gin SCHEMA public;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'btree_gin unavailable (%); search index without user_id', SQLERRM;
    END;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'btree_gin') THEN
        CREATE INDEX mailbox_search
            ON mailbox USING gin (user_id, to_tsvector('english'::regconfig, body));
    ELSE
        CREATE INDEX mailbox_search
            ON mailbox USING gin (to_tsvector('english'::regconfig, body));
    END IF;
END
$$;
