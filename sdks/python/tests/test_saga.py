"""Sagas end to end: a Python participant served by the SDK, driven by a real `baton serve`."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, List, Tuple

import grpc
import pytest

from baton_tx import (
    Client,
    Failed,
    FailedPrecondition,
    ListQuery,
    NotFound,
    Participant,
    Permanent,
    Reply,
    Request,
    Saga,
    Step,
    Transient,
    TraceParent,
    TxKind,
    TxState,
)
from baton_tx._proto import participant_pb2 as ppb
from baton_tx._proto import participant_pb2_grpc as ppb_grpc

from conftest import until, wait_final


class Shop:
    """A participant that records every call; `fail` names actions that fail as business."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, str, str]] = []
        self.requests: List[Request] = []
        self.fail: set = set()
        self.p = Participant()
        for action in ("reserve", "charge", "ship"):
            self.p.on_execute(action)(self.execute)
            self.p.on_compensate(action)(self.compensate)

    async def execute(self, req: Request) -> Reply:
        self.calls.append(("execute", req.action, req.tx_id))
        self.requests.append(req)
        if req.action in self.fail:
            raise Failed(f"{req.action} refused")
        return Reply(f"{req.action}-done".encode(), "ok")

    async def compensate(self, req: Request) -> None:
        self.calls.append(("compensate", req.action, req.tx_id))
        self.requests.append(req)

    def of(self, tx_id: str) -> List[Tuple[str, str]]:
        return [(phase, action) for phase, action, t in self.calls if t == tx_id]


def order_saga(endpoint: str, key: str = "") -> Saga:
    saga = Saga()
    for action in ("reserve", "charge", "ship"):
        saga.step(Step.to_endpoint(action, endpoint).compensate(action).json({"order": 1}))
    if key:
        saga.idempotency_key(key)
    return saga.label("suite", "python")


async def test_happy_saga_passes_payload_outputs_labels_and_trace(coordinator: Any) -> None:
    shop = Shop()
    server = await shop.p.serve("127.0.0.1:0")
    trace = TraceParent.new_root()
    async with Client(coordinator.endpoint) as client:
        tx = await client.with_traceparent(trace).run(order_saga(server.endpoint))
        assert tx.state is TxState.COMMITTED
        assert tx.kind is TxKind.SAGA
        assert [b.name for b in tx.branches] == ["reserve", "charge", "ship"]
        assert tx.branch("charge") is not None and tx.branch("charge").output == b"charge-done"
        assert shop.of(tx.tx_id) == [("execute", "reserve"), ("execute", "charge"), ("execute", "ship")]
        ship = shop.requests[2]
        assert ship.json() == {"order": 1}
        assert ship.attempt == 1 and ship.branch_index == 2 and ship.branch_name == "ship"
        assert ship.output_of("reserve") == b"reserve-done"
        assert ship.output_of("charge") == b"charge-done"
        assert ship.labels["suite"] == "python"
        assert ship.deadline is not None and ship.time_left() is not None
        # The client's trace reaches the participant.
        assert ship.trace_id == trace.trace_id
        events = await client.events(tx.tx_id)
        assert events and all(e.tx_id == tx.tx_id for e in events)
        assert [e.seq for e in events] == sorted(e.seq for e in events)
        page = await client.list(ListQuery(labels={"suite": "python"}, states=[TxState.COMMITTED]))
        assert tx.tx_id in [t.tx_id for t in page.transactions]
    await server.shutdown()


async def test_failed_step_compensates_in_reverse_order(coordinator: Any) -> None:
    shop = Shop()
    shop.fail.add("ship")
    server = await shop.p.serve("127.0.0.1:0")
    async with Client(coordinator.endpoint) as client:
        tx = await client.run(order_saga(server.endpoint))
        assert tx.state is TxState.COMPENSATED
        # A step that failed as business did nothing, so only the two before it are undone,
        # newest first.
        assert shop.of(tx.tx_id) == [
            ("execute", "reserve"),
            ("execute", "charge"),
            ("execute", "ship"),
            ("compensate", "charge"),
            ("compensate", "reserve"),
        ]
        # A compensation sees the step's own output.
        charge_comp = next(r for r in shop.requests if r.tx_id == tx.tx_id and r.action == "charge" and r.phase.value == "compensate")
        assert charge_comp.output_of("charge") == b"charge-done"
    await server.shutdown()


async def test_idempotent_start_returns_the_first_transaction(coordinator: Any) -> None:
    shop = Shop()
    server = await shop.p.serve("127.0.0.1:0")
    key = f"order-{uuid.uuid4()}"
    async with Client(coordinator.endpoint) as client:
        first = await client.start(order_saga(server.endpoint, key))
        second = await client.start(order_saga(server.endpoint, key))
        assert first.created and not second.created
        assert first.tx_id == second.tx_id
        tx = await wait_final(client, first.tx_id)
        assert tx.state is TxState.COMMITTED and tx.idempotency_key == key
        # The steps ran once: the second start did not make a second transaction.
        assert len(shop.of(first.tx_id)) == 3
    await server.shutdown()


