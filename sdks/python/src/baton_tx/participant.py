"""The participant: what a service writes to take part in Baton transactions.

A service names its actions and gives each phase a handler (an ``async`` function taking a
:class:`Request`); the SDK routes the coordinator's calls to them and turns their results into the
protocol's answers, exactly as the Rust SDK does:

- returning (a :class:`Reply`, ``bytes`` as the output, or ``None``) answers ``OUTCOME_OK``;
- :class:`~baton_tx.errors.Failed` answers ``OUTCOME_FAILED`` (the saga compensates, the 2PC
  votes no; never retried);
- :class:`~baton_tx.errors.Transient` answers gRPC ``UNAVAILABLE`` (retried with backoff);
- :class:`~baton_tx.errors.Permanent` answers gRPC ``FAILED_PRECONDITION`` (not retried);
- any other exception answers gRPC ``INTERNAL``.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import json as _json
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, Optional, Set, Tuple, Union

import grpc
import grpc.aio

from ._proto import coordinator_pb2 as cpb
from ._proto import coordinator_pb2_grpc as cpb_grpc
from ._proto import participant_pb2 as pb
from ._proto import participant_pb2_grpc as pb_grpc
from .client import _bearer, millis, open_channel
from .errors import BatonError, Failed, HandlerError, Permanent, Transient
from .tls import ClientTls, ServerTls
from .trace import TraceParent

log = logging.getLogger("baton_tx.participant")


class Phase(enum.Enum):
    """The protocol phase a call is for; the value is the name the barrier records."""

    EXECUTE = "execute"
    COMPENSATE = "compensate"
    PREPARE = "prepare"
    COMMIT = "commit"
    ABORT = "abort"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StepOutput:
    """The output of a step that finished before this call."""

    index: int
    name: str
    output: bytes


@dataclass(frozen=True)
class Request:
    """One call from the coordinator, as a handler sees it."""

    #: The phase this call is for.
    phase: Phase
    #: The transaction id (a UUID in text form).
    tx_id: str
    #: The branch (saga step or 2PC branch) index, from 0.
    branch_index: int
    #: The branch's name in the definition.
    branch_name: str
    #: The action (or compensation) being called.
    action: str
    #: The branch's payload; JSON by convention, see :meth:`json`.
    payload: bytes
    #: 1 on first delivery of this (tx_id, branch, phase), then 2, 3, ... on redelivery.
    attempt: int
    #: When the coordinator stops waiting for this call, in Unix seconds, if it said.
    deadline: Optional[float]
    #: Outputs of the steps that finished before this one (for compensations, also its own).
    outputs: Tuple[StepOutput, ...] = ()
    #: The transaction's labels.
    labels: Dict[str, str] = field(default_factory=dict)
    #: The W3C trace context the coordinator sent (``traceparent`` metadata), if valid.
    trace: Optional[TraceParent] = None

    def json(self) -> Any:
        """The payload decoded from JSON. A payload that does not decode can never succeed, so
        this raises :class:`~baton_tx.errors.Permanent`."""
        try:
            return _json.loads(self.payload)
        except (ValueError, UnicodeDecodeError) as e:
            raise Permanent(f"payload: invalid json: {e}") from None

    def output_of(self, name: str) -> Optional[bytes]:
        """The output of the earlier step called ``name``, if it ran and produced one."""
        return next((o.output for o in self.outputs if o.name == name), None)

    def time_left(self) -> Optional[float]:
        """Seconds left before the coordinator gives up on this call, if it set a deadline."""
        return None if self.deadline is None else max(0.0, self.deadline - time.time())

    @property
    def trace_id(self) -> Optional[str]:
        """The trace this call belongs to, as 32 hex digits."""
        return None if self.trace is None else self.trace.trace_id

    @classmethod
    def _from_wire(
        cls, phase: Phase, wire: Any, trace: Optional[TraceParent]
    ) -> "Request":
        return cls(
            phase=phase,
            tx_id=wire.tx_id,
            branch_index=wire.branch_index,
            branch_name=wire.branch_name,
            action=wire.action,
            payload=bytes(wire.payload),
            attempt=wire.attempt,
            deadline=wire.deadline_unix_ms / 1000 if wire.deadline_unix_ms > 0 else None,
            outputs=tuple(StepOutput(o.index, o.name, bytes(o.output)) for o in wire.outputs),
            labels=dict(wire.labels),
            trace=trace,
        )


@dataclass(frozen=True)
class Reply:
    """A successful answer: an optional output (kept by the coordinator and passed to later steps
    and compensations) and an optional message for operators."""

    output: bytes = b""
    message: str = ""

    @classmethod
    def json(cls, value: Any, message: str = "") -> "Reply":
        """Success with ``value`` encoded as JSON as the output."""
        try:
            return cls(_json.dumps(value, separators=(",", ":")).encode(), message)
        except (TypeError, ValueError) as e:
            raise Permanent(f"output: cannot encode json: {e}") from None


HandlerResult = Union[Reply, bytes, None]
Handler = Callable[[Request], Union[Awaitable[HandlerResult], HandlerResult]]


def as_reply(result: HandlerResult) -> Reply:
    """A handler's return value as a :class:`Reply`."""
    if result is None:
        return Reply()
    if isinstance(result, Reply):
        return result
    if isinstance(result, (bytes, bytearray, memoryview)):
        return Reply(bytes(result))
    raise TypeError(f"a handler returns Reply, bytes or None, not {type(result).__name__}")


