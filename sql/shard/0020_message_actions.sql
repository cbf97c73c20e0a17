-- Replies, edits, deletes, reactions and attachments (API.md, second release).
-- A message row and every member's mailbox copy carry the message as it is now:
-- when adding a column here, update storage/messages.py (MESSAGE_COLUMNS), the
-- mailbox update in storage/events.py and fanout_message (0021).

ALTER TABLE messages
    ADD COLUMN reply_to    bigint,
    ADD COLUMN edited_at   timestamptz,
    -- A deleted message keeps its seq as a tombstone (body '', nothing attached).
    ADD COLUMN deleted     boolean NOT NULL DEFAULT false,
    -- {"👍": [user ids ascending]}, rebuilt from message_reactions on each change.
    ADD COLUMN reactions   jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- [Attachment…] as API.md shows them, copied at send time.
    ADD COLUMN attachments jsonb NOT NULL DEFAULT '[]'::jsonb;

ALTER TABLE mailbox
    ADD COLUMN reply_to    bigint,
    ADD COLUMN edited_at   timestamptz,
    ADD COLUMN deleted     boolean NOT NULL DEFAULT false,
    ADD COLUMN reactions   jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN attachments jsonb NOT NULL DEFAULT '[]'::jsonb;

-- Each member's one reaction on a message (conversation's shard).
CREATE TABLE message_reactions (
    conversation_id bigint NOT NULL,
    seq             bigint NOT NULL,
    user_id         bigint NOT NULL,
    emoji           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, seq, user_id)
);

-- Which live messages carry which attachment (conversation's shard): where access
-- to an attachment is decided. Rows of a deleted message are removed with it.
CREATE TABLE message_attachments (
    conversation_id bigint NOT NULL,
    seq             bigint NOT NULL,
    attachment_id   bigint NOT NULL,
    PRIMARY KEY (conversation_id, seq, attachment_id)
);
CREATE INDEX message_attachments_attachment
    ON message_attachments (attachment_id, conversation_id);

-- An uploaded file's metadata, on shard_of(attachment_id): the id alone names the
-- shard, as for users and conversations (GET /v1/attachments/{id} has nothing
-- else). The bytes are in the blob store under their sha256.
CREATE TABLE attachments (
    attachment_id bigint PRIMARY KEY,
    uploader_id   bigint NOT NULL,
    content_type  text NOT NULL,
    size          bigint NOT NULL,
    filename      text NOT NULL,
    sha256        text NOT NULL,
    width         integer,
    height        integer,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attachments_sha256 ON attachments (sha256);
CREATE INDEX attachments_created_at ON attachments (created_at);

-- Conversations an attachment was sent into (attachment's shard), written before
-- the send: the access check asks those conversations' shards whether a live
-- message carries it. created_at keeps the collector off a send in flight.
CREATE TABLE attachment_links (
    attachment_id   bigint NOT NULL REFERENCES attachments ON DELETE CASCADE,
    conversation_id bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (attachment_id, conversation_id)
);