async def test_error_kinds_map_like_the_rust_sdk(coordinator: Any) -> None:
    p = Participant()
    attempts: List[int] = []

    @p.on_execute("flaky")
    async def flaky(req: Request) -> bytes:
        attempts.append(req.attempt)
        if req.attempt < 3:
            raise Transient("db busy")
        return b"third time"

    @p.on_execute("broken")
    async def broken(req: Request) -> None:
        raise Permanent("no such account")

    @p.on_execute("bad_json")
    async def bad_json(req: Request) -> None:
        req.json()

    server = await p.serve("127.0.0.1:0")
    # The wire answers, seen directly.
    async with grpc.aio.insecure_channel(server.endpoint.removeprefix("http://")) as channel:
        stub = ppb_grpc.ParticipantStub(channel)
        for action, code, message in [
            ("broken", grpc.StatusCode.FAILED_PRECONDITION, "no such account"),
            ("missing", grpc.StatusCode.UNIMPLEMENTED, "no execute handler for action 'missing'"),
        ]:
            with pytest.raises(grpc.RpcError) as raised:
                await stub.Execute(ppb.BranchRequest(tx_id="t", action=action, attempt=1))
            assert raised.value.code() == code and raised.value.details() == message
        with pytest.raises(grpc.RpcError) as raised:
            await stub.Execute(ppb.BranchRequest(tx_id="t", action="flaky", attempt=1))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as raised:
            await stub.Execute(ppb.BranchRequest(tx_id="t", action="bad_json", payload=b"{", attempt=1))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert raised.value.details().startswith("payload: invalid json")
    attempts.clear()
    async with Client(coordinator.endpoint) as client:
        # Transient: retried until it succeeds.
        tx = await client.run(Saga().step(Step.to_endpoint("flaky", server.endpoint).retry(5, 0.01, 0.05)))
        assert tx.state is TxState.COMMITTED and attempts == [1, 2, 3]
        assert tx.branches[0].output == b"third time"
        # Permanent: not retried, the saga compensates.
        tx = await client.run(Saga().step(Step.to_endpoint("broken", server.endpoint).retry(5, 0.01, 0.05)))
        assert tx.state is TxState.COMPENSATED
        assert tx.branches[0].attempts == 1
    await server.shutdown()


async def test_cancel_compensates_a_running_saga(coordinator: Any) -> None:
    shop = Shop()
    release = asyncio.Event()

    @shop.p.on_execute("slow")
    async def slow(req: Request) -> None:
        shop.calls.append(("execute", "slow", req.tx_id))
        await release.wait()
        raise Transient("still waiting")

    server = await shop.p.serve("127.0.0.1:0")
    async with Client(coordinator.endpoint) as client:
        saga = (
            Saga()
            .step(Step.to_endpoint("reserve", server.endpoint).compensate("reserve"))
            .step(Step.to_endpoint("slow", server.endpoint).timeout(5).retry(100, 0.05, 0.1))
        )
        started = await client.start(saga)
        await until("the slow step to be called", lambda: ("execute", "slow") in shop.of(started.tx_id))
        await client.cancel(started.tx_id, "customer changed their mind")
        release.set()
        tx = await wait_final(client, started.tx_id)
        assert tx.state is TxState.COMPENSATED
        assert ("compensate", "reserve") in shop.of(started.tx_id)
        # Cancelling an ended transaction is refused.
        with pytest.raises(FailedPrecondition):
            await client.cancel(started.tx_id, "again")
        with pytest.raises(NotFound):
            await client.get(str(uuid.uuid4()))
    await server.shutdown()


async def test_retry_after_a_failed_compensation(coordinator: Any) -> None:
    p = Participant()
    broken = {"refund": True}
    refunds: List[str] = []

    @p.on_execute("charge")
    async def charge(req: Request) -> None:
        return None

    @p.on_compensate("charge")
    async def refund(req: Request) -> None:
        if broken["refund"]:
            raise Permanent("refund service misconfigured")
        refunds.append(req.tx_id)

    @p.on_execute("ship")
    async def ship(req: Request) -> None:
        raise Failed("no courier")

    server = await p.serve("127.0.0.1:0")
    async with Client(coordinator.endpoint) as client:
        saga = (
            Saga()
            .step(Step.to_endpoint("charge", server.endpoint).compensate("charge").retry(2, 0.01, 0.02))
            .step(Step.to_endpoint("ship", server.endpoint))
        )
        tx = await client.run(saga)
        assert tx.state is TxState.FAILED
        assert "refund service misconfigured" in (tx.branch("charge").last_error + tx.last_error)
        broken["refund"] = False
        await client.retry(tx.tx_id)
        tx = await wait_final(client, tx.tx_id)
        assert tx.state is TxState.COMPENSATED
        assert refunds == [tx.tx_id]
    await server.shutdown()


async def test_watch_streams_events_until_the_end(coordinator: Any) -> None:
    shop = Shop()
    gate = asyncio.Event()

    @shop.p.on_execute("gated")
    async def gated(req: Request) -> None:
        await gate.wait()

    server = await shop.p.serve("127.0.0.1:0")
    async with Client(coordinator.endpoint) as client:
        saga = (
            Saga()
            .step(Step.to_endpoint("reserve", server.endpoint))
            .step(Step.to_endpoint("gated", server.endpoint).timeout(10))
        )
        started = await client.start(saga)
        seen: List[Any] = []

        async def follow() -> None:
            async for event in client.watch(started.tx_id):
                seen.append(event)

        follower = asyncio.ensure_future(follow())
        # Live events arrive before the transaction ends.
        await until("events before the end", lambda: len(seen) >= 2)
        assert not follower.done()
        gate.set()
        await asyncio.wait_for(follower, 30)
        history = await client.events(started.tx_id)
        assert [e.seq for e in seen] == [e.seq for e in history]
        assert (await client.get(started.tx_id)).state is TxState.COMMITTED
    await server.shutdown()
