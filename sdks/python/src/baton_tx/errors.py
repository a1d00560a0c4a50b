"""Errors: what a participant handler raises, and what a client call raises."""

from __future__ import annotations

from typing import Optional

import grpc


class HandlerError(Exception):
    """Why a handler did not succeed. The subclass decides what the coordinator does next.

    Raise :class:`Failed`, :class:`Transient` or :class:`Permanent` from a handler; any other
    exception is answered as gRPC ``INTERNAL``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.message == getattr(other, "message", None)

    def __hash__(self) -> int:
        return hash((type(self), self.message))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class Failed(HandlerError):
    """A business failure (out of stock, card declined): answered as ``OUTCOME_FAILED``, so the
    saga compensates or the two-phase commit votes no. Never retried."""


class Transient(HandlerError):
    """A passing problem (database busy, dependency down): answered as gRPC ``UNAVAILABLE``, so
    the coordinator retries with backoff within the step's budget."""


class Permanent(HandlerError):
    """The call can never succeed as sent (malformed payload, unknown account): answered as gRPC
    ``FAILED_PRECONDITION``, which the coordinator does not retry."""


class BatonError(Exception):
    """Why a client call (or a participant's registration) did not succeed.

    ``code`` is the gRPC status code: the coordinator's, or for failures that never reached one
    the code a server would have used (``UNAVAILABLE`` when no coordinator could be reached,
    ``INVALID_ARGUMENT`` for bad input on this side). ``message`` is the status message without
    the code.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{message} ({code_name(code)})")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> "BatonError":
        code: Optional[grpc.StatusCode] = getattr(error, "code", lambda: None)()
        details: Optional[str] = getattr(error, "details", lambda: None)()
        code = code or grpc.StatusCode.UNKNOWN
        kind = _BY_CODE.get(code, BatonError)
        return kind(code, details or "")


class NotFound(BatonError):
    """``NOT_FOUND``: an unknown transaction id (or participant registration)."""


class InvalidArgument(BatonError):
    """``INVALID_ARGUMENT``: the definition or a field is wrong; the message names the field."""


class FailedPrecondition(BatonError):
    """``FAILED_PRECONDITION``: the transaction's state does not allow this verb."""


class Unavailable(BatonError):
    """``UNAVAILABLE``: no coordinator could be reached."""


class Unauthenticated(BatonError):
    """``UNAUTHENTICATED`` or ``PERMISSION_DENIED``: the token is missing, unknown or lacks the
    role."""


_BY_CODE = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Unauthenticated,
}


def invalid(message: str) -> InvalidArgument:
    """An input error caught on this side, with the code the coordinator would have used."""
    return InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, message)


def code_name(code: grpc.StatusCode) -> str:
    """The code's protocol name, such as ``NOT_FOUND``."""
    return code.name