def to_wire(result: Union[Reply, HandlerError]) -> Tuple[Any, Optional[Tuple[grpc.StatusCode, str]]]:
    """The single place where a handler's result becomes the wire answer: a ``BranchReply``, or
    a gRPC status. The coordinator classifies the codes, so this mirrors the Rust SDK exactly."""
    if isinstance(result, Reply):
        return pb.BranchReply(outcome=pb.OUTCOME_OK, output=result.output, message=result.message), None
    if isinstance(result, Failed):
        return pb.BranchReply(outcome=pb.OUTCOME_FAILED, message=result.message), None
    if isinstance(result, Transient):
        return None, (grpc.StatusCode.UNAVAILABLE, result.message)
    if isinstance(result, Permanent):
        return None, (grpc.StatusCode.FAILED_PRECONDITION, result.message)
    return None, (grpc.StatusCode.INTERNAL, result.message)


class Participant:
    """A participant's handlers, keyed by phase and action. Register them with the decorators,
    then :meth:`serve`::

        participant = Participant()

        @participant.on_execute("reserve")
        async def reserve(req: Request) -> Reply:
            ...
    """

    def __init__(self) -> None:
        self._handlers: Dict[Tuple[Phase, str], Handler] = {}

    def on(self, phase: Phase, action: str) -> Callable[[Handler], Handler]:
        """Decorator: handle ``phase`` calls for ``action``. The same pair twice keeps the last
        handler."""

        def register(handler: Handler) -> Handler:
            self._handlers[(phase, action)] = handler
            return handler

        return register

    def on_execute(self, action: str) -> Callable[[Handler], Handler]:
        """Handle the saga action ``action``."""
        return self.on(Phase.EXECUTE, action)

    def on_compensate(self, action: str) -> Callable[[Handler], Handler]:
        """Handle the compensation ``action`` (the name given as the step's ``compensate``). It
        may arrive for a step whose action never ran, and more than once."""
        return self.on(Phase.COMPENSATE, action)

    def on_prepare(self, action: str) -> Callable[[Handler], Handler]:
        """Two-phase commit phase one: reserve and vote (returning is yes, ``Failed`` is no)."""
        return self.on(Phase.PREPARE, action)

    def on_commit(self, action: str) -> Callable[[Handler], Handler]:
        """Commit a prepared ``action``. It must eventually succeed; it is retried until it
        does."""
        return self.on(Phase.COMMIT, action)

    def on_abort(self, action: str) -> Callable[[Handler], Handler]:
        """Abort ``action``: release whatever prepare reserved, if anything."""
        return self.on(Phase.ABORT, action)

    async def serve(
        self, addr: str = "127.0.0.1:0", *, tls: Optional[ServerTls] = None
    ) -> "ParticipantServer":
        """Bind ``addr`` (``host:port``; port 0 picks a free one), start serving the handlers and
        return the running server."""
        server = grpc.aio.server()
        tracker = _Tracker()
        pb_grpc.add_ParticipantServicer_to_server(_Servicer(dict(self._handlers), tracker), server)
        port = (
            server.add_secure_port(addr, tls.credentials())
            if tls is not None
            else server.add_insecure_port(addr)
        )
        if port == 0:
            raise OSError(f"cannot listen on {addr}")
        await server.start()
        host = addr.rsplit(":", 1)[0] or "127.0.0.1"
        scheme = "https" if tls is not None else "http"
        return ParticipantServer(server, tracker, f"{scheme}://{host}:{port}", port)


