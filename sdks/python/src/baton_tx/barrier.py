"""The participant barrier over PostgreSQL (psycopg 3): effectively-once handlers on top of
at-least-once delivery.

It keeps the same ``baton_barrier`` table, with the same rows, as the Rust SDK's ``PgBarrier``, so
Rust and Python participants can share one table. It records each call's key (tx_id, branch,
phase) **in the same local transaction as the business change**, and decides from what is
already recorded:

- a repeated call returns the first result and changes nothing (also when repeats arrive
  concurrently: they queue on the row's primary key);
- a compensation or abort whose action or prepare never ran does nothing and is recorded ("null
  compensation"), so the action arriving late is refused as a business failure ("hanging"
  prevention);
- a compensation or abort after a *failed* action or prepare does nothing;
- commit and abort of one branch exclude each other: the first recorded wins, the other is
  refused with :class:`~baton_tx.errors.Permanent`.

Errors of the barrier's own statements are :class:`~baton_tx.errors.Transient` (retrying is safe:
nothing was recorded), except schema errors (SQLSTATE class 42, such as a missing table), which
are :class:`~baton_tx.errors.Permanent`.

Needs the ``postgres`` extra: ``pip install baton-tx[postgres]``.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Tuple, Union

try:
    import psycopg
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("baton_tx.barrier needs psycopg 3: pip install 'baton-tx[postgres]'") from e

from .errors import Failed, HandlerError, Permanent, Transient
from .participant import HandlerResult, Phase, Reply, Request, as_reply

# Outcomes as stored. `pending` is only ever seen inside the transaction that claimed the row.
PENDING = "pending"
OK = "ok"
FAILED = "failed"
#: On a forward row (execute, prepare) that a compensation or abort wrote first.
SKIPPED = "skipped"
#: The row that commit and abort of a branch both claim, so that only one is ever recorded.
DECISION = "decision"
COMMIT = "commit"
ABORT = "abort"

#: Most transactions one :meth:`PgBarrier.purge_older_than` call deletes.
MAX_PURGE_BATCH = 10_000
#: Longest accepted tx_id; the coordinator's are UUIDs, this only bounds what a caller stores.
MAX_TX_ID = 255

#: The same DDL as the Rust PgBarrier (statements separated by ``;``).
SCHEMA = """CREATE TABLE IF NOT EXISTS baton_barrier (
    tx_id      text        NOT NULL,
    branch     bigint      NOT NULL,
    phase      text        NOT NULL,
    outcome    text        NOT NULL,
    output     bytea       NOT NULL DEFAULT '\\x',
    message    text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tx_id, branch, phase)
);
CREATE INDEX IF NOT EXISTS baton_barrier_created ON baton_barrier (created_at)"""

# The same advisory lock key as the Rust barrier, so replicas of either SDK starting together do
# not race on the CREATE.
_MIGRATE_LOCK = "SELECT pg_advisory_xact_lock(7283514902761)"
_CLAIM = (
    "INSERT INTO baton_barrier (tx_id, branch, phase, outcome) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
_READ = "SELECT outcome, output, message FROM baton_barrier WHERE tx_id = %s AND branch = %s AND phase = %s"
_SETTLE = (
    "UPDATE baton_barrier SET outcome = %s, output = %s, message = %s "
    "WHERE tx_id = %s AND branch = %s AND phase = %s"
)
# A transaction's records go together, and only once all of them are older than the cutoff.
_PURGE = """DELETE FROM baton_barrier WHERE tx_id IN (
    SELECT DISTINCT old.tx_id FROM baton_barrier old
    WHERE old.created_at < now() - %(age)s * interval '1 millisecond'
      AND NOT EXISTS (
        SELECT 1 FROM baton_barrier young
        WHERE young.tx_id = old.tx_id
          AND young.created_at >= now() - %(age)s * interval '1 millisecond')
    LIMIT %(batch)s)"""

Key = Tuple[str, int]
Business = Callable[["psycopg.AsyncConnection[Any]"], Union[Awaitable[HandlerResult], HandlerResult]]
ConnectionSource = Union[str, Callable[[], Any], Any]


class _Rollback(Exception):
    """Ends the local transaction without keeping anything, carrying the call's answer."""

    def __init__(self, answer: Union[Reply, HandlerError]) -> None:
        super().__init__("rollback")
        self.answer = answer


def _db_error(step: str, error: BaseException) -> HandlerError:
    """A barrier statement's failure: schema errors (SQLSTATE class 42) can never succeed,
    anything else may on a retry."""
    sqlstate = getattr(error, "sqlstate", None) or ""
    if sqlstate.startswith("42"):
        return Permanent(
            f"baton_barrier: {step}: {error} (was the barrier's migrate() run on this database?)"
        )
    return Transient(f"baton_barrier: {step}: {error}")


