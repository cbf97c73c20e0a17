-- Fan-out progress per recipient: an outbox row whose recipients live on
-- several PostgreSQL servers is finished server by server (services/fanout.py),
-- so members on healthy servers get their events while another server is down.
-- `delivered` lists the recipients whose streams already hold the row's event;
-- the row is deleted once it covers every recipient. Recipients, not server
-- names: a shard moved to another server keeps its progress.
ALTER TABLE outbox ADD COLUMN delivered bigint[] NOT NULL DEFAULT '{}';
