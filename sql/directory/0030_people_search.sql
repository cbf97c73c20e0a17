-- People search (GET /v1/users?q=): a prefix of the handle or of the display
-- name, case-insensitive. pg_trgm is missing from some servers (the pgserver
-- wheel has no contrib), so these are plain btrees on lower(...) with
-- text_pattern_ops, which serve `lower(x) LIKE 'pre%'` in any collation.
CREATE INDEX users_handle_prefix ON users (lower(handle) text_pattern_ops);
CREATE INDEX users_display_name_prefix ON users (lower(display_name) text_pattern_ops);

-- Sessions moved to each user's shard (sql/shard/0030_accounts_and_safety.sql):
-- the token carries the user id, so checking it no longer needs the directory.
-- Tokens issued before are not carried over (README "Sessions"): their rows are
-- emptied here; the table itself stays until no worker of the previous release
-- can be running, so a rolling upgrade never meets a missing table.
DELETE FROM sessions;
