"""The psycopg barrier: its protocol on a real PostgreSQL, interop with the Rust PgBarrier on one
table, and effectively-once steps across a coordinator SIGKILLed mid-saga."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any, Dict, Iterator, List, Optional

import grpc
import psycopg
import pytest

from baton_tx import Client, Failed, Participant, Permanent, Phase, Reply, Request, Saga, Step, Transient, TxState
from baton_tx._proto import participant_pb2 as ppb
from baton_tx._proto import participant_pb2_grpc as ppb_grpc
from baton_tx.barrier import PgBarrier

from conftest import RustParticipants, until


def request(phase: Phase, tx_id: str, branch: int = 0, amount: int = 5) -> Request:
    return Request(
        phase=phase,
        tx_id=tx_id,
        branch_index=branch,
        branch_name="credit",
        action="credit",
        payload=b'{"amount": %d}' % amount,
        attempt=1,
        deadline=None,
    )


@pytest.fixture(scope="module")
def ledger(database: str) -> str:
    """The module's database with the barrier table and a ledger table."""

    async def setup() -> None:
        await PgBarrier(database).migrate()
        # Twice: migrate is safe on every start.
        await PgBarrier(database).migrate()
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS ledger_entries (tx_id text NOT NULL, branch bigint NOT NULL,"
                " phase text NOT NULL, sdk text NOT NULL, delta bigint NOT NULL)"
            )

    asyncio.run(setup())
    return database


