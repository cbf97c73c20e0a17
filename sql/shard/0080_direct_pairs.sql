-- The one direct conversation of each pair of users, on the shard of the lower
-- user id (user_lo % N): finding an existing one reads that shard alone, never
-- the directory. The primary key makes two concurrent "get or create" calls
-- agree on one conversation id (services/conversations.py).
-- The directory held these rows before; `messenger migrate` copies them here and
-- then drops the directory's table (sql/directory/0080_direct_pairs_to_shards.sql).
CREATE TABLE direct_pairs (
    user_lo         bigint NOT NULL,
    user_hi         bigint NOT NULL,
    conversation_id bigint NOT NULL,
    PRIMARY KEY (user_lo, user_hi),
    CHECK (user_lo < user_hi)
);
