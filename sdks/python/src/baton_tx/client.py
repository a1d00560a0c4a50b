"""The client: define sagas and two-phase commits in code, start them and follow them."""

from __future__ import annotations

import asyncio
import json as _json
import math
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

import grpc
import grpc.aio

from ._proto import coordinator_pb2 as pb
from ._proto import coordinator_pb2_grpc as pb_grpc
from .errors import BatonError, Unavailable, invalid
from .model import (
    CoordinatorInfo,
    Event,
    ListQuery,
    Page,
    ParticipantEndpoint,
    Started,
    StepKind,
    Transaction,
)
from .tls import ClientTls
from .trace import HEADER as TRACE_HEADER
from .trace import TraceParent

T = TypeVar("T")

#: How long :meth:`Client.connect` waits for each coordinator before trying the next one.
CONNECT_TIMEOUT = 5.0
#: Slack on top of a server-side wait, so a wait the server ends on time is never cut short by
#: the client, while a server that never answers does not hang the caller forever.
WAIT_SLACK = 10.0

# Reconnect soon after a coordinator comes back (gRPC's default backoff grows to two minutes).
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def millis(seconds: Optional[float]) -> int:
    """Whole milliseconds, rounded up so that a small non-zero duration never becomes 0 (which
    the protocol reads as "use the default"). ``None`` is 0."""
    if seconds is None or seconds <= 0:
        return 0
    return int(math.ceil(seconds * 1000))


def _json_bytes(value: Any) -> bytes:
    try:
        return _json.dumps(value, separators=(",", ":")).encode()
    except (TypeError, ValueError) as e:
        raise invalid(f"payload: cannot encode json: {e}") from None


def _retry_policy(max_attempts: int, initial: float, maximum: float) -> Any:
    return pb.RetryPolicy(
        max_attempts=max_attempts,
        initial_backoff_ms=millis(initial),
        max_backoff_ms=millis(maximum),
    )


class Step:
    """One saga step: whom to call, with what, and how patiently. The action defaults to the
    step's name. Every setter returns the step, so calls chain. Durations are in seconds."""

    def __init__(self, name: str, service: str = "", *, endpoint: str = "") -> None:
        if bool(service) == bool(endpoint):
            raise invalid(f"step {name!r}: give exactly one of service and endpoint")
        self._name = name
        self._service = service
        self._endpoint = endpoint
        self._action: Optional[str] = None
        self._compensate = ""
        self._payload = b""
        self._kind = StepKind.COMPENSATABLE
        self._timeout: Optional[float] = None
        self._retry: Any = None

    @classmethod
    def to_endpoint(cls, name: str, endpoint: str) -> "Step":
        """A step that calls one fixed endpoint, such as ``http://127.0.0.1:9001``, instead of a
        service resolved through the coordinator's registry."""
        return cls(name, endpoint=endpoint)

    def action(self, action: str) -> "Step":
        """The participant action to execute."""
        self._action = action
        return self

    def compensate(self, action: str) -> "Step":
        """The participant action that undoes this step. Without one there is nothing to undo."""
        self._compensate = action
        return self

    def payload(self, payload: bytes) -> "Step":
        """The payload passed to the action and its compensation, as raw bytes."""
        self._payload = bytes(payload)
        return self

    def json(self, value: Any) -> "Step":
        """The payload, encoded as JSON (the convention participants expect)."""
        self._payload = _json_bytes(value)
        return self

    def pivot(self) -> "Step":
        """Make this the pivot: once it succeeds the saga only goes forward."""
        self._kind = StepKind.PIVOT
        return self

    def retriable(self) -> "Step":
        """Make this a retriable step (after the pivot): retried until it succeeds."""
        self._kind = StepKind.RETRIABLE
        return self

    def kind(self, kind: StepKind) -> "Step":
        """Set the step's kind explicitly (compensatable is the default)."""
        self._kind = kind
        return self

    def timeout(self, seconds: float) -> "Step":
        """How long the coordinator waits for each call; unset means its default."""
        self._timeout = seconds
        return self

    def retry(self, max_attempts: int, initial: float, maximum: float) -> "Step":
        """Retry transient failures up to ``max_attempts`` calls in all, backing off from
        ``initial`` seconds doubling up to ``maximum``. Unset means the coordinator's default."""
        self._retry = _retry_policy(max_attempts, initial, maximum)
        return self

    def _to_proto(self, stage: int) -> Any:
        return pb.SagaStep(
            name=self._name,
            service=self._service,
            endpoint=self._endpoint,
            action=self._action if self._action is not None else self._name,
            compensate=self._compensate,
            payload=self._payload,
            kind=self._kind.value,
            stage=stage,
            timeout_ms=millis(self._timeout),
            retry=self._retry,
        )


