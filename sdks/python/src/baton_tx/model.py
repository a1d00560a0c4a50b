"""Typed views of what the coordinator returns: enums and frozen dataclasses, never raw proto
integers."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ._proto import coordinator_pb2 as pb


class TxState(enum.Enum):
    """A transaction's state. ``UNKNOWN`` stands for a value this SDK does not know (a newer
    coordinator)."""

    UNKNOWN = 0
    RUNNING = 1
    COMPENSATING = 2
    COMMITTED = 3
    COMPENSATED = 4
    FAILED = 5
    PREPARING = 6
    COMMITTING = 7
    ABORTING = 8
    ABORTED = 9

    @classmethod
    def _missing_(cls, value: object) -> "TxState":
        return cls.UNKNOWN

    @property
    def is_final(self) -> bool:
        """Whether the transaction has ended (``FAILED`` waits for an operator's retry)."""
        return self in _FINAL


_FINAL = frozenset(
    {TxState.COMMITTED, TxState.COMPENSATED, TxState.FAILED, TxState.ABORTED}
)


class TxKind(enum.Enum):
    UNKNOWN = 0
    SAGA = 1
    TWO_PHASE = 2

    @classmethod
    def _missing_(cls, value: object) -> "TxKind":
        return cls.UNKNOWN


class StepKind(enum.Enum):
    """A saga step's kind. ``COMPENSATABLE`` is the default."""

    COMPENSATABLE = 1
    PIVOT = 2
    RETRIABLE = 3

    @classmethod
    def _missing_(cls, value: object) -> "StepKind":
        # UNSPECIFIED is treated as compensatable by the coordinator.
        return cls.COMPENSATABLE


@dataclass(frozen=True)
class Branch:
    """A saga step or 2PC branch as the coordinator tracks it. ``state`` is the coordinator's
    branch status text (such as ``succeeded`` or ``compensated``)."""

    index: int
    name: str
    stage: int
    kind: StepKind
    target: str
    action: str
    compensate: str
    state: str
    attempts: int
    output: bytes
    last_error: str

    @classmethod
    def _from(cls, b: Any) -> "Branch":
        return cls(
            index=b.index,
            name=b.name,
            stage=b.stage,
            kind=StepKind(b.kind),
            target=b.target,
            action=b.action,
            compensate=b.compensate,
            state=b.state,
            attempts=b.attempts,
            output=bytes(b.output),
            last_error=b.last_error,
        )


@dataclass(frozen=True)
class Transaction:
    """A transaction's state and branches. Times are Unix milliseconds; ``deadline_at_ms`` is 0
    when there is no deadline."""

    tx_id: str
    kind: TxKind
    state: TxState
    labels: Dict[str, str]
    idempotency_key: str
    created_at_ms: int
    updated_at_ms: int
    deadline_at_ms: int
    last_error: str
    branches: List[Branch]
    owner: str
    epoch: int
    in_doubt: bool

    @classmethod
    def _from(cls, t: Any) -> "Transaction":
        return cls(
            tx_id=t.tx_id,
            kind=TxKind(t.kind),
            state=TxState(t.state),
            labels=dict(t.labels),
            idempotency_key=t.idempotency_key,
            created_at_ms=t.created_at_ms,
            updated_at_ms=t.updated_at_ms,
            deadline_at_ms=t.deadline_at_ms,
            last_error=t.last_error,
            branches=[Branch._from(b) for b in t.branches],
            owner=t.owner,
            epoch=t.epoch,
            in_doubt=t.in_doubt,
        )

    def branch(self, name: str) -> Optional[Branch]:
        """The branch called ``name``, if there is one."""
        return next((b for b in self.branches if b.name == name), None)


@dataclass(frozen=True)
class Event:
    """One entry of a transaction's history. ``branch`` is -1 when the event is about the whole
    transaction."""

    tx_id: str
    seq: int
    at_ms: int
    kind: str
    branch: int
    detail: str

    @classmethod
    def _from(cls, e: Any) -> "Event":
        return cls(e.tx_id, e.seq, e.at_ms, e.kind, e.branch, e.detail)


@dataclass(frozen=True)
class Started:
    """The answer to :meth:`Client.start`. ``created`` is false when the idempotency key named a
    transaction that already existed."""

    tx_id: str
    created: bool


@dataclass(frozen=True)
class Page:
    """One page of :meth:`Client.list`; ``next_page_token`` is empty on the last page."""

    transactions: List[Transaction]
    next_page_token: str


@dataclass(frozen=True)
class ParticipantEndpoint:
    """A participant endpoint; ``expires_at_ms`` is 0 when it never expires.

    ``policy``, ``outstanding`` and ``ejected_until_ms`` (0 when not ejected) are the balancing
    state as seen by the coordinator that answered :meth:`Client.list_participants`; other
    replies leave them empty.
    """

    service: str
    endpoint: str
    weight: int
    zone: str
    expires_at_ms: int
    policy: str = ""
    outstanding: int = 0
    ejected_until_ms: int = 0

    @classmethod
    def _from(cls, p: Any) -> "ParticipantEndpoint":
        return cls(
            p.service,
            p.endpoint,
            p.weight,
            p.zone,
            p.expires_at_ms,
            p.policy,
            p.outstanding,
            p.ejected_until_ms,
        )


@dataclass(frozen=True)
class CoordinatorInfo:
    """A coordinator sharing the log; ``owned`` is how many transactions it drove at its last heartbeat."""

    id: str
    address: str
    started_at_ms: int
    heartbeat_at_ms: int
    version: str
    owned: int

    @classmethod
    def _from(cls, c: Any) -> "CoordinatorInfo":
        return cls(c.id, c.address, c.started_at_ms, c.heartbeat_at_ms, c.version, c.owned)


@dataclass
class ListQuery:
    """Which transactions :meth:`Client.list` returns; the default lists the newest 50."""

    states: List[TxState] = field(default_factory=list)
    labels: Dict[str, str] = field(default_factory=dict)
    #: Created at or after / before, in Unix milliseconds; 0 means unbounded.
    created_after_ms: int = 0
    created_before_ms: int = 0
    #: Page size; 0 means the coordinator's default (50), at most 1000.
    limit: int = 0
    page_token: str = ""

    def _to_proto(self) -> Any:
        return pb.ListRequest(
            states=[s.value for s in self.states],
            labels=self.labels,
            created_after_ms=self.created_after_ms,
            created_before_ms=self.created_before_ms,
            limit=self.limit,
            page_token=self.page_token,
        )
