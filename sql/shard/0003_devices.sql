-- Push targets (API.md "Push to offline users"), on shard_of(user_id).
-- device_id comes from the directory's global_ids sequence, so it is unique
-- across shards; routes find a device through its owner (the caller).
-- When adding a column, update storage/devices.py (_COLUMNS) and models.Device.

CREATE TABLE devices (
    device_id  bigint PRIMARY KEY,
    user_id    bigint NOT NULL,
    -- A provider registered in services/push_providers.py ('webhook').
    kind       text NOT NULL,
    url        text NOT NULL,
    -- The HMAC key of the X-Messenger-Signature header. Stored as is: the push
    -- worker needs it to sign, so a hash would not do.
    secret     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Registering the same target again rotates its secret instead of adding a
    -- second device that would receive every push twice.
    UNIQUE (user_id, kind, url)
);