class PgBarrier:
    """Records each call's key and result in the participant's own PostgreSQL database (table
    ``baton_barrier``), so handlers take effect once per (tx_id, branch, phase).

    ``source`` is a conninfo string (a connection per call), a ``psycopg_pool.AsyncConnectionPool``
    (anything with an async ``connection()`` context manager), or a zero-argument callable that
    returns an awaitable ``AsyncConnection`` (closed after the call). It should be the database the
    handlers change: the record and the change commit together.
    """

    def __init__(self, source: ConnectionSource) -> None:
        self._source = source

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator["psycopg.AsyncConnection[Any]"]:
        if hasattr(self._source, "connection"):
            async with self._source.connection() as conn:
                yield conn
            return
        try:
            if isinstance(self._source, str):
                conn = await psycopg.AsyncConnection.connect(self._source)
            else:
                conn = await self._source()
        except psycopg.Error as e:
            raise _db_error("connect", e) from None
        try:
            yield conn
        finally:
            await conn.close()

    @staticmethod
    def schema() -> str:
        """The ``CREATE TABLE IF NOT EXISTS`` and ``CREATE INDEX IF NOT EXISTS`` statements (the
        same as the Rust SDK's), separated by ``;``, for services with their own migrations."""
        return SCHEMA

    async def migrate(self) -> None:
        """Create ``baton_barrier`` unless it exists. Safe on every start, from several replicas
        at once (and alongside Rust participants doing the same)."""
        async with self._connection() as conn:
            async with conn.transaction():
                await conn.execute(_MIGRATE_LOCK)
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        await conn.execute(statement)

    async def purge_older_than(self, age: float, batch: int) -> int:
        """Delete the records of at most ``batch`` transactions whose newest record is older than
        ``age`` seconds (by the database's clock); returns how many records went. Call it until
        it returns 0. Keep records longer than any transaction may stay unfinished, and at least
        as long as the coordinator's ``--retention``."""
        if batch <= 0:
            return 0
        age_ms = min(int(age * 1000), 1000 * 366 * 24 * 3_600_000)
        async with self._connection() as conn:
            async with conn.transaction():
                cur = await conn.execute(_PURGE, {"age": age_ms, "batch": min(batch, MAX_PURGE_BATCH)})
                return cur.rowcount

    async def run(self, req: Request, business: Business) -> Reply:
        """Run ``business`` once per (tx_id, branch, phase), inside the barrier's local
        transaction, and return the reply to send (raising the ``HandlerError`` to send).

        ``business`` gets the connection (an ``AsyncConnection`` inside the transaction): make the
        change there. Returning commits the change with the reply; raising ``Failed`` records the
        failure without the change for execute and prepare (compensate, commit and abort record
        nothing, so the retry runs it again); ``Transient``, ``Permanent`` or any other exception
        rolls back and records nothing. Repeats, null compensations and refusals never call it.
        """
        key = _key_of(req)
        answer: Union[Reply, HandlerError]
        try:
            async with self._connection() as conn:
                answer = await self._run(conn, key, req.phase, business)
        except _Rollback as r:
            answer = r.answer
        except psycopg.Error as e:
            raise _db_error("transaction", e) from None
        if isinstance(answer, HandlerError):
            raise answer
        return answer

    async def _run(
        self,
        conn: "psycopg.AsyncConnection[Any]",
        key: Key,
        phase: Phase,
        business: Business,
    ) -> Union[Reply, HandlerError]:
        async with conn.transaction():
            decision = await _decide(conn, key, phase)
            if isinstance(decision, _Skip):
                await _settle(conn, key, phase.value, OK, decision.reply)
                return decision.reply
            if decision is not None:
                # A repeat wrote nothing, and a refusal must not leave its own row behind (so a
                # retry of it is refused again).
                raise _Rollback(decision)
            forward = phase in (Phase.EXECUTE, Phase.PREPARE)
            if forward:
                try:
                    # A savepoint lets a business failure drop the change but keep the claimed
                    # row, so the failure is recorded without releasing the key to a duplicate.
                    async with conn.transaction():
                        reply = as_reply(await _call(business, conn))
                except Failed as failed:
                    await _settle(conn, key, phase.value, FAILED, Reply(b"", failed.message))
                    return failed
                except HandlerError as error:
                    raise _Rollback(error) from None
            else:
                try:
                    reply = as_reply(await _call(business, conn))
                except HandlerError as error:
                    # Compensate, commit and abort must eventually succeed: nothing is recorded,
                    # and the coordinator's retry runs the business code again.
                    raise _Rollback(error) from None
            await _settle(conn, key, phase.value, OK, reply)
            return reply


async def _call(business: Business, conn: Any) -> HandlerResult:
    result = business(conn)
    if inspect.isawaitable(result):
        result = await result
    return result  # type: ignore[return-value]


class _Skip:
    def __init__(self, message: str) -> None:
        self.reply = Reply(b"", message)


def _key_of(req: Request) -> Key:
    if not req.tx_id:
        raise Permanent("tx_id: must not be empty")
    if len(req.tx_id.encode()) > MAX_TX_ID:
        raise Permanent(f"tx_id: longer than {MAX_TX_ID} bytes")
    return (req.tx_id, int(req.branch_index))


