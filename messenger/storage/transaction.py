"""An explicit transaction whose BEGIN and COMMIT ride with its statements.

psycopg2 sends BEGIN and COMMIT as round trips of their own. The send path can't
afford them: it is two round trips (store the message; write or queue its
fan-out), and its transaction must span both. On a connection in autocommit mode
(`router.on_conversation(..., transaction=False)`), `pipelined_transaction(cur)`
sends BEGIN in front of the first statement and COMMIT behind the last, and rolls
back when the block fails. It is the only code that writes BEGIN, COMMIT or
ROLLBACK; SQL strings hold statements only.

    with pipelined_transaction(cur) as tx:
        row = tx.run(_STORE, params).fetchone()        # BEGIN; _STORE
        tx.commit(tx.statement(_QUEUE, more_params))   # _QUEUE; COMMIT
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2

from messenger.storage.pools import ShardCursor


class PipelinedTransaction:
    """Statements of one transaction on `cur`; see pipelined_transaction()."""

    def __init__(self, cur: ShardCursor) -> None:
        self.cur = cur
        self.is_open = False

    def statement(self, sql: str, params: Any = None) -> bytes:
        """`sql` with `{s}` set to the cursor's schema and its parameters bound."""
        return self.cur.mogrify(sql.format(s=self.cur.schema), params)

    def run(self, sql: str, params: Any = None) -> ShardCursor:
        """Execute one statement in the transaction (opening it if needed)."""
        self._send([self.statement(sql, params)])
        return self.cur

    def commit(self, *statements: bytes) -> None:
        """Execute `statements` (see statement()) and COMMIT, in one round trip."""
        self._send([*statements, b"COMMIT;"])
        self.is_open = False

    def _send(self, parts: list[bytes]) -> None:
        if not self.is_open:
            parts.insert(0, b"BEGIN;")
            # Open before executing: a failing statement leaves the transaction
            # aborted, and it must still be rolled back.
            self.is_open = True
        # Every statement ends with ";": unterminated, "SELECT 2" and a COMMIT
        # behind it would read as "SELECT 2 AS commit", and nothing would commit.
        self.cur.execute(b"\n".join(_terminated(p) for p in parts))

    def rollback(self) -> None:
        """End an open transaction after a failure; harmless if none is open."""
        if not self.is_open:
            return
        self.is_open = False
        if self.cur.connection.closed:
            return
        try:
            self.cur.execute("ROLLBACK")
        except psycopg2.Error:
            self.cur.connection.close()  # state unknown: the pool discards it


def _terminated(statement: bytes) -> bytes:
    statement = statement.rstrip()
    return statement if statement.endswith(b";") else statement + b";"


@contextmanager
def pipelined_transaction(cur: ShardCursor) -> Iterator[PipelinedTransaction]:
    """One transaction on an autocommit connection: committed when the block
    ends (in its last round trip if the block called commit(), else in one more),
    rolled back if it raises."""
    if not cur.connection.autocommit:
        raise RuntimeError("pipelined_transaction needs an autocommit connection")
    tx = PipelinedTransaction(cur)
    try:
        yield tx
    except BaseException:
        tx.rollback()
        raise
    if tx.is_open:
        tx.commit()
