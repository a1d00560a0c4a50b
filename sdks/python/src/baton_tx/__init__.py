"""Python SDK for Baton: start and follow sagas and two-phase commits (:class:`Client`), serve
participant handlers (:class:`Participant`), and make them effectively once with the PostgreSQL
barrier (:mod:`baton_tx.barrier`, with the ``postgres`` extra)."""

from .client import Client, Saga, Step, Tcc, TwoPhase, TwoPhaseBranch
from .errors import (
    BatonError,
    Failed,
    FailedPrecondition,
    HandlerError,
    InvalidArgument,
    NotFound,
    Permanent,
    Transient,
    Unauthenticated,
    Unavailable,
)
from .model import (
    Branch,
    CoordinatorInfo,
    Event,
    ListQuery,
    Page,
    ParticipantEndpoint,
    Started,
    StepKind,
    Transaction,
    TxKind,
    TxState,
)
from .participant import (
    Participant,
    ParticipantServer,
    Phase,
    Registration,
    Reply,
    Request,
    StepOutput,
)
from .tls import ClientTls, ServerTls
from .trace import TraceParent

__version__ = "0.1.0"

__all__ = [
    "BatonError",
    "Branch",
    "Client",
    "ClientTls",
    "CoordinatorInfo",
    "Event",
    "Failed",
    "FailedPrecondition",
    "HandlerError",
    "InvalidArgument",
    "ListQuery",
    "NotFound",
    "Page",
    "Participant",
    "ParticipantEndpoint",
    "ParticipantServer",
    "Permanent",
    "Phase",
    "Registration",
    "Reply",
    "Request",
    "Saga",
    "ServerTls",
    "Started",
    "Step",
    "StepKind",
    "StepOutput",
    "Tcc",
    "TraceParent",
    "Transaction",
    "Transient",
    "TwoPhase",
    "TwoPhaseBranch",
    "TxKind",
    "TxState",
    "Unauthenticated",
    "Unavailable",
]