class _TxOptions:
    def __init__(self) -> None:
        self.idempotency_key = ""
        self.labels: Dict[str, str] = {}
        self.timeout: Optional[float] = None

    def apply(self, request: Any) -> Any:
        request.idempotency_key = self.idempotency_key
        request.labels.update(self.labels)
        request.timeout_ms = millis(self.timeout)
        return request


class Saga:
    """A saga: stages of steps that run in order, each stage's steps concurrently, plus the
    transaction's options. Hand it to :meth:`Client.start` or :meth:`Client.run`."""

    def __init__(self) -> None:
        self._stages: List[List[Step]] = []
        self._options = _TxOptions()

    def step(self, step: Step) -> "Saga":
        """Add a step in a stage of its own, after every step added so far."""
        self._stages.append([step])
        return self

    def parallel(self, steps: Iterable[Step]) -> "Saga":
        """Add one stage whose steps run concurrently. An empty list adds nothing."""
        group = list(steps)
        if group:
            self._stages.append(group)
        return self

    def idempotency_key(self, key: str) -> "Saga":
        """Starting twice with the same key returns the first transaction instead of a second
        one. Also makes :meth:`Client.start` safe to fail over between coordinators."""
        self._options.idempotency_key = key
        return self

    def label(self, key: str, value: str) -> "Saga":
        """Attach a label (searchable with :meth:`Client.list`, passed to participants)."""
        self._options.labels[key] = value
        return self

    def timeout(self, seconds: float) -> "Saga":
        """The saga's deadline from acceptance: past it, a saga before its pivot compensates."""
        self._options.timeout = seconds
        return self

    def start_request(self) -> Any:
        """The ``StartRequest`` message this saga becomes."""
        steps = [s._to_proto(stage) for stage, group in enumerate(self._stages) for s in group]
        return self._options.apply(pb.StartRequest(saga=pb.Saga(steps=steps)))


class TwoPhaseBranch:
    """One branch of a two-phase commit. Its action (passed with Prepare, Commit and Abort)
    defaults to the name."""

    def __init__(self, name: str, service: str = "", *, endpoint: str = "") -> None:
        if bool(service) == bool(endpoint):
            raise invalid(f"branch {name!r}: give exactly one of service and endpoint")
        self._name = name
        self._service = service
        self._endpoint = endpoint
        self._action: Optional[str] = None
        self._payload = b""
        self._timeout: Optional[float] = None
        self._retry: Any = None

    @classmethod
    def to_endpoint(cls, name: str, endpoint: str) -> "TwoPhaseBranch":
        """A branch on one fixed endpoint, such as ``http://127.0.0.1:9001``."""
        return cls(name, endpoint=endpoint)

    def action(self, action: str) -> "TwoPhaseBranch":
        self._action = action
        return self

    def payload(self, payload: bytes) -> "TwoPhaseBranch":
        self._payload = bytes(payload)
        return self

    def json(self, value: Any) -> "TwoPhaseBranch":
        self._payload = _json_bytes(value)
        return self

    def timeout(self, seconds: float) -> "TwoPhaseBranch":
        """Per-call timeout (the coordinator's default otherwise)."""
        self._timeout = seconds
        return self

    def retry(self, max_attempts: int, initial: float, maximum: float) -> "TwoPhaseBranch":
        """Retry policy for transient errors during prepare. Phase two retries until
        acknowledged."""
        self._retry = _retry_policy(max_attempts, initial, maximum)
        return self

    def _to_proto(self) -> Any:
        return pb.TwoPhaseBranch(
            name=self._name,
            service=self._service,
            endpoint=self._endpoint,
            action=self._action if self._action is not None else self._name,
            payload=self._payload,
            timeout_ms=millis(self._timeout),
            retry=self._retry,
        )