class _Tracker:
    """Handler tasks, so shutdown waits for handlers whose caller went away."""

    def __init__(self) -> None:
        self.tasks: Set["asyncio.Task[Any]"] = set()

    def spawn(self, coro: Awaitable[Any]) -> "asyncio.Task[Any]":
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def wait(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


async def _call_handler(handler: Handler, req: Request) -> Union[Reply, HandlerError]:
    try:
        result = handler(req)
        if inspect.isawaitable(result):
            result = await result
        return as_reply(result)
    except HandlerError as e:
        return e
    except Exception as e:  # noqa: BLE001 - any other failure is the handler's bug: INTERNAL
        log.exception("%s handler for action %r raised", req.phase, req.action)
        return HandlerError(f"{req.phase} handler for action {req.action!r} raised {type(e).__name__}: {e}")


class _Servicer(pb_grpc.ParticipantServicer):
    def __init__(self, handlers: Dict[Tuple[Phase, str], Handler], tracker: _Tracker) -> None:
        self._handlers = handlers
        self._tracker = tracker

    async def _dispatch(self, phase: Phase, wire: Any, context: grpc.aio.ServicerContext) -> Any:
        if not wire.tx_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tx_id: must not be empty")
        if not wire.action:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "action: must not be empty")
        handler = self._handlers.get((phase, wire.action))
        if handler is None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, f"no {phase} handler for action {wire.action!r}"
            )
        assert handler is not None
        trace = TraceParent.from_metadata(context.invocation_metadata() or ())
        req = Request._from_wire(phase, wire, trace)
        # A tracked task, shielded from the call's cancellation: a handler whose caller went away
        # (deadline, coordinator crash) still finishes its local work, and shutdown waits for it.
        task = self._tracker.spawn(_call_handler(handler, req))
        result = await asyncio.shield(task)
        reply, status = to_wire(result)
        if status is not None:
            await context.abort(*status)
        return reply

    async def Execute(self, request: Any, context: Any) -> Any:
        return await self._dispatch(Phase.EXECUTE, request, context)

    async def Compensate(self, request: Any, context: Any) -> Any:
        return await self._dispatch(Phase.COMPENSATE, request, context)

    async def Prepare(self, request: Any, context: Any) -> Any:
        return await self._dispatch(Phase.PREPARE, request, context)

    async def Commit(self, request: Any, context: Any) -> Any:
        return await self._dispatch(Phase.COMMIT, request, context)

    async def Abort(self, request: Any, context: Any) -> Any:
        return await self._dispatch(Phase.ABORT, request, context)


@dataclass
class Registration:
    """How a participant announces itself to a coordinator; see
    :meth:`ParticipantServer.register`. ``ttl`` is in seconds: the registration expires unless
    renewed within it (heartbeats go every third of it; 0 never expires)."""

    coordinator: str
    service: str
    endpoint: Optional[str] = None
    weight: int = 1
    zone: str = ""
    ttl: float = 10.0
    token: Optional[str] = field(default=None, repr=False)
    tls: Optional[ClientTls] = None