class Ledger:
    """Python business code: one ledger row per call, through the barrier."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.barrier = PgBarrier(url)
        self.business_calls = 0

    async def apply(self, req: Request, fail: Optional[BaseException] = None) -> Reply:
        amount = req.json()["amount"]
        delta = -amount if req.phase in (Phase.COMPENSATE, Phase.ABORT) else amount

        async def business(conn: Any) -> Reply:
            self.business_calls += 1
            await conn.execute(
                "INSERT INTO ledger_entries VALUES (%s, %s, %s, 'python', %s)",
                (req.tx_id, req.branch_index, req.phase.value, delta),
            )
            if fail is not None:
                raise fail
            return Reply(b"python", f"python {req.phase}")

        return await self.barrier.run(req, business)

    async def rows(self, tx_id: str) -> List[tuple]:
        async with await psycopg.AsyncConnection.connect(self.url) as conn:
            cur = await conn.execute(
                "SELECT phase, sdk, delta FROM ledger_entries WHERE tx_id = %s ORDER BY phase", (tx_id,)
            )
            return list(await cur.fetchall())


def tx() -> str:
    return str(uuid.uuid4())


async def test_duplicates_return_the_first_result_once(ledger: str) -> None:
    l = Ledger(ledger)
    t = tx()
    replies = await asyncio.gather(*[l.apply(request(Phase.EXECUTE, t)) for _ in range(5)])
    assert all(r == Reply(b"python", "python execute") for r in replies)
    assert l.business_calls == 1
    assert await l.rows(t) == [("execute", "python", 5)]


async def test_a_business_failure_is_recorded_without_the_change(ledger: str) -> None:
    l = Ledger(ledger)
    t = tx()
    for _ in range(2):
        with pytest.raises(Failed) as raised:
            await l.apply(request(Phase.EXECUTE, t), fail=Failed("insufficient funds"))
        assert raised.value.message == "insufficient funds"
    assert l.business_calls == 1
    assert await l.rows(t) == []
    # Its compensation has nothing to undo.
    reply = await l.apply(request(Phase.COMPENSATE, t))
    assert reply.message == "nothing to undo: execute failed"
    assert l.business_calls == 1


async def test_transient_errors_record_nothing_so_the_retry_runs_again(ledger: str) -> None:
    l = Ledger(ledger)
    t = tx()
    with pytest.raises(Transient):
        await l.apply(request(Phase.EXECUTE, t), fail=Transient("db busy"))
    assert await l.rows(t) == []
    await l.apply(request(Phase.EXECUTE, t))
    assert l.business_calls == 2
    assert await l.rows(t) == [("execute", "python", 5)]


async def test_null_compensation_and_hanging_prevention(ledger: str) -> None:
    l = Ledger(ledger)
    t = tx()
    reply = await l.apply(request(Phase.COMPENSATE, t))
    assert reply.message == "nothing to undo: execute never ran"
    assert l.business_calls == 0
    # The action arriving late must not take effect: nobody would ever undo it.
    with pytest.raises(Failed) as raised:
        await l.apply(request(Phase.EXECUTE, t))
    assert raised.value.message == f"tx {t} branch 0: already compensated, execute refused"
    assert l.business_calls == 0 and await l.rows(t) == []
    # A repeat of the compensation answers as the first did.
    assert (await l.apply(request(Phase.COMPENSATE, t))).message == "nothing to undo: execute never ran"


async def test_compensation_after_execute_undoes_once(ledger: str) -> None:
    l = Ledger(ledger)
    t = tx()
    await l.apply(request(Phase.EXECUTE, t))
    await l.apply(request(Phase.COMPENSATE, t))
    await l.apply(request(Phase.COMPENSATE, t))
    assert await l.rows(t) == [("compensate", "python", -5), ("execute", "python", 5)]


async def test_commit_and_abort_exclude_each_other(ledger: str) -> None:
    l = Ledger(ledger)
    committed, aborted, unprepared = tx(), tx(), tx()
    await l.apply(request(Phase.PREPARE, committed))
    await l.apply(request(Phase.COMMIT, committed))
    with pytest.raises(Permanent, match="already committed, cannot abort"):
        await l.apply(request(Phase.ABORT, committed))
    await l.apply(request(Phase.PREPARE, aborted))
    await l.apply(request(Phase.ABORT, aborted))
    with pytest.raises(Permanent, match="already aborted, cannot commit"):
        await l.apply(request(Phase.COMMIT, aborted))
    with pytest.raises(Permanent, match="cannot commit, prepare was not recorded by the barrier"):
        await l.apply(request(Phase.COMMIT, unprepared))


async def test_a_missing_table_is_permanent(database: str) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute("CREATE SCHEMA IF NOT EXISTS empty")
    barrier = PgBarrier(database + "?options=-csearch_path%3Dempty")
    with pytest.raises(Permanent, match="was the barrier's migrate"):
        await barrier.run(request(Phase.EXECUTE, tx()), lambda conn: None)


@pytest.fixture(scope="module")
def rust(ledger: str) -> Iterator[RustParticipants]:
    proc = RustParticipants({"BARRIER_DATABASE_URL": ledger})
    yield proc
    proc.stop()


async def rust_call(rust: RustParticipants, phase: str, tx_id: str, action: str = "credit") -> ppb.BranchReply:
    async with grpc.aio.insecure_channel(rust.endpoints["ledger"].removeprefix("http://")) as channel:
        stub = ppb_grpc.ParticipantStub(channel)
        message = ppb.BranchRequest(tx_id=tx_id, branch_index=0, branch_name="credit", action=action, payload=b'{"amount": 5}', attempt=1)
        return await getattr(stub, phase)(message)


async def test_rust_barrier_compensates_what_python_executed(ledger: str, rust: RustParticipants) -> None:
    l = Ledger(ledger)
    t = tx()
    await l.apply(request(Phase.EXECUTE, t))
    reply = await rust_call(rust, "Compensate", t)
    assert reply.outcome == ppb.OUTCOME_OK and reply.message == "rust compensate"
    assert await l.rows(t) == [("compensate", "rust", -5), ("execute", "python", 5)]


async def test_python_refuses_an_execute_after_a_rust_null_compensation(ledger: str, rust: RustParticipants) -> None:
    l = Ledger(ledger)
    t = tx()
    reply = await rust_call(rust, "Compensate", t)
    assert reply.outcome == ppb.OUTCOME_OK and reply.message == "nothing to undo: execute never ran"
    with pytest.raises(Failed, match="already compensated, execute refused"):
        await l.apply(request(Phase.EXECUTE, t))
    assert l.business_calls == 0 and await l.rows(t) == []


async def test_python_repeat_of_a_rust_execute_returns_its_result(ledger: str, rust: RustParticipants) -> None:
    l = Ledger(ledger)
    t = tx()
    first = await rust_call(rust, "Execute", t)
    assert first.outcome == ppb.OUTCOME_OK and first.output == b"rust"
    again = await l.apply(request(Phase.EXECUTE, t))
    assert again == Reply(b"rust", "rust execute")
    assert l.business_calls == 0
    assert await l.rows(t) == [("execute", "rust", 5)]


async def test_rust_refuses_an_abort_after_a_python_commit(ledger: str, rust: RustParticipants) -> None:
    l = Ledger(ledger)
    t = tx()
    await l.apply(request(Phase.PREPARE, t))
    await l.apply(request(Phase.COMMIT, t))
    with pytest.raises(grpc.RpcError) as raised:
        await rust_call(rust, "Abort", t, action="hold")
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.details() == f"tx {t} branch 0: already committed, cannot abort"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_each_step_applies_once_across_a_coordinator_sigkill(ledger: str, coordinators: Any) -> None:
    first = coordinators("py-crash-1")
    l = Ledger(ledger)
    p = Participant()
    entered = asyncio.Event()
    release = asyncio.Event()
    deliveries: Dict[int, int] = {}

    @p.on_execute("credit")
    async def credit(req: Request) -> Reply:
        deliveries[req.branch_index] = deliveries.get(req.branch_index, 0) + 1
        if req.branch_index == 1 and not release.is_set():
            # Hold the first delivery of step 1 until its coordinator is dead.
            entered.set()
            await release.wait()
        return await l.apply(req)

    server = await p.serve()
    second_port = free_port()
    async with Client([first.endpoint, f"http://127.0.0.1:{second_port}"]) as client:
        saga = Saga()
        for name in ("one", "two", "three"):
            saga.step(Step.to_endpoint(name, server.endpoint).action("credit").json({"amount": 5}).timeout(10))
        started = await client.start(saga.idempotency_key(f"crash-{uuid.uuid4()}"))
        await asyncio.wait_for(entered.wait(), 20)
        first.kill9()
        release.set()
        coordinators("py-crash-2", listen=f"127.0.0.1:{second_port}")
        # Wait fails over to the second coordinator, which takes the saga over once the dead
        # one's lease expires and delivers step 1 again.
        tx = await client.wait(started.tx_id, 30)
        assert tx.state is TxState.COMMITTED, tx
    await server.shutdown()
    assert deliveries[1] >= 2, deliveries
    rows = await l.rows(started.tx_id)
    assert sorted(rows) == [("execute", "python", 5)] * 3
    async with await psycopg.AsyncConnection.connect(ledger) as conn:
        cur = await conn.execute(
            "SELECT branch, count(*) FROM ledger_entries WHERE tx_id = %s GROUP BY branch ORDER BY branch",
            (started.tx_id,),
        )
        assert await cur.fetchall() == [(0, 1), (1, 1), (2, 1)]
