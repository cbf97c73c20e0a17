-- Direct pairs live on the shard of the lower user id now
-- (sql/shard/0080_direct_pairs.sql). `messenger migrate` applies this file only
-- after every shard schema has that table, in the transaction that locked this
-- one against writes and copied its rows there (storage/migrate.py,
-- AFTER_SHARDS): no pair is lost, and a worker of the previous release fails to
-- claim a new pair here instead of claiming one the shards would never see.
DROP TABLE direct_pairs;