class TwoPhase:
    """A two-phase commit: branches that prepare, then all commit or all abort."""

    def __init__(self) -> None:
        self._branches: List[TwoPhaseBranch] = []
        self._prepare_timeout: Optional[float] = None
        self._options = _TxOptions()

    def branch(self, branch: TwoPhaseBranch) -> "TwoPhase":
        self._branches.append(branch)
        return self

    def prepare_timeout(self, seconds: float) -> "TwoPhase":
        """How long to wait for every vote before aborting (the coordinator's default
        otherwise)."""
        self._prepare_timeout = seconds
        return self

    def idempotency_key(self, key: str) -> "TwoPhase":
        self._options.idempotency_key = key
        return self

    def label(self, key: str, value: str) -> "TwoPhase":
        self._options.labels[key] = value
        return self

    def timeout(self, seconds: float) -> "TwoPhase":
        """The deadline from acceptance: a transaction still preparing then aborts."""
        self._options.timeout = seconds
        return self

    def start_request(self) -> Any:
        """The ``StartRequest`` message this two-phase commit becomes."""
        definition = pb.TwoPhase(
            branches=[b._to_proto() for b in self._branches],
            prepare_timeout_ms=millis(self._prepare_timeout),
        )
        return self._options.apply(pb.StartRequest(two_phase=definition))


class Tcc(TwoPhase):
    """The TCC (try / confirm / cancel) spelling of :class:`TwoPhase`: try is Prepare, confirm is
    Commit, cancel is Abort."""

    def participant(self, branch: TwoPhaseBranch) -> "Tcc":
        self.branch(branch)
        return self

    def try_timeout(self, seconds: float) -> "Tcc":
        self.prepare_timeout(seconds)
        return self


Definition = Union[Saga, TwoPhase, Any]


def _start_request(definition: Definition) -> Any:
    if isinstance(definition, (Saga, TwoPhase)):
        return definition.start_request()
    if isinstance(definition, pb.StartRequest):
        request = pb.StartRequest()
        request.CopyFrom(definition)
        return request
    raise invalid("definition: expected a Saga, a TwoPhase or a StartRequest")


def _target(addr: str) -> Tuple[str, bool]:
    """``host:port`` for gRPC and whether the address wants TLS."""
    for scheme, secure in (("http://", False), ("https://", True)):
        if addr.startswith(scheme):
            rest = addr[len(scheme) :].rstrip("/")
            if not rest or "/" in rest:
                break
            return rest, secure
    raise invalid(f"invalid coordinator address {addr!r}: expected http://host:port or https://host:port")


def _bearer(token: str) -> Tuple[str, str]:
    if not token or len(token) > 1000 or not all(33 <= ord(c) <= 126 for c in token):
        raise invalid("token: must be 1 to 1000 visible ASCII characters without spaces")
    return ("authorization", f"Bearer {token}")


def open_channel(
    addr: str, tls: Optional[ClientTls] = None
) -> grpc.aio.Channel:
    """A lazy gRPC channel to ``addr`` (``http://`` or ``https://host:port``)."""
    target, secure = _target(addr)
    if not secure:
        return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
    if tls is None:
        raise invalid(f"invalid coordinator address {addr!r}: https needs ClientTls with a CA")
    return grpc.aio.secure_channel(target, tls.credentials(), options=_CHANNEL_OPTIONS)


