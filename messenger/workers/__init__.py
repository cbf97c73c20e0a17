"""Work beside the request path: the outbox sweeper and the push worker."""