async def _claim(conn: Any, key: Key, phase: str, outcome: str) -> bool:
    try:
        cur = await conn.execute(_CLAIM, (key[0], key[1], phase, outcome))
    except psycopg.Error as e:
        raise _db_error("claim", e) from None
    return bool(cur.rowcount == 1)


async def _read(conn: Any, key: Key, phase: str) -> Optional[Tuple[str, bytes, str]]:
    try:
        cur = await conn.execute(_READ, (key[0], key[1], phase))
        row = await cur.fetchone()
    except psycopg.Error as e:
        raise _db_error("read", e) from None
    return None if row is None else (row[0], bytes(row[1]), row[2])


async def _settle(conn: Any, key: Key, phase: str, outcome: str, reply: Reply) -> None:
    try:
        cur = await conn.execute(
            _SETTLE, (outcome, reply.output, reply.message, key[0], key[1], phase)
        )
    except psycopg.Error as e:
        raise _db_error("record", e) from None
    # The row was claimed in this very transaction, so it cannot be gone; if it is, the result
    # must not be reported as recorded.
    if cur.rowcount != 1:
        raise Transient(f"baton_barrier: record: tx {key[0]} branch {key[1]} {phase}: row not found")


def _vanished(key: Key, phase: str) -> Transient:
    return Transient(
        f"baton_barrier: tx {key[0]} branch {key[1]} {phase}: record vanished while being read"
    )


def _corrupt(key: Key, phase: str, outcome: str) -> Permanent:
    return Permanent(
        f"baton_barrier: tx {key[0]} branch {key[1]} {phase}: unexpected recorded outcome {outcome!r}"
    )


async def _decide(
    conn: Any, key: Key, phase: Phase
) -> Union[None, _Skip, Reply, HandlerError]:
    """The protocol, as in the Rust barrier. ``None`` means fresh: run the business code. Every
    decision starts by claiming the call's own row, so concurrent duplicates queue on one primary
    key and all but the first see its committed result."""
    if not await _claim(conn, key, phase.value, PENDING):
        stored = await _read(conn, key, phase.value)
        if stored is None:
            raise _vanished(key, phase.value)
        return _recorded(key, phase, stored)
    if phase in (Phase.EXECUTE, Phase.PREPARE):
        return None
    if phase in (Phase.COMPENSATE, Phase.ABORT):
        if phase == Phase.ABORT:
            refusal = await _claim_decision(conn, key, ABORT)
            if refusal is not None:
                return refusal
        forward = Phase.PREPARE if phase == Phase.ABORT else Phase.EXECUTE
        # Writing the forward row ourselves both tells whether the action ran and, when it did
        # not, makes its late arrival find a `skipped` row and be refused.
        if await _claim(conn, key, forward.value, SKIPPED):
            return _Skip(f"nothing to undo: {forward} never ran")
        stored = await _read(conn, key, forward.value)
        if stored is None:
            raise _vanished(key, forward.value)
        if stored[0] == OK:
            return None
        if stored[0] == FAILED:
            return _Skip(f"nothing to undo: {forward} failed")
        raise _corrupt(key, forward.value, stored[0])
    # Commit.
    refusal = await _claim_decision(conn, key, COMMIT)
    if refusal is not None:
        return refusal
    prepared = await _read(conn, key, Phase.PREPARE.value)
    if prepared is None:
        return Permanent(
            f"tx {key[0]} branch {key[1]}: cannot commit, prepare was not recorded by the barrier"
        )
    if prepared[0] == OK:
        return None
    if prepared[0] == FAILED:
        return Permanent(f"tx {key[0]} branch {key[1]}: cannot commit, prepare voted no")
    raise _corrupt(key, Phase.PREPARE.value, prepared[0])


async def _claim_decision(conn: Any, key: Key, decision: str) -> Optional[HandlerError]:
    """Claims the branch's commit-or-abort decision; a refusal if the other one holds it."""
    if await _claim(conn, key, DECISION, decision):
        return None
    stored = await _read(conn, key, DECISION)
    if stored is None:
        raise _vanished(key, DECISION)
    if stored[0] == decision:
        return None
    if (decision, stored[0]) == (COMMIT, ABORT):
        return Permanent(f"tx {key[0]} branch {key[1]}: already aborted, cannot commit")
    if (decision, stored[0]) == (ABORT, COMMIT):
        return Permanent(f"tx {key[0]} branch {key[1]}: already committed, cannot abort")
    raise _corrupt(key, DECISION, stored[0])


def _recorded(key: Key, phase: Phase, stored: Tuple[str, bytes, str]) -> Union[Reply, HandlerError]:
    """The answer to a repeat of ``phase``, from its stored row."""
    outcome, output, message = stored
    if outcome == OK:
        return Reply(output, message)
    if outcome == FAILED:
        return Failed(message)
    if outcome == SKIPPED:
        undone = "aborted" if phase == Phase.PREPARE else "compensated"
        return Failed(f"tx {key[0]} branch {key[1]}: already {undone}, {phase} refused")
    raise _corrupt(key, phase.value, outcome)
