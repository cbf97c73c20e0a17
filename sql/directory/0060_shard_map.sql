-- The shard map as data (storage/shardmap.py): which database holds each
-- logical shard, and whether it is frozen for a move. Every change bumps the
-- epoch in the same transaction; workers follow it (MapFollower).
-- When adding a column, update storage/shardmap.py (load and seed).

-- One row: N and the map's version.
CREATE TABLE shard_map_meta (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    shards    integer NOT NULL CHECK (shards > 0),
    epoch     bigint NOT NULL DEFAULT 1
);

-- The databases shards may live on, by name; the DSN of each name comes from
-- MESSENGER_DATABASES on every process (passwords stay out of the directory).
CREATE TABLE shard_databases (
    name     text PRIMARY KEY,
    added_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shard_map (
    shard    integer PRIMARY KEY CHECK (shard >= 0),
    database text NOT NULL REFERENCES shard_databases (name),
    state    text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'frozen'))
);

-- Each process that routes requests says which epoch it routes by, so a move
-- can wait until every live worker has seen the freeze.
CREATE TABLE shard_map_followers (
    worker_id text PRIMARY KEY,
    epoch     bigint NOT NULL,
    seen_at   timestamptz NOT NULL DEFAULT now()
);

-- A move in progress (one per shard), its step recorded after each step so a
-- crashed `messenger move-shard` resumes or rolls back from there.
CREATE TABLE shard_moves (
    shard      integer PRIMARY KEY,
    source     text NOT NULL REFERENCES shard_databases (name),
    target     text NOT NULL REFERENCES shard_databases (name),
    step       text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Moved shards whose old copy still waits for `messenger drop-moved-shard`.
CREATE TABLE shard_leftovers (
    shard    integer NOT NULL,
    database text NOT NULL,
    moved_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard, database)
);