class Client:
    """A connection to one or more coordinators sharing one log.

    With several addresses, calls that are safe to repeat (reads, and ``start`` with an
    idempotency key) move on to the next coordinator when one is unreachable. Use it as an async
    context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        addrs: Union[str, Sequence[str]],
        *,
        token: Optional[str] = None,
        tls: Optional[ClientTls] = None,
        traceparent: Optional[TraceParent] = None,
    ) -> None:
        self._addrs = [addrs] if isinstance(addrs, str) else list(addrs)
        if not self._addrs:
            raise invalid("no coordinator address given")
        self._metadata: Tuple[Tuple[str, str], ...] = (_bearer(token),) if token is not None else ()
        self._channels = [open_channel(a, tls) for a in self._addrs]
        self._current = 0
        self._trace = traceparent

    @classmethod
    async def connect(
        cls,
        addrs: Union[str, Sequence[str]],
        *,
        token: Optional[str] = None,
        tls: Optional[ClientTls] = None,
        traceparent: Optional[TraceParent] = None,
        timeout: float = CONNECT_TIMEOUT,
    ) -> "Client":
        """A client that has reached the first reachable coordinator (each gets ``timeout``
        seconds); raises :class:`~baton_tx.errors.Unavailable` if none answers."""
        client = cls(addrs, token=token, tls=tls, traceparent=traceparent)
        for index, channel in enumerate(client._channels):
            try:
                await asyncio.wait_for(channel.channel_ready(), timeout)
            except (asyncio.TimeoutError, grpc.RpcError):
                continue
            client._current = index
            return client
        await client.close()
        raise Unavailable(
            grpc.StatusCode.UNAVAILABLE, f"cannot connect to coordinator {client._addrs[-1]}"
        )

    async def close(self) -> None:
        """Close the connections."""
        for channel in self._channels:
            await channel.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def addrs(self) -> List[str]:
        """The coordinator addresses, in failover order."""
        return list(self._addrs)

    def with_traceparent(self, traceparent: TraceParent) -> "Client":
        """A client sharing this one's connections that sends ``traceparent`` with every
        ``start`` and ``run``: the transactions join that trace, and every participant call
        carries its trace id."""
        other = object.__new__(Client)
        other.__dict__.update(self.__dict__)
        other._trace = traceparent
        return other

    @property
    def traceparent(self) -> Optional[TraceParent]:
        return self._trace

    async def _call(
        self,
        idempotent: bool,
        rpc: Callable[[pb_grpc.CoordinatorStub, Tuple[Tuple[str, str], ...]], Awaitable[T]],
        traced: bool = False,
    ) -> T:
        """Run one RPC, starting at the coordinator that answered last. An idempotent call that
        finds a coordinator unreachable is repeated on the next one; any other call is not,
        because it may have taken effect before the connection broke."""
        metadata = self._metadata
        if traced and self._trace is not None:
            metadata = metadata + ((TRACE_HEADER, str(self._trace)),)
        count = len(self._channels)
        first = self._current % count
        last: Optional[grpc.RpcError] = None
        for offset in range(count if idempotent else 1):
            index = (first + offset) % count
            stub = pb_grpc.CoordinatorStub(self._channels[index])
            try:
                answer = await rpc(stub, metadata)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                    last = e
                    continue
                raise BatonError.from_rpc(e) from None
            self._current = index
            return answer
        if last is not None:
            raise BatonError.from_rpc(last) from None
        raise Unavailable(grpc.StatusCode.UNAVAILABLE, "no coordinator reachable")

    async def start(self, definition: Definition) -> Started:
        """Start a transaction (a :class:`Saga`, :class:`TwoPhase` or raw ``StartRequest``) and
        return as soon as the coordinator has accepted it durably."""
        request = _start_request(definition)
        response = await self._call(
            bool(request.idempotency_key),
            lambda stub, md: stub.Start(request, metadata=md),
            traced=True,
        )
        return Started(response.tx_id, response.created)

    async def run(self, definition: Definition) -> Transaction:
        """Start a transaction and wait until it has ended; returns it in its final state."""
        request = _start_request(definition)
        request.wait = True
        request.wait_timeout_ms = 0
        response = await self._call(
            bool(request.idempotency_key),
            lambda stub, md: stub.Start(request, metadata=md),
            traced=True,
        )
        if response.HasField("transaction"):
            return Transaction._from(response.transaction)
        return await self.wait(response.tx_id)

    async def get(self, tx_id: str) -> Transaction:
        """The transaction's current state and branches."""
        request = pb.GetRequest(tx_id=tx_id)
        return Transaction._from(
            await self._call(True, lambda stub, md: stub.Get(request, metadata=md))
        )

    async def wait(self, tx_id: str, timeout: float = 0) -> Transaction:
        """Wait until the transaction has ended, or ``timeout`` seconds have passed (then it is
        returned as it stands). 0 means the coordinator's maximum."""
        request = pb.WaitRequest(tx_id=tx_id, timeout_ms=millis(timeout))
        deadline = timeout + WAIT_SLACK if timeout > 0 else None
        return Transaction._from(
            await self._call(
                True, lambda stub, md: stub.Wait(request, metadata=md, timeout=deadline)
            )
        )

    async def watch(self, tx_id: str) -> AsyncIterator[Event]:
        """The transaction's events from the start, then live ones as they happen, until it
        ends: ``async for event in client.watch(tx_id)``. Fails over only before the first
        event."""
        request = pb.WatchRequest(tx_id=tx_id)
        count = len(self._channels)
        first = self._current % count
        last: Optional[grpc.RpcError] = None
        for offset in range(count):
            index = (first + offset) % count
            stub = pb_grpc.CoordinatorStub(self._channels[index])
            call = stub.Watch(request, metadata=self._metadata)
            received = False
            try:
                async for message in call:
                    received = True
                    yield Event._from(message)
                return
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE and not received:  # type: ignore[attr-defined]
                    last = e
                    continue
                raise BatonError.from_rpc(e) from None
            finally:
                call.cancel()
        if last is not None:
            raise BatonError.from_rpc(last) from None

    async def list(self, query: Optional[ListQuery] = None) -> Page:
        """Transactions matching ``query``, newest first, one page at a time."""
        request = (query or ListQuery())._to_proto()
        response = await self._call(True, lambda stub, md: stub.List(request, metadata=md))
        return Page(
            [Transaction._from(t) for t in response.transactions], response.next_page_token
        )

    async def events(self, tx_id: str, after_seq: int = 0, limit: int = 0) -> List[Event]:
        """The transaction's history: events with ``seq`` greater than ``after_seq``, at most
        ``limit`` (0 means the coordinator's default of 1000)."""
        request = pb.EventsRequest(tx_id=tx_id, after_seq=after_seq, limit=limit)
        response = await self._call(True, lambda stub, md: stub.Events(request, metadata=md))
        return [Event._from(e) for e in response.events]

    async def cancel(self, tx_id: str, reason: str = "") -> Transaction:
        """Cancel: a running saga compensates, a 2PC before its decision aborts."""
        request = pb.CancelRequest(tx_id=tx_id, reason=reason)
        return Transaction._from(
            await self._call(False, lambda stub, md: stub.Cancel(request, metadata=md))
        )

    async def retry(self, tx_id: str) -> Transaction:
        """Resume a failed or stuck transaction."""
        request = pb.RetryRequest(tx_id=tx_id)
        return Transaction._from(
            await self._call(False, lambda stub, md: stub.Retry(request, metadata=md))
        )

    async def register_participant(
        self, service: str, endpoint: str, *, weight: int = 1, zone: str = "", ttl: float = 0
    ) -> ParticipantEndpoint:
        """Register ``endpoint`` as an instance of ``service``; a non-zero ``ttl`` (seconds)
        makes the registration expire unless renewed. :meth:`Participant.serve`'s
        :meth:`ParticipantServer.register` does this and the heartbeats for you."""
        request = pb.RegisterParticipantRequest(
            service=service, endpoint=endpoint, weight=weight, zone=zone, ttl_ms=millis(ttl)
        )
        response = await self._call(
            False, lambda stub, md: stub.RegisterParticipant(request, metadata=md)
        )
        return ParticipantEndpoint._from(response.participant)

    async def deregister_participant(self, service: str, endpoint: str) -> bool:
        """Remove a participant endpoint; returns whether it was registered."""
        request = pb.DeregisterParticipantRequest(service=service, endpoint=endpoint)
        response = await self._call(
            False, lambda stub, md: stub.DeregisterParticipant(request, metadata=md)
        )
        return bool(response.removed)

    async def list_participants(self, service: str = "") -> List[ParticipantEndpoint]:
        """Registered participant endpoints, of one service or (empty) of all."""
        request = pb.ListParticipantsRequest(service=service)
        response = await self._call(
            True, lambda stub, md: stub.ListParticipants(request, metadata=md)
        )
        return [ParticipantEndpoint._from(p) for p in response.participants]

    async def list_coordinators(self) -> List[CoordinatorInfo]:
        """The coordinators sharing the log."""
        request = pb.ListCoordinatorsRequest()
        response = await self._call(
            True, lambda stub, md: stub.ListCoordinators(request, metadata=md)
        )
        return [CoordinatorInfo._from(c) for c in response.coordinators]

    async def purge(self, older_than: float, batch: int = 0) -> int:
        """Operator: delete finished transactions that ended more than ``older_than`` seconds
        ago, ``batch`` per database transaction (0: the coordinator's default). Returns how many
        were deleted."""
        request = pb.PurgeRequest(older_than_ms=millis(older_than), batch=batch)
        # Repeating a purge deletes nothing twice, so it may fail over.
        response = await self._call(True, lambda stub, md: stub.Purge(request, metadata=md))
        return int(response.purged)
