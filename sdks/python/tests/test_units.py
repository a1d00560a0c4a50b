"""Pure functions: the wire mapping of handler results, trace context parsing, builders."""

from __future__ import annotations

import grpc
import pytest

from baton_tx import Failed, InvalidArgument, Permanent, Reply, Saga, Step, StepKind, TraceParent, Transient, TxState
from baton_tx._proto import participant_pb2 as ppb
from baton_tx.client import millis
from baton_tx.errors import HandlerError
from baton_tx.participant import to_wire


def test_to_wire_mirrors_the_rust_sdk() -> None:
    reply, status = to_wire(Reply(b"x", "done"))
    assert status is None and (reply.outcome, reply.output, reply.message) == (ppb.OUTCOME_OK, b"x", "done")
    reply, status = to_wire(Failed("out of stock"))
    assert status is None and (reply.outcome, reply.output, reply.message) == (ppb.OUTCOME_FAILED, b"", "out of stock")
    assert to_wire(Transient("db busy")) == (None, (grpc.StatusCode.UNAVAILABLE, "db busy"))
    assert to_wire(Permanent("no such account")) == (None, (grpc.StatusCode.FAILED_PRECONDITION, "no such account"))
    assert to_wire(HandlerError("boom"))[1] == (grpc.StatusCode.INTERNAL, "boom")


def test_traceparent_is_parsed_strictly() -> None:
    ok = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    tp = TraceParent.parse(ok)
    assert tp is not None and str(tp) == ok and tp.sampled
    assert tp.child().trace_id == tp.trace_id and tp.child().span_id != tp.span_id
    for bad in [
        ok.upper(),
        "ff" + ok[2:],
        ok + "-extra",  # version 00 is exactly 55 characters
        "00-" + "0" * 32 + ok[35:],
        ok[:36] + "0" * 16 + ok[52:],
        ok[:-1],
    ]:
        assert TraceParent.parse(bad) is None, bad
    assert TraceParent.parse("01" + ok[2:] + "-future") is not None
    assert TraceParent.from_metadata([("traceparent", ok), ("traceparent", ok)]) is None


def test_builders_and_durations() -> None:
    assert (millis(0), millis(0.000001), millis(0.0015), millis(2)) == (0, 1, 2, 2000)
    request = (
        Saga()
        .step(Step("reserve", "inventory").compensate("release").json({"sku": "A1"}).timeout(2).retry(4, 0.05, 1))
        .parallel([Step.to_endpoint("email", "http://127.0.0.1:9").retriable(), Step("audit", "a").action("record")])
        .parallel([])
        .step(Step("ship", "shipping").pivot())
        .idempotency_key("order-42")
        .label("order", "42")
        .timeout(30)
        .start_request()
    )
    steps = request.saga.steps
    assert [(s.name, s.stage, s.action) for s in steps] == [
        ("reserve", 0, "reserve"), ("email", 1, "email"), ("audit", 1, "record"), ("ship", 2, "ship")
    ]
    assert steps[0].payload == b'{"sku":"A1"}' and steps[0].timeout_ms == 2000
    assert (steps[0].retry.max_attempts, steps[0].retry.initial_backoff_ms, steps[0].retry.max_backoff_ms) == (4, 50, 1000)
    assert StepKind(steps[1].kind) is StepKind.RETRIABLE and StepKind(steps[3].kind) is StepKind.PIVOT
    assert steps[1].endpoint == "http://127.0.0.1:9" and steps[1].service == ""
    assert (request.idempotency_key, dict(request.labels), request.timeout_ms) == ("order-42", {"order": "42"}, 30000)
    assert TxState(42) is TxState.UNKNOWN
    with pytest.raises(InvalidArgument):
        Step("x", "svc", endpoint="http://127.0.0.1:9")