class ParticipantServer:
    """A running participant server, from :meth:`Participant.serve`."""

    def __init__(self, server: grpc.aio.Server, tracker: _Tracker, endpoint: str, port: int) -> None:
        self._server = server
        self._tracker = tracker
        self._stop = asyncio.Event()
        self._registrations: Set["asyncio.Task[None]"] = set()
        self._closed = False
        #: The URL a coordinator (or a step's ``endpoint``) uses, such as ``http://127.0.0.1:9000``.
        self.endpoint = endpoint
        #: The port the server listens on.
        self.port = port

    async def register(self, registration: Registration) -> None:
        """Register with a coordinator, then renew the registration in a background task until
        :meth:`shutdown`, which deregisters it. Raises :class:`~baton_tx.errors.BatonError` if
        the coordinator refuses or cannot be reached."""
        endpoint = registration.endpoint or self.endpoint
        metadata = (_bearer(registration.token),) if registration.token is not None else ()
        channel = open_channel(registration.coordinator, registration.tls)
        stub = cpb_grpc.CoordinatorStub(channel)
        ttl_ms = millis(registration.ttl)
        register = cpb.RegisterParticipantRequest(
            service=registration.service,
            endpoint=endpoint,
            weight=registration.weight,
            zone=registration.zone,
            ttl_ms=ttl_ms,
        )
        try:
            await stub.RegisterParticipant(register, metadata=metadata, timeout=10)
        except grpc.RpcError as e:
            await channel.close()
            raise BatonError.from_rpc(e) from None
        task = asyncio.ensure_future(
            self._keep_alive(channel, stub, metadata, register, max(registration.ttl / 3, 0.1))
        )
        self._registrations.add(task)

    async def _keep_alive(
        self,
        channel: grpc.aio.Channel,
        stub: cpb_grpc.CoordinatorStub,
        metadata: Tuple[Tuple[str, str], ...],
        register: Any,
        period: float,
    ) -> None:
        service, endpoint = register.service, register.endpoint
        try:
            while True:
                # With a TTL of 0 the registration never expires: no heartbeats, but it still
                # deregisters on shutdown.
                try:
                    await asyncio.wait_for(self._stop.wait(), None if register.ttl_ms == 0 else period)
                    break
                except asyncio.TimeoutError:
                    pass
                beat = cpb.HeartbeatParticipantRequest(
                    service=service, endpoint=endpoint, ttl_ms=register.ttl_ms
                )
                try:
                    await stub.HeartbeatParticipant(beat, metadata=metadata, timeout=period * 3)
                except grpc.RpcError as e:
                    # The registration expired (say, the coordinator was down longer than the
                    # TTL): register again rather than silently dropping out of the registry.
                    if e.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                        try:
                            await stub.RegisterParticipant(register, metadata=metadata, timeout=period * 3)
                        except grpc.RpcError as again:
                            log.warning("participant re-registration of %s at %s failed: %s", service, endpoint, again)
                    else:
                        log.warning("participant heartbeat of %s at %s failed: %s", service, endpoint, e)
            leave = cpb.DeregisterParticipantRequest(service=service, endpoint=endpoint)
            try:
                await stub.DeregisterParticipant(leave, metadata=metadata, timeout=5)
            except grpc.RpcError as e:
                log.warning("participant deregistration of %s at %s failed: %s", service, endpoint, e)
        finally:
            await channel.close()

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop gracefully: deregister from coordinators first (so no new calls are routed here),
        then stop accepting calls, and wait (up to ``grace`` seconds for calls in flight) for the
        handlers to finish."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._registrations:
            await asyncio.gather(*self._registrations, return_exceptions=True)
        await self._server.stop(grace)
        await self._tracker.wait()

    async def serve_until_signal(
        self, signals: Tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """Serve until one of ``signals`` arrives (SIGTERM or SIGINT by default), then
        :meth:`shutdown` gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
        await self.shutdown()

    async def __aenter__(self) -> "ParticipantServer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()
