"""Two-phase commit end to end with Python participants."""

from __future__ import annotations

from typing import Any, List, Tuple

from baton_tx import Client, Failed, Participant, Request, Tcc, TwoPhase, TwoPhaseBranch, TxKind, TxState


def bank() -> Tuple[Participant, List[Tuple[str, str]]]:
    p = Participant()
    calls: List[Tuple[str, str]] = []

    @p.on_prepare("hold")
    async def prepare(req: Request) -> bytes:
        calls.append(("prepare", req.branch_name))
        if req.json().get("vote") == "no":
            raise Failed("insufficient funds")
        return b"held"

    @p.on_commit("hold")
    async def commit(req: Request) -> None:
        calls.append(("commit", req.branch_name))

    @p.on_abort("hold")
    async def abort(req: Request) -> None:
        calls.append(("abort", req.branch_name))

    return p, calls


async def test_all_yes_votes_commit_every_branch(coordinator: Any) -> None:
    p, calls = bank()
    server = await p.serve()
    async with Client(coordinator.endpoint) as client:
        tp = (
            TwoPhase()
            .branch(TwoPhaseBranch.to_endpoint("a", server.endpoint).action("hold").json({"vote": "yes"}))
            .branch(TwoPhaseBranch.to_endpoint("b", server.endpoint).action("hold").json({"vote": "yes"}))
            .prepare_timeout(5)
        )
        tx = await client.run(tp)
        assert tx.kind is TxKind.TWO_PHASE and tx.state is TxState.COMMITTED
        assert sorted(calls) == [("commit", "a"), ("commit", "b"), ("prepare", "a"), ("prepare", "b")]
    await server.shutdown()


async def test_a_no_vote_aborts_the_others(coordinator: Any) -> None:
    p, calls = bank()
    server = await p.serve()
    async with Client(coordinator.endpoint) as client:
        tcc = (
            Tcc()
            .participant(TwoPhaseBranch.to_endpoint("a", server.endpoint).action("hold").json({"vote": "yes"}))
            .participant(TwoPhaseBranch.to_endpoint("b", server.endpoint).action("hold").json({"vote": "no"}))
        )
        tx = await client.run(tcc)
        assert tx.state is TxState.ABORTED
        assert ("abort", "a") in calls
        assert not any(phase == "commit" for phase, _ in calls)
    await server.shutdown()
