-- Search reads a stored tsvector instead of tokenising every body again: a
-- query that matches most of a mailbox (`-word`) re-ran to_tsvector on each
-- row it rechecked (issue 14). The column is filled by PostgreSQL on insert;
-- the search query (storage/search.py) reads `body_tsv`. Adding it rewrites
-- the mailbox once.
ALTER TABLE mailbox
    ADD COLUMN body_tsv tsvector
    GENERATED ALWAYS AS (to_tsvector('english'::regconfig, body)) STORED;

DROP INDEX IF EXISTS mailbox_search;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'btree_gin') THEN
        CREATE INDEX mailbox_search ON mailbox USING gin (user_id, body_tsv);
    ELSE
        CREATE INDEX mailbox_search ON mailbox USING gin (body_tsv);
    END IF;
END
$$;
